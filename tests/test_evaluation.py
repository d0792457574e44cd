"""rho_adv (eq. 20), evaluate_robustness and RobustnessCallback in a Keras fit."""

import csv

import keras
import numpy as np
import pytest
from conftest import linear_model, small_mlp, tensorflow_only

from keras_margin import MarginModel, attacks, evaluate_robustness, rho_adv
from keras_margin.callbacks import RobustnessCallback


def test_rho_adv_is_eq_20_on_a_linear_model():
    rng = np.random.default_rng(7)
    k, d, n = 4, 5, 30
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    x = rng.normal(size=(n, d)).astype("float32")
    f = x @ w.T + b
    y = f.argmax(axis=1)
    y[:5] = (y[:5] + 1) % k  # five misclassified points are left out of eq. (20)
    report = evaluate_robustness(linear_model(w, b), x, y, step_clip=None, batch_size=7)
    distance = np.array([min(abs(f[i, y[i]] - f[i, j]) / np.linalg.norm(w[y[i]] - w[j])
                             for j in range(k) if j != y[i]) for i in range(n)]) * 1.02
    expected = np.mean(distance[5:] / np.linalg.norm(x[5:], axis=1))
    assert report.to_dict()["rho_adv"] == pytest.approx(expected, rel=1e-4)
    assert report.to_dict()["error"] == pytest.approx(5 / 30)
    assert report.to_dict()["deepfool_success_rate"] == 1.0
    np.testing.assert_array_equal(report.to_dict()["distances"][:5], 0.0)
    assert report.to_dict()["distances"].shape == (n,) and report.to_dict()["n"] == n


def test_rho_adv_without_correct_points_is_nan():
    assert np.isnan(rho_adv(np.ones((2, 3)), np.ones((2, 3)), [False, False]))


def test_fgsm_error_counts_all_points():
    w, b = np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2)
    x = np.array([[1.0, 0.0], [0.2, 0.0], [0.0, 1.0]], "float32")
    # FGSM with eps 0.15 flips only the second point (margin 0.2 < 2 * 0.15).
    report = evaluate_robustness(linear_model(w, b), x, [0, 0, 0], fgsm_eps=0.15)
    assert report.to_dict()["error"] == pytest.approx(1 / 3)
    assert report.to_dict()["fgsm_error"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_callback_numbers_land_in_history_csv_and_progress_bar(tmp_path, capsys):
    rng = np.random.default_rng(8)
    x = rng.normal(size=(96, 6)).astype("float32")
    y = rng.integers(0, 4, 96)
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam", metrics=["accuracy"])
    log = tmp_path / "history.csv"
    callback = RobustnessCallback(x, y, every=2, fgsm_eps=0.1, max_samples=40, max_iter=10)
    history = model.fit(x, y, epochs=4, batch_size=32, verbose=2,
                        callbacks=[callback, keras.callbacks.CSVLogger(str(log))])
    # The first epoch of the fit, then every 2nd: epochs 1, 2 and 4 (0, 1 and 3 from 0).
    rho = history.history["val_rho_adv"]
    assert callback.history["epoch"] == [0, 1, 3] and len(rho) == 3
    assert all(r > 0 for r in rho) and callback.history["val_rho_adv"] == rho
    assert len(callback.x_val) == 40
    assert callback.last_report.rho_adv == pytest.approx(rho[-1])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[3]["val_rho_adv"]) == pytest.approx(rho[-1])
    assert rows[2]["val_rho_adv"] == "NA"  # not evaluated: no number, the column stays
    assert "val_fgsm_error" in rows[0] and "val_deepfool_success" in rows[0]
    lines = [line for line in capsys.readouterr().out.splitlines() if "loss:" in line]
    assert len(lines) == 4 and "val_rho_adv:" in lines[3]
    assert "val_rho_adv" not in lines[2] and "nan" not in lines[2]


@pytest.mark.parametrize("trainer", ["plain", "margin"])
@pytest.mark.parametrize("verbose", ["default", "auto", 0, 1, 2])
def test_callback_works_in_fit_as_users_call_it(trainer, verbose):
    # fit's default verbose is "auto"; Keras hands callbacks the raw value (issue 23: it
    # crashed at the end of the first epoch, naming an argument the user never passed).
    rng = np.random.default_rng(10)
    x, y = rng.normal(size=(48, 6)).astype("float32"), rng.integers(0, 4, 48)
    if trainer == "plain":
        model = small_mlp()
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:
        model = MarginModel(small_mlp(), C=0.1)
        model.compile(optimizer="adam")
    kwargs = {} if verbose == "default" else {"verbose": verbose}
    callback = RobustnessCallback(x, y, max_samples=16, max_iter=5)
    history = model.fit(x, y, epochs=1, batch_size=16, callbacks=[callback], **kwargs)
    assert history.history["val_rho_adv"][0] > 0
    assert history.history["val_deepfool_success"][0] == pytest.approx(
        callback.last_report.deepfool_success_rate)


