"""Margins at hidden layers, and robust training on models with batch norm (issue 26).

Truths: the hidden-layer sensitivity against a closed form (a linear head) and against central
finite differences in float64 (a tanh head); the input tap against the paper's input-only
path over three training steps; batch-norm moving statistics after one step of every trainer
against one plain `fit` step on the same batch.
"""

import keras
import numpy as np
import pytest
from conftest import BACKEND, to_numpy

from keras_margin.training import AdversarialTrainingModel, MarginModel, VATModel


def _data(n=8, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n).astype("int32")


def _tanh_net(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)),
                             keras.layers.Dense(5, activation="tanh", name="h1"),
                             keras.layers.Dense(4, activation="tanh", name="h2"),
                             keras.layers.Dense(3, name="logits")])


def _extra(model, x, y):
    out = model.logits_and_extra(keras.ops.convert_to_tensor(x),
                                 keras.ops.convert_to_tensor(y), False)
    return to_numpy(out[1]), {name: float(to_numpy(v)) for name, v in
                              (out[2] if len(out) > 2 else {}).items()}


def _rule(grads, y, norm, rival, logits, squared):
    """eps from per-class gradient rows grads[j] (d,) of one sample, by the reference rule."""
    others = [j for j in range(len(grads)) if j != y]
    size = (lambda v: np.abs(v).sum()) if norm == "l1" else (lambda v: np.sqrt((v ** 2).sum()))
    if rival == "logit":
        j = max(others, key=lambda c: logits[c])
    else:
        j = max(others, key=lambda c: size(grads[c] - grads[y]))
    value = size(grads[y] - grads[j])
    return value ** 2 if squared else value


def test_linear_head_matches_closed_form():
    keras.utils.set_random_seed(1)
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="h"),
                             keras.layers.Dense(3, name="logits")])
    x, y = _data()
    w1, w2 = (to_numpy(layer.kernel).astype(np.float64) for layer in base.layers)
    for norm, squared in (("l2", True), ("l1", False)):
        model = MarginModel(base, norm=norm, layers=["input", 0], layer_weights=[1.0, 2.0])
        extra, per_layer = _extra(model, x, y)
        expected_h = [_rule(w2.T, y[b], norm, "jacobian", None, squared) for b in range(len(x))]
        expected_x = [_rule((w1 @ w2).T, y[b], norm, "jacobian", None, squared)
                      for b in range(len(x))]
        np.testing.assert_allclose(extra, np.add(expected_x, np.multiply(2.0, expected_h)),
                                   rtol=1e-5)
        assert per_layer["h"] == pytest.approx(np.mean(expected_h), rel=1e-5)


@pytest.mark.parametrize("norm,rival", [("l2", "jacobian"), ("l1", "jacobian"), ("l2", "logit")])
def test_hidden_layer_matches_finite_differences(norm, rival):
    base = _tanh_net()
    x, y = _data()
    (w1, b1), (w2, b2), (w3, b3) = ([to_numpy(v).astype(np.float64) for v in (layer.kernel,
                                                                               layer.bias)]
                                    for layer in base.layers)
    a1 = np.tanh(x.astype(np.float64) @ w1 + b1)

    def head(a):  # the logits as a function of h1's output, in float64
        return np.tanh(a @ w2 + b2) @ w3 + b3

    model = MarginModel(base, norm=norm, rival=rival, layers=["h1"])
    extra, _ = _extra(model, x, y)
    step = 1e-6
    for b in range(len(x)):
        jac = np.stack([(head(a1[b] + step * e) - head(a1[b] - step * e)) / (2 * step)
                        for e in np.eye(5)], axis=1)  # (k, 5)
        want = _rule(jac, y[b], norm, rival, head(a1[b]), squared=norm == "l2")
        assert extra[b] == pytest.approx(want, rel=1e-5, abs=1e-7)


