"""method="auto"'s budget: CROWN's cost per point against its time and its bounds, ResNet-20.

    python benchmarks/crown_auto.py --data-dir DIR \\
        --out docs/results/benchmarks/crown_auto.json > docs/results/benchmarks/crown_auto.md

ResNet-20 (28x28x1) trained three epochs on the first 10,000 MNIST training digits (plain
cross-entropy; three for batch norm's moving statistics to settle); the first `--points` test
digits bounded at l_inf `--eps` in [0, 1] by "crown-ibp" and by "auto" at several budgets
(`bounds.AUTO_BUDGET`, entries of back-substituted rows per point), side by side in one
process: the layers each budget pays for, its cost, the time (compiled, then timed on a second
call), the certified share and the median smallest lower margin. The cost model is what the
budget assumes: time in proportion to the entries. Run it on an idle machine (the queue was
paused for the committed one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_margin  # noqa: E402, F401, I001 - first: TensorFlow without its start-up noise

import numpy as np  # noqa: E402

from keras_margin import architectures, certify, datasets  # noqa: E402
from keras_margin.propagation import bounds  # noqa: E402


def trained(data_dir: str | None):
    import keras

    (x, y), _, (x_test, y_test) = datasets.load("mnist", validation=0, data_dir=data_dir)
    keras.utils.set_random_seed(0)
    net = architectures.resnet20(input_shape=(28, 28, 1))
    net.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    net.fit(x[:10000], y[:10000], epochs=3, batch_size=100, verbose=0)
    accuracy = float(net.evaluate(x_test[:1000], y_test[:1000], verbose=0)[1])
    return net, x_test, y_test, accuracy


def measure(net, x, y, eps: float, method: str, budget: int | None) -> dict:
    if budget is not None:
        bounds.AUTO_BUDGET = budget
    operations = certify.chain_of(net)
    routes = bounds.crown_routes(operations, method)
    cost = int(sum(bounds.route_cost(operations[:i + 1], r) for i, r in routes.items()))
    args = dict(eps=eps, norm="linf", method=method, clip_min=0.0, clip_max=1.0)
    start = time.perf_counter()
    certify.lower_margins(net, x, y, **args)
    first = time.perf_counter() - start
    start = time.perf_counter()
    low = certify.lower_margins(net, x, y, **args)
    seconds = time.perf_counter() - start
    smallest = np.where(np.isfinite(low), low, np.inf).min(axis=1)
    row = {"method": method, "budget": budget, "cost_per_point": cost,
           "crown_layers": sum(r in ("dense", "patches") for r in routes.values()),
           "layers": len(routes), "first_call_s": first, "seconds": seconds,
           "certified_share": float((smallest > 0).mean()),
           "median_smallest_margin": float(np.median(smallest))}
    print(f"{method} {budget}: cost {cost:.3g}/point, {row['crown_layers']} CROWN layers, "
          f"{seconds:.1f} s", file=sys.stderr, flush=True)
    return row


def rate(row: dict, points: int) -> float | None:
    """Seconds per 1e9 entries of back-substituted rows (None: no CROWN layer)."""
    return row["seconds"] / (points * row["cost_per_point"] / 1e9) if row["cost_per_point"] \
        else None


def markdown(result: dict) -> str:
    """The committed table, from the json alone."""
    default, points = result["default_budget"], result["points"]
    lines = [f"<!-- python benchmarks/crown_auto.py ({result['backend']}, {result['cpu']}, "
             f"{result['cores']} cores) -->", "",
             f"ResNet-20 (28x28x1, three epochs on 10,000 digits, test accuracy "
             f"{100 * result['test_accuracy_first_1000']:.1f} % on the first 1,000), the first "
             f"{points} test digits at l_inf {result['eps']}; time of the second call "
             "(compiled).", "",
             "| method | budget (entries/point) | CROWN layers | cost (entries/point) | time (s) "
             "| s per 1e9 entries | certified | median smallest margin |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        budget = "" if r["budget"] is None else f"2^{r['budget'].bit_length() - 1}" + (
            " (default)" if r["budget"] == default else "")
        per = rate(r, points)
        lines.append(f"| {r['method']} | {budget} | {r['crown_layers']} of {r['layers']} | "
                     f"{r['cost_per_point']:.3g} | {r['seconds']:.1f} | "
                     f"{'' if per is None else f'{per:.1f}'} | "
                     f"{100 * r['certified_share']:.0f} % | {r['median_smallest_margin']:.4g} |")
    full = result["full_crown_cost_per_point"]
    lines += ["", f"Full CROWN (`method=\"crown\"`) would cost {full:.3g} entries per point, "
              f"{full / default:.0f} times the default budget."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--eps", type=float, default=0.001)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    import keras

    from keras_margin.experiments.environment import machine

    net, x_test, y_test, accuracy = trained(args.data_dir)
    x, y = x_test[:args.points], y_test[:args.points]
    default = bounds.AUTO_BUDGET
    rows = [measure(net, x, y, args.eps, "crown-ibp", None)]
    for budget in (2 ** 25, default, 2 ** 29):
        rows.append(measure(net, x, y, args.eps, "auto", budget))
    bounds.AUTO_BUDGET = default
    full = int(sum(bounds.route_cost(certify.chain_of(net)[:i + 1], r)
               for i, r in bounds.crown_routes(certify.chain_of(net), "crown").items()))
    where = machine()
    result = {"keras": keras.__version__, "backend": keras.backend.backend(),
              "cpu": where.get("cpu"), "cores": where["cores"], "eps": args.eps,
              "points": args.points, "test_accuracy_first_1000": accuracy,
              "default_budget": default, "full_crown_cost_per_point": full, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print(markdown(result))


if __name__ == "__main__":
    main()
