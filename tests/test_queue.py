"""docs/results/queue.sh, run dry against the published runs: a stand-in `keras-margin`
(QUEUE_KM) logs each call, so the test sees what the queue would train and evaluate."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
PUBLISHED = os.path.join(ROOT, "docs", "results", "runs")
E100 = "table1/mlp-baseline/mnist-e100-reference-float32/seed-0"


def _unrouted() -> list[str]:
    """Published Table I runs whose certified evaluation records no bound routes."""
    found = []
    for folder, _, files in os.walk(os.path.join(PUBLISHED, "table1")):
        if "robustness-certified.json" in files:
            with open(os.path.join(folder, "robustness-certified.json")) as f:
                if not any(k.startswith("certify_route_") for k in json.load(f)):
                    found.append(os.path.relpath(folder, PUBLISHED))
    return sorted(found)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("queue")
    out, log = tmp / "out", tmp / "calls.log"
    stub = tmp / "km"
    stub.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    stub.chmod(0o755)
    model = out / E100 / "model.keras"  # a run whose model is here: evaluated, not retrained
    model.parent.mkdir(parents=True)
    model.write_bytes(b"")
    env = {**os.environ, "QUEUE_KM": str(stub),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    env.pop("AUTOATTACK_DIR", None)
    result = subprocess.run(["bash", "docs/results/queue.sh", str(tmp / "data"), str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    return out, calls, result.stdout


def test_every_unrouted_certified_evaluation_is_redone(dry_run):
    out, calls, _ = dry_run
    unrouted = _unrouted()
    assert unrouted, "no published certified evaluation lacks its routes: drop this step"
    for run in unrouted:
        if run == E100:  # its model is here: the certified evaluation alone, again
            evaluations = [c for c in calls if c.startswith(f"evaluate {out}/{run} ")
                           and "--tag autoattack" not in c]  # AutoAttack's is not published
            assert len(evaluations) == 1 and "--tag certified" in evaluations[0], evaluations
            continue
        row, config, seed = run.split("/")[1:]
        epochs = config.split("-")[1][1:]
        seeds = int(seed.split("-")[1]) + 1
        wanted = (f"reproduce table1 --rows {row} --seeds {seeds} --epochs {epochs} "
                  f"--data-dir ")
        assert any(c.startswith(wanted) and c.endswith(f"--out {out}/again") for c in calls), \
            (run, [c for c in calls if "again" in c])


def test_routed_runs_are_not_trained_again(dry_run):
    out, calls, _ = dry_run
    unrouted = {tuple(run.split("/")[1:4:2]) for run in _unrouted()}  # (row, seed-k)
    for call in calls:
        if call.endswith(f"--out {out}/again"):
            words = call.split()
            row, seeds = words[words.index("--rows") + 1], int(words[words.index("--seeds") + 1])
            assert (row, f"seed-{seeds - 1}") in unrouted, call
