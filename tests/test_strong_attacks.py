"""FMN, DDN and APGD against closed forms on linear models; lanes, verification, bad input."""

import keras
import numpy as np
import pytest
from conftest import linear_model, small_mlp, trained_mnist_mlp

from keras_margin import attacks
from keras_margin.attacks import base

DUALS = {"l2": np.linalg.norm, "linf": lambda v: np.abs(v).sum(), "l1": lambda v: np.abs(v).max()}


def _linear(k, d, n, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(k, d)) * scale, rng.normal(size=k)
    x = rng.normal(size=(n, d)).astype("float32")
    f = x @ w.T + b
    return w, b, x, f


def _boundary_distances(w, f, y, norm, strict=False):
    """(n, k): the l_p distance from each x to the boundary between y and each class j; with
    `strict`, to where f_j exceeds f_y by the tolerance of a strict flip (what the attacks
    report: `base.STRICT_FLIP_EPS` float32 epsilons times the logits' scale)."""
    k = len(w)
    tolerance = base.STRICT_FLIP_EPS * np.finfo(np.float32).eps * \
        np.maximum(1.0, np.abs(f).max(axis=1)) if strict else np.zeros(len(f))
    return np.array([[(abs(fi[yi] - fi[j]) + ti) / DUALS[norm](w[yi] - w[j]) if j != yi
                      else np.inf for j in range(k)] for fi, yi, ti in zip(f, y, tolerance)])


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
def test_fmn_finds_the_closed_form_minimal_distance(norm):
    """On a linear model the minimal distance is min_j |f_y - f_j| / ||w_y - w_j||_dual. FMN
    follows the runner-up logit (the paper's choice), so it reaches that minimum where the
    runner-up's boundary is the nearest one; nowhere can it beat the minimum."""
    w, b, x, f = _linear(6, 9, 120, seed=5)
    y = f.argmax(axis=1)
    distances = _boundary_distances(w, f, y, norm)
    truth = distances.min(axis=1)
    runner_up_nearest = distances.argmin(axis=1) == np.argsort(-f, axis=1)[:, 1]
    assert runner_up_nearest.mean() > 0.8
    res = attacks.fmn(linear_model(w, b), x, y, norm=norm)
    assert res.success.all()
    found = res.distances(norm)
    strict = _boundary_distances(w, f, y, norm, strict=True).min(axis=1)
    np.testing.assert_allclose(found[runner_up_nearest], strict[runner_up_nearest], rtol=0.01)
    assert np.all(found >= truth * (1 - 1e-5))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fmn_from_deepfool_reaches_the_minimum_everywhere(norm):
    """Started from DeepFool's adversarial (the nearest linearised boundary, exact on a linear
    model) FMN stays on the nearest boundary, for every sample."""
    w, b, x, f = _linear(6, 9, 60, seed=5)
    y = f.argmax(axis=1)
    truth = _boundary_distances(w, f, y, norm, strict=True).min(axis=1)
    res = attacks.fmn(linear_model(w, b), x, y, norm=norm, init="deepfool", steps=30)
    assert res.success.all()
    np.testing.assert_allclose(res.distances(norm), truth, rtol=0.01)


def test_ddn_finds_the_closed_form_minimal_distance_of_two_classes():
    """With two logits the cross-entropy gradient is the boundary's normal, so DDN's direction
    is exact; distances within its reach from init_epsilon = 1 in 100 steps."""
    w, b, x, f = _linear(2, 20, 80, seed=7, scale=3.0)
    y = f.argmax(axis=1)
    truth = _boundary_distances(w, f, y, "l2").min(axis=1)
    reachable = (truth > 0.05) & (truth < 3)
    assert reachable.mean() > 0.8
    res = attacks.ddn(linear_model(w, b), x, y)
    assert res.success.all()
    np.testing.assert_allclose(res.distances("l2")[reachable], truth[reachable], rtol=0.01)
    assert np.all(res.distances("l2") >= truth * (1 - 1e-5))


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_ensemble_robust_accuracy_is_exact_below_and_above_each_distance(norm):
    """A sample is robust at eps exactly when its minimal distance exceeds eps; the ensemble of
    APGD-CE and APGD-T (targeted DLR, which solves the linear problem per target) finds every
    adversarial inside the ball and none outside."""
    w, b, x, f = _linear(5, 12, 80, seed=11)
    y = f.argmax(axis=1)
    truth = _boundary_distances(w, f, y, norm).min(axis=1)
    model = linear_model(w, b)
    for eps in np.percentile(truth, [20, 50, 80]):
        keep = np.abs(truth / eps - 1) > 0.02  # not within 2 % of the budget
        fooled = np.zeros(keep.sum(), bool)
        for attack in (attacks.APGD(norm=norm), attacks.APGD(norm=norm, loss="dlr",
                                                                targeted=True)):
            fooled |= attack(model, x[keep], y[keep], eps=eps).success
        np.testing.assert_array_equal(fooled, truth[keep] <= eps)
        lengths = np.abs(attacks.apgd(model, x[keep], y[keep], eps=eps, norm=norm).perturbation)
        bound = lengths.max(axis=1) if norm == "linf" else np.linalg.norm(lengths, axis=1)
        assert np.all(bound <= eps * (1 + 1e-5))