def test_input_tap_trains_as_the_input_only_default():
    x, y = _data(n=16)
    weights = []
    for layers in (None, ["input"]):
        model = MarginModel(_tanh_net(seed=3), C=0.1, layers=layers)
        model.compile(optimizer=keras.optimizers.Adam(1e-2))
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        weights.append([to_numpy(w) for w in model.base.weights])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_per_layer_sensitivities_land_in_history_and_save(tmp_path):
    x, y = _data(n=16)
    model = MarginModel(_tanh_net(), C=0.1, layers=["input", "h2"], layer_weights=[1.0, 0.5])
    model.compile(optimizer="adam")
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert {"margin_sensitivity_input", "margin_sensitivity_h2"} <= set(history)
    total = history["margin_sensitivity"][0]
    parts = history["margin_sensitivity_input"][0] + 0.5 * history["margin_sensitivity_h2"][0]
    assert total == pytest.approx(parts, rel=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_config()["layers"] == ["input", "h2"]
    assert loaded.layer_weights == (1.0, 0.5)
    np.testing.assert_allclose(_extra(loaded, x, y)[0], _extra(model, x, y)[0], rtol=1e-6)


def test_residual_functional_base():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(6, activation="relu", name="h")(inputs)
    s = keras.layers.Add(name="skip")([inputs, h])
    outputs = keras.layers.Dense(3, name="logits")(s)
    base = keras.Model(inputs, outputs)
    x, y = _data()
    extra, _ = _extra(MarginModel(base, layers=["skip"]), x, y)
    w = to_numpy(base.get_layer("logits").kernel).astype(np.float64)
    want = [_rule(w.T, y[b], "l2", "jacobian", None, True) for b in range(len(x))]
    np.testing.assert_allclose(extra, want, rtol=1e-5)


@pytest.mark.parametrize("layers,weights,match", [
    (["nope"], None, "no layer named 'nope'"),
    (["logits"], None, "outputs the logits"),
    ([], None, r"layers: \[\]"),
    (["h1", "h1"], None, "listed twice"),
    (["h1", "h2"], [1.0], "layer_weights: 1 numbers for 2 layers"),
    (["h1"], [-1.0], "non-negative"),
    ("h1", None, "Expected a list"),
    (None, [1.0], "layer_weights needs layers"),
    ([7], None, "index 7 is out of range"),
    ([True], None, "Expected a layer name"),
])
def test_bad_layers_are_refused_by_name(layers, weights, match):
    with pytest.raises(ValueError, match=match):
        MarginModel(_tanh_net(), layers=layers, layer_weights=weights)


def test_nested_off_path_and_shared_layers_are_refused():
    inner = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, name="inner_dense")],
                             name="inner")
    outer = keras.Sequential([keras.Input((6,)), inner, keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="no layer named 'inner_dense'"):
        MarginModel(outer, layers=["inner_dense"])
    with pytest.raises(ValueError, match="not a top-level layer"):
        MarginModel(outer, layers=[inner.layers[0]])
    shared = keras.layers.Dense(6, name="shared")
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(3)(shared(shared(inputs)))
    with pytest.raises(ValueError, match="called 2 times"):
        MarginModel(keras.Model(inputs, outputs), layers=["shared"])
    with pytest.raises(ValueError, match="input margin only"):
        MarginModel(_tanh_net(), layers=["h1"], rival_dtype="bfloat16")


# -- batch norm: statistics as a plain fit updates them --------------------------------------
def _bn_net(seed=0, dropout=0.0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="conv"),
        keras.layers.BatchNormalization(name="bn"), keras.layers.ReLU(name="relu"),
        keras.layers.Flatten(), keras.layers.Dropout(dropout),
        keras.layers.Dense(3, name="logits")])


def _moving_statistics(base):
    bn = base.get_layer("bn")
    return np.concatenate([to_numpy(bn.moving_mean), to_numpy(bn.moving_variance)])


