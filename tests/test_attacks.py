"""DeepFool and FGSM against closed forms on linear models and by-hand gradients."""

import keras
import numpy as np
import pytest
from conftest import linear_model, small_mlp

from keras_margin import attacks


@pytest.fixture
def linear_case():
    rng = np.random.default_rng(5)
    k, d, n = 6, 9, 40
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    x = rng.normal(size=(n, d)).astype("float32")
    return w, b, x, (x @ w.T + b).argmax(axis=1)


def _minimal_distance(w, b, x, y, dual):
    f = x @ w.T + b
    return np.array([min(abs(f[i, y[i]] - f[i, j]) / dual(w[y[i]] - w[j])
                         for j in range(len(w)) if j != y[i]) for i in range(len(x))])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_l2_deepfool_is_the_closed_form_on_a_linear_model(linear_case, jit_compile):
    w, b, x, y = linear_case
    res = attacks.deepfool(linear_model(w, b), x, y, step_clip=None, jit_compile=jit_compile)
    expected = _minimal_distance(w, b, x, y, np.linalg.norm) * 1.02
    np.testing.assert_allclose(np.linalg.norm(res.perturbation, axis=1), expected, rtol=1e-4)
    np.testing.assert_array_equal(res.iterations, 1)
    assert np.all(res.success)


def test_linf_deepfool_is_the_closed_form_on_a_linear_model(linear_case):
    w, b, x, y = linear_case
    res = attacks.deepfool(linear_model(w, b), x, y, norm="linf", step_clip=None)
    expected = _minimal_distance(w, b, x, y, lambda v: np.abs(v).sum()) * 1.02
    np.testing.assert_allclose(np.abs(res.perturbation).max(axis=1), expected, rtol=1e-4)
    assert np.all(res.success)


def test_step_clip_bounds_every_step(linear_case):
    w, b, x, y = linear_case
    res = attacks.deepfool(linear_model(w, b), x, y, step_clip=0.05, max_iter=200)
    distance = _minimal_distance(w, b, x, y, np.linalg.norm)
    # n clipped steps along the fixed normal; success is checked at the overshoot point.
    np.testing.assert_array_equal(res.iterations, np.ceil(distance / (0.05 * 1.02)))
    assert np.all(res.success)


def test_already_misclassified_get_zero_perturbation(linear_case):
    w, b, x, y = linear_case
    wrong = (y + 1) % len(w)
    res = attacks.deepfool(linear_model(w, b), x, wrong)
    np.testing.assert_array_equal(res.perturbation, 0.0)
    np.testing.assert_array_equal(res.iterations, 0)
    assert np.all(res.success)


def test_candidates_and_prediction_target(linear_case):
    w, b, x, y = linear_case
    model = linear_model(w, b)
    full = attacks.deepfool(model, x, y, step_clip=None)
    by_prediction = attacks.deepfool(model, x, target="prediction", step_clip=None)
    np.testing.assert_allclose(full.perturbation, by_prediction.perturbation, rtol=1e-6)
    top2 = attacks.deepfool(model, x, y, step_clip=None, candidates=2)
    # Restricting the classes can only find farther (or equal) boundaries.
    assert np.all(np.linalg.norm(top2.perturbation, axis=1)
                  >= np.linalg.norm(full.perturbation, axis=1) - 1e-5)


@pytest.mark.slow
def test_success_really_flips_a_trained_mlp():
    rng = np.random.default_rng(6)
    x = np.clip(rng.normal(size=(300, 10)), -3, 3).astype("float32")
    y = (x[:, :3] @ rng.normal(size=(3, 3))).argmax(axis=1)
    model = small_mlp(d=10, k=3, hidden=32, activation="relu")
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, epochs=20, verbose=0)
    res = attacks.deepfool(model, x, y, clip_min=-3.0, clip_max=3.0)
    flipped = model.predict(x + res.perturbation, verbose=0).argmax(axis=1) != y
    np.testing.assert_array_equal(flipped[res.success], True)
    assert res.success.mean() > 0.9
    assert np.all(np.abs(x + res.perturbation) <= 3.0)


