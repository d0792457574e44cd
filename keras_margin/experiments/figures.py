"""The paper's figures from finished runs, as PNG files (matplotlib, Agg backend).

Figure 4: test error, rho_adv and rho_min over C (from `keras-margin sweep-c` runs, one panel
per configuration, the full data beside the quick one); Figure 5: densities of rho_adv per
method; Figures 1/6: adversarial examples per method, each labelled with the class the model
gives it; the field's robustness curve, robust accuracy against the l_inf budget per method
(from `keras-margin evaluate`); and the robustness over training from the runs' histories.
Quick runs say so in the titles. Needs matplotlib (`pip install 'keras-margin[plots]'`).
"""

from __future__ import annotations

import csv
import math
import os
import textwrap
from collections import defaultdict
from typing import Any

import numpy as np

from keras_margin.experiments.report import collect, in_progress, paper_order, summarize
from keras_margin.threat import metric_key


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the pip extra."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("keras-margin figures needs matplotlib, which the plain install "
                                "leaves out: pip install 'keras-margin[plots]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _density(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian kernel density estimate with Scott's bandwidth (as the paper's Fig. 5)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return np.zeros_like(grid)
    bandwidth = max(values.std(ddof=1) * len(values) ** (-1 / 5), 1e-3)
    z = (grid[:, None] - values[None, :]) / bandwidth
    return np.exp(-0.5 * z ** 2).sum(axis=1) / (len(values) * bandwidth * np.sqrt(2 * np.pi))


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _wrap(title: str, width: int = 70) -> str:
    """A title in lines of at most `width` characters, so that none is cut at the edge."""
    return "\n".join(textwrap.wrap(title, width))


def figure_data(fig: Any) -> dict[str, Any]:
    """What a figure shows, as data: per axes its title, labels, limits, and every line's
    label and points, every image's pixels' sum and shape, every text. Saved beside the PNG
    (`<name>.json`), so a test can regenerate the figures and compare what they show whatever
    the matplotlib version draws (tests/test_results.py)."""
    def numbers(values: Any) -> list:
        return [None if not math.isfinite(v) else round(float(v), 9)
                for v in np.asarray(values, float).ravel()]

    axes = []
    for ax in fig.axes:
        axes.append({
            "title": ax.get_title(), "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(),
            "xlim": numbers(ax.get_xlim()), "ylim": numbers(ax.get_ylim()),
            "lines": [{"label": line.get_label(), "x": numbers(line.get_xdata()),
                       "y": numbers(line.get_ydata())} for line in ax.get_lines()],
            "images": [{"shape": list(np.shape(im.get_array())),
                        "sum": round(float(np.sum(im.get_array())), 6)}
                       for im in ax.get_images()],
            "texts": [t.get_text() for t in ax.texts]})
    return {"suptitle": fig._suptitle.get_text() if fig._suptitle else "",
            "legends": [[t.get_text() for t in legend.get_texts()] for legend in fig.legends],
            "axes": axes}


def _save(fig: Any, path: str) -> str:
    import json

    from keras_margin.experiments.files import write_text

    fig.savefig(path, dpi=120, bbox_inches="tight", metadata={"Software": None})
    write_text(path + ".json", json.dumps(figure_data(fig), indent=1, sort_keys=True) + "\n")
    _pyplot().close(fig)
    return path


