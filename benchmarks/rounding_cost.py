"""What issue 30's rounding rules cost: certify in float64 with its allowance, attacks with
strict flips, against a checkout from before them, side by side in one run.

    git worktree add /tmp/before e450d2c   # the commit before issue 30
    python benchmarks/rounding_cost.py --before /tmp/before --data-dir DIR [--repeats 3]

Each measurement runs in a fresh process per checkout (PYTHONPATH), alternating, and the
ratio is of the medians: `certified_radius` (CROWN and IBP, l_inf) of 100 test digits and
FMN/DDN/DeepFool on 200, on a 784-256-256-10 MLP trained one epoch (the same seed in both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

MEASURE = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras_margin, keras, numpy as np
from keras_margin import architectures, attacks, certify, datasets
(x, y), _, (xt, yt) = datasets.load("mnist", validation=0, data_dir=sys.argv[1] or None)
keras.utils.set_random_seed(0)
net = architectures.mlp(hidden=(256, 256))
net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
net.fit(x[:10000], y[:10000], epochs=1, batch_size=100, verbose=0)
out = {"package": os.path.dirname(keras_margin.__file__)}
def timed(name, call):
    call()  # compile
    start = time.perf_counter(); result = call(); out[name] = time.perf_counter() - start
    return result
for method in ("crown", "ibp"):
    r = timed(f"certify_{method}", lambda: certify.certified_radius(
        net, xt[:100], yt[:100], norm="linf", method=method, clip_min=0.0, clip_max=1.0))
    out[f"median_radius_{method}"] = float(np.median(r))
for name, call in (("fmn", lambda: attacks.fmn(net, xt[:200], yt[:200], norm="l2")),
                   ("ddn", lambda: attacks.ddn(net, xt[:200], yt[:200])),
                   ("deepfool", lambda: attacks.deepfool(net, xt[:200], yt[:200]))):
    r = timed(name, call)
    out[f"median_distance_{name}"] = float(np.median(r.distances("l2")[r.success]))
print(json.dumps(out))
"""


def run(checkout: str, data_dir: str) -> dict:
    env = dict(os.environ, PYTHONPATH=checkout)
    done = subprocess.run([sys.executable, "-c", MEASURE, data_dir or ""], env=env,
                          capture_output=True, text=True, check=True, cwd=checkout)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="a checkout from before issue 30")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs = {"before": [], "after": []}
    for _ in range(args.repeats):
        runs["before"].append(run(os.path.abspath(args.before), args.data_dir))
        runs["after"].append(run(HERE, args.data_dir))
    keys = [k for k in runs["after"][0] if k != "package"]
    print("| measure | before | after | after / before |\n|---|---|---|---|")
    for key in keys:
        before = statistics.median(r[key] for r in runs["before"])
        after = statistics.median(r[key] for r in runs["after"])
        unit = " s" if not key.startswith("median_") else ""
        print(f"| {key} | {before:.4g}{unit} | {after:.4g}{unit} | {after / before:.4f} |")
    print(json.dumps(runs))


if __name__ == "__main__":
    main()