TRAINERS = {
    "margin": lambda b: MarginModel(b, C=0.1),
    "margin_hidden": lambda b: MarginModel(b, C=0.1, layers=["input", "relu"]),
    "margin_bfloat16_rival": lambda b: MarginModel(b, C=0.1, rival_dtype="bfloat16"),
    "adversarial": lambda b: AdversarialTrainingModel(b, eps=0.1),
    "vat": lambda b: VATModel(b, eps=1.0),
}


@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_batch_norm_statistics_as_one_plain_step(trainer):
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 16)
    plain = _bn_net()
    plain.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(x, y, batch_size=16, epochs=1, verbose=0)
    base = _bn_net()
    before = _moving_statistics(base)
    model = TRAINERS[trainer](base)
    model.compile(optimizer="sgd")
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.abs(_moving_statistics(base) - before).max() > 1e-3  # they did move
    np.testing.assert_allclose(_moving_statistics(base), _moving_statistics(plain), atol=1e-6)


def test_margin_trains_with_dropout_and_batch_norm():
    """On JAX, batch-norm statistics written inside the input-gradient transformation used to
    leak a tracer (UnexpectedTracerError); every backend trains now, dropout too."""
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 32)
    model = MarginModel(_bn_net(dropout=0.5), C=0.1, layers=["input", "conv"])
    model.compile(optimizer="adam")
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["skipped_batches"] == [0.0, 0.0]


def test_eager_sensitivity_in_training_mode_updates_statistics_once():
    from keras_margin import margin_sensitivity

    rng = np.random.default_rng(0)
    x, y = rng.random((16, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 16)
    once, base = _bn_net(), _bn_net()
    once(x, training=True)
    margin_sensitivity(base, x, y, training=True)
    np.testing.assert_allclose(_moving_statistics(base), _moving_statistics(once), atol=1e-6)


@pytest.mark.skipif(BACKEND == "torch", reason="bfloat16 convolutions: TensorFlow and JAX")
def test_mixed_bfloat16_margin_on_batch_norm():
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 16)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        plain, base = _bn_net(), _bn_net()
        plain.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        plain.fit(x, y, batch_size=16, epochs=1, verbose=0)
        model = MarginModel(base, C=0.1, layers=["input", "relu"])
        model.compile(optimizer="sgd")
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0).history
    finally:
        keras.config.set_dtype_policy("float32")
    assert np.isfinite(history["loss"][0]) and history["margin_sensitivity_relu"][0] > 0
    np.testing.assert_allclose(_moving_statistics(base), _moving_statistics(plain), atol=1e-6)


@keras.saving.register_keras_serializable(package="test_hidden_layers")
class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(5, activation="tanh", name="hidden")
        self.unused = keras.layers.Dense(5, name="unused")
        self.out = keras.layers.Dense(3, name="out")

    def call(self, x, training=None):
        return self.out(self.hidden(x))


def test_subclassed_base_taps_and_refuses_an_unused_layer():
    keras.utils.set_random_seed(0)
    base = _Subclassed()
    x, y = _data()
    base(x)
    extra, _ = _extra(MarginModel(base, layers=["hidden"]), x, y)
    w = to_numpy(base.out.kernel).astype(np.float64)
    np.testing.assert_allclose(extra, [_rule(w.T, y[b], "l2", "jacobian", None, True)
                                       for b in range(len(x))], rtol=1e-5)
    model = MarginModel(base, layers=["unused"])
    with pytest.raises(ValueError, match="not on the path"):
        _extra(model, x, y)


# -- real models: ResNet-20 and a Keras Applications network (slow) --------------------------
def _all_moving_statistics(base):
    return np.concatenate([to_numpy(v).ravel() for layer in base.layers
                           if isinstance(layer, keras.layers.BatchNormalization)
                           for v in (layer.moving_mean, layer.moving_variance)])


