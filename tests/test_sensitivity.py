"""margin_sensitivity against closed forms on linear models, finite differences and loops."""

import keras
import numpy as np
import pytest
from conftest import linear_model, small_mlp, to_numpy

from keras_margin import backend, margin_sensitivity, multiclass_hinge
from keras_margin.jacobian import logits_and_pullback
from keras_margin.sensitivity import select_rival


@pytest.fixture
def linear_problem():
    rng = np.random.default_rng(1)
    k, d, n = 5, 7, 12
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    x, y = rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n)
    return w, b, x, y


def _closed_form(w, b, x, y, rival, dist):
    """Per-sample (j*, distance between w_y and w_j*) computed by hand."""
    out = []
    for xi, yi in zip(x, y):
        if rival == "jacobian":
            scores = [dist(w[yi] - w[j]) if j != yi else -np.inf for j in range(len(w))]
        else:
            f = w @ xi + b
            scores = [f[j] if j != yi else -np.inf for j in range(len(w))]
        j = int(np.argmax(scores))
        out.append((j, dist(w[yi] - w[j])))
    return out


@pytest.mark.parametrize("rival", ["jacobian", "logit"])
@pytest.mark.parametrize("norm,squared,dist", [
    ("l2", True, lambda v: np.sum(v ** 2)),
    ("l2", False, lambda v: np.sqrt(np.sum(v ** 2))),
    ("l1", False, lambda v: np.sum(np.abs(v))),
    ("l1", True, lambda v: np.sum(np.abs(v)) ** 2),
])
def test_linear_closed_form(linear_problem, rival, norm, squared, dist):
    w, b, x, y = linear_problem
    eps = margin_sensitivity(linear_model(w, b), x, y, norm=norm, rival=rival, squared=squared)
    expected = [d for _, d in _closed_form(w, b, x, y, rival, dist)]
    np.testing.assert_allclose(to_numpy(eps), expected, rtol=1e-5)


def test_default_squared_follows_reference(linear_problem):
    w, b, x, y = linear_problem
    model = linear_model(w, b)
    np.testing.assert_allclose(to_numpy(margin_sensitivity(model, x, y, norm="l2")),
                               to_numpy(margin_sensitivity(model, x, y, norm="l2", squared=True)))
    np.testing.assert_allclose(to_numpy(margin_sensitivity(model, x, y, norm="l1")),
                               to_numpy(margin_sensitivity(model, x, y, norm="l1",
                                                           squared=False)))


def test_binary_linear_is_weight_norm():
    rng = np.random.default_rng(2)
    w, b = rng.normal(size=(1, 5)), rng.normal(size=1)
    x = rng.normal(size=(6, 5)).astype("float32")
    y = np.array([0, 1, 1, 0, -1, 1])
    eps = margin_sensitivity(linear_model(w, b), x, y, norm="l2", squared=False)
    np.testing.assert_allclose(to_numpy(eps), np.full(6, np.linalg.norm(w)), rtol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "l1"])
def test_penalty_gradient_matches_finite_differences(norm, float64):
    """d/dW of mean eps on a tanh MLP (float64): autodiff through double backprop vs central FD."""
    model = small_mlp(d=5, k=4, hidden=6, dtype="float64")
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(8, 5)), rng.integers(0, 4, 8)
    kernel = model.layers[0].kernel

    def penalty():
        return keras.ops.mean(margin_sensitivity(model, x, y, norm=norm))

    _, (grad,) = backend.value_and_weight_grad(penalty, [kernel])
    grad = to_numpy(grad)
    assert np.abs(grad).max() > 1e-3  # the penalty really depends on the weights

    w0, h = to_numpy(kernel), 1e-6
    fd = np.zeros_like(w0)
    for idx in np.ndindex(w0.shape):
        for sign in (1, -1):
            w = w0.copy()
            w[idx] += sign * h
            kernel.assign(w)
            fd[idx] += sign * to_numpy(penalty()) / (2 * h)
    kernel.assign(w0)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


