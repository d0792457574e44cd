"""Cost of one training step against its arithmetic floor: plain, margin and mixed precision.

For the MLP 1000-1000-1000 and LeNet-5 at batch 100 (fit level: `model.fit` with the default
compile, the median over timed steps, configurations interleaved round by round in one process
so that a shared machine slows them alike), per backend in its own process:

* the step kinds: plain cross-entropy; MarginModel with rival="logit", rival="jacobian" (the
  paper's), rival="jacobian" searched in bfloat16 (`rival_dtype`); and under Keras's
  "mixed_bfloat16" policy a plain and a jacobian margin step;
* each step's arithmetic, from XLA's cost analysis of the same gradient (a JAX process), and the
  machine's measured matmul (1000^3) and convolution (LeNet's second layer) throughput in
  float32 and bfloat16: the floor is FLOPs / the float32 peak of the step's dominant kind;
* the top operations by self time from TensorFlow's profiler (`--profile`);
* the ratios to the float32 plain step beside the issue's targets, met or missed.

    python benchmarks/step_cost.py --backend tensorflow,jax --profile \\
        --out docs/results/benchmarks/step_cost.json > docs/results/benchmarks/step_cost.md
    python benchmarks/step_cost.py --memory          # peak memory per step kind (TensorFlow)
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

MODES = ("plain", "logit", "jacobian", "jacobian-bf16-rival", "plain-mixed-bf16",
         "jacobian-mixed-bf16")
# (model, mode) -> the ratio to the float32 plain step asked for (issue 18).
TARGETS = {("mlp", "jacobian"): 2.5, ("lenet5", "jacobian"): 4.5,
           ("mlp", "jacobian-mixed-bf16"): 1.2, ("lenet5", "jacobian-mixed-bf16"): 1.5}


def build(arch: str, mode: str):
    """The model of one step kind, compiled as a user would (fit's defaults)."""
    import keras

    from keras_margin import MarginModel, architectures

    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("mixed_bfloat16" if mode.endswith("mixed-bf16") else "float32")
    try:
        base = architectures.mlp() if arch == "mlp" else architectures.lenet5()
    finally:
        keras.config.set_dtype_policy("float32")
    if mode.startswith("plain"):
        base.compile(optimizer="adam",
                     loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return base
    model = MarginModel(base, C=0.1, loss="crossentropy",
                        rival="logit" if mode == "logit" else "jacobian",
                        rival_dtype="bfloat16" if mode == "jacobian-bf16-rival" else None)
    model.compile(optimizer="adam")
    return model


class _StepClock:
    """Per-batch wall-clock times of one `fit` (as a Keras callback)."""

    def __init__(self):
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                clock.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                clock.times.append(time.perf_counter() - clock.start)

        self.callback, self.times, self.start = Callback(), [], 0.0


def fit_ms(model, x, y, batch: int) -> float:
    """Median ms per step of one `fit` epoch over x (the first step excluded)."""
    clock = _StepClock()
    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False,
              callbacks=[clock.callback])
    return statistics.median(clock.times[1:]) * 1000


def interleaved(built: dict, x, y, batch: int, rounds: int) -> tuple[dict, dict]:
    """Each model's first `fit` (compilation) in seconds, then its median ms per step over
    `rounds` rounds, the models taking turns within a round (a shared machine slows them
    alike): ({name: first_s}, {name: [ms per round]})."""
    first = {}
    for name, model in built.items():
        start = time.perf_counter()
        model.fit(x[:2 * batch], y[:2 * batch], batch_size=batch, epochs=1, verbose=0)
        first[name] = time.perf_counter() - start
    times = {name: [] for name in built}
    for _ in range(rounds):
        for name, model in built.items():
            times[name].append(fit_ms(model, x, y, batch))
    return first, times


def ratio(times: dict, name: str, to: str) -> float:
    """The median over rounds of name's step time over `to`'s in the same round."""
    return statistics.median(t / p for t, p in zip(times[name], times[to]))


def measure(models: list[str], batch: int, steps: int, rounds: int) -> list[dict]:
    """Every mode's median ms per step, interleaved round by round (this process's backend)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.random((batch * (steps + 1), 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, len(x))
    rows = []
    for arch in models:
        first, times = interleaved({mode: build(arch, mode) for mode in MODES}, x, y, batch,
                                   rounds)
        for mode in MODES:
            rows.append({"backend": keras.backend.backend(), "model": arch, "batch": batch,
                         "mode": mode, "ms_per_step": statistics.median(times[mode]),
                         "ratio_to_plain": ratio(times, mode, "plain"),
                         "first_call_s": first[mode]})
            print(f"{arch} {mode}: {rows[-1]['ms_per_step']:.1f} ms", file=sys.stderr)
    return rows


# -- the machine's peak and the steps' arithmetic --------------------------------------------
def peak_throughput(reps: int = 10) -> dict:
    """GFLOP/s of a 1000^3 matmul and of LeNet's second convolution (batch 100, 12x12x32 ->
    64, 5x5), float32 and bfloat16, compiled by this process's backend."""
    import keras
    import numpy as np
    from keras import ops

    from keras_margin import backend

    out = {}
    for dtype in ("float32", "bfloat16"):
        a = ops.cast(np.random.rand(1000, 1000), dtype)
        images = ops.cast(np.random.rand(100, 12, 12, 32), dtype)
        kernel = ops.cast(np.random.rand(5, 5, 32, 64), dtype)
        cases = {"matmul": (lambda p, q: ops.matmul(p, q), (a, a), 2 * 1000 ** 3),
                 "conv": (lambda p, q: ops.conv(p, q), (images, kernel),
                          2 * 100 * 8 * 8 * 64 * 5 * 5 * 32)}
        for kind, (fn, args, flops) in cases.items():
            # TensorFlow's graph (oneDNN kernels), JAX's jit (XLA), PyTorch eager.
            program = backend.compile_fn(fn, keras.Sequential([]),
                                         keras.backend.backend() == "jax")
            ops.convert_to_numpy(program(*args))
            start = time.perf_counter()
            for _ in range(reps):
                ops.convert_to_numpy(program(*args))
            out[f"{kind}_{dtype}"] = flops / ((time.perf_counter() - start) / reps) / 1e9
    return out


