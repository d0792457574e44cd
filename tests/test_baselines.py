"""Adversarial training and VAT: their adversaries against independent computations."""

import keras
import numpy as np
import pytest
from conftest import Batches, linear_model, refusal, small_mlp, to_numpy

from keras_margin import AdversarialTrainingModel, MarginModel, VATModel, attacks


def _batch(n=32, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n)


def test_at_example_equals_attacks_fgsm():
    x, y = _batch()
    x = np.clip(x, -1.0, 1.0)
    base = small_mlp()
    model = AdversarialTrainingModel(base, eps=0.2, clip=(-1.0, 1.0))
    np.testing.assert_allclose(model.adversarial_examples(x, y),
                               attacks.fgsm(base, x, y, eps=0.2, clip_min=-1.0, clip_max=1.0),
                               atol=1e-6)


def test_at_l2_step_has_norm_eps():
    x, y = _batch()
    model = AdversarialTrainingModel(small_mlp(), eps=0.3, norm="l2")
    step = to_numpy(model.adversarial_examples(x, y)) - x
    np.testing.assert_allclose(np.linalg.norm(step, axis=1), 0.3, rtol=1e-5)


def test_vat_direction_is_the_top_eigenvector_of_the_kl_hessian(float64):
    """For f = Wx + b the Hessian of KL(p(x) || p(x + r)) at r = 0 is W^T (diag p - p p^T) W."""
    keras.config.set_dtype_policy("float64")
    rng = np.random.default_rng(3)
    k, d = 3, 5
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    x = rng.normal(size=(6, d))
    model = VATModel(linear_model(w, b, dtype="float64"), eps=1.0, xi=1e-4,
                     power_iterations=40, seed=1)
    logits = keras.ops.convert_to_tensor(x @ w.T + b)
    r = to_numpy(model.virtual_adversarial_perturbation(keras.ops.convert_to_tensor(x), logits))
    for ri, fi in zip(r, to_numpy(logits)):
        p = np.exp(fi - fi.max())
        p /= p.sum()
        values, vectors = np.linalg.eigh(w.T @ (np.diag(p) - np.outer(p, p)) @ w)
        assert values[-1] > 1.5 * values[-2]  # a clear top direction
        assert abs(ri @ vectors[:, -1]) == pytest.approx(1.0, abs=1e-3)
        assert np.linalg.norm(ri) == pytest.approx(1.0, rel=1e-4)


def test_vat_exact_hessian_vector_product_is_the_closed_form_in_float32():
    """hvp="exact" gives H d itself; the paper's finite difference (xi = 1e-6) in float32 does
    not (the reason the option exists)."""
    rng = np.random.default_rng(4)
    k, d = 10, 50
    w, b = rng.normal(size=(k, d)) * 0.3, rng.normal(size=k)
    x = rng.normal(size=(8, d)).astype("float32")
    direction = rng.normal(size=(8, d)).astype("float32")
    logits = x @ w.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    truth = np.stack([w.T @ (np.diag(pi) - np.outer(pi, pi)) @ w @ di
                      for pi, di in zip(p, direction)])
    cosines = {}
    for hvp in ("exact", "finite_difference"):
        model = VATModel(linear_model(w, b), hvp=hvp)
        log_p = keras.ops.log_softmax(keras.ops.convert_to_tensor(logits, "float32"))
        hd = to_numpy(model._hessian_vector(keras.ops.convert_to_tensor(x), log_p,
                                            keras.ops.convert_to_tensor(direction),
                                            training=False))
        cosines[hvp] = np.sum(hd * truth, 1) / np.linalg.norm(hd, axis=1) \
            / np.linalg.norm(truth, axis=1)
    np.testing.assert_allclose(cosines["exact"], 1.0, atol=1e-5)
    assert np.median(cosines["finite_difference"]) < 0.99


@pytest.mark.parametrize("make,extra", [
    (lambda b: AdversarialTrainingModel(b, eps=0.2), "adversarial_loss"),
    (lambda b: VATModel(b, eps=2.0, seed=0), "vat_loss"),
    (lambda b: MarginModel(b, C=0.1), "margin_sensitivity"),
])
def test_a_step_decreases_its_own_loss_and_reports_its_term(make, extra):
    x, y = _batch()
    model = make(small_mlp(hidden=16))
    model.compile(optimizer=keras.optimizers.SGD(0.05), metrics=["accuracy"])
    before = model.evaluate(x, y, return_dict=True, verbose=0)
    model.train_on_batch(x, y)
    after = model.evaluate(x, y, return_dict=True, verbose=0)
    assert extra in before and before[extra] > 0
    assert after["loss"] < before["loss"]


