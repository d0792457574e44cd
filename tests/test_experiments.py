"""The reproduction runner: resume equals an uninterrupted run, no mixing, CLI, report, figures."""

import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

from keras_margin.experiments import (
    TABLES,
    artifacts,
    build_model,
    cli,
    environment,
    get_row,
    runner,
)
from keras_margin.experiments.rows import Row

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")

# The tiny 16-unit models on fake data trip the robustness sanity checks by design (zero
# gradients, DeepFool stopped after a few steps); those checks are tested in test_evaluation.
pytestmark = pytest.mark.filterwarnings("ignore:evaluate_robustness \\[")


def _tiny_row(**changes):
    row = dataclasses.replace(get_row("mlp-l2"), name="tiny-l2", label="tiny l2", hidden=(16,),
                              epochs=3,
                              validation=40, batch_size=50,
                              deepfool={"max_iter": 10, "step_clip": 0.5, "overshoot": 0.02})
    return dataclasses.replace(row, **changes)


def _metrics(out):
    with open(os.path.join(runner.run_dir(out, _tiny_row(), 0), "metrics.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_resumed_run_ends_like_an_uninterrupted_one(tiny_mnist, tmp_path):
    row = _tiny_row()
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    runner.run(row, 0, whole, data_dir=tiny_mnist, verbose=0)
    assert runner.run(row, 0, broken, data_dir=tiny_mnist, verbose=0, stop_after=1) is None
    folder = runner.run_dir(broken, row, 0)
    assert os.path.exists(os.path.join(folder, "checkpoint.keras"))
    assert not os.path.exists(os.path.join(folder, "metrics.json"))
    runner.run(row, 0, broken, data_dir=tiny_mnist, verbose=0)
    assert _metrics(broken) == _metrics(whole)
    with open(os.path.join(folder, "history.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + 3  # header + one row per epoch
    assert not os.path.exists(os.path.join(folder, "checkpoint.keras"))
    for name in ("model.keras", "points.npz", "adversarial.npz", "config.json",
                 "environment.json"):
        assert os.path.exists(os.path.join(folder, name))


@pytest.mark.slow
def test_finished_runs_are_skipped_and_configs_never_mix(tiny_mnist, tmp_path):
    out = str(tmp_path / "runs")
    row = _tiny_row(epochs=1)
    first = runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    model_path = os.path.join(runner.run_dir(out, row, 0), "model.keras")
    stamp = os.path.getmtime(model_path)
    assert runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0) == first
    assert os.path.getmtime(model_path) == stamp
    with pytest.raises(artifacts.ConfigMismatchError, match="row.trainer_kwargs.C"):
        runner.run(_tiny_row(epochs=1, trainer_kwargs={"C": 0.5, "norm": "l2",
                                                       "loss": "hinge"}),
                   0, out, data_dir=tiny_mnist, verbose=0)
    assert os.path.getmtime(model_path) == stamp


@pytest.mark.slow
def test_report_and_figures_from_runs(tiny_mnist, tmp_path):
    out = str(tmp_path / "runs")
    for seed in (0, 1):
        runner.run(_tiny_row(epochs=1), seed, out, data_dir=tiny_mnist, verbose=0)
        runner.run(_tiny_row(name="tiny-baseline", label="tiny baseline", trainer="plain",
                             trainer_kwargs={}, epochs=1, paper=get_row("mlp-baseline").paper),
                   seed, out, data_dir=tiny_mnist, verbose=0)
    assert cli.main(["evaluate", out, "--data-dir", tiny_mnist, "--n", "20", "--steps", "3",
                     "--attacks", "fmn,ddn", "--linf-eps", "0.1,0.3"]) == 0
    assert cli.main(["evaluate", out, "--data-dir", tiny_mnist, "--n", "20", "--box", "0,1",
                     "--tag", "boxed", "--attacks", "", "--linf-eps", ""]) == 0
    assert cli.main(["evaluate", out, "--data-dir", tiny_mnist, "--n", "20", "--box", "0,1",
                     "--steps", "3", "--tag", "autoattack", "--attacks", "", "--linf-eps",
                     "0.3", "--autoattack"]) == 0
    folder = runner.run_dir(out, _tiny_row(epochs=1), 0)
    with open(os.path.join(folder, "robustness-autoattack.json")) as f:
        stored = json.load(f)
    assert stored["settings"]["autoattack"] is True
    counts = {k: v for k, v in stored.items() if k.startswith("autoattack_linf_0.3_")}
    assert set(counts) == {f"autoattack_linf_0.3_{name}" for name in
                           ("apgd", "fab-t", "square", "square_only", "robust")}, stored.keys()
    assert cli.main(["report", out]) == 0
    with open(os.path.join(out, "report.md")) as f:
        text = f.read()
    assert "| tiny l2 |" in text and "±" in text and "0.259" in text
    assert "Stronger attacks" in text and "robust acc. l_inf 0.3" in text
    assert "What the [0, 1] input box changes" in text
    autoattack = text[text.index("AutoAttack (`keras-margin evaluate --autoattack"):]
    line = [r for r in autoattack.splitlines() if r.startswith("| tiny l2 | 0.3 |")]
    assert line, autoattack[:600]
    assert "seeds per row: 2" in text
    section = text[text.index("## Table I — MLP 16, 1 epoch"):]
    ratio = [line for line in section.splitlines() if line.startswith("| tiny l2 |")][0]
    assert ratio.endswith("| x2.27 |")  # the paper's l2 / baseline ratio beside ours
    verdicts = text[text.index("## Verdict"):text.index("## Table I")]
    assert "| tiny l2 | 1 | 2 |" in verdicts and "A cell is reproduced when" in verdicts
    with open(os.path.join(out, "report.csv")) as f:
        assert f.readline().startswith("table,row,label")
    figures = str(tmp_path / "figures")
    assert cli.main(["figures", out, "--out", figures]) == 0
    pngs = ["fig5_mlp_1ep_reference_rho_adv_density.png",
            "fig6_mlp_1ep_reference_adversarial_examples.png",
            "robustness_curve_mlp_1ep_reference_linf.png",
            "training_mlp_1ep_reference_robustness.png"]
    # Each figure comes with the numbers it plots (<png>.json), which a test regenerates.
    assert sorted(os.listdir(figures)) == sorted(pngs + [name + ".json" for name in pngs])
    for name in pngs:
        with open(os.path.join(figures, name + ".json")) as f:
            assert json.load(f), name


def test_cli_refuses_bad_input_clearly(tmp_path, capsys):
    assert cli.main(["reproduce", "table1", "--rows", "mlp-l3", "--out", str(tmp_path)]) == 2
    assert "Unknown row 'mlp-l3'" in capsys.readouterr().err
    assert cli.main(["reproduce", "table1", "--rows", "nin-baseline"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["reproduce", "table1", "--rows", "mlp-baseline", "--data-dir", str(empty),
                     "--out", str(tmp_path / "runs")]) == 2
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err
    assert cli.main(["report", str(empty)]) == 2


def _example(name):
    path = os.path.join(EXAMPLES, name + ".py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _structure(model):
    """Trainer class and hyper-parameters, then every layer's config without its name."""
    base = getattr(model, "base", None)
    hyper = {} if base is None else {k: v for k, v in model.get_config().items()
                                     if k not in ("name", "base")}
    layers = [(type(layer).__name__, {k: v for k, v in layer.get_config().items()
                                      if k != "name"}) for layer in (base or model).layers]
    return type(model).__name__, hyper, layers


@pytest.mark.parametrize("table,row_name", [(t, r) for t in TABLES for r in TABLES[t]])
def test_every_row_has_an_example_that_builds_what_the_runner_builds(table, row_name):
    script = f"{table}_{row_name.replace('-', '_').replace('.', '_')}"
    row: Row = TABLES[table][row_name]
    module = _example(script)
    with open(module.__file__) as f:
        assert f'run_example("{row_name}", build)' in f.read()
    assert _structure(module.build(row)) == _structure(build_model(row))


@pytest.mark.slow
def test_example_script_runs_quick_on_real_mnist(mnist_t10k_dir, tmp_path):
    """The README's documented way to run a row offline, end to end (one epoch)."""
    import subprocess
    import sys

    script = os.path.join(EXAMPLES, "table1_mlp_baseline.py")
    out = str(tmp_path / "runs")
    proc = subprocess.run([sys.executable, script, "--quick", "--epochs", "1", "--data-dir",
                           mnist_t10k_dir, "--out", out], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "QUICK" in proc.stdout and "paper" in proc.stdout
    folder = os.path.join(out, "table1", "mlp-baseline", "mnist-e1-reference-float32-quick",
                          "seed-0")
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["error"] < 0.2 and metrics["n"] == 2000


@pytest.mark.slow
def test_cifar10_row_with_augmentation_runs_end_to_end(tmp_path):
    """GCN + ZCA + augmentation + NIN + margin on fake CIFAR-10 batches (a tiny config)."""
    import pickle

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (12, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 12))}, f)
    row = dataclasses.replace(get_row("nin-aug-l2-c0.005"), epochs=1, validation=10,
                              batch_size=25, deepfool={"max_iter": 2, "step_clip": 0.5,
                                                       "overshoot": 0.02})
    metrics = runner.run(row, 0, str(tmp_path / "runs"), data_dir=str(tmp_path / "cifar"),
                         verbose=0)
    assert metrics["n"] == 12 and "GCN + ZCA" in metrics["data"]
    assert np.isfinite(metrics["error"])


@pytest.mark.slow
def test_quickstart_runs_offline_on_real_mnist(mnist_t10k_dir):
    """The README's first command, one epoch, on the MNIST test files at hand."""
    import subprocess
    import sys

    script = os.path.join(EXAMPLES, "quickstart.py")
    proc = subprocess.run([sys.executable, script, "--data-dir", mnist_t10k_dir, "--epochs", "1",
                           "--rival", "logit"], capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import re

    error = re.search(r"^test error\s+([0-9.]+)", proc.stdout, re.M)
    rho = re.search(r"^DeepFool rho_adv\s+([0-9.]+)", proc.stdout, re.M)
    assert error and float(error.group(1)) < 0.2
    assert rho and 0 < float(rho.group(1)) < 1
    both = proc.stdout + proc.stderr
    assert not re.search(r"absl::InitializeLog|cuInit|cuda drivers|oneDNN|cpu_feature", both)
    assert len(both.splitlines()) <= 40, both  # one screen
    assert "1 epoch;" in proc.stdout and "1 epochs" not in proc.stdout


def test_the_command_line_offers_the_rows_names():
    from keras_margin.experiments import rows

    assert set(cli.TABLE_NAMES) == set(rows.TABLES) and cli.PROTOCOLS == rows.PROTOCOLS
    assert cli.SWEEP_ARCHITECTURES == rows.SWEEP_ARCHITECTURES


def test_help_needs_no_keras_and_reproduce_lists_the_rows(capsys):
    import subprocess
    import sys

    code = ("import sys; sys.argv = ['keras-margin', '--help']\n"
            "from keras_margin.experiments import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'keras' not in sys.modules, 'keras was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert cli.main(["reproduce", "table1", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in TABLES["table1"])


def test_configs_of_older_runs_are_the_same_runs():
    """config.json as runs before the attack objects wrote it (DeepFool's settings without
    its defaults, AT's weight as alpha) is upgraded where it is compared."""
    from keras_margin.experiments.files import run_identity

    for name in ("mlp-at", "mlp-l2"):
        row = get_row(name)
        new = {"row": row.to_dict(), "seed": 0}
        old = json.loads(json.dumps(new))
        old["row"]["deepfool"] = {"max_iter": 50, "step_clip": 0.5, "overshoot": 0.02}
        if name == "mlp-at":
            old["row"]["trainer_kwargs"]["alpha"] = old["row"]["trainer_kwargs"].pop(
                "clean_weight")
        assert run_identity(old) == run_identity(new)
        assert Row.from_dict(old["row"]) == row


def test_runs_say_when_the_backend_or_precision_is_the_slow_choice_on_a_cpu():
    """Measured in docs/results/benchmarks/step_cost.md: JAX's CPU convolutions, and
    bfloat16 on a CPU without bfloat16 arithmetic."""
    advice = environment.speed_advice
    assert advice("mlp", "float32", "jax", False, False) == []
    assert "KERAS_BACKEND=tensorflow" in advice("lenet5", "float32", "jax", False, False)[0]
    assert advice("lenet5", "float32", "tensorflow", False, False) == []
    assert "no bfloat16" in advice("mlp", "mixed_bfloat16", "tensorflow", False, False)[0]
    assert advice("mlp", "mixed_bfloat16", "tensorflow", False, True) == []
    assert advice("lenet5", "mixed_bfloat16", "jax", True, False) == []  # on a GPU
    from keras_margin import backend

    assert isinstance(backend.has_accelerator(), bool)


def test_the_report_says_what_each_row_cost_and_where_it_ran(tmp_path):
    from keras_margin.experiments import report

    folders = []
    for seed, seconds in ((0, (10.0, 30.0, 20.0)), (1, (40.0, 50.0, 60.0))):
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        rows = ["epoch,epoch_seconds,epoch_cpu_seconds"] + [
            f"{i},{s},{2 * s}" for i, s in enumerate(seconds)]
        (folder / "history.csv").write_text("\n".join(rows) + "\n")
        (folder / "environment.json").write_text(json.dumps({"sessions": [
            {"backend": "tensorflow", "machine": {"cpu": "X", "cores": 2}},
            {"backend": "jax", "machine": {"cpu": "X", "cores": 2}}]}))
        folders.append({"label": "row", **report._cost(str(folder))})
    summary = report._cost_summary(folders)
    assert summary["epoch_seconds_median"] == 35.0  # pooled over both seeds' epochs
    assert summary["epoch_cpu_seconds_median"] == 70.0
    assert summary["train_minutes"] == pytest.approx((60 + 150) / 2 / 60)
    assert summary["backends"] == ["jax", "tensorflow"] and summary["machines"] == ["X, 2 cores"]
    table = report._cost_table([{"label": "row", **summary}])
    assert "| row | jax, tensorflow | X, 2 cores | 35 | 70 | 2 |" in table
    assert report._cost_summary([{"label": "no history"}]) == {}


def test_an_evaluation_stored_before_a_setting_existed_is_not_run_again():
    from keras_margin.experiments.reevaluate import StrongerEvaluation

    older = {"attacks": ["fmn", "ddn"], "box": None, "l2_eps": [], "linf_eps": [0.1, 0.2, 0.3],
             "n": 1000, "steps": 100, "tag": ""}  # written before `certify` existed
    assert StrongerEvaluation().same_as(older)
    assert not StrongerEvaluation(certify="crown").same_as(older)
    assert not StrongerEvaluation(n=100).same_as(older)
    assert not StrongerEvaluation().same_as({})


def test_nothing_users_read_points_at_this_projects_own_data_folder():
    # Users have no ../shared: examples, benchmarks, messages and the README say how to get
    # MNIST instead (issue 23).
    import glob
    from pathlib import Path

    root = os.path.join(os.path.dirname(__file__), "..")
    paths = [os.path.join(root, "README.md")] + [
        p for pattern in ("examples/*.py", "benchmarks/*.py", "keras_margin/**/*.py")
        for p in glob.glob(os.path.join(root, pattern), recursive=True)]
    offenders = [os.path.relpath(p, root) for p in paths if "shared/data" in Path(p).read_text()]
    assert offenders == []


@pytest.mark.slow
def test_the_readmes_try_the_runner_block_runs_as_written(tmp_path, monkeypatch, capsys):
    # Issue 31: the README's commands, cut from the README, each as `keras-margin` runs them,
    # offline (the embedded digits); the same commands are the verbs' --help examples.
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split("**Try the paper's runner**", 1)[1]
    commands = re.search(r"```bash\n(.*?)```", block, re.S).group(1).strip().splitlines()
    assert [c.split()[1] for c in commands] == ["reproduce", "evaluate", "report", "figures"]
    assert set(commands) <= set(cli.EXAMPLES.values())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KERAS_MARGIN_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.keras/datasets: the embedded sample
    for command in commands:
        assert cli.main(shlex.split(command)[1:]) == 0, command
    out = capsys.readouterr()
    assert "certif" not in out.out  # no --certify here; its progress is tested below
    assert (tmp_path / "runs" / "report.md").read_text().startswith(
        "# Results\n\nGenerated by `keras-margin report runs --out runs/report`")
    assert any(name.startswith("training_") for name in os.listdir(tmp_path / "figures"))


def test_the_robustness_monitor_runs_every_nth_epoch_and_the_first_and_last(tiny_mnist,
                                                                           tmp_path):
    # Issue 22: on the 100-epoch rows the callback runs every 5 epochs (and the last);
    # the run's config records it, and configs written before the setting read as 1.
    import csv

    from keras_margin.experiments.files import run_identity

    row = _tiny_row(epochs=4, hidden=(8,))
    out = str(tmp_path / "runs")
    runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0, monitor_every=3)
    folder = runner.run_dir(out, row, 0)
    with open(os.path.join(folder, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    # FGSM's error is a share of all points: a number wherever the callback ran (rho_adv can
    # be NaN there too, on a model that classifies no point correctly).
    monitored = [r["val_fgsm_error"] not in ("", "NA", "nan") for r in rows]
    assert monitored == [True, False, True, True]  # the first, the 3rd, the last
    assert rows[1]["val_rho_adv"] == "nan"  # the columns stay aligned
    assert all(0 <= float(r["val_accuracy"]) <= 1 for r in rows)
    assert [runner.monitored_epoch(dataclasses.replace(row, epochs=100, monitor_every=5), e)
            for e in (0, 1, 4, 5, 9, 98, 99)] == [True, False, True, False, True, False, True]
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    assert config["row"]["monitor_every"] == 3
    older = json.loads(json.dumps(config))
    del older["row"]["monitor_every"]
    assert run_identity(older) == run_identity({**config, "row": {**config["row"],
                                                                  "monitor_every": 1}})
    with pytest.raises(ValueError, match="monitor_every"):
        dataclasses.replace(row, monitor_every=0)