def step_flops(models: list[str], batch: int) -> dict:
    """FLOPs of each float32 step's gradient, by XLA's cost analysis (JAX, this process)."""
    import jax
    import keras
    import numpy as np

    from keras_margin import architectures, sensitivity

    out = {}
    x = jax.numpy.asarray(np.random.rand(batch, 28, 28, 1).astype("float32"))
    labels = jax.numpy.asarray(np.random.randint(0, 10, batch).astype("int32"))
    for arch in models:
        base = architectures.mlp() if arch == "mlp" else architectures.lenet5()
        weights = [v.value for v in base.trainable_variables]

        def objective(values, rival, base=base):
            with keras.StatelessScope(state_mapping=list(zip(base.trainable_variables,
                                                             values))):
                if rival is None:
                    return keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
                        labels, base(x), from_logits=True))
                logits, eps = sensitivity.logits_and_sensitivity(base, x, labels,
                                                                 rival=rival)
                return keras.ops.mean(eps) + keras.ops.mean(logits)

        for mode, rival in (("plain", None), ("logit", "logit"), ("jacobian", "jacobian")):
            compiled = jax.jit(jax.grad(lambda v, r=rival: objective(v, r))).lower(
                weights).compile()
            analysis = compiled.cost_analysis()
            analysis = analysis[0] if isinstance(analysis, list) else analysis
            out[f"{arch}/{mode}"] = float(analysis["flops"])
    return out


# -- the profile -----------------------------------------------------------------------------
def profile_top_ops(arch: str, mode: str, batch: int, top: int = 6) -> list[dict]:
    """TensorFlow's profiler over 10 fit steps: self time per op type, the largest first."""
    import glob
    import shutil
    import tempfile

    import numpy as np
    import tensorflow as tf
    from xprof.convert import raw_to_tool_data

    model = build(arch, mode)
    x = np.random.default_rng(1).random((batch * 10, 28, 28, 1), dtype=np.float32)
    y = np.zeros(len(x), np.int64)
    model.fit(x[:batch * 2], y[:batch * 2], batch_size=batch, verbose=0)
    folder = tempfile.mkdtemp()
    tf.profiler.experimental.start(folder)
    model.fit(x, y, batch_size=batch, verbose=0)
    tf.profiler.experimental.stop()
    path = glob.glob(os.path.join(folder, "**", "*.xplane.pb"), recursive=True)[-1]
    table = json.loads(raw_to_tool_data.xspace_to_tool_data([path], "framework_op_stats",
                                                            {})[0])
    shutil.rmtree(folder, ignore_errors=True)
    rows = (table[0] if isinstance(table, list) else table)["rows"]
    by_type: dict[str, float] = {}
    for row in rows:
        cells = [cell.get("v") for cell in row["c"]]
        if cells[2] != "IDLE":
            by_type[cells[2]] = by_type.get(cells[2], 0.0) + cells[7]
    total = sum(by_type.values())
    ranked = sorted(by_type.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": op, "ms_per_step": us / 10 / 1000, "share": us / total}
            for op, us in ranked]


