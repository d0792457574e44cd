"""ResNet-20 training steps (issue 26): the paper's margin, at the input and at hidden layers,
and Elsayed et al.'s loss, each over a plain step; and each step kind's peak memory.

`architectures.resnet20()` on CIFAR-sized inputs (32x32x3, random values, 10 classes), batch
128, `model.fit` with the default compile. Time: the median over timed steps, the step kinds
interleaved round by round in one process per backend (a shared machine slows them alike).
Memory: each step kind in a process of its own, its peak resident set (ru_maxrss) after a few
steps, beside a process that builds the model and trains no step (the framework's share).

    python benchmarks/resnet_step_cost.py --backend tensorflow,jax \\
        --out docs/results/benchmarks/resnet_step_cost.json \\
        > docs/results/benchmarks/resnet_step_cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

MODES = ("plain", "margin-logit", "margin", "margin-hidden", "large-margin")
TAPS = ["input", "stage1_block3", "stage2_block3", "stage3_block3"]
NOTES = {"plain": "cross-entropy",
         "margin-logit": "MarginModel, rival logit (one input gradient)",
         "margin": "MarginModel, rival jacobian (the paper's: 9 rival rows)",
         "margin-hidden": "MarginModel at the input and the 3 stage outputs, rival jacobian",
         "large-margin": "LargeMarginModel at the input and the 3 stage outputs (no double "
                         "backprop)"}


def build(mode: str):
    import keras

    from keras_margin import LargeMarginModel, MarginModel, architectures

    keras.utils.set_random_seed(0)
    base = architectures.resnet20()
    if mode in ("plain", "none"):
        base.compile(optimizer="adam",
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return base
    if mode == "large-margin":
        model = LargeMarginModel(base, layers=TAPS, data_weight=1.0)
    else:
        model = MarginModel(base, C=0.1, loss="crossentropy",
                            rival="logit" if mode == "margin-logit" else "jacobian",
                            layers=TAPS if mode == "margin-hidden" else None)
    model.compile(optimizer="adam")
    return model


def data(batch: int, steps: int):
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((batch * (steps + 1), 32, 32, 3), dtype=np.float32)
    return x, rng.integers(0, 10, len(x))


def _time_child(batch: int, steps: int, rounds: int) -> None:
    import keras
    from step_cost import interleaved, ratio

    import keras_margin  # noqa: F401 - TensorFlow without its start-up noise

    x, y = data(batch, steps)
    first, times = interleaved({mode: build(mode) for mode in MODES}, x, y, batch, rounds)
    rows = [{"backend": keras.backend.backend(), "mode": mode, "batch": batch,
             "ms_per_step": statistics.median(times[mode]),
             "ratio_to_plain": ratio(times, mode, "plain"), "first_call_s": first[mode]}
            for mode in MODES]
    print(json.dumps(rows))


def _memory_child(mode: str, batch: int) -> None:
    import resource

    import keras_margin  # noqa: F401

    model = build(mode)
    if mode != "none":
        x, y = data(batch, 3)
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # MiB (Linux: KiB)


def _child(backend: str, *args: str) -> str:
    env = {**os.environ, "KERAS_BACKEND": backend}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="tensorflow,jax")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--from-json", default=None,
                        help="print the table of a saved --out file (no measuring)")
    parser.add_argument("--_time", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_memory", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._time:
        return _time_child(args.batch, args.steps, args.rounds)
    if args._memory:
        return _memory_child(args._memory, args.batch)
    if args.from_json:
        with open(args.from_json) as f:
            print(markdown(json.load(f)))
        return None
    from certified_step_cost import cpu

    started = time.time()
    rows, memory = [], []
    for backend in args.backend.split(","):
        rows += json.loads(_child(backend, "--_time", "--batch", str(args.batch), "--steps",
                                  str(args.steps), "--rounds", str(args.rounds)))
        for mode in ("none",) + MODES:
            mib = float(_child(backend, "--_memory", mode, "--batch", str(args.batch)))
            memory.append({"backend": backend, "mode": mode, "batch": args.batch,
                           "peak_rss_mib": mib})
            print(f"{backend} {mode}: {mib:.0f} MiB", file=sys.stderr)
    report = {"cpu": cpu(), "args": {k: v for k, v in vars(args).items()
                                     if not k.startswith("_")},
              "rows": rows, "memory": memory, "seconds": round(time.time() - started, 1)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(markdown(report))
    return None


def markdown(report: dict) -> str:
    a = report["args"]
    lines = [f"<!-- python benchmarks/resnet_step_cost.py --backend {a['backend']} --batch "
             f"{a['batch']} --steps {a['steps']} --rounds {a['rounds']} -->",
             "# ResNet-20 step cost and memory\n",
             f"{report['cpu']}; ResNet-20 (0.27M weights) on 32x32x3 inputs, batch {a['batch']}; "
             f"median of {a['steps']} steps x {a['rounds']} rounds, step kinds interleaved; "
             f"{report['seconds'] / 60:.0f} minutes in all.\n",
             "| backend | step | ms per step | over plain | first fit (s) | what |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['mode']} | {r['ms_per_step']:.0f} | "
              f"x{r['ratio_to_plain']:.2f} | {r['first_call_s']:.0f} | {NOTES[r['mode']]} |"
              for r in report["rows"]]
    lines += ["", f"Peak resident memory at batch {a['batch']} (a process per step kind; "
              "`none` builds the model and trains no step):\n",
              "| backend | step | peak RSS (MiB) | over none |", "|---|---|---|---|"]
    none = {m["backend"]: m["peak_rss_mib"] for m in report["memory"] if m["mode"] == "none"}
    lines += [f"| {m['backend']} | {m['mode']} | {m['peak_rss_mib']:.0f} | "
              f"{m['peak_rss_mib'] - none[m['backend']]:+.0f} |" for m in report["memory"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
