"""rho_adv (eq. 20), evaluate_robustness and RobustnessCallback in a Keras fit."""

import csv

import keras
import numpy as np
import pytest
from conftest import linear_model, small_mlp

from keras_margin import MarginModel, evaluate_robustness, rho_adv
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
    assert report["rho_adv"] == pytest.approx(expected, rel=1e-4)
    assert report["error"] == pytest.approx(5 / 30)
    assert report["deepfool_success_rate"] == 1.0
    np.testing.assert_array_equal(report["distances"][:5], 0.0)
    assert report["distances"].shape == (n,) and report["n"] == n


def test_rho_adv_without_correct_points_is_nan():
    assert np.isnan(rho_adv(np.ones((2, 3)), np.ones((2, 3)), [False, False]))


def test_fgsm_error_counts_all_points():
    w, b = np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2)
    x = np.array([[1.0, 0.0], [0.2, 0.0], [0.0, 1.0]], "float32")
    # FGSM with eps 0.15 flips only the second point (margin 0.2 < 2 * 0.15).
    report = evaluate_robustness(linear_model(w, b), x, [0, 0, 0], fgsm_eps=0.15)
    assert report["error"] == pytest.approx(1 / 3)
    assert report["fgsm_error"] == pytest.approx(2 / 3)


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
    rho = history.history["val_rho_adv"]
    assert np.isnan(rho[0]) and np.isnan(rho[2])
    assert rho[1] > 0 and rho[3] > 0
    assert len(callback.x_val) == 40
    assert callback.last_report["rho_adv"] == pytest.approx(rho[3])
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert float(rows[3]["val_rho_adv"]) == pytest.approx(rho[3])
    assert "val_fgsm_error" in rows[0] and "val_deepfool_success" in rows[0]
    assert "val_rho_adv:" in capsys.readouterr().out


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