# -- running the backends, printing -----------------------------------------------------------
def _child(args: argparse.Namespace, backend: str, task: str) -> dict | list:
    env = dict(os.environ, KERAS_BACKEND=backend)
    cmd = [sys.executable, __file__, "--_child", task, "--models", args.models, "--steps",
           str(args.steps), "--rounds", str(args.rounds), "--batch", str(args.batch)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{backend} {task} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> dict:
    models = args.models.split(",")
    try:
        flops = _child(args, "jax", "flops")
    except RuntimeError as err:  # no JAX here: the floor columns stay empty
        print(f"no FLOP count (XLA's cost analysis needs JAX): {str(err)[:200]}",
              file=sys.stderr)
        flops = {}
    result = {"flops": flops, "backends": {}}
    for backend in args.backend.split(","):
        result["backends"][backend] = {"peak": _child(args, backend, "peak"),
                                       "steps": _child(args, backend, "steps")}
    if args.profile:
        result["profile"] = {f"{arch}/{mode}": profile_top_ops(arch, mode, args.batch)
                             for arch in models for mode in ("plain", "jacobian")}
    return result


def report(result: dict, args: argparse.Namespace) -> str:
    lines = [f"<!-- python benchmarks/step_cost.py --backend {args.backend} --models "
             f"{args.models} --batch {args.batch} --steps {args.steps} --rounds "
             f"{args.rounds}{' --profile' if args.profile else ''} -->", ""]
    for backend, data in result["backends"].items():
        peak = data["peak"]
        lines += [f"### {backend}", "",
                  f"Measured peak: matmul {peak['matmul_float32']:.0f} GFLOP/s float32, "
                  f"{peak['matmul_bfloat16']:.0f} bfloat16; convolution "
                  f"{peak['conv_float32']:.0f} float32, {peak['conv_bfloat16']:.0f} bfloat16.",
                  "", "| model | step | ms/step | ratio to float32 plain | GFLOP (XLA) | "
                  "floor ms (float32 peak) | time / floor | target | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in data["steps"]:
            lines.append(_step_line(row, result["flops"], peak))
        lines.append("")
    for key, ops in result.get("profile", {}).items():
        lines.append(f"TensorFlow profile, {key}: " + ", ".join(
            f"{op['op']} {op['ms_per_step']:.1f} ms ({100 * op['share']:.0f} %)" for op in ops))
    return "\n".join(lines)


def _step_line(row: dict, flops: dict, peak: dict) -> str:
    kind = "jacobian" if "jacobian" in row["mode"] else "plain" if "plain" in row["mode"] \
        else "logit"
    gflop = flops.get(f"{row['model']}/{kind}", float("nan")) / 1e9
    rate = peak["matmul_float32"] if row["model"] == "mlp" else peak["conv_float32"]
    floor = gflop / rate * 1000
    target = TARGETS.get((row["model"], row["mode"]))
    verdict = "—" if target is None else "met" if row["ratio_to_plain"] <= target else \
        f"missed ({row['ratio_to_plain'] / target:.2f}x the target)"
    return (f"| {row['model']} | {row['mode']} | {row['ms_per_step']:.1f} | "
            f"{row['ratio_to_plain']:.2f}x | {gflop:.2f} | {floor:.1f} | "
            f"{row['ms_per_step'] / floor:.2f}x | {'—' if target is None else f'<= {target}x'} "
            f"| {verdict} |")


def memory(models: list[str], batches: list[int]) -> list[dict]:
    """Peak memory of each step kind (TensorFlow's BFC allocator on the CPU), each
    configuration in a fresh process."""
    rows = []
    for arch in models:
        for batch in batches:
            for mode in MODES:
                env = dict(os.environ, TF_CPU_ALLOCATOR_USE_BFC="true",
                           KERAS_BACKEND="tensorflow")
                out = subprocess.run([sys.executable, __file__, "--_memory", arch, mode,
                                      str(batch)], capture_output=True, text=True, check=True,
                                     env=env)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"| {arch} | {batch} | {mode} | {rows[-1]['step_peak_mb']:.0f} |")
    return rows


def _memory_child(arch: str, mode: str, batch: int) -> None:
    import numpy as np
    import tensorflow as tf

    x = np.random.default_rng(0).random((batch * 3, 28, 28, 1), dtype=np.float32)
    y = np.zeros(len(x), np.int64)
    model = build(arch, mode)
    model.fit(x[:batch], y[:batch], batch_size=batch, verbose=0)
    tf.config.experimental.reset_memory_stats("CPU:0")
    model.fit(x, y, batch_size=batch, verbose=0)
    peak = tf.config.experimental.get_memory_info("CPU:0")["peak"] / 2 ** 20
    print(json.dumps({"model": arch, "mode": mode, "batch": batch, "step_peak_mb": peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="tensorflow,jax")
    parser.add_argument("--models", default="mlp,lenet5")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true",
                        help="TensorFlow's top operations of the plain and jacobian steps")
    parser.add_argument("--memory", action="store_true",
                        help="peak memory per step kind at batch 100 and 1000 (TensorFlow)")
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_memory", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._memory:
        _memory_child(args._memory[0], args._memory[1], int(args._memory[2]))
        return
    if args._child:
        models = args.models.split(",")
        task = {"flops": lambda: step_flops(models, args.batch), "peak": peak_throughput,
                "steps": lambda: measure(models, args.batch, args.steps, args.rounds)}
        print(json.dumps(task[args._child]()))
        return
    if args.memory:
        print(f"<!-- python benchmarks/step_cost.py --memory --models {args.models} (TensorFlow's "
              "BFC allocator on the CPU, each step kind in a fresh process) -->\n\n"
              "| model | batch | step | peak MB |\n|---|---|---|---|")
        result = {"memory": memory(args.models.split(","), [100, 1000])}
    else:
        result = run(args)
        print(report(result, args))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
