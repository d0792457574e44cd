"""The `keras-margin` command: reproduce the paper's tables, sweep C, evaluate, report, figures.

    keras-margin reproduce table1 --list                 # the rows of Table I
    keras-margin reproduce table1 --rows mlp-l2,mlp-baseline --seeds 10 --data-dir DIR
    keras-margin reproduce table1 --quick                # CPU-sized, offline
    keras-margin sweep-c --arch mlp --C 1e-6,1e-4,1e-2,1 --seeds 3 --data-dir DIR
    keras-margin evaluate runs/ --linf-eps 0.1,0.2,0.3   # stronger attacks on finished runs
    keras-margin report runs/
    keras-margin figures runs/ --out figures/
    keras-margin publish runs/ docs/results/runs         # the evidence files, no models

DIR holds MNIST's four IDX files (train-images-idx3-ubyte.gz, ...). The Keras backend (and
TensorFlow) is imported only by the commands that need it, so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from keras_margin.experiments.files import RunLockedError

# The names the parser offers; the same as experiments.rows's (tested), written out here so
# that `--help` needs no Keras.
TABLE_NAMES = ("ablation", "certified", "hidden", "table1", "table2")
PROTOCOLS = ("reference", "boxed")
SWEEP_ARCHITECTURES = ("mlp", "lenet5")
SWEEP_C = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=positive_int, default=1,
                        help="run seeds 0..N-1 (the paper: 10; default 1)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="override the rows' epochs (default: the paper's 100, 10 with "
                             "--quick)")
    parser.add_argument("--dataset", default=None, choices=["mnist", "fashion_mnist"],
                        help="override the rows' data set")
    parser.add_argument("--protocol", default=None, choices=PROTOCOLS,
                        help="reference: the authors' code (pixels / 256, no [0, 1] box, Adam "
                             "epsilon 1e-8; the default); boxed: images and adversarials kept "
                             "in [0, 1]")
    parser.add_argument("--data-dir", default=None,
                        help="folder with the original data files (MNIST: the IDX .gz files)")
    parser.add_argument("--out", default="runs", help="output folder (default: runs/)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized: data subsets, 10 epochs; labelled QUICK everywhere")
    parser.add_argument("--verbose", type=int, default=2, choices=[0, 1, 2],
                        help="Keras fit verbosity (default 2: one line per epoch)")
    parser.add_argument("--monitor-every", type=positive_int, default=None,
                        help="run the per-epoch robustness callback every N epochs (and the "
                             "first and last; default: the rows' own, 1); recorded in the "
                             "run's config")
    parser.add_argument("--dtype-policy", default="float32",
                        choices=["float32", "mixed_bfloat16"],
                        help="the layers' precision (default float32, the paper's); the "
                             "margin penalty stays float32")


# One runnable example per verb, shown by its --help (and all of them by keras-margin --help);
# the README's command-line block runs the same commands (tested).
EXAMPLES = {
    "reproduce": "keras-margin reproduce table1 --rows mlp-l2 --quick --epochs 2 --out runs",
    "sweep-c": "keras-margin sweep-c --arch mlp --C 1e-3,1e-1 --quick --out runs",
    "evaluate": "keras-margin evaluate runs --n 100 --attacks fmn --linf-eps 0.1",
    "report": "keras-margin report runs --out runs/report",
    "figures": "keras-margin figures runs --out figures",
    "publish": "keras-margin publish runs published",
}
HELP = argparse.RawDescriptionHelpFormatter


def _example(verb: str) -> str:
    return f"example:\n  {EXAMPLES[verb]}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-margin", description=__doc__.splitlines()[0], formatter_class=HELP,
        epilog="examples (a minute on a CPU, offline, in this order):\n" + "\n".join(
            f"  {EXAMPLES[v]}" for v in ("reproduce", "evaluate", "report", "figures")))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def verb(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, epilog=_example(name), formatter_class=HELP, **kwargs)

    reproduce = verb("reproduce", help="train and evaluate the rows of a table")
    reproduce.add_argument("table", choices=TABLE_NAMES,
                           help="table1 (MNIST), table2 (CIFAR-10), ablation (our variants), "
                                "certified (certified training), hidden (margins at hidden "
                                "layers)")
    reproduce.add_argument("--rows", default=None,
                           help="comma-separated row names, e.g. mlp-l2,mlp-baseline "
                                "(default: every row of the table; --list shows them)")
    reproduce.add_argument("--list", action="store_true",
                           help="list the table's rows with what they train, and exit")
    _common(reproduce)
    sweep = verb("sweep-c", help="Figure 4: l2 margin maximization over C")
    sweep.add_argument("--arch", default="mlp,lenet5",
                       help=f"comma-separated, from {', '.join(SWEEP_ARCHITECTURES)}")
    sweep.add_argument("--C", default=",".join(f"{c:g}" for c in SWEEP_C),
                       help="comma-separated values of C (default: 1e-6 ... 1)")
    _common(sweep)
    ev = verb("evaluate", help="stronger attacks (FMN, DDN, APGD, AutoAttack) on "
                                     "finished runs")
    ev.add_argument("runs", help="folder of runs (searched recursively)")
    ev.add_argument("--n", type=positive_int, default=1000,
                    help="first N test points of each run's data (default 1000)")
    ev.add_argument("--attacks", default="fmn,ddn",
                    help="minimum-norm attacks, from fmn (= fmn_l2), fmn_linf, fmn_l1, ddn "
                         "(default fmn,ddn)")
    ev.add_argument("--linf-eps", default="0.1,0.2,0.3",
                    help="l_inf budgets of the APGD ensemble (default 0.1,0.2,0.3; '' for none)")
    ev.add_argument("--l2-eps", default="", help="l2 budgets of the APGD ensemble")
    ev.add_argument("--steps", type=positive_int, default=100,
                    help="iterations of every attack (default 100)")
    ev.add_argument("--box", default=None,
                    help="MIN,MAX: evaluate inside this input box instead of the run's own")
    ev.add_argument("--tag", default="", help="suffix of the result file, e.g. boxed")
    ev.add_argument("--certify", default=None,
                    choices=["crown", "auto", "crown-ibp", "ibp", "lipschitz"],
                    help="also prove lower bounds: certified radii (l2, and l_inf with "
                         "--linf-eps) and certified accuracy at the budgets")
    ev.add_argument("--autoattack", action="store_true",
                    help="complete the APGD pair to AutoAttack's standard ensemble (FAB-T, "
                         "then Square) at every budget, with who fooled how many and the "
                         "masking flag")
    ev.add_argument("--force", action="store_true",
                    help="replace a stored evaluation made with other settings (by default "
                         "that is an error naming both settings)")
    ev.add_argument("--data-dir", default=None, help="folder with the original data files")
    ev.add_argument("--batch-size", type=positive_int, default=500,
                    help="samples attacked side by side (default 500)")
    ev.add_argument("--verbose", type=int, default=None, choices=[0, 1, 2],
                    help="progress of every attack and of the certification: 1 live bars "
                         "with the time left (the default on a terminal), 2 one line per step "
                         "(the default otherwise), 0 none")
    ev.add_argument("--quiet", action="store_true", help="no progress (--verbose 0)")
    rep = verb("report", help="Markdown and CSV tables from finished runs")
    rep.add_argument("runs", help="folder of runs (searched recursively)")
    rep.add_argument("--out", default=None, help="file prefix (default: RUNS/report)")
    rep.add_argument("--readme", default=None,
                     help="also rewrite this Markdown file's generated blocks (the README's "
                          "Results tables)")
    pub = verb("publish", help="copy the runs' evidence files (configs, histories, "
                                         "metrics, per-point arrays; no models) to a folder")
    pub.add_argument("runs", help="folder of runs (searched recursively)")
    pub.add_argument("dest", help="destination, e.g. docs/results/runs")
    fig = verb("figures", help="PNG figures from finished runs")
    fig.add_argument("runs", help="folder of runs (searched recursively)")
    fig.add_argument("--out", default="figures", help="output folder (default: figures/)")
    return parser


def _rows(args: argparse.Namespace) -> list:
    from keras_margin.experiments.rows import TABLES, get_row, sweep_row

    if args.command == "sweep-c":
        try:
            values = [float(c) for c in args.C.split(",")]
        except ValueError:
            raise ValueError(f"Invalid value for --C: {args.C!r}. Expected comma-separated "
                             "numbers.") from None
        return [sweep_row(arch.strip(), c) for arch in args.arch.split(",") for c in values]
    if not args.rows:
        return list(TABLES[args.table].values())
    return [get_row(name, table=args.table) for name in args.rows.split(",")]


def _numbers(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"Invalid value for {name}: {text!r}. Expected comma-separated "
                         "numbers.") from None


def _evaluate(args: argparse.Namespace) -> None:
    from keras_margin.evaluation import resolve_attack
    from keras_margin.experiments import reevaluate

    names = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    for name in names:
        resolve_attack(name)
    box = _numbers(args.box, "--box") if args.box else None
    settings = reevaluate.StrongerEvaluation(
        n=args.n, attacks=names, linf_eps=_numbers(args.linf_eps, "--linf-eps"),
        l2_eps=_numbers(args.l2_eps, "--l2-eps"), steps=args.steps, box=box, tag=args.tag,
        certify=args.certify, autoattack=args.autoattack)
    folders = reevaluate.finished_runs(args.runs)
    if not folders:
        raise FileNotFoundError(f"No finished runs (metrics.json, model.keras) under "
                                f"{args.runs}.")
    for folder in folders:  # every conflict before any evaluation starts
        reevaluate.check_replaceable(folder, settings, args.force)
    verbose = 0 if args.quiet else args.verbose if args.verbose is not None else (
        1 if sys.stdout.isatty() else 2)
    for folder in folders:
        reevaluate.evaluate_run(folder, settings, data_dir=args.data_dir,
                                batch_size=args.batch_size, verbose=verbose, force=args.force)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = _parser().parse_args(argv)
    if args.command != "publish":
        from keras_margin._quiet import import_tensorflow

        import_tensorflow()  # without its start-up noise (a real error still shows)
    try:
        if args.command == "report":
            from keras_margin.experiments import report

            prefix = args.out or os.path.join(args.runs, "report")
            report.write(args.runs, prefix)  # its header names these two as given
            print(f"wrote {prefix}.md and {prefix}.csv")
            if args.readme:
                names = report.update_readme(args.runs, args.readme)
                print(f"rewrote {args.readme}'s generated blocks: {', '.join(names) or 'none'}")
            return 0
        if args.command == "publish":
            from keras_margin.experiments.files import publish

            folders = publish(args.runs, args.dest)
            if not folders:
                raise FileNotFoundError(f"No run folders (config.json) under {args.runs}.")
            print(f"copied the evidence of {len(folders)} run(s) to {args.dest}")
            return 0
        if args.command == "evaluate":
            _evaluate(args)
            return 0
        if args.command == "figures":
            from keras_margin.experiments import figures

            written = figures.write(args.runs, args.out)
            for path in written:
                print(path)
            print(f"wrote {len(written)} figure(s) to {args.out}")
            return 0
        rows = _rows(args)
        if args.command == "reproduce" and args.list:
            for row in rows:
                print(f"{row.name:24} {row.label}: {row.architecture}, trainer {row.trainer} "
                      f"{row.trainer_kwargs or ''}, {row.epochs} epochs".rstrip())
            return 0
        from keras_margin.experiments import runner

        for seed in range(args.seeds):
            for row in rows:
                runner.run(row, seed, args.out, epochs=args.epochs, quick=args.quick,
                           data_dir=args.data_dir, dataset=args.dataset,
                           protocol=args.protocol, verbose=args.verbose,
                           dtype_policy=args.dtype_policy, monitor_every=args.monitor_every)
    except (ValueError, OSError, RunLockedError, ImportError) as err:
        print(f"keras-margin: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
