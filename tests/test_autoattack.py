"""AutoAttack's ensemble: exact on linear models, each attack on what the ones before left,
a per-point record, and Square as the check on masked gradients."""

import json

import keras
import numpy as np
import pytest
from conftest import BACKEND, trained_mnist_mlp

from keras_margin import attacks
from keras_margin.attacks import base


def _linear_images(seed=0, n=80, k=5):
    """A k-class linear model on 6 x 6 images in [0.3, 0.7]: the smallest l_inf perturbation
    that flips a point is min_{j != y} (f_y - f_j) / ||w_y - w_j||_1 (no box binds below 0.3),
    and the l2 one the same with the l2 norm."""
    rng = np.random.default_rng(seed)
    net = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Flatten(),
                            keras.layers.Dense(k)])
    kernel = rng.normal(size=(36, k)).astype("float32")
    net.layers[-1].set_weights([kernel, np.zeros(k, "float32")])
    x = rng.uniform(0.3, 0.7, size=(n, 6, 6, 1)).astype("float32")
    w = kernel.astype(np.float64)
    f = x.reshape(n, -1).astype(np.float64) @ w
    y = f.argmax(1)
    gaps = f[np.arange(n), y][:, None] - f
    diff = w[:, y].T[:, :, None] - w[None]  # (n, 36, k): w_y - w_j
    dist = {}
    for norm, order in (("linf", 1), ("l2", 2)):
        scale = np.linalg.norm(diff, ord=order, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(np.arange(k)[None] == y[:, None], np.inf, gaps / scale)
        dist[norm] = ratio.min(axis=1)
    return net, x, y, dist


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_on_a_linear_model_the_ensemble_fools_exactly_what_lies_within_eps(norm):
    net, x, y, dist = _linear_images()
    eps = float(np.median(dist[norm]))
    result = attacks.autoattack(net, x, y, eps=eps, norm=norm, clip_min=0.0, clip_max=1.0)
    assert isinstance(result, attacks.AutoAttackResult)
    assert not result.success[dist[norm] > eps * (1 + 1e-5)].any()  # nothing beyond reach
    assert result.success[dist[norm] < eps * (1 - 1e-3)].all()  # everything within it
    assert result.robust_accuracy == pytest.approx((dist[norm] > eps).mean(), abs=1.5 / len(x))
    sizes = base.lp_norms(result.perturbation, norm)
    assert (sizes[result.success] <= eps * (1 + 1e-6)).all()
    logits = (x + result.perturbation).reshape(len(x), -1).astype(np.float64) @ np.asarray(
        net.layers[-1].kernel, np.float64)
    assert (base.flip_margins(logits, y)[result.success] > 0).all()  # adversarial in float64


def test_the_record_says_who_fooled_each_point_and_each_attack_saw_only_the_rest():
    net, x, y, dist = _linear_images(seed=2)
    eps = float(np.quantile(dist["linf"], 0.7))
    y = y.copy()
    y[:5] = (y[:5] + 1) % 5  # five points misclassified before any attack
    full = attacks.autoattack(net, x, y, eps=eps, clip_min=0.0, clip_max=1.0)
    assert full.attacks == ("apgd-ce", "apgd-t", "fab-t", "square")
    assert (full.fooled_by[:5] == "clean").all() and full.clean_accuracy == 1 - 5 / len(x)
    assert set(full.fooled_by) <= {"", "clean", *full.attacks}
    assert (full.success == (full.fooled_by != "")).all()
    assert sum(full.counts().values()) + 5 + full.robust.sum() == len(x)
    # APGD-CE alone, on the same points, fools exactly what the ensemble records for it
    # (the same seed and settings; the later attacks see only what it left).
    alone = attacks.apgd(net, x[5:], y[5:], eps=eps, clip_min=0.0, clip_max=1.0)
    assert (alone.success == (full.fooled_by[5:] == "apgd-ce")).all()
    custom = attacks.autoattack(net, x, y, eps=eps, version="custom",
                                attacks=["square", "apgd-ce"], clip_min=0.0, clip_max=1.0)
    assert custom.attacks == ("square", "apgd-ce")
    assert np.isin(custom.fooled_by, ["", "clean", "square", "apgd-ce"]).all()


@pytest.mark.skipif(BACKEND == "torch", reason="the masking layer's zero gradient is backend "
                    "code; TensorFlow and JAX suffice")
def test_square_catches_what_masked_gradients_hide_and_the_record_shows_it():
    # Issue 25: input quantisation with a zero gradient (stop_gradient) gives APGD and FAB
    # nothing to follow; Square, last in the list, fools the points they all missed.
    masked, mlp, x_test, y_test = _masked_and_plain_mlp()
    x, y = x_test[:60], y_test[:60]
    masked_result = attacks.autoattack(masked, x, y, eps=0.3, clip_min=0.0, clip_max=1.0)
    counts = masked_result.counts()
    gradient = counts["apgd-ce"] + counts["apgd-t"] + counts["fab-t"]
    assert counts["square"] > 0.3 * len(x) and counts["square"] > 3 * gradient, counts
    normal = attacks.autoattack(mlp, x, y, eps=0.1, clip_min=0.0, clip_max=1.0)
    assert normal.counts()["square"] == 0, normal.counts()


def test_the_rand_version_is_refused_for_a_model_random_at_inference():
    net, x, y, _ = _linear_images(n=8)
    noisy = lambda z: net(z) + keras.random.normal((keras.ops.shape(z)[0], 5))  # noqa: E731
    with pytest.raises(NotImplementedError, match="EOT"):
        attacks.autoattack(noisy, x, y, eps=0.1, version="rand")


def test_settings_round_trip_through_json():
    attack = attacks.AutoAttack(norm="l2", version="custom", attacks=("apgd-ce", "fab"), seed=3)
    again = base.Attack.from_dict(json.loads(json.dumps(attack.to_dict())))
    assert again == attack and again.names == ("apgd-ce", "fab")
    assert [name for name, _ in attacks.AutoAttack().members()] == [
        "apgd-ce", "apgd-t", "fab-t", "square"]


@pytest.mark.parametrize("call,error,match", [
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=0.0), ValueError, "eps"),
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=float("nan")), ValueError, "eps"),
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=0.1, norm="l1"), ValueError, "norm"),
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=0.1, version="plus"), ValueError,
     "version"),
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=0.1, version="custom"), ValueError,
     "custom"),
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=0.1, version="custom",
                                        attacks=["pgd"]), ValueError, "attacks"),
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=0.1, attacks=["square"]), ValueError,
     "custom"),
    (lambda m, x, y: attacks.autoattack(m, x.reshape(len(x), -1), y, eps=0.1), ValueError,
     "images"),
    (lambda m, x, y: attacks.AutoAttack(n_queries=0)(m, x, y, 0.1), ValueError, "n_queries"),
    (lambda m, x, y: attacks.AutoAttack(steps=0)(m, x, y, 0.1), ValueError, "steps"),
    (lambda m, x, y: attacks.AutoAttack(seed=-1)(m, x, y, 0.1), ValueError, "seed"),
    (lambda m, x, y: attacks.autoattack(m, x, y, eps=0.1, version="custom",
                                        attacks=["square", "square"]), ValueError, "twice"),
])
def test_autoattack_refuses_bad_input_by_name(call, error, match):
    net, x, y, _ = _linear_images(n=4)
    if match == "images":
        net = keras.Sequential([keras.Input((36,)), keras.layers.Dense(5)])
    with pytest.raises(error, match=match):
        call(net, x, y)


