"""Cost of one training step: plain cross-entropy vs MarginModel(rival="logit"/"jacobian").

"jacobian-top3" is the exact rule searched over the top-3 rival logits only (candidates=3).

All configurations are timed in one process, interleaved round by round, so that a shared,
noisy machine slows them alike; the ratios to the plain step of the same model, batch and XLA
setting are medians over rounds. Prints a Markdown table and writes JSON.

    python benchmarks/step_cost.py --models mlp,lenet5 --batch 100 --xla both --out step_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_margin import MarginModel, architectures  # noqa: E402

MODES = ("plain", "logit", "jacobian", "jacobian-top3")
# Issue targets: step-time ratio to plain (XLA off, batch 100) and the first XLA call in seconds.
TARGETS = {("mlp", "logit"): 1.8, ("lenet5", "logit"): 1.8, ("mlp", "jacobian"): 4.0,
           ("lenet5", "jacobian"): 5.0}
XLA_COMPILE_TARGET_S = 60.0


def build(arch: str, mode: str, jit: bool) -> keras.Model:
    keras.utils.set_random_seed(0)
    base = architectures.mlp() if arch == "mlp" else architectures.lenet5()
    if mode == "plain":
        model = base
        model.compile(optimizer="adam", jit_compile=jit,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    else:
        rival, _, top = mode.partition("-top")
        model = MarginModel(base, C=0.1, loss="crossentropy", rival=rival,
                            candidates=int(top) if top else None)
        model.compile(optimizer="adam", jit_compile=jit)
    return model


def peak_memory_mb() -> float | None:
    """Peak accelerator memory since the last reset, where TensorFlow can tell (not on CPU)."""
    if not tf.config.list_physical_devices("GPU"):
        return None
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def time_steps(model: keras.Model, data: tf.data.Dataset, steps: int) -> float:
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return (time.perf_counter() - start) / steps * 1000


def cpu_step_memory(arch: str, mode: str, batch: int) -> None:
    """In a fresh process with TensorFlow's BFC allocator on the CPU (which then counts its
    bytes): the peak memory TensorFlow holds while training steps run, weights included."""
    x = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    data = tf.data.Dataset.from_tensors((x, np.zeros(batch, np.int64))).repeat()
    model = build(arch, mode, False)
    time_steps(model, data, 2)
    tf.config.experimental.reset_memory_stats("CPU:0")
    time_steps(model, data, 3)
    info = tf.config.experimental.get_memory_info("CPU:0")
    print(json.dumps({"model": arch, "mode": mode, "batch": batch,
                      "step_peak_mb": info["peak"] / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,lenet5")
    parser.add_argument("--batch", type=int, nargs="+", default=[100])
    parser.add_argument("--xla", choices=["off", "on", "both"], default="both")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--memory", action="store_true",
                        help="on CPU: also the peak memory of each step (one process each)")
    parser.add_argument("--memory-only", action="store_true", help="only the memory table")
    parser.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        cpu_step_memory(args._memory_child[0], args._memory_child[1],
                        int(args._memory_child[2]))
        return
    if args.memory_only:
        cpu_memory_table(args.models.split(","), args.batch)
        return
    jits = {"off": [False], "on": [True], "both": [False, True]}[args.xla]

    rng = np.random.default_rng(0)
    rows = []
    for arch in args.models.split(","):
        for batch in args.batch:
            x = rng.random((batch, 28, 28, 1), dtype=np.float32)
            y = rng.integers(0, 10, batch)
            data = tf.data.Dataset.from_tensors((x, y)).repeat()
            for jit in jits:
                models, compile_s, times, peaks = {}, {}, {m: [] for m in MODES}, {}
                for mode in MODES:
                    models[mode] = build(arch, mode, jit)
                    if peak_memory_mb() is not None:
                        tf.config.experimental.reset_memory_stats("GPU:0")
                    start = time.perf_counter()
                    time_steps(models[mode], data, 2)  # trace (and XLA-compile)
                    compile_s[mode] = time.perf_counter() - start
                    peaks[mode] = peak_memory_mb()
                for _ in range(args.rounds):
                    for mode in MODES:
                        times[mode].append(time_steps(models[mode], data, args.steps))
                for mode in MODES:
                    ratios = [t / p for t, p in zip(times[mode], times["plain"])]
                    rows.append({
                        "model": arch, "batch": batch, "xla": jit, "mode": mode,
                        "ms_per_step": statistics.median(times[mode]),
                        "ratio_to_plain": statistics.median(ratios),
                        "first_call_s": compile_s[mode],
                        "peak_memory_mb": peaks[mode],
                        "peak_ratio_to_plain": (peaks[mode] / peaks["plain"]
                                                if peaks[mode] and peaks["plain"] else None),
                    })
                    print(_row(rows[-1]), flush=True)
    print("\n| model | batch | XLA | step | ms/step | ratio to plain | first call s | "
          "peak MB (ratio) |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    print(f"\ndevice: {tf.config.list_physical_devices()[-1].device_type}, TF {tf.__version__}, "
          f"Keras {keras.__version__}, {args.rounds} rounds x {args.steps} steps")
    print_targets(rows)
    if args.memory and not tf.config.list_physical_devices("GPU"):
        rows += cpu_memory_table(args.models.split(","), args.batch)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


def print_targets(rows: list[dict]) -> None:
    """Each target against what was measured: met, or the gap."""
    print("\n| target | measured | verdict |\n|---|---|---|")
    for row in rows:
        target = TARGETS.get((row["model"], row["mode"]))
        if target and not row["xla"]:
            ratio = row["ratio_to_plain"]
            verdict = "met" if ratio <= target else f"missed: {ratio / target:.2f}x the target"
            print(f"| {row['model']} {row['mode']} batch {row['batch']}: <= {target}x | "
                  f"{ratio:.2f}x | {verdict} |")
        if row["xla"] and row["mode"] == "jacobian":
            ok = row["first_call_s"] < XLA_COMPILE_TARGET_S
            print(f"| {row['model']} jacobian XLA compile batch {row['batch']}: < 60 s | "
                  f"{row['first_call_s']:.1f} s | {'met' if ok else 'missed'} |")


def cpu_memory_table(models: list[str], batches: list[int]) -> list[dict]:
    """Peak memory per step on CPU, each configuration in its own process."""
    import subprocess
    import sys

    rows = []
    for arch in models:
        for batch in batches:
            peaks = {}
            for mode in MODES:
                env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true")
                out = subprocess.run([sys.executable, __file__, "--_memory-child", arch, mode,
                                      str(batch)], capture_output=True, text=True, check=True,
                                     env=env)
                peaks[mode] = json.loads(out.stdout.strip().splitlines()[-1])["step_peak_mb"]
            print(f"\n{arch}, batch {batch}: peak memory TensorFlow holds during training steps "
                  "(CPU, BFC allocator)")
            print("| step | MB | ratio to plain |\n|---|---|---|")
            for mode in MODES:
                print(f"| {mode} | {peaks[mode]:.0f} | {peaks[mode] / peaks['plain']:.2f}x |")
                rows.append({"model": arch, "batch": batch, "mode": mode, "cpu": True,
                             "step_peak_mb": peaks[mode]})
    return rows


def _row(r: dict) -> str:
    peak = "n/a" if r["peak_memory_mb"] is None else (
        f"{r['peak_memory_mb']:.0f} ({r['peak_ratio_to_plain']:.2f}x)")
    return (f"| {r['model']} | {r['batch']} | {'on' if r['xla'] else 'off'} | {r['mode']} | "
            f"{r['ms_per_step']:.1f} | {r['ratio_to_plain']:.2f}x | {r['first_call_s']:.1f} | "
            f"{peak} |")


if __name__ == "__main__":
    main()
