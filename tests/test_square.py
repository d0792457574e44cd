"""Square Attack: no gradient, so masked gradients cannot hide adversarials from it."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, trained_mnist_mlp

from keras_margin import attacks
from keras_margin.attacks import base


def _linear_images(seed=0, n=60):
    """A 2-class linear model on 6 x 6 images: f_0 - f_1 = <v, x> + c, so the smallest l_inf
    perturbation that flips a point is |f_0 - f_1| / ||v||_1 (a vertex of the ball)."""
    rng = np.random.default_rng(seed)
    net = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(2)])
    kernel = rng.normal(size=(36, 2)).astype("float32")
    net.layers[-1].set_weights([kernel, np.zeros(2, "float32")])
    x = rng.uniform(0.3, 0.7, size=(n, 6, 6, 1)).astype("float32")
    f = x.reshape(n, -1).astype(np.float64) @ kernel.astype(np.float64)
    v = kernel[:, 0].astype(np.float64) - kernel[:, 1]
    return net, x, f.argmax(1), np.abs(f[:, 0] - f[:, 1]) / np.abs(v).sum()


@pytest.mark.parametrize("shared", [False, True])
def test_on_a_linear_model_square_fools_what_is_within_reach_and_nothing_beyond(shared):
    net, x, y, distance = _linear_images()
    eps = float(np.median(distance))
    result = attacks.square(net, x, y, eps=eps, n_queries=300, shared_windows=shared)
    assert not result.success[distance > eps].any()  # impossible beyond the exact distance
    assert result.success[distance < 0.8 * eps].all()
    size = np.abs(result.perturbation).reshape(len(x), -1).max(axis=1)
    assert (size <= eps * (1 + 1e-6)).all()
    logits = x.reshape(len(x), -1).astype(np.float64) + \
        result.perturbation.reshape(len(x), -1)
    margins = base.flip_margins(logits @ np.asarray(net.layers[-1].kernel, np.float64), y)
    assert (margins[result.success] > 0).all()  # adversarial in float64 too


def test_l2_square_stays_in_the_ball_and_the_box():
    net, x, y, distance = _linear_images(seed=1)
    result = attacks.square(net, x, y, eps=1.0, norm="l2", n_queries=200, clip_min=0.0,
                            clip_max=1.0)
    norms = np.sqrt((result.perturbation.astype(np.float64) ** 2).reshape(len(x), -1).sum(1))
    assert (norms <= 1.0 + 1e-5).all() and result.success.mean() > 0.5
    adv = x + result.perturbation
    assert adv.min() >= 0.0 and adv.max() <= 1.0


@pytest.mark.skipif(BACKEND == "torch", reason="the masking layer's zero gradient is backend "
                    "code; TensorFlow and JAX suffice")
def test_square_sees_through_masked_gradients():
    # Issue 25: a model whose input quantisation has a zero gradient (stop_gradient) gives
    # APGD nothing to follow: it reports high robust accuracy, and Square brings it down.
    mlp, x_test, y_test = trained_mnist_mlp((128,), epochs=3)
    quantise = keras.layers.Lambda(lambda z: keras.ops.stop_gradient(keras.ops.round(z * 4) / 4))
    masked = keras.Sequential([keras.Input((28, 28, 1)), quantise, mlp])
    x, y = x_test[:100], y_test[:100]
    correct = np.argmax(keras.ops.convert_to_numpy(masked(x)), axis=1) == y
    apgd = attacks.apgd(masked, x, y, eps=0.3, clip_min=0.0, clip_max=1.0)
    square = attacks.square(masked, x, y, eps=0.3, n_queries=300, clip_min=0.0, clip_max=1.0)
    apgd_robust = (correct & ~apgd.success).mean()
    square_robust = (correct & ~square.success).mean()
    assert apgd_robust > 0.5 and square_robust < apgd_robust - 0.3, (apgd_robust,
                                                                      square_robust)


@pytest.mark.parametrize("call,match", [
    (lambda m, x, y: attacks.square(m, x, y, eps=0.0), "eps"),
    (lambda m, x, y: attacks.square(m, x, y, eps=float("nan")), "eps"),
    (lambda m, x, y: attacks.square(m, x, y, eps=0.1, n_queries=0), "n_queries"),
    (lambda m, x, y: attacks.square(m, x, y, eps=0.1, p_init=1.5), "p_init"),
    (lambda m, x, y: attacks.square(m, x, y, eps=0.1, p_init=0.0), "p_init"),
    (lambda m, x, y: attacks.square(m, x, y, eps=0.1, norm="l1"), "norm"),
    (lambda m, x, y: attacks.square(m, x.reshape(len(x), -1), y, eps=0.1), "images"),
])
def test_square_refuses_bad_input_by_name(call, match):
    net, x, y, _ = _linear_images(n=4)
    if match == "images":
        net = keras.Sequential([keras.Input((36,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=match):
        call(net, x, y)
