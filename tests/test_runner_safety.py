"""The runner never mixes or loses results: locks, bad arguments, truncated files, resumes."""

import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import write_idx

from keras_margin import datasets
from keras_margin.experiments import cli, figures, get_row, report, runner, sweep_row
from keras_margin.experiments.files import RunLockedError, run_lock

# The tiny 16-unit models on fake data trip the robustness sanity checks by design (zero
# gradients, DeepFool stopped after a few steps); those checks are tested in test_evaluation.
pytestmark = pytest.mark.filterwarnings("ignore:evaluate_robustness \\[")


def _tiny(name="mlp-l2", **changes):
    row = dataclasses.replace(get_row(name), name=f"tiny-{name}", hidden=(16,), epochs=2,
                              validation=40, batch_size=50,
                              deepfool={"max_iter": 5, "step_clip": 0.5, "overshoot": 0.02})
    return dataclasses.replace(row, **changes)


def test_reference_split_and_pixel_scale_follow_the_reference_code(tiny_mnist):
    (x_tr, y_tr), (x_val, y_val), _ = datasets.load("mnist", validation=40,
                                                    data_dir=tiny_mnist, split="reference",
                                                    pixel_scale=256)
    raw_x, raw_y = datasets.load_split("mnist", "train", tiny_mnist, pixel_scale=1.0)
    order = np.random.RandomState(1).permutation(240)  # mnist/data.py, dseed=1
    np.testing.assert_array_equal(y_tr, raw_y[order[:200]])
    np.testing.assert_array_equal(y_val, raw_y[order[200:]])
    np.testing.assert_array_equal(x_tr * 256, raw_x[order[:200]])
    assert x_tr.max() <= 255 / 256


def test_paper_split_of_the_real_training_set(mnist_dir):
    folder = mnist_dir
    (x_tr, y_tr), (x_val, y_val), (x_te, _) = datasets.load(
        "mnist", data_dir=folder, split="reference", pixel_scale=256)
    assert (len(x_tr), len(x_val), len(x_te)) == (50000, 10000, 10000)
    _, labels = datasets.load_split("mnist", "train", folder)
    np.testing.assert_array_equal(labels[:10], [5, 0, 4, 1, 9, 2, 1, 3, 1, 4])
    np.testing.assert_array_equal(y_tr, labels[np.random.RandomState(1).permutation(60000)[:50000]])


def test_bad_label_bytes_and_a_missing_labels_file_are_named(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28)))
    with pytest.raises(datasets.DatasetNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        datasets.load_split("mnist", "test", str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 200, 3]))
    with pytest.raises(ValueError, match="t10k-labels.*label 200 at index 1"):
        datasets.load_split("mnist", "test", str(tmp_path))


def test_a_second_process_on_the_same_run_refuses_at_once(tiny_mnist, tmp_path):
    out = str(tmp_path / "runs")
    row = _tiny()
    folder = runner.run_dir(out, row, 0)
    with run_lock(folder), pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
        runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    assert not os.path.exists(os.path.join(folder, "history.csv"))