@pytest.mark.parametrize("make", [
    lambda b: AdversarialTrainingModel(b, eps=0.1, clean_weight=0.3, norm="l2"),
    lambda b: VATModel(b, eps=1.5, xi=1e-5, power_iterations=2, seed=3),
])
def test_trainers_save_and_load(make, tmp_path):
    x, y = _batch()
    model = make(small_mlp())
    model.compile(optimizer="adam")
    model.fit(x, y, epochs=1, verbose=0)
    path = str(tmp_path / "trainer.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is type(model)
    def hyper(m):
        return {key: value for key, value in m.get_config().items() if key != "base"}

    assert hyper(loaded) == hyper(model)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)
    assert np.isfinite(loaded.fit(x, y, epochs=1, verbose=0).history["loss"][0])


@pytest.mark.parametrize("kwargs,match", [
    ({"eps": -0.1}, "eps"), ({"eps": 0.0}, "eps"), ({"clean_weight": 1.5}, "clean_weight"),
    ({"norm": "l1"}, "norm"), ({"clip": (1.0, 0.0)}, "clip"), ({"clip": (np.nan, 1.0)}, "clip"),
    ({"clip": (0.0, 1.0, 2.0)}, "clip"), ({"clip": (0.0,)}, "clip"), ({"clip": "0,1"}, "clip"),
    ({"clip": (0.0, np.inf)}, "clip"), ({"clean_weight": 0.5, "alpha": 0.5}, "clean_weight"),
])
def test_at_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdversarialTrainingModel(small_mlp(), **kwargs)


def test_at_refuses_inputs_outside_its_clip_box_before_training():
    x, y = _batch()
    base = small_mlp()
    before = [to_numpy(w).copy() for w in base.weights]
    model = AdversarialTrainingModel(base, clip=(0.0, 1.0))
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="outside the input box"):
        model.fit(x, y, epochs=1, verbose=0)  # normal samples: many outside [0, 1]
    for old, new in zip(before, base.weights):
        np.testing.assert_array_equal(old, to_numpy(new))


@pytest.mark.parametrize("jit", [False, True])
def test_at_refuses_a_pipelines_batch_outside_its_clip_box(jit):
    # Issue 23: through a PyDataset (or tf.data) the box went unchecked, and the "adversarial"
    # examples were the projection of x into the box: 0.8 away from x with eps 0.1.
    if jit and keras.backend.backend() == "torch":
        pytest.skip("PyTorch steps run eagerly and raise")
    x, y = _batch(n=48)
    inside = np.clip(x, 0.0, 1.0)
    bad = inside.copy()
    bad[16:32] = x[16:32] + 0.8  # the second batch only
    model = AdversarialTrainingModel(small_mlp(), eps=0.1, clip=(0.0, 1.0))
    model.compile(optimizer="adam", jit_compile=jit)
    model.fit(Batches(inside, y, 16), epochs=1, verbose=0)  # inside the box: trains
    before = [to_numpy(w).copy() for w in model.weights]
    with refusal(model):
        history = model.fit(Batches(bad[16:32], y[16:32], 16), epochs=1, verbose=0)
    backend = keras.backend.backend()
    if backend == "jax" or (backend == "tensorflow" and jit):  # compiled: skipped, counted
        assert history.history["skipped_batches"] == [1.0]
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, to_numpy(new))
    with pytest.raises(ValueError, match="outside the input box"):
        model.adversarial_examples(bad, y)
    x_adv = to_numpy(model.adversarial_examples(inside, y))
    assert np.abs(x_adv - inside).max() <= 0.1 + 1e-6


def test_at_alpha_is_the_deprecated_name_of_clean_weight(tmp_path):
    with pytest.warns(DeprecationWarning, match="clean_weight"):
        old = AdversarialTrainingModel(small_mlp(), alpha=0.3)
    assert old.clean_weight == 0.3 and old.alpha == 0.3 and old.data_weight == 0.3
    config = old.get_config()
    config["alpha"] = config.pop("clean_weight")  # a .keras file saved before the rename
    assert AdversarialTrainingModel.from_config(config).clean_weight == 0.3


def test_vat_bad_arguments():
    for name in ("xi", "eps"):
        with pytest.raises(ValueError, match=name):
            VATModel(small_mlp(), **{name: 0.0})
    with pytest.raises(ValueError, match="power_iterations"):
        VATModel(small_mlp(), power_iterations=-1)
    with pytest.raises(ValueError, match="power_iterations"):
        VATModel(small_mlp(), power_iterations=1.5)
    with pytest.raises(ValueError, match="hvp"):
        VATModel(small_mlp(), hvp="taylor")
    with pytest.raises(ValueError, match="xi"):
        VATModel(small_mlp(), xi=float("nan"))
