"""Tables from finished runs: mean ± std over seeds beside the paper's numbers (Markdown, CSV)."""

from __future__ import annotations

import csv
import glob
import json
import math
import os
from collections import defaultdict
from typing import Any

import numpy as np

from keras_margin.experiments.files import read_json
from keras_margin.experiments.rows import TABLES

PROTOCOL_NOTES = {
    "reference": "as aam-at/margin_maximization: pixels / 256, no input box for DeepFool, "
                 "FGSM or the AT examples, Adam epsilon 1e-8",
    "boxed": "pixels / 255, inputs and adversarial examples kept in [0, 1], Adam epsilon 1e-7",
}


def collect(runs_dir: str) -> list[dict[str, Any]]:
    """Every finished run's metrics.json under `runs_dir` (unfinished runs have none), with the
    configuration it ran (config.json beside it) under "config"."""
    paths = sorted(glob.glob(os.path.join(runs_dir, "**", "metrics.json"), recursive=True))
    runs = []
    for path in paths:
        folder = os.path.dirname(path)
        config_path = os.path.join(folder, "config.json")
        config = read_json(config_path) if os.path.exists(config_path) else {}
        extra = {key: read_json(os.path.join(folder, name))
                 for key, name in (("strong", "robustness.json"),
                                   ("boxed", "robustness-boxed.json"))
                 if os.path.exists(os.path.join(folder, name))}
        runs.append({**read_json(path), "path": folder, "config": config, **extra})
    return runs


def in_progress(runs_dir: str) -> list[dict[str, Any]]:
    """Every run that has started but not finished (config.json and history.csv, no
    metrics.json): its row's fields as `collect` gives them, "epochs_done" and the last line of
    its history (the validation numbers of the robustness callback) under "last"."""
    runs = []
    for path in sorted(glob.glob(os.path.join(runs_dir, "**", "history.csv"), recursive=True)):
        folder = os.path.dirname(path)
        config_path = os.path.join(folder, "config.json")
        if os.path.exists(os.path.join(folder, "metrics.json")) or \
                not os.path.exists(config_path):
            continue
        config = read_json(config_path)
        with open(path, newline="") as f:
            history = list(csv.DictReader(f))
        if not history:
            continue
        row = config.get("row", {})
        runs.append({**{k: row.get(k) for k in ("table", "label", "architecture", "epochs",
                                                  "protocol")},
                     "row": row.get("name"), "quick": config.get("quick", False),
                     "seed": config.get("seed"), "path": folder, "config": config,
                     "epochs_done": len(history), "last": history[-1]})
    return runs


def _number(line: dict[str, str], key: str, transform=lambda v: v, digits: int = 3) -> str:
    try:
        return f"{transform(float(line[key])):.{digits}f}"
    except (KeyError, TypeError, ValueError):
        return "—"


def _in_progress_table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return ""
    out = ["### Runs in progress\n",
           "Not finished, so not in the tables above: the validation subset's numbers after "
           "the last finished epoch (the runner's robustness callback).\n",
           "| run | epochs done | val error % | val rho_adv | val FGSM error % |",
           "|---|---|---|---|---|"]
    for run in runs:
        last = run["last"]
        error = _number(last, "val_accuracy", lambda v: 100 * (1 - v), 2)
        out.append(f"| {run['label']} ({run['protocol']}, {run['epochs']} epochs, seed "
                   f"{run['seed']}) | {run['epochs_done']} / {run['epochs']} | {error} | "
                   f"{_number(last, 'val_rho_adv')} | "
                   f"{_number(last, 'val_fgsm_error', lambda v: 100 * v, 1)} |")
    return "\n".join(out) + "\n"


def configuration_key(run: dict[str, Any]) -> str:
    """Everything a run's configuration holds but its seed: runs with equal keys are seeds of
    one experiment; any other difference (epochs, data, protocol, a hyper-parameter) is not."""
    config = {k: v for k, v in run.get("config", {}).items() if k != "seed"}
    if not config:  # a run without its config.json: what its metrics say of it
        config = {k: run.get(k) for k in ("table", "row", "dataset", "quick", "protocol",
                                           "epochs", "trainer_kwargs")}
    return json.dumps(config, sort_keys=True)


