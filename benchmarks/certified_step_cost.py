"""Cost of a certified training step (issue 27): IBP and CROWN-IBP over a plain step and over
the paper's margin step.

For the MLP 1000-1000-1000 and LeNet-5 at batch 100, `model.fit` with the default compile, the
median over timed steps, the step kinds interleaved round by round in one process (a shared
machine slows them alike): plain cross-entropy; MarginModel (the paper's: rival "jacobian",
l2, C 0.1); CertifiedTrainingModel at l_inf 0.1 inside [0, 1] with method "ibp", and
"crown-ibp" with beta held at 1 (the ramp's costliest phase: CROWN's backward pass on every
step; once beta reaches 0 a CROWN-IBP step is an IBP step); and "lipschitz" at l2 1.0 (the
GloRo-style margin, one power-iteration step per layer).

    python benchmarks/certified_step_cost.py \\
        --out docs/results/benchmarks/certified_step_cost.json \\
        > docs/results/benchmarks/certified_step_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("plain", "margin", "certified-ibp", "certified-crown-ibp", "certified-lipschitz")


def build(arch: str, mode: str):
    import keras

    from keras_margin import CertifiedTrainingModel, MarginModel, ThreatModel, architectures

    keras.utils.set_random_seed(0)
    base = architectures.mlp() if arch == "mlp" else architectures.lenet5()
    if mode == "plain":
        base.compile(optimizer="adam",
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return base
    if mode == "margin":
        model = MarginModel(base, C=0.1, loss="crossentropy")
    elif mode == "certified-lipschitz":  # l2, as its rows train it: power iteration included
        model = CertifiedTrainingModel(base, threat=ThreatModel("l2", 1.0, 0.0, 1.0),
                                       method="lipschitz")
    else:
        model = CertifiedTrainingModel(base, threat=ThreatModel("linf", 0.1, 0.0, 1.0),
                                       method=mode.removeprefix("certified-"),
                                       beta=(1.0, 1.0))
    model.compile(optimizer="adam")
    return model


def measure(archs: list[str], batch: int, steps: int, rounds: int) -> list[dict]:
    import keras
    import numpy as np
    from step_cost import interleaved, ratio

    rng = np.random.default_rng(0)
    x = rng.random((batch * (steps + 1), 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    rows = []
    for arch in archs:
        _, times = interleaved({mode: build(arch, mode) for mode in MODES}, x, y, batch, rounds)
        for mode in MODES:
            rows.append({
                "backend": keras.backend.backend(), "model": arch, "batch": batch, "mode": mode,
                "ms_per_step": statistics.median(times[mode]),
                "ratio_to_plain": ratio(times, mode, "plain"),
                "ratio_to_margin": ratio(times, mode, "margin")})
            print(f"{arch} {mode}: {rows[-1]['ms_per_step']:.1f} ms", file=sys.stderr)
    return rows


def cpu() -> str:
    """The processor and its cores, as each run's environment.json records them."""
    from keras_margin.experiments.environment import machine

    where = machine()
    return f"{where.get('cpu') or where['platform']}, {where['cores']} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mlp,lenet5")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--from-json", default=None,
                        help="print the table of a saved --out file (no measuring)")
    args = parser.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            print(markdown(json.load(f)))
        return
    import keras_margin  # noqa: F401 - TensorFlow without its start-up noise

    started = time.time()
    rows = measure(args.models.split(","), args.batch, args.steps, args.rounds)
    report = {"cpu": cpu(), "args": vars(args), "rows": rows,
              "seconds": round(time.time() - started, 1)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(markdown(report))


def markdown(report: dict) -> str:
    a, rows = report["args"], report["rows"]
    lines = [f"<!-- python benchmarks/certified_step_cost.py --models {a['models']} --batch "
             f"{a['batch']} --steps {a['steps']} --rounds {a['rounds']} -->",
             "# Certified training step cost\n",
             f"{report['cpu']}; {rows[0]['backend']}; batch {a['batch']}, median of "
             f"{a['steps']} steps x {a['rounds']} rounds, interleaved.\n",
             "| model | step | ms per step | over plain | over margin |", "|---|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['mode']} | {row['ms_per_step']:.1f} | "
              f"x{row['ratio_to_plain']:.2f} | x{row['ratio_to_margin']:.2f} |" for row in rows]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
