"""MarginModel: the soft-margin SVM in the linear case, saving, XLA, tf.distribute, bad input."""

import contextlib
import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import BACKEND, Batches, refusal, small_mlp, to_numpy

from keras_margin import MarginModel


def _separable(n=200, d=4, seed=0):
    rng = np.random.default_rng(seed)
    w_true = rng.normal(size=d)
    x = rng.normal(size=(4 * n, d))
    f = x @ w_true / np.linalg.norm(w_true)
    keep = np.abs(f) > 0.5  # a gap around the true hyperplane: separable with margin
    x, f = x[keep][:n], f[keep][:n]
    return x.astype("float32"), (f > 0).astype("int32")


def test_binary_linear_model_is_the_soft_margin_svm():
    """Eq. (14) on a linear model: mean hinge + C ||w||^2 is the SVM with C_svm = 1 / (2 C n)."""
    svm_module = pytest.importorskip("sklearn.svm")
    x, y = _separable()
    n, C = len(x), 0.01
    base = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
    model = MarginModel(base, C=C, norm="l2", loss="hinge")
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, 100, 0.7)
    model.compile(optimizer=keras.optimizers.Adam(schedule))
    model.fit(Batches(np.tile(x, (1500, 1)), np.tile(y, 1500), len(x)), epochs=1, verbose=0)

    svm = svm_module.SVC(kernel="linear", C=1.0 / (2 * C * n)).fit(x, 2 * y - 1)
    w_svm, b_svm = svm.coef_[0], svm.intercept_[0]
    w, b = to_numpy(base.layers[-1].kernel)[:, 0], to_numpy(base.layers[-1].bias)[0]
    cosine = w @ w_svm / (np.linalg.norm(w) * np.linalg.norm(w_svm))
    assert cosine > 0.99

    signs = 2 * y - 1
    margin = np.min(signs * (x @ w + b)) / np.linalg.norm(w)
    margin_svm = np.min(signs * (x @ w_svm + b_svm)) / np.linalg.norm(w_svm)
    assert margin == pytest.approx(margin_svm, rel=0.05)


def _data(n=64, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n)


def test_fit_reports_objective_parts_and_metrics():
    x, y = _data()
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam", metrics=["accuracy"])
    history = model.fit(x, y, validation_data=(x, y), epochs=2, batch_size=16, verbose=0)
    for key in ("loss", "data_loss", "margin_sensitivity", "accuracy", "val_loss",
                "val_margin_sensitivity"):
        assert len(history.history[key]) == 2
    logs = model.evaluate(x, y, return_dict=True, verbose=0)
    assert logs["loss"] == pytest.approx(logs["data_loss"] + 0.1 * logs["margin_sensitivity"],
                                         rel=1e-5)
    np.testing.assert_allclose(model.predict(x, verbose=0), to_numpy(model.base(x)), atol=1e-6)


def test_save_and_load_round_trip(tmp_path):
    x, y = _data()
    model = MarginModel(small_mlp(), C=0.05, norm="l1", loss="crossentropy", rival="logit")
    model.compile(optimizer="adam", metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    path = str(tmp_path / "margin.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, MarginModel)
    assert (loaded.C, loaded.norm, loaded.rival, loaded.loss_spec) == (0.05, "l1", "logit",
                                                                        "crossentropy")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    before = [to_numpy(w).copy() for w in loaded.trainable_weights]
    history = loaded.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert any(not np.allclose(a, to_numpy(w)) for a, w in zip(before, loaded.trainable_weights))


def _one_step(jit_compile, rival, x, y, strategy=None):
    keras.utils.set_random_seed(7)
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = MarginModel(small_mlp(hidden=32, activation="relu"), C=0.3, rival=rival)
        model.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=jit_compile)
    loss = model.train_on_batch(x, y)
    return loss, [to_numpy(w) for w in model.trainable_weights]


@pytest.mark.parametrize("rival", ["jacobian", "logit"])
def test_xla_matches_graph(rival):
    x, y = _data(n=32)
    loss, weights = _one_step(False, rival, x, y)
    loss_xla, weights_xla = _one_step(True, rival, x, y)
    assert loss_xla == pytest.approx(loss, rel=1e-5)
    for a, b in zip(weights, weights_xla):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_mirrored_strategy_matches_one_device(mirrored):
    x, y = _data(n=32)
    loss, weights = _one_step(False, "jacobian", x, y)
    loss_2, weights_2 = _one_step(False, "jacobian", x, y, strategy=mirrored)
    assert loss_2 == pytest.approx(loss, rel=1e-5)
    for a, b in zip(weights, weights_2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_probability_outputs_are_refused():
    softmax = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="softmax")])
    with pytest.raises(ValueError, match="logits"):
        MarginModel(softmax)
    sigmoid_layer = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1),
                                      keras.layers.Activation("sigmoid")])
    with pytest.raises(ValueError, match="logits"):
        MarginModel(sigmoid_layer)
    inputs = keras.Input((6,))
    functional = keras.Model(inputs, keras.layers.Softmax()(keras.layers.Dense(3)(inputs)))
    with pytest.raises(ValueError, match="logits"):
        MarginModel(functional)


