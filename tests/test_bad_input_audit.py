"""The bad-input audit's cases (issue 16), each a clear error naming the argument or a flag with
a warning, before any training or number. Runs on every backend CI runs."""

import json
import os

import keras
import numpy as np
import pytest
from conftest import BACKEND, Batches, small_mlp, to_numpy

from keras_margin import (
    MarginModel,
    VATModel,
    architectures,
    attacks,
    datasets,
    evaluate_robustness,
    margin_sensitivity,
    rho_adv,
)
from keras_margin.callbacks import RobustnessCallback


def _data(n=64, d=6, k=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype("float32"), rng.integers(0, k, n)


@pytest.mark.parametrize("call,match", [
    (lambda x, y, m: evaluate_robustness(m, x, y, fgsm_eps=-0.2), "fgsm_eps"),
    (lambda x, y, m: evaluate_robustness(m, x, y, fgsm_eps=float("nan")), "fgsm_eps"),
    (lambda x, y, m: evaluate_robustness(m, x, y, linf_eps="0.1"), "linf_eps"),
    (lambda x, y, m: evaluate_robustness(m, x, y, verbose=3), "verbose"),
    (lambda x, y, m: evaluate_robustness(m, x, y, 0.2), "plan"),
    (lambda x, y, m: evaluate_robustness(m, x, y, samples=0), "samples"),
    (lambda x, y, m: evaluate_robustness(m, x, y, clip_min=1.0, clip_max=0.0), "reversed"),
    (lambda x, y, m: RobustnessCallback(x, y, fgsm_eps=-0.2), "fgsm_eps"),
    (lambda x, y, m: RobustnessCallback(x, y, max_iterr=3), "max_iterr"),
    (lambda x, y, m: margin_sensitivity(m, x, y, rival="logit", candidates=2), "candidates"),
    (lambda x, y, m: MarginModel(m, rival="logit", candidates=2), "candidates"),
    (lambda x, y, m: margin_sensitivity(m, np.where(x > 1, np.nan, x), y), "NaN"),
    (lambda x, y, m: margin_sensitivity(m, x, y, squared="yes"), "squared"),
    (lambda x, y, m: VATModel(m, xi=0), "xi"),
    (lambda x, y, m: attacks.FMN(max_stepsize=0), "max_stepsize"),
    (lambda x, y, m: attacks.FMN(min_stepsize=2.0), "min_stepsize"),
    (lambda x, y, m: attacks.DeepFool(step_clip=0), "step_clip"),
    (lambda x, y, m: attacks.deepfool(m, x, y, jit_compile="yes"), "jit_compile"),
    (lambda x, y, m: attacks.deepfool(m, x, y, batch_size=0), "batch_size"),
    (lambda x, y, m: attacks.fgsm(m, x, y, eps=0), "eps"),
    (lambda x, y, m: attacks.fgsm(m, x, y, clip=(0.0, 1.0, 2.0)), "clip"),
    (lambda x, y, m: MarginModel(m, C="0.1"), "C"),
    (lambda x, y, m: MarginModel(m, C=True), "C"),
    (lambda x, y, m: architectures.mlp(hidden=(0,)), "hidden"),
    (lambda x, y, m: architectures.mlp(hidden="1000"), "hidden"),
    (lambda x, y, m: architectures.mlp(dropout=1.5), "dropout"),
    (lambda x, y, m: architectures.lenet5(dropout=-0.1), "dropout"),
    (lambda x, y, m: architectures.nin(num_classes=0), "num_classes"),
    (lambda x, y, m: datasets.GlobalContrastNormalization(scale=0), "scale"),
    (lambda x, y, m: datasets.ZCAWhitening(eps=-1), "eps"),
    (lambda x, y, m: datasets.load_split("mnist", "test", pixel_scale=0), "pixel_scale"),
    (lambda x, y, m: rho_adv(x, x[:3], np.ones(len(x), bool)), "shape"),
    (lambda x, y, m: rho_adv(x, np.full_like(x, np.nan), np.ones(len(x), bool)), "NaN"),
])
def test_arguments_that_used_to_become_numbers_are_refused(call, match):
    x, y = _data()
    with pytest.raises(ValueError, match=match):
        call(x, y, small_mlp())


def test_a_keras_loss_for_one_hot_labels_is_refused_at_construction():
    with pytest.raises(ValueError, match="one-hot labels"):
        MarginModel(small_mlp(), loss=keras.losses.CategoricalCrossentropy(from_logits=True))


def test_a_loss_reduction_is_honoured_or_refused():
    x, y = _data()
    summed = MarginModel(small_mlp(), C=0.0, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="sum"))
    mean = MarginModel(summed.base, C=0.0, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    total_sum = float(to_numpy(summed.objective(x, y, None, training=False).total))
    total_mean = float(to_numpy(mean.objective(x, y, None, training=False).total))
    assert total_sum == pytest.approx(total_mean * len(x), rel=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        MarginModel(small_mlp(), loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"))


@pytest.mark.parametrize("fit_args,match", [
    (lambda x, y: (x, None), "needs the labels y"),
    (lambda x, y: ([x, x], y), "one input tensor"),
])
def test_fit_arguments_get_a_clear_error(fit_args, match):
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match=match):
        model.fit(*fit_args(*_data()), epochs=1, verbose=0)


def test_one_logit_accuracy_is_measured_on_logits():
    """metrics=["accuracy"] on a one-logit model once thresholded at 0.5 (0.86 where the
    truth was 0.94); it is logit > 0."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    base = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    base.layers[0].set_weights([np.array([[1.0], [0.0], [0.0]], "float32"),
                                np.array([0.3], "float32")])  # logit in (0, 0.5): class 1
    model = MarginModel(base, C=0.0)
    model.compile(optimizer="adam", metrics=["accuracy"])
    truth = float(((x[:, 0] + 0.3 > 0) == (y > 0)).mean())
    assert model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"] == pytest.approx(truth)


@pytest.mark.slow
def test_a_nan_batch_in_evaluate_counts_in_no_number_and_warns():
    x, y = _data(n=64)
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam", metrics=["accuracy"], jit_compile=BACKEND != "torch")
    clean = model.evaluate(x[:32], y[:32], verbose=0, return_dict=True)
    bad = x.copy()
    bad[40] = np.nan
    if BACKEND == "torch":
        return  # PyTorch steps raise on such a batch (tested in test_margin_model)
    with pytest.warns(UserWarning, match="1 batch.*left out of every number"):
        mixed = model.evaluate(Batches(bad, y, 32), verbose=0, return_dict=True)
    assert mixed["accuracy"] == pytest.approx(clean["accuracy"])
    assert mixed["loss"] == pytest.approx(clean["loss"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(BACKEND == "torch", reason="PyTorch steps raise on such a batch")
def test_a_nan_batch_in_validation_data_is_named_as_validation():
    x, y = _data(n=64)
    bad = x.copy()
    bad[40] = np.nan
    model = MarginModel(small_mlp(), C=0.1)
    model.compile(optimizer="adam", jit_compile=True)
    with pytest.warns(UserWarning, match="validation batch.*left out of the val_"):
        history = model.fit(x, y, validation_data=Batches(bad, y, 32), epochs=1, verbose=0)
    assert history.history["val_skipped_batches"] == [1.0]
    assert history.history["skipped_batches"] == [0.0]


def test_fgsm_that_a_zero_loss_gradient_blinds_is_flagged():
    """Where the loss gradient is exactly 0 (a saturated softmax: logits scaled by 1e4 on
    TensorFlow; here a model whose logits ignore x, the same on every backend), FGSM moves
    nothing and fools no correct point: its error is unmeasured there, not robust."""
    from keras_margin.evaluation import check_fgsm_blind

    x, _ = _data(n=40)
    flat = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
        4, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(
            [0.0, 30.0, 0.0, 0.0]))])
    y = np.ones(40, int)  # every point correct, no gradient anywhere
    with pytest.warns(UserWarning, match="fgsm_zero_gradients"):
        report = evaluate_robustness(flat, x, y, max_iter=3)
    assert "fgsm_zero_gradients" in report.flags and report.fgsm_error == 0.0
    correct = np.ones(100, bool)
    assert check_fgsm_blind(np.arange(100) < 1, correct) == []  # 1 %: not flagged
    assert check_fgsm_blind(np.arange(100) < 2, correct)[0][0] == "fgsm_zero_gradients"


def test_resume_refuses_an_empty_state_file_by_name(tiny_mnist, tmp_path):
    import dataclasses

    from keras_margin.experiments import get_row, runner

    row = dataclasses.replace(get_row("mlp-l2"), name="tiny", hidden=(8,), epochs=2,
                              validation=40, batch_size=50,
                              deepfool={"max_iter": 3, "step_clip": 0.5, "overshoot": 0.02})
    out = str(tmp_path / "runs")
    assert runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0, stop_after=1) is None
    folder = runner.run_dir(out, row, 0)
    with open(os.path.join(folder, "state.json"), "w") as f:
        json.dump({}, f)
    with pytest.raises(ValueError, match="state.json.*epoch"):
        runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)


def test_a_finished_run_on_read_only_media_is_skipped(tiny_mnist, tmp_path):
    import dataclasses
    import stat

    from keras_margin.experiments import get_row, runner

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    row = dataclasses.replace(get_row("mlp-l2"), name="tiny", hidden=(8,), epochs=1,
                              validation=40, batch_size=50,
                              deepfool={"max_iter": 3, "step_clip": 0.5, "overshoot": 0.02})
    out = str(tmp_path / "runs")
    first = runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    folder = runner.run_dir(out, row, 0)
    os.remove(os.path.join(folder, ".lock"))
    os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0) == first
    finally:
        os.chmod(folder, stat.S_IRWXU)


def test_a_truncated_model_file_is_named_by_evaluate(tiny_mnist, tmp_path, capsys):
    import dataclasses

    from keras_margin.experiments import cli, get_row, runner

    row = dataclasses.replace(get_row("mlp-baseline"), name="tiny", hidden=(8,), epochs=1,
                              validation=40, batch_size=50,
                              deepfool={"max_iter": 3, "step_clip": 0.5, "overshoot": 0.02})
    out = str(tmp_path / "runs")
    runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    path = os.path.join(runner.run_dir(out, row, 0), "model.keras")
    with open(path, "r+b") as f:
        f.truncate(100)
    assert cli.main(["evaluate", out, "--data-dir", tiny_mnist, "--n", "10", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "model.keras" in err and "truncated or corrupt" in err


@pytest.mark.parametrize("argv,match", [
    (["evaluate", "RUNS", "--tag", "../x"], "--tag"),
    (["evaluate", "RUNS", "--box", "1,0"], "box"),
    (["evaluate", "RUNS", "--linf-eps", "-0.1"], "linf_eps"),
    (["sweep-c", "--C", "nan"], "C"),
    (["sweep-c", "--C", "0.1,x"], "--C"),
])
def test_the_command_line_refuses_bad_values(argv, match, tmp_path, capsys):
    from keras_margin.experiments import cli

    argv = [str(tmp_path) if a == "RUNS" else a for a in argv]
    if argv[0] == "sweep-c":
        argv += ["--out", str(tmp_path), "--data-dir", str(tmp_path)]
    assert cli.main(argv) == 2
    assert match in capsys.readouterr().err