def test_the_readme_callback_example_runs_as_written(tmp_path, monkeypatch):
    # The README's code, cut from the README itself, on small stand-in data.
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", readme, re.S)
                if block.startswith("model.fit(x, y, validation_data=(x_val, y_val), "
                                    "callbacks=["))
    rng = np.random.default_rng(11)
    x, y = rng.normal(size=(40, 6)).astype("float32"), rng.integers(0, 4, 40)
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam", metrics=["accuracy"])
    monkeypatch.chdir(tmp_path)
    namespace = {"model": model, "x": x, "y": y, "x_val": x[:20], "y_val": y[:20],
                 "keras": keras, "attacks": attacks, "RobustnessCallback": RobustnessCallback}
    exec(compile(code, "README.md", "exec"), namespace)
    with open(tmp_path / "history.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["val_rho_adv"]) > 0 and float(row["val_rho_min"]) > 0
    assert "val_robust_accuracy_linf_0.1" in row


@tensorflow_only
def test_callback_numbers_reach_tensorboard(tmp_path):
    import glob

    import tensorflow as tf

    rng = np.random.default_rng(9)
    x, y = rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 4, 64)
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam")
    logdir = str(tmp_path / "tb")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[RobustnessCallback(x, y, max_samples=20, max_iter=5),
                         keras.callbacks.TensorBoard(logdir)])
    tags = {value.tag for path in glob.glob(f"{logdir}/**/events.out.tfevents.*",
                                            recursive=True)
            for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value}
    # Keras writes val_* logs to the validation run as epoch_*.
    assert {"epoch_rho_adv", "epoch_fgsm_error", "epoch_margin_sensitivity"} <= tags, tags


def _linear_problem(k=5, d=8, n=60, seed=12):
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=(k, d)), rng.normal(size=k)
    x = rng.uniform(0.2, 0.8, size=(n, d)).astype("float32")
    f = x @ w.T + b
    return w, b, x, f, f.argmax(axis=1)


def _distances(w, f, y, dual):
    return np.array([min(abs(fi[yi] - fi[j]) / dual(w[yi] - w[j]) for j in range(len(w))
                         if j != yi) for fi, yi in zip(f, y)])


@pytest.mark.slow
def test_stronger_measures_against_closed_forms_on_a_linear_model():
    """rho_min is the exact minimal relative l2 distance (FMN reaches it where DeepFool's
    overshoot does not), robust accuracy under l_inf budgets is the exact share of points whose
    l_inf distance exceeds the budget, and a healthy model raises no flag."""
    w, b, x, f, y = _linear_problem()
    l2 = _distances(w, f, y, np.linalg.norm)
    linf = _distances(w, f, y, lambda v: np.abs(v).sum())
    budgets = [float(e) for e in np.percentile(linf, [25, 60])]
    report = evaluate_robustness(linear_model(w, b), x, y, attacks=["fmn", "fmn_linf", "ddn"],
                                 linf_eps=budgets, step_clip=None)
    relative = l2 / np.linalg.norm(x, axis=1)
    assert report.to_dict()["rho_adv"] == pytest.approx(1.02 * relative.mean(), rel=1e-4)
    # Per sample: never below the minimum; at it (FMN) where the runner-up logit's boundary is
    # the nearest, else at most DeepFool's 1.02 x the minimum.
    found = report.to_dict()["distances_min"]
    assert np.all(found >= relative * (1 - 1e-5)) and np.all(found <= 1.02 * relative * 1.0001)
    nearest = np.array([np.argmin([abs(fi[yi] - fi[j]) / np.linalg.norm(w[yi] - w[j])
                                   if j != yi else np.inf for j in range(len(w))])
                        for fi, yi in zip(f, y)]) == np.argsort(-f, axis=1)[:, 1]
    np.testing.assert_allclose(found[nearest], relative[nearest], rtol=0.01)
    flat = report.to_dict()
    assert flat["rho_min"] == pytest.approx(found.mean()) and flat["rho_min"] < flat["rho_adv"]
    assert flat["unfooled"] == 0.0 and flat["fmn_l2_success_rate"] == 1.0
    assert flat["fmn_linf_success_rate"] == 1.0
    assert flat["fmn_linf_median"] >= np.median(linf) * (1 - 1e-5)  # never below the minimum
    for eps in budgets:
        assert flat[f"robust_accuracy_linf_{eps:g}"] == pytest.approx((linf > eps).mean())
    assert flat["flags"] == []