def _one_step_against_plain(make_base, make_trainer, x, y, relative=None):
    """One trainer step and one plain step from the same weights on the same batch: the
    moving statistics must move as the plain step moves them (to 1e-5; with `relative`, to
    that fraction of the largest move, for bfloat16 arithmetic: a second update would be off
    by the whole move)."""
    plain = make_base()
    start = _all_moving_statistics(plain)
    plain.compile(optimizer="sgd",
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    plain.fit(x, y, batch_size=len(x), epochs=1, verbose=0)
    base = make_base()
    model = make_trainer(base)
    model.compile(optimizer="sgd")
    history = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["skipped_batches"] == [0.0]
    moved, want = _all_moving_statistics(base) - start, _all_moving_statistics(plain) - start
    tolerance = 1e-5 if relative is None else relative * np.abs(want).max()
    np.testing.assert_allclose(moved, want, atol=tolerance)
    return history


def _resnet(seed=0):
    from keras_margin.architectures import resnet20

    keras.utils.set_random_seed(seed)
    return resnet20(input_shape=(16, 16, 3), num_classes=4)


RESNET_TRAINERS = {
    "margin_hidden": lambda b: MarginModel(b, C=0.1, layers=["input", "stage1_block3",
                                                             "stage3_block3"]),
    "adversarial": lambda b: AdversarialTrainingModel(b, eps=0.03),
    "vat": lambda b: VATModel(b, eps=1.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("trainer", sorted(RESNET_TRAINERS))
def test_resnet20_trains_and_keeps_batch_norm_as_plain_fit(trainer):
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 16, 16, 3)).astype("float32"), rng.integers(0, 4, 8)
    history = _one_step_against_plain(_resnet, RESNET_TRAINERS[trainer], x, y)
    if trainer == "margin_hidden":
        assert history["margin_sensitivity_stage3_block3"][0] > 0


@pytest.mark.slow
def test_keras_applications_model_trains_with_hidden_layer_margins():
    def mobilenet():
        keras.utils.set_random_seed(0)
        return keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                              weights=None, classes=4,
                                              classifier_activation=None)

    rng = np.random.default_rng(0)
    x, y = rng.random((4, 32, 32, 3)).astype("float32"), rng.integers(0, 4, 4)
    history = _one_step_against_plain(
        mobilenet, lambda b: MarginModel(b, C=0.1, rival="logit",
                                         layers=["input", "block_2_add", "out_relu"]), x, y)
    assert history["margin_sensitivity_out_relu"][0] > 0


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="bfloat16 convolutions: TensorFlow and JAX")
@pytest.mark.parametrize("trainer", sorted(RESNET_TRAINERS))
def test_resnet20_trains_in_mixed_bfloat16(trainer):
    rng = np.random.default_rng(0)
    x, y = rng.random((8, 16, 16, 3)).astype("float32"), rng.integers(0, 4, 8)
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        history = _one_step_against_plain(_resnet, RESNET_TRAINERS[trainer], x, y,
                                          relative=0.02)
    finally:
        keras.config.set_dtype_policy("float32")
    if trainer == "margin_hidden":
        assert history["margin_sensitivity_stage1_block3"][0] > 0


def test_a_softmax_output_layer_is_told_exactly_what_to_change():
    softmax = keras.Sequential([keras.Input((6,)), keras.layers.Dense(10, activation="softmax",
                                                                      name="out")])
    with pytest.raises(ValueError, match=r"Build it as layers.Dense\(10\) instead of "
                                         r"layers.Dense\(10, activation='softmax'\)"):
        MarginModel(softmax)
    layer = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1),
                              keras.layers.Activation("sigmoid", name="probability")])
    with pytest.raises(ValueError, match="Remove the layer 'probability'.*keras.ops.sigmoid"):
        MarginModel(layer)