@pytest.mark.slow
def test_a_killed_process_leaves_no_stuck_lock(tmp_path):
    folder = str(tmp_path / "run")
    script = textwrap.dedent(f"""
        import sys, time
        from keras_margin.experiments.files import run_lock
        with run_lock({folder!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError), run_lock(folder):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with run_lock(folder):  # taken at once: the kernel released the dead process's lock
        pass


@pytest.mark.parametrize("epochs", [-1, 0, 1.5])
def test_epochs_that_are_not_positive_integers_are_refused(epochs, tiny_mnist, tmp_path):
    out = tmp_path / "runs"
    with pytest.raises(ValueError, match="epochs"):
        runner.run(_tiny(), 0, str(out), epochs=epochs, data_dir=tiny_mnist, verbose=0)
    assert not out.exists()


@pytest.mark.parametrize("argv", [["--epochs", "-1"], ["--epochs", "0"], ["--seeds", "0"]])
def test_cli_refuses_non_positive_epochs_and_seeds(argv, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["reproduce", "table1", "--rows", "mlp-l2", "--out", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert "must be >= 1" in capsys.readouterr().err


def test_sweep_names_keep_distinct_values_of_c_apart(capsys):
    assert sweep_row("mlp", 0.1234567).name != sweep_row("mlp", 0.1234568).name
    assert sweep_row("mlp", 0.1).name == "mlp-l2-C0.1"
    assert cli.main(["sweep-c", "--arch", "foo", "--C", "0.1"]) == 2
    assert "Invalid value for argument arch: 'foo'" in capsys.readouterr().err
    assert cli.main(["sweep-c", "--arch", "mlp", "--C", "0.1,x"]) == 2


def test_row_names_take_underscores_and_tables_are_kept_apart(capsys):
    assert get_row("mlp_l2") is get_row("mlp-l2")
    assert cli.main(["reproduce", "table1", "--rows", "nin-baseline"]) == 2
    err = capsys.readouterr().err
    assert "in table1" in err and "nin-baseline" in err.split("Expected")[0]
    assert "nin-" not in err.split("Expected")[1]


@pytest.mark.slow
def test_truncated_files_are_named(tiny_mnist, tmp_path):
    out = str(tmp_path / "runs")
    row = _tiny()
    assert runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0, stop_after=1) is None
    folder = runner.run_dir(out, row, 0)
    checkpoint = os.path.join(folder, "checkpoint.keras")
    with open(checkpoint, "rb") as f:
        data = f.read()
    with open(checkpoint, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="checkpoint.keras exists but cannot be loaded"):
        runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    with open(os.path.join(folder, "state.json"), "w") as f:
        f.write('{"epo')
    with pytest.raises(ValueError, match="state.json is truncated"):
        runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    os.remove(checkpoint)
    os.remove(os.path.join(folder, "state.json"))
    runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)  # starts again from epoch 0
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        f.write("{")
    with pytest.raises(ValueError, match="metrics.json is truncated"):
        runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    with pytest.raises(ValueError, match="metrics.json is truncated"):
        report.write(out)


@pytest.mark.slow
def test_a_resumed_vat_run_is_bit_identical(tiny_mnist, tmp_path):
    row = _tiny("mlp-vat")
    whole, broken = str(tmp_path / "whole"), str(tmp_path / "broken")
    runner.run(row, 0, whole, data_dir=tiny_mnist, verbose=0)
    runner.run(row, 0, broken, data_dir=tiny_mnist, verbose=0, stop_after=1)
    runner.run(row, 0, broken, data_dir=tiny_mnist, verbose=0)
    for name in ("metrics.json", "history.csv"):
        texts = []
        for out in (whole, broken):
            with open(os.path.join(runner.run_dir(out, row, 0), name)) as f:
                texts.append(f.read())
        if name == "metrics.json":
            texts = [{k: v for k, v in json.loads(t).items() if k != "code"} for t in texts]
        else:  # every column but the epochs' wall-clock and CPU seconds
            assert all("epoch_cpu_seconds,epoch_seconds" in t for t in texts)
            texts = [[{k: v for k, v in line.items() if not k.startswith("epoch_")}
                      for line in csv.DictReader(io.StringIO(t))] for t in texts]
        assert texts[0] == texts[1], name


@pytest.mark.slow
def test_report_never_averages_different_configurations(tiny_mnist, tmp_path):
    out = str(tmp_path / "runs")
    runner.run(_tiny(epochs=1), 0, os.path.join(out, "a"), data_dir=tiny_mnist, verbose=0)
    runner.run(_tiny(epochs=2), 0, os.path.join(out, "b"), data_dir=tiny_mnist, verbose=0)
    runner.run(_tiny(epochs=1, protocol="boxed"), 0, os.path.join(out, "c"),
               data_dir=tiny_mnist, verbose=0)
    lines = report.summarize(report.collect(out))
    assert len(lines) == 3 and all(line["seeds"] == 1 for line in lines)
    text = report.write(out)
    assert "seeds per row: 2" not in text
    assert "Protocol: boxed" in text and "Protocol: reference" in text


@pytest.mark.slow
def test_the_command_resumes_a_run_in_a_fresh_process(tiny_mnist, tmp_path):
    """`keras-margin` imports lazily; loading the checkpoint must still find the trainers'
    classes (it once failed with "Could not locate class 'MarginModel'")."""
    out = str(tmp_path / "runs")
    row = _tiny(epochs=2)
    assert runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0, stop_after=1) is None
    script = textwrap.dedent(f"""
        import dataclasses, sys
        sys.argv[0] = "keras-margin"  # what the console script's process sees
        from keras_margin.experiments import get_row, runner
        row = dataclasses.replace(get_row("mlp-l2"), name="tiny-mlp-l2", hidden=(16,),
                                  epochs=2, validation=40, batch_size=50,
                                  deepfool={{"max_iter": 5, "step_clip": 0.5,
                                            "overshoot": 0.02}})
        assert runner.run(row, 0, {out!r}, data_dir={tiny_mnist!r}, verbose=0) is not None
        print("resumed")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0 and "resumed" in proc.stdout, proc.stderr[-3000:]
    with open(os.path.join(runner.run_dir(out, row, 0), "history.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + 2  # epoch 1 kept, epoch 2 resumed


@pytest.mark.slow
def test_report_and_figures_show_runs_in_progress_apart(tiny_mnist, tmp_path):
    out = str(tmp_path / "runs")
    runner.run(_tiny(epochs=1), 0, os.path.join(out, "a"), data_dir=tiny_mnist, verbose=0)
    runner.run(_tiny(epochs=2), 0, os.path.join(out, "b"), data_dir=tiny_mnist, verbose=0,
               stop_after=1)
    running = report.in_progress(out)
    assert [(r["epochs_done"], r["epochs"]) for r in running] == [(1, 2)]
    text = report.write(out)
    finished, _, progress = text.partition("## Runs in progress")
    assert "| 1 / 2 |" in progress and "seeds per row: 1" in finished
    pytest.importorskip("matplotlib")
    written = [os.path.basename(p) for p in figures.write(out, str(tmp_path / "figs"))]
    assert any(name.startswith("training_") and "_2ep_" in name for name in written)


@pytest.mark.slow
def test_figures_refuse_a_cut_history_and_name_the_missing_extra(tiny_mnist, tmp_path,
                                                                  monkeypatch, capsys):
    out = str(tmp_path / "runs")
    runner.run(_tiny(epochs=1), 0, out, data_dir=tiny_mnist, verbose=0)
    folder = runner.run_dir(out, _tiny(epochs=1), 0)
    adversarial = np.load(os.path.join(folder, "adversarial.npz"))
    assert adversarial["adversarial_class"].shape == (10,)  # the figure labels each image
    history = os.path.join(folder, "history.csv")
    with open(history) as f:
        text = f.read()
    with open(history, "w") as f:
        f.write(text[: text.index("\n") + 5])  # the header and a cut first row
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="history.csv: row 2 .* cut or garbled"):
        figures.write(out, str(tmp_path / "figs"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert cli.main(["figures", out, "--out", str(tmp_path / "figs")]) == 2
    assert "pip install 'keras-margin[plots]'" in capsys.readouterr().err


@pytest.mark.slow
def test_fgsm_error_recomputes_from_points_and_older_runs_get_them(tiny_mnist, tmp_path):
    # Issue 29: FGSM error was one number per run; now each test point's outcome is kept, and
    # `evaluate` adds them to a run finished before (only when they give the same error).
    from keras_margin.experiments import reevaluate

    row = _tiny()
    out = str(tmp_path / "runs")
    metrics = runner.run(row, 0, out, data_dir=tiny_mnist, verbose=0)
    folder = runner.run_dir(out, row, 0)
    points = dict(np.load(os.path.join(folder, "points.npz")))
    assert points["fgsm_wrong"].dtype == bool and len(points["fgsm_wrong"]) == 60
    assert points["fgsm_wrong"].mean() == metrics["fgsm_error"]
    del points["fgsm_wrong"]  # as a run of an older version left it
    np.savez_compressed(os.path.join(folder, "points.npz"), **points)
    settings = reevaluate.StrongerEvaluation(n=10, attacks=(), linf_eps=(), steps=5)
    reevaluate.evaluate_run(folder, settings, data_dir=tiny_mnist)
    again = np.load(os.path.join(folder, "points.npz"))
    assert again["fgsm_wrong"].mean() == metrics["fgsm_error"]
    np.testing.assert_array_equal(again["distances"], points["distances"])