def test_dead_network_fails_finitely():
    dead = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, kernel_initializer="zeros",
                                                                   bias_initializer="ones")])
    x = np.random.default_rng(0).normal(size=(8, 5)).astype("float32")
    res = attacks.deepfool(dead, x, np.zeros(8, int))
    assert not np.any(res.success[1:])  # label 0 is the argmax of equal logits
    assert np.all(np.isfinite(res.perturbation))
    assert np.all(res.iterations <= 1)


def test_fgsm_is_the_signed_crossentropy_gradient_by_hand(linear_case):
    w, b, x, y = linear_case

    def by_hand(x):
        f = x @ w.T + b
        p = np.exp(f - f.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        return np.sign((p - np.eye(len(w))[y]) @ w)  # d CE / dx of a linear softmax model

    x_adv = attacks.fgsm(linear_model(w, b), x, y, eps=0.1)
    np.testing.assert_allclose(x_adv, x + 0.1 * by_hand(x), atol=1e-6)
    inside = np.clip(x, -0.5, 0.5)
    clipped = attacks.fgsm(linear_model(w, b), inside, y, eps=0.1, clip_min=-0.5, clip_max=0.5)
    np.testing.assert_allclose(clipped, np.clip(inside + 0.1 * by_hand(inside), -0.5, 0.5),
                               atol=1e-6)
    with pytest.warns(DeprecationWarning, match="clip_min"):
        older = attacks.fgsm(linear_model(w, b), inside, y, eps=0.1, clip=(-0.5, 0.5))
    np.testing.assert_allclose(older, clipped)
    result = attacks.FGSM()(linear_model(w, b), inside, y, eps=0.1, clip_min=-0.5, clip_max=0.5)
    np.testing.assert_allclose(inside + result.perturbation, clipped, atol=1e-6)
    predicted = (np.asarray(clipped) @ w.T + b).argmax(axis=1)
    np.testing.assert_array_equal(result.success, predicted != y)


def test_fgsm_binary_single_logit():
    w, b = np.array([[1.0, -2.0, 0.5]]), np.array([0.1])
    x = np.ones((2, 3), "float32")
    x_adv = attacks.fgsm(linear_model(w, b), x, [1, 0], eps=0.3)
    np.testing.assert_allclose(x_adv, [1 - 0.3 * np.sign(w[0]), 1 + 0.3 * np.sign(w[0])],
                               atol=1e-6)


@pytest.mark.parametrize("call,match", [
    (lambda m, x, y: attacks.deepfool(m, x[:0], y[:0]), "empty"),
    (lambda m, x, y: attacks.deepfool(m, x, y[:3]), "different lengths"),
    (lambda m, x, y: attacks.deepfool(m, x, y + 10), r"\[0, 4\)"),
    (lambda m, x, y: attacks.deepfool(m, x, y, norm="l1"), "norm"),
    (lambda m, x, y: attacks.deepfool(m, x), "needs the labels"),
    (lambda m, x, y: attacks.fgsm(m, x, y[:3]), "different lengths"),
    (lambda m, x, y: attacks.fgsm(m, x, y, eps=-1), "eps"),
])
def test_bad_input_is_refused(call, match):
    x = np.zeros((6, 6), "float32")
    with pytest.raises(ValueError, match=match):
        call(small_mlp(), x, np.zeros(6, int))


def test_probabilities_are_refused():
    softmax = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation="softmax")])
    with pytest.raises(ValueError, match="logits"):
        attacks.deepfool(softmax, np.zeros((2, 6)), [0, 1])

    def probabilities(x):  # a plain callable: only the outputs can tell
        return keras.ops.softmax(small_mlp()(x))

    with pytest.raises(ValueError, match="probabilities"):
        attacks.fgsm(probabilities, np.zeros((2, 6)), [0, 1])