@pytest.mark.slow
def test_keras_io_convnet_adapted_runs_on_the_embedded_digits(monkeypatch, tmp_path):
    """keras-io's "Simple MNIST convnet" with the lines the README shows: one epoch on the
    embedded digits, the callback's numbers in the History, a certificate at the end."""
    import importlib.util
    import os

    from keras_margin import datasets

    monkeypatch.delenv("KERAS_MARGIN_DATA", raising=False)
    monkeypatch.setattr(datasets, "keras_cache", lambda: str(tmp_path))  # no MNIST but ours

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "keras_io_mnist_convnet.py")
    spec = importlib.util.spec_from_file_location("keras_io_mnist_convnet", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    history, score, radius = script.main(
        ["--epochs", "1", "--robustness-samples", "50", "--certify-samples", "10"])
    assert score["accuracy"] > 0.5 and np.isfinite(score["loss"])
    assert 0 < history.history["val_rho_adv"][0] < 1
    assert radius.shape == (10,) and np.all(radius >= 0) and np.all(np.isfinite(radius))


def test_resnet20_has_the_papers_size_and_named_block_outputs():
    from keras_margin.architectures import resnet20

    model = resnet20()
    assert round(model.count_params() / 1e4) == 27  # He et al. (2016), Table 6: 0.27M
    assert model.output_shape == (None, 10)
    assert [f"stage{s}_block{b}" in [layer.name for layer in model.layers]
            for s in (1, 2, 3) for b in (1, 2, 3)] == [True] * 9
    assert model.get_layer("stage3_block3").output.shape[1:] == (8, 8, 64)
    with pytest.raises(ValueError, match="blocks"):
        resnet20(blocks=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mlp-l2-hidden", "mlp-large-margin"])
def test_a_hidden_table_row_runs_and_reports(tiny_mnist, tmp_path, name):
    """The runner trains a (shrunk) row of the "hidden" table and the report lists it."""
    import dataclasses
    import os

    from keras_margin.experiments import get_row, report, runner
    from keras_margin.training import LargeMarginModel

    row = get_row(name, table="hidden")
    row = dataclasses.replace(row, name=f"tiny-{name}", hidden=(16,), epochs=1, validation=40,
                              batch_size=50,
                              trainer_kwargs={**row.trainer_kwargs, "layers": ["input", 1]},
                              deepfool={"max_iter": 5, "step_clip": 0.5, "overshoot": 0.02})
    out = str(tmp_path / "runs")
    metrics = runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    assert np.isfinite(metrics["error"]) and np.isfinite(metrics["rho_adv"])
    folder = runner.run_dir(out, row, 0)
    model = keras.models.load_model(os.path.join(folder, "model.keras"))
    assert isinstance(model, LargeMarginModel if "large" in name else MarginModel)
    assert model.get_config()["layers"][0] == "input"
    with open(os.path.join(folder, "history.csv")) as f:
        header = f.readline()
    assert ("distance_input" if "large" in name else "margin_sensitivity_input") in header
    baseline = dataclasses.replace(get_row("mlp-baseline", table="table1"), hidden=(16,),
                                   epochs=1, validation=40, batch_size=50,
                                   deepfool=row.deepfool)
    runner.run(baseline, 0, out, data_dir=tiny_mnist, verbose=0)
    text = report.write(out)
    section = text[text.index("## Hidden-layer margins — MLP 16, 1 epoch"):]
    lines = [ln for ln in section.splitlines() if ln.startswith("| MLP")]
    assert lines[0].startswith("| MLP baseline |") and lines[1].startswith(f"| {row.label} |")


def test_binary_hidden_layer_sensitivity_is_the_gradient_norm():
    """One logit (eq. 14): eps_l = ||grad_{h_l} f||, here the head's weight vector."""
    keras.utils.set_random_seed(2)
    base = keras.Sequential([keras.Input((6,)), keras.layers.Dense(5, name="h"),
                             keras.layers.Dense(1, name="logit")])
    x, _ = _data()
    y = (np.arange(len(x)) % 2).astype("int32")
    w = to_numpy(base.get_layer("logit").kernel)[:, 0].astype(np.float64)
    extra, per_layer = _extra(MarginModel(base, layers=["h"]), x, y)
    np.testing.assert_allclose(extra, np.full(len(x), (w ** 2).sum()), rtol=1e-5)
    assert per_layer["h"] == pytest.approx((w ** 2).sum(), rel=1e-5)
