"""Shared by the examples/table*_*.py scripts: arguments, the runner, ours vs the paper."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import keras

from keras_margin.experiments import runner
from keras_margin.experiments.rows import Row, get_row


def run_example(row_name: str, build: Callable[[Row], keras.Model],
                argv: list[str] | None = None) -> dict:
    """Trains `row_name` with the model that `build(row)` makes, evaluates it, prints the result.

    The script's own arguments: --epochs, --seed, --data-dir, --quick, --out. The run goes into
    the same folder layout as `keras-margin reproduce`, so it resumes and reports alike.
    """
    row = get_row(row_name)
    parser = argparse.ArgumentParser(description=f"{row.table}, row {row.label!r}")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"default: the paper's {row.epochs} (10 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="CPU-sized data subsets")
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    metrics = runner.run(row, args.seed, args.out, epochs=args.epochs, quick=args.quick,
                         data_dir=args.data_dir, build=build)
    paper = row.paper
    print(f"\n{row.label} ({metrics['protocol']} protocol; {metrics['data']}; "
          f"{metrics['epochs']} epochs, seed {args.seed})")
    print(f"{'':14}{'ours':>10}{'paper':>10}")
    for key, scale, unit in (("error", 100, "%"), ("fgsm_error", 100, "%"),
                             ("rho_adv", 1, "")):
        print(f"{key + unit:14}{metrics[key] * scale:10.3f}{paper.get(key, float('nan')):10.3f}")
    return metrics
