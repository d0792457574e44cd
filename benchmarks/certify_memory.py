"""Peak memory of certify at batch 100: LeNet-5 and ResNet-20 on MNIST, one process each.

    python benchmarks/certify_memory.py --data-dir DIR \\
        --out docs/results/benchmarks/certify_memory.json \\
        > docs/results/benchmarks/certify_memory.md

Each (model, method) runs in a fresh Python process: `certify.lower_margins` on the first 100
MNIST test digits at l_inf 0.01 in [0, 1], `batch_size=100` (one compiled program, one batch),
after one call on the same batch to compile it. The process's peak resident memory (ru_maxrss)
is read before the model is built and after the second call: the bounds' memory is their
difference's share of the peak. Weights are the architectures' initial ones (seed 0): the
memory depends on the shapes, not the values. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CASES = [("lenet5", "auto"), ("lenet5", "crown-ibp"), ("resnet20", "auto"),
         ("resnet20", "crown-ibp")]
CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras_margin
import keras
from keras_margin import architectures, certify, datasets
arch, method, data_dir, n = sys.argv[1], sys.argv[2], sys.argv[3] or None, int(sys.argv[4])
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
_, _, (x, y) = datasets.load("mnist", validation=0, data_dir=data_dir)
x, y = x[:n], y[:n]
before = peak()
keras.utils.set_random_seed(0)
net = architectures.lenet5() if arch == "lenet5" else \
    architectures.resnet20(input_shape=(28, 28, 1))
args = dict(eps=0.01, norm="linf", method=method, clip_min=0.0, clip_max=1.0, batch_size=n)
start = time.perf_counter()
certify.lower_margins(net, x, y, **args)
first = time.perf_counter() - start
start = time.perf_counter()
certify.lower_margins(net, x, y, **args)
print(json.dumps({"model": arch, "method": method, "points": n, "batch_size": n,
                  "plan": certify.crown_plan(net, "auto") if method == "auto" else None,
                  "peak_before_mib": before, "peak_mib": peak(), "first_call_s": first,
                  "seconds": time.perf_counter() - start}))
"""


def markdown(report: dict) -> str:
    """The committed table, from the json alone."""
    lines = [f"<!-- python benchmarks/certify_memory.py ({report['backend']}, {report['cpu']}, "
             f"{report['cores']} cores, {report['memory_gib']:.0f} GiB) -->", "",
             f"certify.lower_margins on {report['rows'][0]['points']} MNIST test digits at "
             f"`batch_size={report['rows'][0]['batch_size']}` (one batch), l_inf 0.01; peak "
             "resident memory of the process.", "",
             "| model | method | layers by CROWN (or exact) | peak before the model (MiB) | "
             "peak (MiB) | compile + first call (s) | second call (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        plan = r["plan"]
        layers = "" if plan is None else \
            f"{sum(route in ('exact', 'dense', 'patches') for _, route in plan)} of {len(plan)}"
        lines.append(f"| {r['model']} | {r['method']} | {layers} | {r['peak_before_mib']:.0f} | "
                     f"{r['peak_mib']:.0f} | {r['first_call_s']:.1f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for arch, method in CASES:
        proc = subprocess.run([sys.executable, "-c", CHILD, arch, method, args.data_dir or "",
                               str(args.points)], capture_output=True, text=True, check=False)
        if proc.returncode:
            raise SystemExit(f"{arch} {method} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{arch} {method}: peak {rows[-1]['peak_mib']:.0f} MiB", file=sys.stderr,
              flush=True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from keras_margin.experiments.environment import machine

    where = machine()
    report = {"keras": keras.__version__, "backend": keras.backend.backend(),
              "cpu": where.get("cpu"), "cores": where["cores"],
              "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30,
              "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print(markdown(report))


if __name__ == "__main__":
    main()