def error_and_robustness_over_c(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Figure 4: per network, one panel per configuration (full data, QUICK; epochs), test
    error (%) and rho_adv (DeepFool) and rho_min (stronger attacks) against C, log axis."""
    plt = _pyplot()
    lines = [ln for ln in summarize(runs) if ln["table"] == "sweep-c"
             and ln["dtype_policy"] == "float32"]
    by_arch: dict[str, dict[tuple, list]] = defaultdict(lambda: defaultdict(list))
    for line in lines:
        by_arch[line["architecture"]][(line["quick"], line["epochs"])].append(line)
    written = []
    for arch, panels in by_arch.items():
        keys = sorted(panels)
        fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4), squeeze=False)
        for ax, key in zip(axes[0], keys):
            _c_panel(ax, sorted(panels[key], key=lambda m: m["trainer_kwargs"]["C"]), *key)
        fig.suptitle(f"{arch}: l2 margin maximization over C (Figure 4)", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, os.path.join(out, f"fig4_{arch}_error_robustness_over_C.png")))
    return written


def _c_panel(ax: Any, members: list[dict[str, Any]], quick: bool, epochs: int) -> None:
    c = [m["trainer_kwargs"]["C"] for m in members]
    ax.errorbar(c, [m["error"] for m in members], [m["error_std"] for m in members],
                color="tab:red", marker="o", label="test error %")
    ax.set_xscale("log")
    ax.set_xlabel("C")
    ax.set_ylabel("test error, %", color="tab:red")
    twin = ax.twinx()
    twin.errorbar(c, [m["rho_adv"] for m in members], [m["rho_adv_std"] for m in members],
                  color="tab:blue", marker="s", label="rho_adv (DeepFool)")
    strong = [(x, m["strong_rho_min"]) for x, m in zip(c, members) if "strong_rho_min" in m]
    if strong:
        twin.plot(*zip(*strong), color="tab:green", marker="^", linestyle="--",
                  label="rho_min (stronger attacks)")
    twin.set_ylabel("robustness (eq. 20)")
    twin.legend(fontsize=7, loc="upper left")
    seeds = sorted({m["seeds"] for m in members})
    data = "QUICK: reduced data" if quick else "full MNIST"
    ax.set_title(_wrap(f"{data}, {_epochs(epochs)}, seeds per point: "
                       f"{', '.join(map(str, seeds))}"), fontsize=9)


def _panels(runs: list[dict[str, Any]]) -> dict[tuple, dict[str, list[dict[str, Any]]]]:
    """Table runs by (network, epochs, quick, protocol), float32 only, then by method: one
    figure each, so that runs of different configurations never share a curve."""
    panels: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run["table"] != "sweep-c" and run.get("dtype_policy", "float32") == "float32":
            key = (run["architecture"], run["epochs"], run["quick"], run["protocol"])
            panels[key][run["label"]].append(run)
    return panels


def _title(key: tuple, what: str) -> str:
    arch, epochs, quick, protocol = key
    quick_note = " (QUICK: reduced data and epochs)" if quick else ""
    return _wrap(f"{arch}, {_epochs(epochs)}, {protocol} protocol: {what}{quick_note}")


def _name(prefix: str, key: tuple, what: str) -> str:
    arch, epochs, quick, protocol = key
    return f"{prefix}_{arch}_{epochs}ep_{protocol}{'_quick' if quick else ''}_{what}.png"


def _existing(members: list[dict[str, Any]], name: str) -> list[str]:
    """The paths of file `name` in those of the runs' folders that hold it."""
    paths = (os.path.join(run["path"], name) for run in members)
    return [path for path in paths if os.path.exists(path)]


def _first_files(methods: dict[str, list[dict[str, Any]]], name: str) -> dict[str, str]:
    """Per method label, the path of file `name` in its first run's folder, where it exists."""
    return {label: paths[0] for label, members in methods.items()
            if (paths := _existing(members[:1], name))}


def robustness_densities(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Figure 5: density of ||r(x)|| / ||x|| over correctly classified points, per method."""
    plt = _pyplot()
    written = []
    for key, methods in _panels(runs).items():
        curves = {label: [np.load(path)["distances"]
                          for path in _existing(members, "points.npz")]
                  for label, members in methods.items()}
        curves = {label: arrays for label, arrays in curves.items() if arrays}
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        grid = np.linspace(0, 1, 400)
        for label, arrays in curves.items():
            values = np.concatenate(arrays)
            ax.plot(grid, _density(values[values > 0], grid), label=label)
        ax.set_xlabel("rho_adv = ||r(x)|| / ||x|| (DeepFool)")
        ax.set_ylabel("density")
        ax.set_title(_title(key, "robustness per method"), fontsize=9)
        ax.legend(fontsize=8)
        written.append(_save(fig, os.path.join(out, _name("fig5", key, "rho_adv_density"))))
    return written


def adversarial_grids(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Figures 1/6: originals in the first row, then each method's DeepFool adversarials, each
    image titled with the class the model gives it (where the run recorded it)."""
    plt = _pyplot()
    written = []
    for key, methods in _panels(runs).items():
        shown = {label: dict(np.load(path))
                 for label, path in _first_files(methods, "adversarial.npz").items()
                 if methods[label][0]["dataset"] != "cifar10"}
        if not shown:
            continue
        first = next(iter(shown.values()))
        rows = [("original", first["x"], first["y"])] + [
            (label, data["x_adv"], data.get("adversarial_class")) for label, data in shown.items()]
        cols = len(first["x"])
        fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 1.1),
                                 squeeze=False)
        for r, (label, images, classes) in enumerate(rows):
            for c in range(cols):
                axes[r, c].imshow(np.clip(images[c, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
                if classes is not None:
                    axes[r, c].set_title(str(int(classes[c])), fontsize=7, pad=2)
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", fontsize=7)
        fig.suptitle(_title(key, "DeepFool adversarial examples per method (above each "
                                 "original its class, above each adversarial the class the "
                                 "model gives it)"), fontsize=9)
        written.append(_save(fig, os.path.join(out, _name("fig6", key, "adversarial_examples"))))
    return written


def robust_accuracy_curves(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Robust accuracy (APGD-CE + APGD-T) against the l_inf budget, one line per method, one
    figure per configuration; eps = 0 is the clean accuracy on the same points."""
    plt = _pyplot()
    written = []
    for key, methods in _panels(runs).items():
        curves = {}
        for label, members in methods.items():
            strong = [r["strong"] for r in members if r.get("strong")
                      and r["strong"]["settings"]["linf_eps"]]
            if len(strong) == len(members):
                budgets = strong[0]["settings"]["linf_eps"]
                accuracy = [[1 - s["error"]] + [s[metric_key("robust_accuracy", "linf", e)]
                                                 for e in budgets] for s in strong]
                curves[label] = ([0.0] + list(budgets), np.mean(accuracy, axis=0))
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, (eps, accuracy) in curves.items():
            ax.plot(eps, 100 * accuracy, marker="o", label=label)
        ax.set_xlabel("l_inf budget eps")
        ax.set_ylabel("robust accuracy, % (APGD-CE + APGD-T)")
        ax.set_ylim(0, 100)
        ax.set_title(_title(key, "robust accuracy against the budget"), fontsize=9)
        ax.legend(fontsize=8)
        written.append(_save(fig, os.path.join(out, _name("robustness_curve", key, "linf"))))
    return written


def sandwich(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Per point, proven below, attacked above: the certified l2 radius <= the smallest
    adversarial any attack found <= DeepFool's (all / ||x||_2, eq. 20's measure), points sorted
    by the smallest adversarial; one panel per method evaluated with --certify."""
    plt = _pyplot()
    written = []
    for key, methods in _panels(runs).items():
        shown = {label: np.load(path) for label, path
                 in _first_files(methods, "points-strong-certified.npz").items()}
        if not shown:
            continue
        fig, axes = plt.subplots(1, len(shown), figsize=(4.2 * len(shown), 3.6), sharey=True,
                                 squeeze=False)
        for ax, (label, data) in zip(axes[0], shown.items()):
            correct = data["distances"] > 0
            deep, smallest = data["distances"][correct], data["distances_min"]
            proven = data["certified_distances"][correct]
            order = np.argsort(smallest)
            ax.plot(deep[order], ".", markersize=2, color="tab:gray", label="DeepFool")
            ax.plot(smallest[order], color="tab:blue", label="smallest attack")
            ax.plot(proven[order], color="tab:green", label="certified (proven)")
            ax.set_title(_wrap(label, 40), fontsize=8)
            ax.set_xlabel("points, by smallest attack")
        axes[0, 0].set_ylabel("||r|| / ||x||, l2")
        axes[0, 0].legend(fontsize=7)
        fig.suptitle(_title(key, "certified <= smallest attack <= DeepFool, per point"),
                     fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, os.path.join(out, _name("sandwich", key, "l2"))))
    return written


def read_history(path: str) -> list[dict[str, str]]:
    """A run's history.csv, refused with the file named where it is cut or garbled (a row
    with missing cells, or an epoch that is not the next integer)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for i, row in enumerate(rows):
        if None in row or any(value is None for value in row.values()):
            raise ValueError(f"{path}: row {i + 2} has a different number of cells than the "
                             "header: the file is cut or garbled.")
        try:
            epoch = int(row["epoch"])
        except (KeyError, ValueError):
            raise ValueError(f"{path}: row {i + 2} has no integer epoch "
                             f"({row.get('epoch')!r}): the file is garbled.") from None
        if epoch != i:
            raise ValueError(f"{path}: row {i + 2} is epoch {epoch}, expected {i}: epochs are "
                             "missing or repeated.")
    return rows


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def training_curves(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Per-epoch robustness on the validation subset (the runner's RobustnessCallback):
    val_rho_adv and val_fgsm_error against the epoch, one line per method and configuration;
    runs still in progress (`report.in_progress`) are drawn dashed up to their last epoch, a
    single evaluated epoch as a point."""
    plt = _pyplot()
    written = []
    for key, methods in _panels(runs).items():
        histories = {}
        for label, path in _first_files(methods, "history.csv").items():
            rows = [r for r in read_history(path) if math.isfinite(_number(r.get("val_rho_adv")))]
            if rows:
                histories[label] = rows
        if not histories:
            continue
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
        for label, rows in histories.items():
            running = "epochs_done" in methods[label][0]
            style = {"linestyle": "--" if running else "-", "marker": "o" if len(rows) < 3
                     else None, "label": f"{label} (in progress)" if running else label}
            epochs = [int(r["epoch"]) + 1 for r in rows]
            left.plot(epochs, [_number(r["val_rho_adv"]) for r in rows], **style)
            right.plot(epochs, [100 * _number(r["val_fgsm_error"]) for r in rows], **style)
        from matplotlib.ticker import MaxNLocator

        for ax in (left, right):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        left.set_ylabel("val rho_adv (DeepFool, eq. 20)")
        right.set_ylabel("val FGSM error, %")
        right.set_ylim(0, 100)  # a share: never past 100 %, even for one point
        handles, labels = left.get_legend_handles_labels()
        rows = -(-len(labels) // 3)
        fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=7, frameon=False)
        fig.suptitle(_title(key, "robustness during training (validation subset)"), fontsize=9)
        fig.tight_layout(rect=(0, 0.045 * rows + 0.02, 1, 1))  # the legend below, not on a curve
        written.append(_save(fig, os.path.join(out, _name("training", key, "robustness"))))
    return written


def write(runs_dir: str, out: str) -> list[str]:
    """All figures that the finished runs under `runs_dir` allow; returns the PNG paths."""
    runs = sorted(collect(runs_dir), key=paper_order)
    if not runs:
        raise FileNotFoundError(f"No finished runs (metrics.json) under {runs_dir}.")
    _pyplot()  # the extra's message before any work
    os.makedirs(out, exist_ok=True)
    return (error_and_robustness_over_c(runs, out) + robustness_densities(runs, out)
            + adversarial_grids(runs, out) + robust_accuracy_curves(runs, out)
            + sandwich(runs, out)
            + training_curves(runs + in_progress(runs_dir), out))
