"""Scale: tf.distribute (one host, two logical CPUs; two worker processes on loopback), JAX's
DataParallel (two host devices), and mixed precision."""

import contextlib
import importlib.util
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import small_mlp, tensorflow_only, to_numpy

from keras_margin import AdversarialTrainingModel, MarginModel, VATModel, margin_sensitivity

WORKER = os.path.join(os.path.dirname(__file__), "multiworker_worker.py")


def _data(n=32, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n)


def _train(make, strategy=None, steps=2):
    x, y = _data()
    keras.utils.set_random_seed(11)
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = make(small_mlp(hidden=16, activation="relu"))
        model.compile(optimizer=keras.optimizers.SGD(0.1))
    losses = [model.train_on_batch(x, y, return_dict=True)["loss"] for _ in range(steps)]
    return losses, [to_numpy(w) for w in model.trainable_weights]


@pytest.mark.parametrize("make", [
    lambda b: MarginModel(b, C=0.2, rival="jacobian", loss="crossentropy"),
    lambda b: MarginModel(b, C=0.05, norm="l1", rival="logit"),
    lambda b: AdversarialTrainingModel(b, eps=0.1),
], ids=["margin-l2", "margin-l1", "at"])
def test_two_replicas_equal_one_device(make, mirrored):
    losses, weights = _train(make)
    losses_2, weights_2 = _train(make, mirrored)
    np.testing.assert_allclose(losses_2, losses, rtol=1e-5)
    for a, b in zip(weights, weights_2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_vat_trains_under_mirrored_strategy(mirrored):
    losses, _ = _train(lambda b: VATModel(b, eps=1.0, seed=0), mirrored, steps=3)
    assert np.all(np.isfinite(losses))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@tensorflow_only
def test_two_workers_on_loopback_end_with_identical_weights(tmp_path):
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
                   TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, WORKER, str(tmp_path / f"weights-{index}.npz")], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    first, second = (np.load(tmp_path / f"weights-{i}.npz") for i in range(2))
    assert len(first.files) > 0
    for key in first.files:
        np.testing.assert_array_equal(first[key], second[key])
    assert not np.allclose(first["initial_0"], first["final_0"])  # it really trained
    assert first["loss"].shape == (2,) and np.all(np.isfinite(first["loss"]))
    assert np.all(first["sensitivity"] > 0)


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_trains_with_a_float32_sensitivity(policy):
    keras.config.set_dtype_policy(policy)
    x, y = _data()
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(4)])
    assert base.layers[-1].compute_dtype != "float32"
    eps = margin_sensitivity(base, x, y)
    assert keras.backend.standardize_dtype(eps.dtype) == "float32"
    assert np.all(np.isfinite(to_numpy(eps)))
    model = MarginModel(base, C=0.1)
    model.compile(optimizer="adam")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert np.all(np.isfinite(history.history["margin_sensitivity"]))
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


DATA_PARALLEL = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["KERAS_BACKEND"] = "jax"
import jax, keras, numpy as np
from keras_margin import MarginModel

def run(distributed):
    if distributed:
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=jax.devices()))
    keras.utils.set_random_seed(3)
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(4)])
    model = MarginModel(base, C=0.3)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 6)).astype("float32"), rng.integers(0, 4, 32)
    history = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    return history.history["loss"], [np.asarray(w) for w in model.trainable_weights]

assert len(jax.devices()) == 2
(loss, weights), (loss_2, weights_2) = run(False), run(True)
np.testing.assert_allclose(loss_2, loss, rtol=1e-5)
for a, b in zip(weights, weights_2):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
print("ok")
"""


@pytest.mark.slow
def test_jax_data_parallel_over_two_devices_equals_one():
    """keras.distribution.DataParallel with keras-margin's own JAX train step."""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", DATA_PARALLEL], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
