"""Cost of one training step: plain cross-entropy vs MarginModel(rival="logit"/"jacobian").

"jacobian-top3" is the exact rule searched over the top-3 rival logits only (candidates=3).

All configurations of one backend are timed in one process, interleaved round by round, so that
a shared, noisy machine slows them alike; the ratios to the plain step of the same model, batch,
backend and compile setting are medians over rounds. With several backends (`--backend
tensorflow,jax,torch`) each runs in its own process (Keras has one backend per process), one
after the other, and one table holds them all. Prints Markdown and writes JSON.

    python benchmarks/step_cost.py --models mlp,lenet5 --backend tensorflow,jax,torch
    python benchmarks/step_cost.py --models mlp --xla both --out step_cost.json   # TensorFlow
    python benchmarks/step_cost.py --models mlp,lenet5 --memory-only              # TF, CPU

Compile settings: TensorFlow without and with XLA (`--xla`), JAX always jitted (XLA), PyTorch
eager (its trainers refuse torch.compile, which cannot trace the double backprop).
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

MODES = ("plain", "logit", "jacobian", "jacobian-top3")
# Issue targets: step-time ratio to plain (TensorFlow, XLA off, batch 100) and the first XLA call.
TARGETS = {("mlp", "logit"): 1.8, ("lenet5", "logit"): 1.8, ("mlp", "jacobian"): 4.0,
           ("lenet5", "jacobian"): 5.0}
XLA_COMPILE_TARGET_S = 60.0


def build(arch: str, mode: str, jit: bool):
    import keras

    from keras_margin import MarginModel, architectures

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


def time_steps(model, x, y, batch: int, steps: int) -> float:
    """ms per step of `steps` training steps (`train_on_batch`, which returns the loss as a
    number, so every step has finished when the clock stops; no per-`fit` set-up is timed)."""
    start = time.perf_counter()
    for i in range(steps):
        j = (i % (len(x) // batch)) * batch
        model.train_on_batch(x[j:j + batch], y[j:j + batch])
    return (time.perf_counter() - start) / steps * 1000


def measure(models: list[str], batches: list[int], jits: list[bool], steps: int,
            rounds: int) -> list[dict]:
    """The rows of the current backend (this process's)."""
    import keras
    import numpy as np

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    rows = []
    for arch in models:
        for batch in batches:
            x = rng.random((batch * max(steps, 2), 28, 28, 1), dtype=np.float32)
            y = rng.integers(0, 10, len(x))
            for jit in jits:
                built, compile_s, times = {}, {}, {m: [] for m in MODES}
                for mode in MODES:
                    built[mode] = build(arch, mode, jit)
                    start = time.perf_counter()
                    time_steps(built[mode], x, y, batch, 2)  # trace (and compile)
                    compile_s[mode] = time.perf_counter() - start
                for _ in range(rounds):
                    for mode in MODES:
                        times[mode].append(time_steps(built[mode], x, y, batch, steps))
                for mode in MODES:
                    ratios = [t / p for t, p in zip(times[mode], times["plain"])]
                    rows.append({"backend": backend, "model": arch, "batch": batch,
                                 "xla": jit, "mode": mode,
                                 "ms_per_step": statistics.median(times[mode]),
                                 "ratio_to_plain": statistics.median(ratios),
                                 "first_call_s": compile_s[mode]})
                    print(_row(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _jits(backend: str, xla: str) -> list[bool]:
    if backend == "jax":
        return [True]
    if backend == "torch":
        return [False]
    return {"off": [False], "on": [True], "both": [False, True]}[xla]


def run_backends(args: argparse.Namespace) -> list[dict]:
    """Each backend in a child process of this script, one after the other."""
    rows = []
    for backend in args.backend.split(","):
        env = dict(os.environ, KERAS_BACKEND=backend)
        cmd = [sys.executable, __file__, "--_child", "--models", args.models, "--xla", args.xla,
               "--steps", str(args.steps), "--rounds", str(args.rounds), "--batch",
               *map(str, args.batch)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"{backend}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,lenet5")
    parser.add_argument("--backend", default=None,
                        help="comma-separated Keras backends, each in its own process "
                             "(default: the current one)")
    parser.add_argument("--batch", type=int, nargs="+", default=[100])
    parser.add_argument("--xla", choices=["off", "on", "both"], default="off",
                        help="TensorFlow: XLA off, on or both (JAX is always jitted)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--memory-only", action="store_true",
                        help="TensorFlow on CPU: the peak memory of each step, one process each")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--_memory-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory_child:
        cpu_step_memory(args._memory_child[0], args._memory_child[1],
                        int(args._memory_child[2]))
        return
    if args.memory_only:
        cpu_memory_table(args.models.split(","), args.batch)
        return
    if args._child:
        import keras

        rows = measure(args.models.split(","), args.batch,
                       _jits(keras.backend.backend(), args.xla), args.steps, args.rounds)
        print(json.dumps(rows))
        return
    if args.backend:
        rows = run_backends(args)
    else:
        import keras

        rows = measure(args.models.split(","), args.batch,
                       _jits(keras.backend.backend(), args.xla), args.steps, args.rounds)
    print("\n| backend | model | batch | compiled | step | ms/step | ratio to plain | "
          "first call s |\n|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))
    import keras

    print(f"\nKeras {keras.__version__}, {os.cpu_count()} CPUs, {args.rounds} rounds x "
          f"{args.steps} steps; ratios are medians over rounds within one backend's process")
    print_targets(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


def print_targets(rows: list[dict]) -> None:
    """Each target (TensorFlow, XLA off) against what was measured: met, or the gap."""
    lines = []
    for row in rows:
        target = TARGETS.get((row["model"], row["mode"]))
        if target and not row["xla"] and row["backend"] == "tensorflow":
            ratio = row["ratio_to_plain"]
            verdict = "met" if ratio <= target else f"missed: {ratio / target:.2f}x the target"
            lines.append(f"| {row['model']} {row['mode']} batch {row['batch']}: <= {target}x | "
                         f"{ratio:.2f}x | {verdict} |")
        if row["xla"] and row["mode"] == "jacobian":
            ok = row["first_call_s"] < XLA_COMPILE_TARGET_S
            lines.append(f"| {row['backend']} {row['model']} jacobian compile batch "
                         f"{row['batch']}: < 60 s | {row['first_call_s']:.1f} s | "
                         f"{'met' if ok else 'missed'} |")
    if lines:
        print("\n| target | measured | verdict |\n|---|---|---|")
        print("\n".join(lines))


def cpu_step_memory(arch: str, mode: str, batch: int) -> None:
    """In a fresh TensorFlow process with its BFC allocator on the CPU (which then counts its
    bytes): the peak memory TensorFlow holds while training steps run, weights included."""
    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(0).random((batch * 3, 28, 28, 1), dtype=np.float32)
    y = np.zeros(len(x), np.int64)
    model = build(arch, mode, False)
    time_steps(model, x, y, batch, 2)
    tf.config.experimental.reset_memory_stats("CPU:0")
    time_steps(model, x, y, batch, 3)
    info = tf.config.experimental.get_memory_info("CPU:0")
    print(json.dumps({"model": arch, "mode": mode, "batch": batch,
                      "step_peak_mb": info["peak"] / 2**20}))


def cpu_memory_table(models: list[str], batches: list[int]) -> list[dict]:
    """Peak memory per step on CPU (TensorFlow), each configuration in its own process."""
    rows = []
    for arch in models:
        for batch in batches:
            peaks = {}
            for mode in MODES:
                env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true",
                           KERAS_BACKEND="tensorflow")
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
    compiled = {"tensorflow": "XLA" if r["xla"] else "graph", "jax": "jit",
                "torch": "eager"}[r["backend"]]
    return (f"| {r['backend']} | {r['model']} | {r['batch']} | {compiled} | {r['mode']} | "
            f"{r['ms_per_step']:.1f} | {r['ratio_to_plain']:.2f}x | {r['first_call_s']:.1f} |")


if __name__ == "__main__":
    main()
