"""The same numbers on every Keras backend, and no TensorFlow needed on JAX or PyTorch.

Each backend runs in its own process (Keras has one backend per process) on the same weights
and inputs (tests/backend_worker.py); TensorFlow's numbers are the reference. Backends that
are not installed are skipped.
"""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND, small_mlp

from keras_margin import MarginModel

WORKER = os.path.join(os.path.dirname(__file__), "backend_worker.py")
# It starts every backend itself; once, from the default (TensorFlow) run of the suite.
pytestmark = pytest.mark.skipif(BACKEND != "tensorflow",
                                reason="test_backends runs from the TensorFlow suite")
OTHERS = [b for b in ("jax", "torch") if importlib.util.find_spec(b) is not None]


def _run(backend, src, out, *flags):
    env = {**os.environ, "KERAS_BACKEND": backend}
    proc = subprocess.run([sys.executable, WORKER, str(src), str(out), *flags], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Inputs, weights, a `.keras` file saved by TensorFlow, and TensorFlow's numbers."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("the reference backend, TensorFlow, is not installed")
    folder = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(21)
    weights = [rng.normal(size=(6, 16)) * 0.5, rng.normal(size=16) * 0.1,
               rng.normal(size=(16, 4)) * 0.5, rng.normal(size=4) * 0.1]
    x = rng.uniform(-1, 1, size=(24, 6)).astype("float32")
    y = rng.integers(0, 4, 24)
    src = folder / "in.npz"
    saved = folder / "margin.keras"
    arrays = {f"w{i}": w.astype("float32") for i, w in enumerate(weights)}
    np.savez(src, x=x, y=y, **arrays)
    if BACKEND == "tensorflow":  # save a trainer to load on the other backends
        model = MarginModel(small_mlp(), C=0.1)
        model.compile(optimizer="adam")
        model.fit(x, y % 4, epochs=1, verbose=0)
        model.save(saved)
        np.savez(src, x=x, y=y, saved=str(saved), **arrays)
        expected = keras.ops.convert_to_numpy(model.predict(x, verbose=0))
    else:
        expected = None
    return src, _run("tensorflow", src, folder / "tf.npz"), expected, folder


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHERS)
def test_same_numbers_as_tensorflow(backend, reference):
    src, tf_numbers, saved_predictions, folder = reference
    theirs = _run(backend, src, folder / f"{backend}.npz")
    np.testing.assert_allclose(theirs["sensitivity"], tf_numbers["sensitivity"], rtol=1e-5)
    for i in range(4):
        np.testing.assert_allclose(theirs[f"grad{i}"], tf_numbers[f"grad{i}"], rtol=1e-5,
                                   atol=1e-7)
        np.testing.assert_allclose(theirs[f"trained{i}"], tf_numbers[f"trained{i}"], rtol=1e-5,
                                   atol=1e-6)
    for attack in ("deepfool", "fmn"):
        np.testing.assert_allclose(theirs[attack], tf_numbers[attack], rtol=1e-4)
    if saved_predictions is not None:  # the `.keras` file TensorFlow saved loads here
        np.testing.assert_allclose(theirs["loaded_predictions"], saved_predictions, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("backend", OTHERS)
def test_no_tensorflow_needed(backend, reference):
    """On JAX and PyTorch, the trainers and the attacks run with TensorFlow unimportable."""
    src, tf_numbers, _, folder = reference
    theirs = _run(backend, src, folder / f"{backend}-no-tf.npz", "--no-tensorflow")
    np.testing.assert_allclose(theirs["sensitivity"], tf_numbers["sensitivity"], rtol=1e-5)


@pytest.mark.slow
def test_the_runner_and_callback_need_no_tensorflow_on_jax(tmp_path):
    if "jax" not in OTHERS:
        pytest.skip("JAX is not installed")
    from conftest import write_idx

    rng = np.random.default_rng(0)
    for split, n in (("train", 120), ("t10k", 30)):
        y = rng.integers(0, 10, n)
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", y)
    script = f"""
import sys
sys.modules['tensorflow'] = None  # as if not installed
import dataclasses
from keras_margin.experiments import get_row, runner
row = dataclasses.replace(get_row('mlp-l2'), hidden=(8,), epochs=1, validation=20,
                          batch_size=40, deepfool={{'max_iter': 3, 'step_clip': 0.5,
                                                   'overshoot': 0.02}})
metrics = runner.run(row, 0, {str(tmp_path / 'runs')!r}, data_dir={str(tmp_path)!r}, verbose=0)
print('rho_adv', metrics['rho_adv'])
"""
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rho_adv" in proc.stdout