def test_a_model_gradients_cannot_attack_is_flagged_not_called_robust():
    """A constant classifier: DeepFool 'succeeds' nowhere, gradients are zero, and 100 % of the
    points survive half the input range; today's numbers would read as perfect robustness."""
    flat = keras.Sequential([keras.Input((5,)), keras.layers.Dense(
        3, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([2, 0, 0]))])
    x = np.random.default_rng(1).uniform(size=(20, 5)).astype("float32")
    with pytest.warns(UserWarning) as warned:
        report = evaluate_robustness(flat, x, np.zeros(20, int), clip_min=0.0, clip_max=1.0,
                                     linf_eps=[0.5], apgd=attacks.APGD(steps=5))
    expected = {"zero_gradients", "deepfool_failures", "robust_at_large_linf_budget"}
    assert expected <= set(report.to_dict()["flags"])
    assert all(any(f"[{flag}]" in str(w.message) for w in warned) for flag in expected)
    assert np.isnan(report.to_dict()["rho_adv"])


def _report(**fields):
    from keras_margin import RobustnessReport

    base = {"n": 2, "error": 0.0, "fgsm_eps": 0.2, "fgsm_error": 0.5, "rho_adv": 0.1,
            "deepfool_success_rate": 1.0, "distances": np.zeros(2)}
    return RobustnessReport(**{**base, **fields})


def test_deepfool_far_above_the_minimum_norm_is_flagged_as_masking():
    from keras_margin.attacks import AttackResult
    from keras_margin.evaluation import check_gradient_masking, deepfool_to_minimum_ratio

    def result(scale):
        return AttackResult(np.full((10, 4), scale, "float32"), np.ones(10, bool),
                            np.ones(10, np.int32), np.zeros(10, bool))

    norms = {"deepfool": "l2", "fmn_l2": "l2"}
    for ratio, flagged in ((1.2, False), (3.0, True)):
        measured = deepfool_to_minimum_ratio({"deepfool": result(ratio),
                                              "fmn_l2": result(1.0)}, norms)
        assert measured == pytest.approx(ratio)
        flags = check_gradient_masking(_report(deepfool_to_minimum_ratio=measured))
        assert [flag for flag, _ in flags] == (["gradient_masking"] if flagged else [])


def test_robust_accuracy_that_rises_with_the_budget_is_flagged():
    from keras_margin.evaluation import check_monotone

    flags = check_monotone(_report(robust_accuracy={"linf": {0.1: 0.5, 0.2: 0.7}}))
    assert [flag for flag, _ in flags] == ["not_monotone_linf"]
    assert "rises with the linf budget" in flags[0][1]
    assert check_monotone(_report(robust_accuracy={"linf": {0.1: 0.7, 0.2: 0.5}})) == []


@pytest.mark.slow
@pytest.mark.parametrize("order", ["csv_first", "callback_first"])
def test_callback_order_does_not_matter_for_the_trainers(tmp_path, order):
    x, y = _data_for_callback()
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam")
    log = tmp_path / "history.csv"
    robust = RobustnessCallback(x, y, max_samples=20, max_iter=5,
                                attacks=[attacks.FMN(steps=5)], linf_eps=[0.1],
                                apgd=attacks.APGD(steps=5))
    csv_logger = keras.callbacks.CSVLogger(str(log))
    callbacks = [csv_logger, robust] if order == "csv_first" else [robust, csv_logger]
    history = model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=callbacks)
    with open(log) as f:
        rows = list(csv.DictReader(f))
    for key in ("val_rho_adv", "val_rho_fmn_l2", "val_rho_min", "val_robust_accuracy_linf_0.1"):
        assert key in rows[0], (key, sorted(rows[0]))
        assert float(rows[1][key]) == pytest.approx(history.history[key][1])


def _data_for_callback():
    rng = np.random.default_rng(8)
    return rng.normal(size=(64, 6)).astype("float32"), rng.integers(0, 4, 64)


def test_fgsm_far_weaker_than_apgd_is_flagged():
    """FGSM adversarial training's signature (measured on the full-data MLP AT run: FGSM error
    7.6 % at 0.2, APGD fools 96.6 % at 0.1): the FGSM number cannot be trusted."""
    from keras_margin.evaluation import EvaluationPlan, check_fgsm_unreliable

    for robust, flagged in ((0.034, True), (0.85, False)):
        report = _report(robust_accuracy={"linf": {0.1: robust}}, fgsm_error=0.076)
        flags = check_fgsm_unreliable(report, EvaluationPlan(fgsm_eps=0.2, linf_eps=[0.1]))
        assert [flag for flag, _ in flags] == (["fgsm_unreliable"] if flagged else [])


def test_reading_the_report_as_a_dict_is_deprecated_but_works():
    from keras_margin.robustness_report import RobustnessReport

    report = RobustnessReport(n=2, error=0.5, fgsm_eps=None, fgsm_error=float("nan"),
                              rho_adv=0.1, deepfool_success_rate=1.0,
                              distances=np.array([0.1, 0.0]))
    for use in (lambda: report["rho_adv"], lambda: report.get("error"),
                lambda: "n" in report, lambda: dict(report.items()), lambda: list(report),
                lambda: list(report.keys())):
        with pytest.warns(DeprecationWarning, match="report.to_dict"):
            use()
    with pytest.warns(DeprecationWarning):
        assert report["rho_adv"] == report.rho_adv == report.to_dict()["rho_adv"]
