"""The `keras-margin` command: reproduce the paper's tables, sweep C, report, draw figures.

    keras-margin reproduce table1 --rows mlp-l2,mlp-baseline --seeds 10 --out runs/
    keras-margin reproduce table1 --quick --data-dir ../shared/data/mnist-t10k
    keras-margin sweep-c --arch mlp --C 1e-6,1e-4,1e-2,1 --seeds 3
    keras-margin report runs/
    keras-margin figures runs/ --out figures/
"""

from __future__ import annotations

import argparse
import logging
import sys

from keras_margin.experiments import report as report_module
from keras_margin.experiments.rows import TABLES, get_row, sweep_row

SWEEP_C = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 (the paper: 10)")
    parser.add_argument("--epochs", type=int, default=None, help="override the rows' epochs")
    parser.add_argument("--dataset", default=None, help="override the rows' data set")
    parser.add_argument("--data-dir", default=None, help="folder with the original data files")
    parser.add_argument("--out", default="runs", help="output folder (default: runs/)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized: data subsets, 10 epochs; labelled QUICK everywhere")
    parser.add_argument("--verbose", type=int, default=2, help="Keras fit verbosity")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keras-margin", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    reproduce = sub.add_parser("reproduce", help="train and evaluate table rows")
    reproduce.add_argument("table", choices=sorted(TABLES))
    reproduce.add_argument("--rows", default=None, help="comma-separated row names")
    _common(reproduce)
    sweep = sub.add_parser("sweep-c", help="Figure 4: l2 margin maximization over C")
    sweep.add_argument("--arch", default="mlp,lenet5")
    sweep.add_argument("--C", default=",".join(f"{c:g}" for c in SWEEP_C))
    _common(sweep)
    rep = sub.add_parser("report", help="Markdown and CSV tables from finished runs")
    rep.add_argument("runs")
    rep.add_argument("--out", default=None, help="file prefix (default: RUNS/report)")
    fig = sub.add_parser("figures", help="PNG figures from finished runs")
    fig.add_argument("runs")
    fig.add_argument("--out", default="figures")
    return parser


def _rows(args: argparse.Namespace) -> list:
    if args.command == "sweep-c":
        return [sweep_row(arch, float(c)) for arch in args.arch.split(",")
                for c in args.C.split(",")]
    table = TABLES[args.table]
    if not args.rows:
        return list(table.values())
    rows = [get_row(name.strip()) for name in args.rows.split(",")]
    for row in rows:
        if row.table != args.table:
            raise ValueError(f"Row {row.name!r} belongs to {row.table}, not {args.table}.")
    return rows


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    try:
        if args.command == "report":
            print(report_module.write(args.runs, args.out))
            return 0
        if args.command == "figures":
            from keras_margin.experiments import figures

            for path in figures.write(args.runs, args.out):
                print(path)
            return 0
        from keras_margin.experiments import runner

        rows = _rows(args)
        for seed in range(args.seeds):
            for row in rows:
                runner.run(row, seed, args.out, epochs=args.epochs, quick=args.quick,
                           data_dir=args.data_dir, dataset=args.dataset, verbose=args.verbose)
    except (ValueError, FileNotFoundError) as err:
        print(f"keras-margin: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
