"""LargeMarginModel (Elsayed et al., 2018) against its formula computed independently: exact
distances on a linear model, float64 central differences of the softmax gap at the input and at
a hidden layer, and the weight gradient without the approximation against finite differences."""

import keras
import numpy as np
import pytest
from conftest import to_numpy

from keras_margin.training import LargeMarginModel


def _data(n=8, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n).astype("int32")


def _linear(seed=1, k=4, dtype="float32"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,), dtype=dtype),
                             keras.layers.Dense(k, name="logits", dtype=dtype)])


def _tanh_net(seed=0, dtype="float32"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,), dtype=dtype),
                             keras.layers.Dense(5, activation="tanh", name="h", dtype=dtype),
                             keras.layers.Dense(4, name="logits", dtype=dtype)])


def _extra(model, x, y):
    out = model.logits_and_extra(keras.ops.convert_to_tensor(x),
                                 keras.ops.convert_to_tensor(y), False)
    return to_numpy(out[1]), {n: float(to_numpy(v)) for n, v in out[2].items()}


def _hinge(d, gamma, alpha):
    return np.maximum(0.0, np.minimum(gamma - d, alpha * gamma))


DUAL = {"l2": lambda v: np.sqrt((v ** 2).sum()), "linf": lambda v: np.abs(v).sum(),
        "l1": lambda v: np.abs(v).max()}


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
@pytest.mark.parametrize("top_k,worst_case", [(1, True), (2, True), (2, False)])
def test_linear_logits_give_the_exact_distance(norm, top_k, worst_case):
    base = _linear()
    x, y = _data()
    w = to_numpy(base.layers[0].kernel).astype(np.float64)
    logits = to_numpy(base(x)).astype(np.float64)
    gamma, alpha = 3.0, 2.0
    model = LargeMarginModel(base, gamma=gamma, alpha=alpha, top_k=top_k, norm=norm,
                             worst_case=worst_case, outputs="logits")
    extra, _ = _extra(model, x, y)
    for b in range(len(x)):
        others = sorted((j for j in range(4) if j != y[b]), key=lambda j: -logits[b, j])[:top_k]
        d = [(logits[b, y[b]] - logits[b, j]) / (DUAL[norm](w[:, y[b]] - w[:, j]) + 1e-6)
             for j in others]
        want = _hinge(min(d), gamma, alpha) if worst_case else _hinge(np.array(d), gamma,
                                                                        alpha).sum()
        assert extra[b] == pytest.approx(want, rel=1e-5, abs=1e-5)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_softmax_gap_distance_at_input_and_hidden_layer_matches_finite_differences():
    base = _tanh_net()
    x, y = _data()
    (w1, b1), (w2, b2) = ([to_numpy(v).astype(np.float64) for v in (layer.kernel, layer.bias)]
                          for layer in base.layers)
    gamma = 1e4  # every distance is in the hinge's linear part: loss = gamma - d
    model = LargeMarginModel(base, layers=["input", "h"], gamma=gamma)
    extra, distances = _extra(model, x, y)
    step, want_d = 1e-6, {"input": [], "h": []}
    for b in range(len(x)):
        xb = x[b].astype(np.float64)
        p = _softmax(np.tanh(xb @ w1 + b1) @ w2 + b2)
        j = max((c for c in range(4) if c != y[b]), key=lambda c: p[c])

        def gap_x(v, j=j, b=b):
            q = _softmax(np.tanh(v @ w1 + b1) @ w2 + b2)
            return q[y[b]] - q[j]

        def gap_h(a, j=j, b=b):
            q = _softmax(a @ w2 + b2)
            return q[y[b]] - q[j]

        a = np.tanh(xb @ w1 + b1)
        for name, fn, point in (("input", gap_x, xb), ("h", gap_h, a)):
            grad = np.array([(fn(point + step * e) - fn(point - step * e)) / (2 * step)
                             for e in np.eye(len(point))])
            want_d[name].append(fn(point) / (np.sqrt((grad ** 2).sum()) + 1e-6))
        want = np.mean([gamma - want_d["input"][-1], gamma - want_d["h"][-1]])
        assert extra[b] == pytest.approx(want, rel=1e-6)
    for name in ("input", "h"):
        assert distances[name] == pytest.approx(np.mean(want_d[name]), rel=1e-4, abs=1e-4)


def test_exact_weight_gradient_matches_finite_differences(float64):
    """approximate=False differentiates through the gradient norm (double backprop)."""
    from keras_margin import backend

    base = _tanh_net(dtype="float64")
    x, y = _data()
    x = x.astype("float64")
    model = LargeMarginModel(base, layers=["input", "h"], gamma=5.0, alpha=4.0,
                             approximate=False)
    kernel = base.layers[0].kernel

    def objective():
        return keras.ops.mean(model.logits_and_extra(keras.ops.convert_to_tensor(x),
                                                     keras.ops.convert_to_tensor(y),
                                                     False)[1])

    _, (grad,) = backend.value_and_weight_grad(objective, [kernel])
    grad, value = to_numpy(grad), to_numpy(kernel).copy()
    step = 1e-6
    for index in [(0, 0), (2, 3), (5, 4)]:
        shifted = []
        for sign in (1, -1):
            moved = value.copy()
            moved[index] += sign * step
            kernel.assign(moved)
            shifted.append(float(to_numpy(objective())))
        kernel.assign(value)
        assert grad[index] == pytest.approx((shifted[0] - shifted[1]) / (2 * step), rel=1e-5,
                                            abs=1e-9)


def test_trains_logs_distances_and_saves(tmp_path):
    x, y = _data(n=32)
    model = LargeMarginModel(_tanh_net(), layers=["input", "h"], data_weight=1.0)
    model.compile(optimizer="adam", metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0).history
    assert {"margin_loss", "distance_input", "distance_h", "data_loss"} <= set(history)
    assert np.all(np.isfinite(history["loss"]))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_config()["layers"] == ["input", "h"] and loaded.data_weight == 1.0
    np.testing.assert_allclose(_extra(loaded, x, y)[0], _extra(model, x, y)[0], rtol=1e-6)


def test_size_scales_as_the_reference_for_linf():
    base = _tanh_net()
    x, y = _data()
    one = _extra(LargeMarginModel(base, layers=["input", "h"], norm="linf"), x, y)[1]
    size = _extra(LargeMarginModel(base, layers=["input", "h"], norm="linf",
                                   layer_scales="size"), x, y)[1]
    assert size["input"] == pytest.approx(6 * one["input"], rel=1e-3)
    assert size["h"] == pytest.approx(5 * one["h"], rel=1e-3)


@pytest.mark.parametrize("kwargs,match", [
    ({"gamma": 0.0}, "gamma"), ({"alpha": -1.0}, "alpha"), ({"top_k": 4}, "top_k"),
    ({"top_k": 0}, "top_k"), ({"norm": "l3"}, "norm"), ({"epsilon": 0.0}, "epsilon"),
    ({"outputs": "softmax"}, "outputs"), ({"layer_scales": [1.0, 2.0]}, "layer_scales: 2 numbers"),
    ({"layer_scales": [0.0]}, "layer_scales"), ({"layers": ["logits"]}, "outputs the logits"),
    ({"data_weight": -1.0}, "data_weight"), ({"approximate": "yes"}, "approximate"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LargeMarginModel(_tanh_net(), **kwargs)