def _masked_and_plain_mlp():
    mlp, x_test, y_test = trained_mnist_mlp((128,), epochs=3)
    quantise = keras.layers.Lambda(lambda z: keras.ops.stop_gradient(keras.ops.round(z * 4) / 4))
    return keras.Sequential([keras.Input((28, 28, 1)), quantise, mlp]), mlp, x_test, y_test


@pytest.mark.skipif(BACKEND == "torch", reason="the masking layer's zero gradient is backend "
                    "code; TensorFlow and JAX suffice")
def test_the_evaluation_flags_masking_when_square_fools_what_every_gradient_attack_missed():
    from keras_margin.evaluation import evaluate_robustness
    from keras_margin.robustness_report import RobustnessReport

    masked, mlp, x_test, y_test = _masked_and_plain_mlp()
    x, y = x_test[:50], y_test[:50]
    with pytest.warns(UserWarning, match="square_after_gradients_linf"):
        report = evaluate_robustness(masked, x, y, linf_eps=[0.3], autoattack=True,
                                     clip_min=0.0, clip_max=1.0, fgsm_eps=None)
    counts = report.autoattack["linf"][0.3]
    assert "square_after_gradients_linf" in report.flags
    assert counts["square_only"] > 0.3 * 50, counts  # APGD fools a few from its random starts
    assert counts["square_only"] > counts["apgd"] + counts["fab-t"], counts
    correct = round(50 * (1 - report.error))
    assert counts["apgd"] + counts["fab-t"] + counts["square"] + counts["robust"] == correct
    assert report.robust_accuracy["linf"][0.3] <= report.autoattack_accuracy["linf"][0.3]
    again = RobustnessReport.from_dict(report.to_dict())
    assert again.autoattack == report.autoattack and "AutoAttack accuracy" in str(report)
    plain = evaluate_robustness(mlp, x, y, linf_eps=[0.05], autoattack=True, clip_min=0.0,
                                clip_max=1.0)
    assert not any(f.startswith("square_after") for f in plain.flags), plain.flags
    assert plain.autoattack["linf"][0.05]["square_only"] == 0