def group(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs by their whole configuration but the seed, in the order first seen."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        groups[configuration_key(run)].append(run)
    return dict(groups)


def _mean_std(values: list[float], scale: float = 1.0) -> tuple[float, float]:
    arr = np.asarray(values, float) * scale
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _setting(run: dict[str, Any]) -> tuple:
    """What a row's effect is measured within: network, data, augmentation, protocol."""
    return (run["table"], run["architecture"], run["dataset"], run["quick"],
            run["augmentation"], run["protocol"], run["data"], run["epochs"])


def _is_baseline(run: dict[str, Any]) -> bool:
    return run["trainer"] == "plain" and not run["dropout"]


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per group, in the paper's row order: means, stds, seeds, paper, rho ratios."""
    lines = []
    for members in group(runs).values():
        first = members[0]
        table, row, dataset = first["table"], first["row"], first["dataset"]
        quick, protocol = first["quick"], first["protocol"]
        err, err_sd = _mean_std([m["error"] for m in members], 100)
        fgsm, fgsm_sd = _mean_std([m["fgsm_error"] for m in members], 100)
        rho, rho_sd = _mean_std([m["rho_adv"] for m in members])
        lines.append({"table": table, "row": row, "label": members[0]["label"],
                      "setting": _setting(members[0]), "baseline": _is_baseline(members[0]),
                      "architecture": members[0]["architecture"],
                      "dataset": dataset, "quick": quick, "protocol": protocol,
                      "data": first["data"],
                      "seeds": len(members), "epochs": members[0]["epochs"],
                      "error": err, "error_std": err_sd, "fgsm_error": fgsm,
                      "fgsm_error_std": fgsm_sd, "rho_adv": rho, "rho_adv_std": rho_sd,
                      "paper": members[0].get("paper") or {},
                      "trainer_kwargs": members[0].get("trainer_kwargs", {}),
                      **_evaluations(members)})
    baselines = {ln["setting"]: ln for ln in lines if ln["baseline"]}
    for line in lines:
        base = baselines.get(line["setting"])
        line["rho_ratio"] = line["rho_adv"] / base["rho_adv"] if base else math.nan
        paper_base = base["paper"] if base else {}
        line["paper_rho_ratio"] = (line["paper"].get("rho_adv", math.nan)
                                   / paper_base.get("rho_adv", math.nan)
                                   if paper_base else math.nan)
        line["rho_min_ratio"] = line["strong_rho_min"] / base["strong_rho_min"] \
            if base and "strong_rho_min" in line and "strong_rho_min" in base else math.nan
    return sorted(lines, key=paper_order)


def _evaluations(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means of the stronger evaluation ("strong_*") and the boxed one ("boxed_*"), where
    every seed has one; the union of the flags."""
    out: dict[str, Any] = {}
    for kind in ("strong", "boxed"):
        results = [m[kind] for m in members if kind in m]
        if len(results) != len(members):
            continue
        keys = [k for k, v in results[0].items() if isinstance(v, (int, float))
                and not isinstance(v, bool)]
        for key in keys:
            values = [r.get(key, math.nan) for r in results]
            out[f"{kind}_{key}"] = float(np.mean(values))
        out[f"{kind}_flags"] = sorted({f for r in results for f in r.get("flags", [])})
        out[f"{kind}_budgets"] = results[0].get("settings", {}).get("linf_eps", [])
    return out


def paper_order(item: dict[str, Any]) -> tuple:
    """Sort key of a run or report line: table, the paper's row order, C, name."""
    order = {name: i for table in TABLES.values() for i, name in enumerate(table)}
    tables = list(TABLES)
    table = tables.index(item["table"]) if item["table"] in tables else len(tables)
    return (table, item["table"], order.get(item["row"], len(order)),
            (item.get("trainer_kwargs") or {}).get("C", 0), item["row"])


def _fmt(mean: float, std: float, seeds: int, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def _paper(value: Any, digits: int) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def markdown(lines: list[dict[str, Any]]) -> str:
    """Markdown tables, one per (table, protocol), ours beside the paper's."""
    out = []
    sections: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        sections[(line["table"], line["protocol"], line["data"], line["epochs"])].append(line)
    for (table, protocol, data, epochs), members in sections.items():
        seeds = sorted({m["seeds"] for m in members})
        quick = any(m["quick"] for m in members)
        out.append(f"### {table}{' — QUICK (reduced, see protocol)' if quick else ''}\n")
        out.append(f"Protocol: {protocol} ({PROTOCOL_NOTES.get(protocol, '')}); data: {data}; "
                   f"{epochs} epochs; seeds per row: {', '.join(map(str, seeds))}.\n")
        out.append("| row | error % | paper | FGSM error % | paper | rho_adv | paper | "
                   "rho_adv vs baseline | paper |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for m in members:
            p = m["paper"]
            ratio = "—" if math.isnan(m["rho_ratio"]) else f"x{m['rho_ratio']:.2f}"
            paper_ratio = "—" if math.isnan(m["paper_rho_ratio"]) \
                else f"x{m['paper_rho_ratio']:.2f}"
            out.append(
                f"| {m['label']} | {_fmt(m['error'], m['error_std'], m['seeds'], 2)} | "
                f"{_paper(p.get('error'), 2)} | "
                f"{_fmt(m['fgsm_error'], m['fgsm_error_std'], m['seeds'], 1)} | "
                f"{_paper(p.get('fgsm_error'), 1)} | "
                f"{_fmt(m['rho_adv'], m['rho_adv_std'], m['seeds'], 3)} | "
                f"{_paper(p.get('rho_adv'), 3)} | {ratio} | {paper_ratio} |")
        out.append("")
        out += _strong_table(members) + _boxed_table(members)
    return "\n".join(out)


def _strong_table(members: list[dict[str, Any]]) -> list[str]:
    """Minimum-norm rho and APGD robust accuracy, where `keras-margin evaluate` ran."""
    rows = [m for m in members if "strong_rho_adv" in m]
    if not rows:
        return []
    budgets = rows[0]["strong_budgets"]
    out = [f"Stronger attacks (`keras-margin evaluate`) on the first {int(rows[0]['strong_n'])} "
           "test points: rho_min is the smallest verified adversarial per point over DeepFool, "
           "FMN and DDN (l2, eq. 20's measure); robust accuracy is under l_inf budgets by "
           "APGD-CE + APGD-T (and FGSM), a point counting as robust only if every attack "
           "fails.\n",
           "| row | rho_adv (DeepFool) | rho_min | rho_min vs baseline | "
           + " | ".join(f"robust acc. l_inf {e:g}" for e in budgets) + " | flags |",
           "|---|---|---|---|" + "---|" * len(budgets) + "---|"]
    for m in rows:
        ratio = "—" if math.isnan(m["rho_min_ratio"]) else f"x{m['rho_min_ratio']:.2f}"
        accuracy = " | ".join(f"{100 * m.get(f'strong_robust_accuracy_linf_{e:g}', math.nan):.1f} %"
                              for e in budgets)
        flags = ", ".join(m["strong_flags"]) or "none"
        out.append(f"| {m['label']} | {m['strong_rho_adv']:.3f} | "
                   f"{m.get('strong_rho_min', math.nan):.3f} | {ratio} | {accuracy} | {flags} |")
    return out + [""]


def _boxed_table(members: list[dict[str, Any]]) -> list[str]:
    """The paper's measures with and without the [0, 1] box, where both were evaluated."""
    rows = [m for m in members if "boxed_rho_adv" in m and "strong_rho_adv" in m]
    if not rows:
        return []
    out = ["What the [0, 1] input box changes (same models, same points; `evaluate --box 0,1 "
           "--tag boxed`):\n",
           "| row | rho_adv, no box | rho_adv, boxed | change | FGSM error %, no box | "
           "boxed |", "|---|---|---|---|---|---|"]
    for m in rows:
        change = m["boxed_rho_adv"] / m["strong_rho_adv"] - 1
        out.append(f"| {m['label']} | {m['strong_rho_adv']:.3f} | {m['boxed_rho_adv']:.3f} | "
                   f"{100 * change:+.1f} % | {100 * m['strong_fgsm_error']:.1f} | "
                   f"{100 * m['boxed_fgsm_error']:.1f} |")
    return out + [""]


def write(runs_dir: str, out_prefix: str | None = None) -> str:
    """Writes `<prefix>.md` and `<prefix>.csv` (default: runs_dir/report) and returns the text."""
    lines = summarize(collect(runs_dir))
    if not lines:
        raise FileNotFoundError(f"No finished runs (metrics.json) under {runs_dir}.")
    prefix = out_prefix or os.path.join(runs_dir, "report")
    running = _in_progress_table(in_progress(runs_dir))
    text = markdown(lines) + ("\n" + running if running else "")
    with open(prefix + ".md", "w") as f:
        f.write(text)
    extra = sorted({k for line in lines for k in line
                    if k.startswith(("strong_", "boxed_")) and not k.endswith(("_flags",
                                                                               "_budgets"))})
    fields = ["table", "row", "label", "dataset", "quick", "protocol", "data", "seeds", "epochs",
              "error", "error_std", "fgsm_error", "fgsm_error_std", "rho_adv", "rho_adv_std",
              "rho_ratio", "paper_error", "paper_fgsm_error", "paper_rho_adv", "paper_rho_ratio",
              "rho_min_ratio", *extra, "strong_flags"]
    with open(prefix + ".csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for line in lines:
            writer.writerow({**line, **{f"paper_{k}": v for k, v in line["paper"].items()},
                             "strong_flags": " ".join(line.get("strong_flags", []))})
    return text