def test_jacobian_rival_matches_explicit_loop():
    model = small_mlp(d=6, k=5, hidden=16, activation="relu")
    rng = np.random.default_rng(4)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.integers(0, 5, 16).astype("int32")
    grads = np.stack([to_numpy(backend.value_and_grad(lambda z, j=j: model(z)[:, j], x)[1])
                      for j in range(5)], axis=1)  # one class at a time, by hand
    expected = []
    for b in range(16):
        scores = [np.sum((grads[b, j] - grads[b, y[b]]) ** 2) if j != y[b] else -np.inf
                  for j in range(5)]
        expected.append(int(np.argmax(scores)))
    logits, pullback = logits_and_pullback(model, x)
    labels = keras.ops.convert_to_tensor(y)
    got = select_rival(pullback, logits, labels, rival="jacobian", norm="l2")
    np.testing.assert_array_equal(to_numpy(got), expected)
    runner_up = select_rival(pullback, logits, labels, rival="logit")
    masked = np.where(np.eye(5)[y] > 0, -np.inf, to_numpy(logits))
    np.testing.assert_array_equal(to_numpy(runner_up), masked.argmax(axis=1))


def test_candidates_restrict_the_search_to_the_top_rival_logits(linear_problem):
    w, b, x, y = linear_problem
    model = linear_model(w, b)
    f = x @ w.T + b
    full = to_numpy(margin_sensitivity(model, x, y, rival="jacobian"))
    np.testing.assert_allclose(to_numpy(margin_sensitivity(model, x, y, candidates=len(w) - 1)),
                               full)
    got = to_numpy(margin_sensitivity(model, x, y, candidates=2))
    for i in range(len(x)):
        masked = np.where(np.arange(len(w)) == y[i], -np.inf, f[i])
        top2 = np.argsort(masked)[::-1][:2]
        expected = max(np.sum((w[y[i]] - w[j]) ** 2) for j in top2)
        assert got[i] == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="candidates"):
        margin_sensitivity(model, x, y, candidates=0)


def test_multiclass_hinge_masks_true_class():
    logits = np.array([[2.0, 0.5, -1.0], [-3.0, -2.5, -4.0], [0.0, 0.2, 0.1]], "float32")
    y = np.array([0, 1, 0])
    expected = [max(0, 1 + 0.5 - 2.0), max(0, 1 - 3.0 + 2.5), max(0, 1 + 0.2 - 0.0)]
    np.testing.assert_allclose(to_numpy(multiclass_hinge(y, logits)), expected, rtol=1e-6)
    # keras' categorical_hinge zeroes the true logit instead: it gives 1.0 - (-2.5) = 3.5 here.
    assert to_numpy(keras.losses.categorical_hinge(np.eye(3)[[1]], logits[[1]]))[0] == 3.5


def test_labels_out_of_range_raise():
    model = small_mlp()
    with pytest.raises(ValueError, match=r"Labels must be integers in \[0, 4\)"):
        margin_sensitivity(model, np.zeros((2, 6)), [0, 4])
    with pytest.raises(ValueError, match="shape"):
        margin_sensitivity(model, np.zeros((2, 6)), np.eye(4)[[0, 1]])


def test_unknown_options_raise():
    model = small_mlp()
    with pytest.raises(ValueError, match="norm"):
        margin_sensitivity(model, np.zeros((2, 6)), [0, 1], norm="l3")
    with pytest.raises(ValueError, match="rival"):
        margin_sensitivity(model, np.zeros((2, 6)), [0, 1], rival="random")


def test_uint8_inputs_are_cast():
    model = small_mlp()
    x = np.arange(12, dtype="uint8").reshape(2, 6)
    np.testing.assert_allclose(to_numpy(margin_sensitivity(model, x, [0, 1])),
                               to_numpy(margin_sensitivity(model, x.astype("float32"), [0, 1])))