def test_the_callback_logs_the_ensembles_accuracy_to_history():
    from keras_margin.callbacks import RobustnessCallback

    net, x, y, _ = _linear_images(n=40)
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = RobustnessCallback(x[:20], y[:20], linf_eps=[0.3], autoattack=True,
                                  clip_min=0.0, clip_max=1.0, verbose=0)
    history = net.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
    assert "val_autoattack_accuracy_linf_0.3" in history.history
    assert callback.last_report.autoattack["linf"][0.3]["robust"] / 20 == pytest.approx(
        history.history["val_autoattack_accuracy_linf_0.3"][0])


def test_the_evaluation_refuses_flat_inputs_for_autoattack():
    from keras_margin.evaluation import EvaluationPlan, evaluate_robustness

    net = keras.Sequential([keras.Input((36,)), keras.layers.Dense(5)])
    x = np.full((4, 36), 0.5, "float32")
    with pytest.raises(ValueError, match="images"):
        evaluate_robustness(net, x, np.zeros(4, int), linf_eps=[0.1], autoattack=True)
    with pytest.raises(ValueError, match="autoattack"):
        EvaluationPlan(autoattack="yes")
    assert EvaluationPlan.from_dict(EvaluationPlan(autoattack=True).to_dict()).autoattack


def test_lp_norms_of_no_points_is_empty():
    # a FAB step where no point is fooled yet measures an empty batch
    assert base.lp_norms(np.zeros((0, 28, 28, 1)), "l2").shape == (0,)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="the reference comparison runs once")
def test_equal_to_the_reference_autoattack_on_the_same_weights():
    # The reference (fra31/auto-attack, PyTorch) installed from its public source, e.g.
    # `pip install --no-deps git+https://github.com/fra31/auto-attack`; skipped without it.
    torch = pytest.importorskip("torch")
    reference = pytest.importorskip("autoattack")
    mlp, x_test, y_test = trained_mnist_mlp((64,), epochs=2)
    kernel0, bias0, kernel1, bias1 = (np.asarray(w) for w in mlp.get_weights())
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 64), torch.nn.ReLU(),
                              torch.nn.Linear(64, 10)).eval()
    with torch.no_grad():
        for layer, kernel, bias in ((net[1], kernel0, bias0), (net[3], kernel1, bias1)):
            layer.weight.copy_(torch.tensor(kernel.T))
            layer.bias.copy_(torch.tensor(bias))
    x, y = x_test[:100], y_test[:100]  # (n, 28, 28, 1): one channel, so NCHW is a reshape
    xt = torch.tensor(x.transpose(0, 3, 1, 2))
    for eps in (0.05, 0.1):
        runner = reference.AutoAttack(net, norm="Linf", eps=eps, version="standard",
                                      verbose=False, device="cpu")
        adv = runner.run_standard_evaluation(xt, torch.tensor(y, dtype=torch.long), bs=100)
        with torch.no_grad():
            theirs = float((net(adv).argmax(1).numpy() == y).mean())
        ours = attacks.autoattack(mlp, x, y, eps=eps, clip_min=0.0, clip_max=1.0)
        assert abs(ours.robust_accuracy - theirs) <= 0.02, (eps, ours.counts(), theirs)
