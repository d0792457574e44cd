"""The paper's figures from finished runs, as PNG files (matplotlib, Agg backend).

Figure 4: test error and rho_adv over C (from `keras-margin sweep-c` runs); Figure 5: densities
of rho_adv per method; Figures 1/6: adversarial examples per method. Quick runs say so in the
figure titles.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

import numpy as np

from keras_margin.experiments.report import collect, paper_order, summarize


def _pyplot():
    import matplotlib

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


def _quick_note(quick: bool) -> str:
    return " (QUICK: reduced data and epochs)" if quick else ""


def _save(fig: Any, path: str, **kwargs: Any) -> str:
    fig.savefig(path, dpi=120, **kwargs)
    _pyplot().close(fig)
    return path


def error_and_robustness_over_c(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Figure 4: one panel per network, error (%) and rho_adv against C on a log axis."""
    plt = _pyplot()
    lines = [ln for ln in summarize(runs) if ln["table"] == "sweep-c"]
    by_arch: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        by_arch[line["architecture"]].append(line)
    written = []
    for arch, members in by_arch.items():
        members.sort(key=lambda m: m["trainer_kwargs"]["C"])
        c = [m["trainer_kwargs"]["C"] for m in members]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar(c, [m["error"] for m in members], [m["error_std"] for m in members],
                    color="tab:red", marker="o", label="test error %")
        ax.set_xscale("log")
        ax.set_xlabel("C")
        ax.set_ylabel("test error, %", color="tab:red")
        twin = ax.twinx()
        twin.errorbar(c, [m["rho_adv"] for m in members], [m["rho_adv_std"] for m in members],
                      color="tab:blue", marker="s", label="rho_adv")
        twin.set_ylabel("rho_adv (eq. 20)", color="tab:blue")
        quick = any(m["quick"] for m in members)
        ax.set_title(f"{arch}: l2 margin maximization over C{_quick_note(quick)}", fontsize=9)
        fig.tight_layout()
        written.append(_save(fig, os.path.join(out, f"fig4_{arch}_error_robustness_over_C.png")))
    return written


def robustness_densities(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Figure 5: density of ||r(x)|| / ||x|| over correctly classified points, per method."""
    plt = _pyplot()
    by_arch: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    quick: dict[str, bool] = {}
    for run in runs:
        if run["table"] == "sweep-c":
            continue
        path = os.path.join(run["path"], "distances.npy")
        if os.path.exists(path):
            arch = run["architecture"]
            by_arch[arch][run["label"]].append(np.load(path))
            quick[arch] = quick.get(arch, False) or run["quick"]
    written = []
    for arch, methods in by_arch.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        grid = np.linspace(0, 1, 400)
        for label, arrays in methods.items():
            values = np.concatenate(arrays)
            ax.plot(grid, _density(values[values > 0], grid), label=label)
        ax.set_xlabel("rho_adv = ||r(x)|| / ||x|| (DeepFool)")
        ax.set_ylabel("density")
        ax.set_title(f"{arch}: robustness per method{_quick_note(quick[arch])}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, os.path.join(out, f"fig5_{arch}_rho_adv_density.png")))
    return written


def adversarial_grids(runs: list[dict[str, Any]], out: str) -> list[str]:
    """Figures 1/6: originals in the first row, then each method's DeepFool adversarials."""
    plt = _pyplot()
    by_arch: dict[str, dict[str, Any]] = defaultdict(dict)
    for run in runs:
        path = os.path.join(run["path"], "adversarial.npz")
        if run["table"] != "sweep-c" and os.path.exists(path) and run["dataset"] != "cifar10":
            by_arch[run["architecture"]].setdefault(run["label"], (np.load(path), run))
    written = []
    for arch, methods in by_arch.items():
        first = next(iter(methods.values()))[0]
        rows = [("original", first["x"])] + [(label, data["x_adv"])
                                             for label, (data, _) in methods.items()]
        cols = len(first["x"])
        fig, axes = plt.subplots(len(rows), cols, figsize=(cols * 0.9, len(rows) * 1.0),
                                 squeeze=False)
        for r, (label, images) in enumerate(rows):
            for c in range(cols):
                axes[r, c].imshow(np.clip(images[c, ..., 0], 0, 1), cmap="gray", vmin=0, vmax=1)
                axes[r, c].set_xticks([])
                axes[r, c].set_yticks([])
            axes[r, 0].set_ylabel(label, rotation=0, ha="right", fontsize=7)
        quick = any(run["quick"] for _, run in methods.values())
        fig.suptitle(f"{arch}: DeepFool adversarial examples per method{_quick_note(quick)}",
                     fontsize=9)
        written.append(_save(fig, os.path.join(out, f"fig6_{arch}_adversarial_examples.png"),
                             bbox_inches="tight"))
    return written


def write(runs_dir: str, out: str) -> list[str]:
    """All figures that the finished runs under `runs_dir` allow; returns the PNG paths."""
    runs = sorted(collect(runs_dir), key=paper_order)
    if not runs:
        raise FileNotFoundError(f"No finished runs (metrics.json) under {runs_dir}.")
    os.makedirs(out, exist_ok=True)
    return (error_and_robustness_over_c(runs, out) + robustness_densities(runs, out)
            + adversarial_grids(runs, out))
