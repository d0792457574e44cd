"""CROWN on LeNet-5 with its second convolution by patches against the interval fallback.

    python benchmarks/crown_patches.py --data-dir DIR \\
        --out docs/results/benchmarks/crown_patches.json > docs/results/benchmarks/crown_patches.md

LeNet-5 trained one epoch (as benchmarks/certify_bench.py), the first `--points` test digits:
`certify` at l_inf 0.01 and `certified_radius` (l_inf and l2) of a fifth of them, once with
every route `certify.crown_plan` gives (the second convolution by patches) and once with
that layer left to interval bounds (the rule before patches: dense rows up to
`bounds.CROWN_NEURONS` neurons, intervals above), side by side in one process. Both bounds
are sound; the patches' can only be tighter (each intermediate bound is the better of CROWN's
and the interval's). Run it on an idle machine: the ratios are what it measures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_margin  # noqa: E402, F401, I001 - first: TensorFlow without its start-up noise

import numpy as np  # noqa: E402
from certify_bench import trained  # noqa: E402

from keras_margin import certify  # noqa: E402
from keras_margin.propagation import bounds  # noqa: E402

EPS = 0.01


def _without_patches(operations: list, index: int) -> str:
    """The route rule before patches: dense rows up to CROWN_NEURONS neurons, else intervals."""
    route = ROUTE(operations, index)
    if route != "patches":
        return route
    return "dense" if math.prod(operations[index].out_shape) <= bounds.CROWN_NEURONS \
        else "interval"


ROUTE = bounds.crown_route


def measure(net, x, y, points: int, routes: str) -> dict:
    bounds.crown_route = ROUTE if routes == "patches" else _without_patches
    certify._PROGRAMS.clear()
    certify.certify(net, x[:points], y[:points], eps=EPS, clip_min=0.0, clip_max=1.0)  # compile
    start = time.perf_counter()
    ok = certify.certify(net, x[:points], y[:points], eps=EPS, clip_min=0.0, clip_max=1.0)
    row = {"routes": routes, "plan": [list(p) for p in certify.crown_plan(net)]
           if routes == "patches" else None, "points": points,
           "certify_s": time.perf_counter() - start, "certified_share": float(ok.mean())}
    low = certify.lower_margins(net, x[:points], y[:points], eps=EPS, clip_min=0.0,
                                clip_max=1.0)
    row["lower_margins"] = np.where(np.isfinite(low), low, np.nan).tolist()
    for norm in ("linf", "l2"):
        start = time.perf_counter()
        radius = certify.certified_radius(net, x[:points // 5], y[:points // 5], norm=norm,
                                          clip_min=0.0, clip_max=1.0)
        row[f"radius_{norm}_s"] = time.perf_counter() - start
        row[f"radius_{norm}"] = radius.tolist()
    bounds.crown_route = ROUTE
    print(f"{routes}: certify {row['certify_s']:.1f} s, radii {row['radius_linf_s']:.1f} / "
          f"{row['radius_l2_s']:.1f} s", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import keras

    net, x_test, y_test = trained("lenet5", args.data_dir)
    from keras_margin.experiments.environment import machine

    where = machine()
    cpu = where.get("cpu")
    result = {"keras": keras.__version__, "backend": keras.backend.backend(), "cpu": cpu,
              "cores": where["cores"], "eps": EPS,
              "rows": [measure(net, x_test, y_test, args.points, "intervals"),
                       measure(net, x_test, y_test, args.points, "patches")]}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    old, new = result["rows"]
    gain = np.array(new["lower_margins"]) - np.array(old["lower_margins"])
    print(f"<!-- python benchmarks/crown_patches.py ({result['backend']}, {cpu}, "
          f"{result['cores']} cores) -->\n\nLeNet-5 (one epoch), the first {args.points} test "
          f"digits; radii of the first {args.points // 5}.\n\n| second convolution | certify "
          "(s) | certified at l_inf 0.01 | l_inf radii (s) | median l_inf radius | l2 radii (s)"
          " | median l2 radius |\n|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(f"| {r['routes']} | {r['certify_s']:.1f} | {100 * r['certified_share']:.1f} % | "
              f"{r['radius_linf_s']:.1f} | {np.median(r['radius_linf']):.5f} | "
              f"{r['radius_l2_s']:.1f} | {np.median(r['radius_l2']):.4f} |")
    print(f"\nPatches / intervals: certify time x{new['certify_s'] / old['certify_s']:.2f}, "
          f"l_inf radii time x{new['radius_linf_s'] / old['radius_linf_s']:.2f}, median l_inf "
          f"radius x{np.median(new['radius_linf']) / np.median(old['radius_linf']):.2f}, "
          f"median l2 radius x{np.median(new['radius_l2']) / np.median(old['radius_l2']):.2f}. "
          f"Lower margin bounds at l_inf 0.01: patches minus intervals, smallest "
          f"{np.nanmin(gain):.3g}, median {np.nanmedian(gain):.3g} (never below 0: both sound, "
          "each the better of CROWN's and the interval's).")


if __name__ == "__main__":
    main()