@pytest.mark.parametrize("make", [
    lambda m, x, y, **kw: attacks.deepfool(m, x, y, **kw),
    lambda m, x, y, **kw: attacks.fmn(m, x, y, norm="linf", steps=20, **kw),
    lambda m, x, y, **kw: attacks.ddn(m, x, y, steps=20, **kw),
    lambda m, x, y, **kw: attacks.apgd(m, x, y, eps=0.3, steps=20, **kw),
])
def test_lanes_do_not_change_results_and_successes_are_verified(make):
    """Seven lanes refilled as samples finish give what one lane per sample gives; every
    reported success flips a fresh prediction, inside the box."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(50, 6)).astype("float32")
    model = small_mlp(d=6, k=4, hidden=16, activation="relu")
    y = model.predict(x, verbose=0).argmax(axis=1)
    few = make(model, x, y, batch_size=7, clip_min=0.0, clip_max=1.0)
    many = make(model, x, y, batch_size=50, clip_min=0.0, clip_max=1.0)
    np.testing.assert_allclose(few.perturbation, many.perturbation, atol=1e-5)
    np.testing.assert_array_equal(few.success, many.success)
    x_adv = x + few.perturbation
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    flipped = model.predict(x_adv, verbose=0).argmax(axis=1) != y
    np.testing.assert_array_equal(flipped[few.success], True)
    assert few.success.sum() >= 5  # enough verified successes to compare


def test_float64_inputs_are_attacked_in_float64(float64):
    w, b, x, f = _linear(4, 5, 20, seed=3)
    y = f.argmax(axis=1)
    model = linear_model(w, b, dtype="float64")
    for res in (attacks.deepfool(model, x.astype("float64"), y, step_clip=None),
                attacks.fmn(model, x.astype("float64"), y),
                attacks.ddn(model, x.astype("float64"), y)):  # issue 23: DDN raised
        assert res.perturbation.dtype == np.float64 and res.success.all()
    budget = attacks.apgd(model, x.astype("float64"), y, eps=1.0, norm="l2", steps=10)
    assert budget.perturbation.dtype == np.float64
    np.testing.assert_allclose(
        np.linalg.norm(attacks.deepfool(model, x.astype("float64"), y, step_clip=None,
                                        overshoot=0.0).perturbation, axis=1),
        _boundary_distances(w, f, y, "l2").min(axis=1), rtol=1e-9)


@pytest.mark.parametrize("call,match", [
    (lambda m, x, y: attacks.fmn(m, np.where(x > 0.5, np.nan, x), y), "NaN or Inf"),
    (lambda m, x, y: attacks.apgd(m, x, y, eps=0.1, clip_min=1.0, clip_max=0.0), "reversed"),
    (lambda m, x, y: attacks.ddn(m, x + 2.0, y, clip_min=0.0, clip_max=1.0), "outside"),
    (lambda m, x, y: attacks.deepfool(m, x, y, clip_min=0.0, clip_max=0.5), "outside"),
    (lambda m, x, y: attacks.fgsm(m, x * np.inf, y), "NaN or Inf"),
    (lambda m, x, y: attacks.apgd(m, x, y, eps=0.0), "eps"),
    (lambda m, x, y: attacks.apgd(m, x, y, eps=0.1, loss="dlr"), "at least 3 logits"),
    (lambda m, x, y: attacks.fmn(m, x, y, norm="l3"), "norm"),
    (lambda m, x, y: attacks.fmn(m, x, y, steps=2.5), "steps"),
    (lambda m, x, y: attacks.deepfool(m, x, y, max_iter=1.7), "max_iter"),
    (lambda m, x, y: attacks.ddn(m, x, np.array(["a", "b"] * 4)), "integer class indices"),
])
def test_bad_input_gets_a_clear_error(call, match):
    x = np.random.default_rng(0).uniform(0, 1, size=(8, 6)).astype("float32")
    with pytest.raises(ValueError, match=match):
        call(small_mlp(d=6, k=2), x, np.zeros(8, int))


def test_a_model_without_gradients_is_reported_stuck_not_robust():
    flat = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, kernel_initializer="zeros",
                                                                   bias_initializer="ones")])
    x = np.random.default_rng(0).uniform(size=(6, 5)).astype("float32")
    for res in (attacks.deepfool(flat, x, np.zeros(6, int)),
                attacks.fmn(flat, x, np.zeros(6, int), steps=5),
                attacks.ddn(flat, x, np.zeros(6, int), steps=5)):
        assert res.stuck.all() and not res.success.any()
        assert np.isinf(res.distances()).all()


def test_every_reported_adversarial_is_one_in_float64():
    # Issue 30: FMN's adversarials sat on the boundary, and re-evaluated in float64 some were
    # not adversarial (ties that argmax resolved by class index). A success is now a strict
    # flip, so every attack's adversarials survive an exact-weights float64 forward pass.
    net, x_test, y_test = trained_mnist_mlp((256, 256), epochs=3)
    weights = [(np.asarray(layer.kernel, np.float64), np.asarray(layer.bias, np.float64))
               for layer in net.layers[1:]]

    def float64_logits(points):
        z = points.reshape(len(points), -1).astype(np.float64)
        for i, (kernel, bias) in enumerate(weights):
            z = z @ kernel + bias
            z = np.maximum(z, 0) if i < len(weights) - 1 else z
        return z

    x, y = x_test[:100], y_test[:100]
    float32_error = np.abs(keras.ops.convert_to_numpy(net(x)) - float64_logits(x)).max(axis=1)
    assert (float32_error < 0.02 * base.flip_tolerance(net, float64_logits(x))).all()
    results = {
        "fmn_l2": attacks.fmn(net, x, y, norm="l2"),
        "fmn_linf": attacks.fmn(net, x, y, norm="linf"),
        "ddn": attacks.ddn(net, x, y), "deepfool": attacks.deepfool(net, x, y),
        "apgd": attacks.apgd(net, x, y, eps=0.1, norm="linf"),
        "fgsm": attacks.FGSM()(net, x, y, eps=0.1)}
    for name, result in results.items():
        margins = base.flip_margins(float64_logits(x + result.perturbation), y)
        assert result.success.sum() > 50, name
        assert (margins[result.success] > 0).all(), (name, margins[result.success].min())