@pytest.mark.parametrize("kwargs,match", [
    ({"norm": "linf"}, "norm"), ({"rival": "all"}, "rival"), ({"loss": "nonsense"}, "loss"),
    ({"C": -1.0}, "C"), ({"C": float("nan")}, "C"), ({"C": float("inf")}, "C"),
    ({"squared": "yes"}, "squared"),
])
def test_bad_arguments_name_the_allowed_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MarginModel(small_mlp(), **kwargs)


def test_bad_labels_and_shapes():
    x, y = _data()
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        model.fit(x, np.full(len(x), 4), verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        model.fit(x, -np.ones(len(x)), verbose=0)
    with pytest.raises(ValueError, match="different lengths"):
        model.fit(x, y[:10], verbose=0)
    with pytest.raises(ValueError, match="One-hot"):
        model.fit(x, np.eye(4)[y], verbose=0)
    with refusal(model):
        model.fit(Batches(x, np.full(len(x), 9), 16), verbose=0)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch steps run eagerly and raise instead")
def test_out_of_range_labels_in_compiled_steps_skip_the_batch_and_warn(tmp_path):
    """Keras turns XLA on by itself on GPUs, XLA drops assertions, and JAX steps are always
    compiled: the batch must still never reach the weights (before: hinge data_loss 1e29 and
    NaN weights)."""
    x, y = _data()
    model = MarginModel(small_mlp(), C=0.1, loss="hinge")
    model.compile(optimizer="adam", jit_compile=True)
    model.fit(x, y, epochs=1, verbose=0)
    before = [to_numpy(w).copy() for w in model.weights]
    labels = y.copy()
    labels[:16] = 9
    log = os.path.join(str(tmp_path), "history.csv")
    with pytest.warns(UserWarning, match="1 training batch"):
        history = model.fit(Batches(x, labels, 16), epochs=2, verbose=0,
                            callbacks=[keras.callbacks.CSVLogger(log)])
    assert history.history["skipped_batches"] == [1.0, 1.0]
    with open(log) as f:  # the helper runs before the user's CSVLogger: the column is there
        assert [row["skipped_batches"] for row in csv.DictReader(f)] == ["1.0", "1.0"]
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] < 10
    assert all(np.isfinite(to_numpy(w)).all() for w in model.weights)
    assert any(not np.array_equal(a, to_numpy(w)) for a, w in zip(before, model.weights))


def test_uint8_images_train_with_a_warning_to_rescale():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(32, 6), dtype="uint8")
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam")
    with pytest.warns(UserWarning, match="unscaled 8-bit images"):
        history = model.fit(x, rng.integers(0, 4, 32), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    with pytest.warns(UserWarning, match="divide x by 255"):
        model.fit(x.astype("float32"), rng.integers(0, 4, 32), epochs=1, verbose=0)


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [False, True])
def test_non_finite_inputs_never_reach_the_weights(jit_compile):
    """Arrays with NaN raise in fit; a pipeline's batch with NaN raises or is skipped."""
    x, y = _data()
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam", jit_compile=jit_compile)
    model.fit(x, y, epochs=1, verbose=0)
    before = [to_numpy(w).copy() for w in model.weights]
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        model.fit(bad, y, verbose=0)
    with refusal(model):
        model.fit(Batches(bad, y, len(x)), verbose=0)
    for a, w in zip(before, model.weights):
        np.testing.assert_array_equal(a, to_numpy(w))


@pytest.mark.slow
def test_a_backend_that_cannot_train_is_refused_clearly():
    # Keras's numpy backend imports JAX for its convolutions; the JAX suite in CI runs this.
    pytest.importorskip("jax")
    code = "import keras_margin; keras_margin.MarginModel"
    env = {**os.environ, "KERAS_BACKEND": "numpy"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode != 0
    assert "supports the Keras backends 'tensorflow', 'jax' and 'torch'" in proc.stderr
    assert "'numpy'" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["hinge", "crossentropy"])
def test_binary_model_trains_with_plus_minus_one_labels(loss):
    x, y01 = _separable(n=120)
    base = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])
    model = MarginModel(base, C=0.01, loss=loss)
    model.compile(optimizer=keras.optimizers.Adam(0.05),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)])
    history = model.fit(x, 2 * y01 - 1, epochs=30, batch_size=40, verbose=0)
    assert history.history["binary_accuracy"][-1] > 0.95
    with pytest.raises(ValueError, match="Binary labels"):
        model.fit(x, np.full(len(x), 2), verbose=0)
