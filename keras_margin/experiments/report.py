"""Tables from finished runs: mean ± std over seeds beside the paper's numbers (Markdown, CSV)."""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import os
import shlex
from collections import defaultdict
from typing import Any

import numpy as np

from keras_margin.experiments import verdict
from keras_margin.experiments.files import check_unique_runs, read_json, run_identity, write_text
from keras_margin.experiments.rows import TABLES
from keras_margin.threat import metric_key, parse_metric_key

PROTOCOL_NOTES = {
    "reference": "as aam-at/margin_maximization: pixels / 256, no input box for DeepFool, "
                 "FGSM or the AT examples, Adam epsilon 1e-8",
    "boxed": "pixels / 255, inputs and adversarial examples kept in [0, 1], Adam epsilon 1e-7",
}


# The evaluations of finished runs the report reads, by kind: the stronger attacks, the [0, 1]
# box, the certified bounds and AutoAttack's ensemble (`keras-margin evaluate ... --tag boxed /
# certified / autoattack`).
EVALUATIONS = (("strong", "robustness.json"), ("boxed", "robustness-boxed.json"),
               ("certified", "robustness-certified.json"),
               ("autoattack", "robustness-autoattack.json"))


# What the report reads from every metrics.json.
METRICS_KEYS = ("table", "row", "architecture", "dataset", "quick", "augmentation", "protocol",
                "epochs", "trainer", "trainer_kwargs", "dropout", "seed", "error", "fgsm_error",
                "rho_adv")


def collect(runs_dir: str) -> list[dict[str, Any]]:
    """Every finished run's metrics.json under `runs_dir` (unfinished runs have none), with the
    configuration it ran (config.json beside it) under "config", its precision under
    "dtype_policy", and the paper's numbers of its row as the rows define them now."""
    paths = sorted(glob.glob(os.path.join(runs_dir, "**", "metrics.json"), recursive=True))
    check_unique_runs([os.path.dirname(path) for path in paths])
    runs = []
    for path in paths:
        folder = os.path.dirname(path)
        config_path = os.path.join(folder, "config.json")
        config = read_json(config_path) if os.path.exists(config_path) else {}
        extra = {key: read_json(os.path.join(folder, name))
                 for key, name in EVALUATIONS if os.path.exists(os.path.join(folder, name))}
        metrics = read_json(path)
        missing = [key for key in METRICS_KEYS if key not in metrics]
        if missing:
            raise ValueError(f"{path} has no {', '.join(map(repr, missing))}: an older "
                             "keras-margin wrote it. Re-run the row (keras-margin reproduce "
                             "TABLE --rows ROW --out FOLDER) to make it again.")
        runs.append({**metrics, "path": folder, "config": config, **extra,
                     "dtype_policy": config.get("dtype_policy", "float32"),
                     "paper": _paper_numbers(metrics), **_cost(folder)})
    return runs


def _trend(lines: list[dict[str, str]]) -> dict[str, Any]:
    """The validation error's course over training (history.csv): its value at the last epoch,
    its lowest and the epoch of it (1-based), and the validation loss's likewise."""
    def series(key: str, transform=lambda v: v) -> list[float]:
        return [transform(float(line[key])) if line.get(key) not in (None, "", "NA")
                else math.nan for line in lines]

    out: dict[str, Any] = {}
    for name, values in (("val_error", series("val_accuracy", lambda v: 100 * (1 - v))),
                         ("val_loss", series("val_loss"))):
        if values and all(math.isfinite(v) for v in values):
            best = int(np.argmin(values))
            out.update({f"{name}_last": values[-1], f"{name}_lowest": values[best],
                        f"{name}_lowest_epoch": best + 1})
    return out


def _cost(folder: str) -> dict[str, Any]:
    """What a run cost and where it ran: its epochs' wall-clock and CPU seconds (history.csv)
    and the backends and processors of its sessions (environment.json); empty where absent."""
    out: dict[str, Any] = {}
    history = os.path.join(folder, "history.csv")
    if os.path.exists(history):
        with open(history, newline="") as f:
            lines = list(csv.DictReader(f))
        out.update(_trend(lines))
        for key in ("epoch_seconds", "epoch_cpu_seconds"):
            values = [float(line[key]) for line in lines if line.get(key) not in (None, "")]
            if values:
                out[key] = values
    environment = os.path.join(folder, "environment.json")
    if os.path.exists(environment):
        sessions = read_json(environment).get("sessions", [])
        out["backends"] = sorted({s.get("backend", "?") for s in sessions})
        out["machines"] = sorted({f"{s.get('machine', {}).get('cpu')}, "
                                  f"{s.get('machine', {}).get('cores')} cores"
                                  for s in sessions})
    return out


def _paper_numbers(metrics: dict[str, Any]) -> dict[str, Any]:
    """The paper's numbers (with its standard deviations) of the run's row, else as stored."""
    rows = TABLES.get(metrics.get("table"), {})
    row = rows.get(metrics.get("row"))
    return dict(row.paper) if row is not None else dict(metrics.get("paper") or {})


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
                     "dtype_policy": config.get("dtype_policy", "float32"),
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
    out = ["## Runs in progress\n",
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
    config = {k: v for k, v in run_identity(run.get("config", {})).items() if k != "seed"}
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
    """What a row's effect is measured within: network, data set, augmentation, protocol,
    epochs and whether QUICK; a row's baseline is Table I's plain row of the same setting (so
    that the sweep and the ablations have one too), in float32 (the paper's precision: a
    mixed_bfloat16 row is measured against it)."""
    return (run["architecture"], run["dataset"], run["quick"], run["augmentation"],
            run["protocol"], run["epochs"])


def _is_baseline(run: dict[str, Any]) -> bool:
    return run["trainer"] == "plain" and not run["dropout"] and run["table"] == "table1"


def _hidden(run: dict[str, Any]) -> str:
    hidden = (run.get("config") or {}).get("row", {}).get("hidden") or []
    return "-".join(str(h) for h in hidden)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per group, in the paper's row order: means, stds, seeds, paper, rho ratios."""
    lines = []
    for members in group(runs).values():
        first = members[0]
        err, err_sd = _mean_std([m["error"] for m in members], 100)
        fgsm, fgsm_sd = _mean_std([m["fgsm_error"] for m in members], 100)
        rho, rho_sd = _mean_std([m["rho_adv"] for m in members])
        lines.append({**{k: first[k] for k in ("table", "row", "label", "architecture",
                                               "dataset", "quick", "protocol", "data",
                                               "epochs", "dtype_policy", "paper")},
                      "setting": _setting(first), "baseline": _is_baseline(first),
                      "hidden": _hidden(first), "seeds": len(members),
                      "seed_list": sorted(m["seed"] for m in members),
                      "error": err, "error_std": err_sd, "fgsm_error": fgsm,
                      "fgsm_error_std": fgsm_sd, "rho_adv": rho, "rho_adv_std": rho_sd,
                      "trainer_kwargs": first.get("trainer_kwargs", {}),
                      **_evaluations(members), **_cost_summary(members),
                      **{k: v for k, v in min(members, key=lambda m: m["seed"]).items()
                         if k.startswith(("val_error_", "val_loss_"))}})
    baselines = {ln["setting"]: ln for ln in sorted(lines, key=lambda ln: ln["dtype_policy"]
                                                   == "float32") if ln["baseline"]}
    for line in lines:
        base = baselines.get(line["setting"])
        line["rho_ratio"] = line["rho_adv"] / base["rho_adv"] if base else math.nan
        paper_base = base["paper"] if base else {}
        line["paper_rho_ratio"] = (line["paper"].get("rho_adv", math.nan)
                                   / paper_base.get("rho_adv", math.nan)
                                   if paper_base else math.nan)
        line["rho_ratio_std"] = verdict.ratio_std(
            line["rho_adv"], line["rho_adv_std"], base["rho_adv"], base["rho_adv_std"]) \
            if base and line["seeds"] > 1 and base["seeds"] > 1 else 0.0
        line["paper_rho_ratio_std"] = verdict.ratio_std(
            line["paper"]["rho_adv"], line["paper"]["rho_adv_std"], paper_base["rho_adv"],
            paper_base["rho_adv_std"]) if paper_base and "rho_adv_std" in line["paper"] and \
            "rho_adv_std" in paper_base else math.nan
        line["rho_min_ratio"] = line["strong_rho_min"] / base["strong_rho_min"] \
            if base and "strong_rho_min" in line and "strong_rho_min" in base else math.nan
        line.update(_cell_verdicts(line))
    return sorted(lines, key=paper_order)


def _evaluations(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means of the stronger evaluation ("strong_*") and the boxed one ("boxed_*") over
    the seeds that have one (how many: "<kind>_seeds"; the tables say so where some seeds have
    none yet); the union of the flags."""
    out: dict[str, Any] = {}
    for kind, _ in EVALUATIONS:
        results = [m[kind] for m in members if kind in m]
        if not results:
            continue
        out[f"{kind}_seeds"] = len(results)
        keys = [k for k, v in results[0].items() if isinstance(v, (int, float))
                and not isinstance(v, bool)]
        for key in keys:
            values = [r.get(key, math.nan) for r in results]
            out[f"{kind}_{key}"] = float(np.mean(values))
        out[f"{kind}_flags"] = sorted({f for r in results for f in r.get("flags", [])})
        if results[0].get("certify_method"):
            out[f"{kind}_bound"] = results[0]["certify_method"]
            out[f"{kind}_routes"] = "; ".join(sorted({bound_routes(r) for r in results}))
        out[f"{kind}_budgets"] = results[0].get("settings", {}).get("linf_eps", [])
        out[f"{kind}_box"] = results[0].get("box")
    return out


def bound_routes(result: dict[str, Any]) -> str:
    """How an evaluation's CROWN bounds were computed, from its "certify_route_<layer>" keys:
    "CROWN at every layer", the layers bounded by intervals instead, or "not recorded" for
    evaluations from before the routes were (577c004: before it, convolutions wider than
    2,048 neurons were bounded by intervals, and before 797627f the bounds had no rounding
    allowance)."""
    method = result.get("certify_method", "")
    if method not in ("crown", "auto"):
        return method
    routes = {k[len("certify_route_"):]: v for k, v in result.items()
              if k.startswith("certify_route_")}
    if not routes:
        return "not recorded (before 577c004)"
    interval = sorted(layer for layer, route in routes.items() if route.startswith("interval"))
    return f"intervals at {', '.join(interval)}" if interval else "CROWN at every layer"


def _cell_verdicts(line: dict[str, Any]) -> dict[str, Any]:
    """The row's verdict by `verdict.row_verdict`, its cells flattened for the CSV."""
    judged = verdict.row_verdict(line)
    if not judged:
        return {}
    flat: dict[str, Any] = {"verdict": judged["verdict"], "cells": judged["cells"]}
    for name, key, *_ in verdict.CELLS:
        result = judged["cells"].get(name)
        if result is not None:
            flat[f"{key}_status"] = result["status"]
            low, high = result.get("interval", (math.nan, math.nan))
            flat[f"{key}_interval_low"], flat[f"{key}_interval_high"] = low, high
            flat[f"{key}_p"] = result.get("p", math.nan)
    return flat


def paper_order(item: dict[str, Any]) -> tuple:
    """Sort key of a run or report line: table, the paper's row order, C, epochs, name."""
    order = {name: i for table in TABLES.values() for i, name in enumerate(table)}
    tables = list(TABLES)
    table = tables.index(item["table"]) if item["table"] in tables else len(tables)
    return (table, item["table"], item.get("architecture") or "", item.get("quick", False),
            item.get("epochs") or 0, item.get("dtype_policy") or "",
            order.get(item["row"], len(order)),
            (item.get("trainer_kwargs") or {}).get("C", 0), item["row"])


def _fmt(mean: float, std: float, seeds: int, digits: int) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


def _paper(value: Any, digits: int, std: Any = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None else "")


TABLE_TITLES = {"table1": "Table I", "table2": "Table II", "ablation": "Ablation",
                "hidden": "Hidden-layer margins", "certified": "Certified training",
                "sweep-c": "Figure 4 (l2 margin maximization over C)"}
NETWORKS = {"mlp": "MLP", "lenet5": "LeNet-5", "nin": "Network in Network"}


def section_title(line: dict[str, Any]) -> str:
    """"Table I — MLP 1000-1000-1000, 20 epochs" and what else sets the section apart."""
    network = NETWORKS.get(line["architecture"], line["architecture"])
    if line["architecture"] == "mlp" and line.get("hidden"):
        network += f" {line['hidden']}"
    title = f"{TABLE_TITLES.get(line['table'], line['table'])} — {network}, " \
            f"{_epochs(line['epochs'])}"
    extras = [line["dataset"]] if line["dataset"] != "mnist" else []
    extras += [f"{line['protocol']} protocol"] if line["protocol"] != "reference" else []
    extras += [line["dtype_policy"]] if line["dtype_policy"] != "float32" else []
    extras += ["QUICK (reduced data, see the protocol)"] if line["quick"] else []
    return title + "".join(f", {e}" for e in extras)


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _judged(m: dict[str, Any], name: str, key: str, digits: int, scale: str = "") -> str:
    """One verdict cell: ours / the paper's, the interval or p-value, and the mark."""
    result = m["cells"].get(name)
    if result is None:
        return "—"
    paper_std = m["paper"].get(f"{key}_std") if key != "rho_ratio" else m["paper_rho_ratio_std"]
    paper_mean = m["paper"][key] if key != "rho_ratio" else m["paper_rho_ratio"]
    ours = _fmt(m[key], m.get(f"{key}_std", 0.0), m["seeds"], digits)
    theirs = _paper(paper_mean, digits, paper_std)
    if "interval" in result:
        low, high = result["interval"]
        test = f"[{low:.{digits}f}, {high:.{digits}f}]"
    elif "p" in result:
        test = f"p {result['p']:.3f}"
    else:
        test = "no spread"
    mark = {"reproduced": "✓", "better": "✗ better", "worse": "✗ worse",
            "undecided": "?"}[result["status"]]
    return f"{scale}{ours} / {scale}{theirs} {test} {mark}"


def _table1_rows(lines: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The Table I lines on the full data in float32 that hold `key`."""
    return [ln for ln in lines if ln["table"] == "table1" and key in ln
            and not ln["quick"] and ln["dtype_policy"] == "float32"]


def trend_table(lines: list[dict[str, Any]]) -> str:
    """Per Table I row (seed 0's history): is the validation error still falling at the last
    epoch, or did it bottom out earlier? What the README may say about training length."""
    rows = _table1_rows(lines, "val_error_last")
    if not rows:
        return ""
    out = ["| row | epochs | val error % at the last epoch | lowest (epoch) | val loss at the "
           "last epoch | lowest (epoch) | val error lowest at the last epoch |",
           "|---|---|---|---|---|---|---|"]
    for m in rows:
        falling = "yes" if m["val_error_lowest_epoch"] == m["epochs"] else "no"
        out.append(f"| {m['label']} | {m['epochs']} | {m['val_error_last']:.2f} | "
                   f"{m['val_error_lowest']:.2f} ({m['val_error_lowest_epoch']}) | "
                   f"{m['val_loss_last']:.4f} | {m['val_loss_lowest']:.4f} "
                   f"({m['val_loss_lowest_epoch']}) | {falling} |")
    return "\n".join(out) + "\n\nFrom each row's seed-0 history.csv (validation: the 10,000 " \
        "held-out training digits).\n"


def verdict_table(lines: list[dict[str, Any]]) -> str:
    """The first table: for each Table I row (float32, full data), ours against the paper's,
    cell by cell, with the interval or p-value of `verdict.RULE`."""
    rows = _table1_rows(lines, "verdict")
    if not rows:
        return ""
    out = ["| row | epochs | seeds | error % (ours / paper) | FGSM error % (ours / paper) | "
           "rho_adv (ours / paper) | rho_adv / baseline (ours / paper) | verdict |",
           "|---|---|---|---|---|---|---|---|"]
    for m in rows:
        out.append(
            f"| {m['label']} | {m['epochs']} | {m['seeds']} | "
            f"{_judged(m, 'error', 'error', 2)} | {_judged(m, 'FGSM error', 'fgsm_error', 1)} | "
            f"{_judged(m, 'rho_adv', 'rho_adv', 3)} | "
            f"{_judged(m, 'rho_adv / baseline', 'rho_ratio', 2, 'x')} | {m['verdict']} |")
    return "\n".join(out) + "\n\n" + verdict.RULE + "\n"


def markdown(lines: list[dict[str, Any]]) -> str:
    """The verdict table, then one section per configuration: ours beside the paper's, the
    stronger attacks and the box where evaluated."""
    out = []
    verdicts = verdict_table(lines)
    if verdicts:
        out += ["## Verdict: Table I, cell by cell\n", verdicts]
    trends = trend_table(lines)
    if trends:
        out += ["## Training length: the validation error at the last epoch\n", trends]
    sections: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in lines:
        sections[section_title(line)].append(line)
    for members in sections.values():
        members[:0] = _references(members, lines)
    for title, members in sections.items():
        first = members[0]
        seeds = sorted({m["seeds"] for m in members})
        out.append(f"## {title}\n")
        out.append(f"Protocol: {first['protocol']} "
                   f"({PROTOCOL_NOTES.get(first['protocol'], '')}); data: {first['data']}; "
                   f"{_epochs(first['epochs'])}; precision: {first['dtype_policy']}; seeds per "
                   f"row: {', '.join(map(str, seeds))}.\n")
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
                f"{_paper(p.get('error'), 2, p.get('error_std'))} | "
                f"{_fmt(m['fgsm_error'], m['fgsm_error_std'], m['seeds'], 1)} | "
                f"{_paper(p.get('fgsm_error'), 1, p.get('fgsm_error_std'))} | "
                f"{_fmt(m['rho_adv'], m['rho_adv_std'], m['seeds'], 3)} | "
                f"{_paper(p.get('rho_adv'), 3, p.get('rho_adv_std'))} | {ratio} | "
                f"{paper_ratio} |")
        out.append("")
        out += _strong_table(members) + _boxed_table(members) + _certified_table(members)
        out += _autoattack_table(members)
        out += _cost_table(members)
    return "\n".join(out)


def _references(members: list[dict[str, Any]], lines: list[dict[str, Any]]) -> list:
    """For a "hidden" section, Table I's baseline and input-margin (l2) rows of the same
    setting, so that its rows stand beside what they are compared with."""
    if members[0]["table"] != "hidden":
        return []
    wanted = {f"{members[0]['architecture']}-{row}" for row in ("baseline", "l2")}
    return [ln for ln in lines if ln["table"] == "table1" and ln["row"] in wanted
            and ln["setting"] == members[0]["setting"]
            and ln["dtype_policy"] == members[0]["dtype_policy"]]


def evaluated_label(line: dict[str, Any], kind: str) -> str:
    """The row's label, with "(seed 0 of 3)"-style counts where only some seeds have the
    evaluation `kind` (the table's numbers are the means over those)."""
    have, seeds = int(line.get(f"{kind}_seeds", 0)), int(line.get("seeds", 0))
    if not have or have >= seeds:
        return line["label"]
    return f"{line['label']} ({have} of {seeds} seeds)"


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
           "| row | rho_adv (DeepFool) | rho_min | DeepFool / minimum (median) | "
           "rho_min vs baseline | "
           + " | ".join(f"robust acc. l_inf {e:g}" for e in budgets) + " | flags |",
           "|---|---|---|---|---|" + "---|" * len(budgets) + "---|"]
    for m in rows:
        ratio = "—" if math.isnan(m["rho_min_ratio"]) else f"x{m['rho_min_ratio']:.2f}"
        accuracy = " | ".join(
            f"{100 * m.get('strong_' + metric_key('robust_accuracy', 'linf', e), math.nan):.1f} %"
            for e in budgets)
        flags = ", ".join(m["strong_flags"]) or "none"
        over = m.get("strong_deepfool_to_minimum_ratio", math.nan)
        out.append(f"| {evaluated_label(m, 'strong')} | {m['strong_rho_adv']:.3f} | "
                   f"{m.get('strong_rho_min', math.nan):.3f} | {over:.2f} | {ratio} | "
                   f"{accuracy} | {flags} |")
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
        out.append(f"| {evaluated_label(m, 'boxed')} | {m['strong_rho_adv']:.3f} | "
                   f"{m['boxed_rho_adv']:.3f} | "
                   f"{100 * change:+.1f} % | {100 * m['strong_fgsm_error']:.1f} | "
                   f"{100 * m['boxed_fgsm_error']:.1f} |")
    return out + [""]


CERTIFIED_BUDGETS = (("l2", 0.1), ("l2", 0.3), ("linf", 0.01), ("linf", 0.03))


def _certified_budgets(rows: list[dict[str, Any]]) -> list[tuple[str, float]]:
    """The budgets the rows were certified at (their certified_accuracy keys): l2 then
    l_inf, each by eps; `CERTIFIED_BUDGETS` where none is stored."""
    found = set()
    for m in rows:
        for key in m:
            parsed = parse_metric_key("certified_certified_accuracy", key)
            if parsed is not None and not parsed[2]:
                found.add(parsed[:2])
    return sorted(found) if found else list(CERTIFIED_BUDGETS)


def _certified_table(members: list[dict[str, Any]]) -> list[str]:
    """Proven against attacked robustness, where `keras-margin evaluate --certify` ran."""
    rows = [m for m in members if "certified_rho_certified" in m]
    if not rows:
        return []
    budgets = _certified_budgets(rows)
    method = rows[0].get("certified_bound", "")
    out = [f"Certified robustness (`keras-margin evaluate --certify`, the first "
           f"{int(rows[0]['certified_n'])} test points): each point's certified l2 radius is a "
           f"proven lower bound on its smallest adversarial perturbation ({method}), beside the "
           "attacks' upper bounds; rho_certified is eq. 20's measure of it. Certified "
           "accuracy: share of the points proven robust at the budget. Bounds: how CROWN bounded "
           "the hidden layers, from each evaluation's routes; \"not recorded\" marks "
           "evaluations made before 577c004, when convolutions wider than 2,048 neurons "
           "were bounded by intervals (sound, looser) and, before 797627f, without the "
           "allowance for rounding.\n",
           "| row | rho_adv (DeepFool) | rho_min (attacks) | rho_certified (proven) | "
           "median certified l2 radius | certified / smallest attack (median) | "
           + " | ".join(f"certified acc. {n} {e:g}" for n, e in budgets) + " | bounds |",
           "|---|---|---|---|---|---|" + "---|" * len(budgets) + "---|"]
    for m in rows:
        accuracy = " | ".join(
            f"{100 * m.get('certified_' + metric_key('certified_accuracy', n, e), math.nan):.1f}"
            " %"
            for n, e in budgets)
        out.append(f"| {evaluated_label(m, 'certified')} | {m['certified_rho_adv']:.3f} | "
                   f"{m.get('certified_rho_min', math.nan):.3f} | "
                   f"{m['certified_rho_certified']:.3f} | "
                   f"{m.get('certified_certified_radius_l2_median', math.nan):.3f} | "
                   f"{m.get('certified_certified_to_minimum_ratio', math.nan):.2f} | "
                   f"{accuracy} | {m.get('certified_routes', '')} |")
    return out + [""]


def _autoattack_table(members: list[dict[str, Any]]) -> list[str]:
    """AutoAttack's standard ensemble beside the APGD pair, where `keras-margin evaluate
    --autoattack --tag autoattack` ran."""
    rows = [m for m in members if "autoattack_n" in m]
    if not rows:
        return []
    lo, hi = rows[0].get("autoattack_box") or (None, None)
    box = "no input box" if lo is None and hi is None else f"inside [{lo:g}, {hi:g}]"
    out = [f"AutoAttack (`keras-margin evaluate --autoattack --tag autoattack`, the first "
           f"{int(rows[0]['autoattack_n'])} test points, {box}): robust accuracy by APGD-CE + "
           "APGD-T alone, by AutoAttack's standard ensemble (APGD-CE, APGD-T, FAB-T, Square, "
           "each on "
           "the points the ones before left), and by every attack of the evaluation (the "
           "ensemble and FGSM); the points FAB-T and Square fooled after APGD, and Square's "
           "that no gradient attack fooled (masking).\n",
           "| row | l_inf eps | APGD-CE + APGD-T | AutoAttack | every attack | fooled by "
           "FAB-T | by Square | by Square only | flags |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m in rows:
        correct = 1 - m["autoattack_error"]
        for eps in m["autoattack_budgets"]:
            key = "autoattack_" + metric_key("autoattack", "linf", eps)
            aa_key = metric_key("autoattack_accuracy", "linf", eps)
            robust_key = metric_key("robust_accuracy", "linf", eps)
            apgd = correct - m.get(f"{key}_apgd", math.nan) / m["autoattack_n"]
            out.append(
                f"| {evaluated_label(m, 'autoattack')} | {eps:g} | {100 * apgd:.1f} % | "
                f"{100 * m.get('autoattack_' + aa_key, math.nan):.1f} % | "
                f"{100 * m.get('autoattack_' + robust_key, math.nan):.1f} % | "
                f"{m.get(f'{key}_fab-t', math.nan):.1f} | {m.get(f'{key}_square', math.nan):.1f} | "
                f"{m.get(f'{key}_square_only', math.nan):.1f} | "
                f"{', '.join(m['autoattack_flags']) or 'none'} |")
    return out + [""]


def _cost_table(members: list[dict[str, Any]]) -> list[str]:
    """Training time per row (an epoch includes the robustness callback's evaluation of the
    validation subset), with the backend and the machine it ran on."""
    rows = [m for m in members if m.get("epoch_seconds_median") is not None]
    if not rows:
        return []
    out = ["Training time (`keras-margin reproduce`, from each run's history.csv; an epoch "
           "includes the robustness callback's evaluation; wall-clock time depends on what else "
           "the machine ran, CPU time less so):\n",
           "| row | backend | machine | median s / epoch (wall) | median CPU s / epoch | "
           "training, minutes (wall, mean over seeds) |", "|---|---|---|---|---|---|"]
    for m in rows:
        out.append(f"| {m['label']} | {', '.join(m['backends'])} | {'; '.join(m['machines'])} "
                   f"| {m['epoch_seconds_median']:.0f} | {m['epoch_cpu_seconds_median']:.0f} | "
                   f"{m['train_minutes']:.0f} |")
    return out + [""]


def _cost_summary(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed-pooled medians of the epoch times, mean total minutes, backends and machines."""
    if not all(m.get("epoch_seconds") and m.get("epoch_cpu_seconds") for m in members):
        return {}
    return {"epoch_seconds_median": float(np.median([v for m in members
                                                     for v in m["epoch_seconds"]])),
            "epoch_cpu_seconds_median": float(np.median([v for m in members
                                                         for v in m["epoch_cpu_seconds"]])),
            "train_minutes": float(np.mean([sum(m["epoch_seconds"]) for m in members])) / 60,
            "backends": sorted({b for m in members for b in m.get("backends", ["?"])}),
            "machines": sorted({c for m in members for c in m.get("machines", ["?"])})}


CSV_FIELDS = ["table", "row", "label", "architecture", "dataset", "quick", "protocol", "data",
              "dtype_policy", "epochs", "seeds", "seed_list", "error", "error_std",
              "fgsm_error", "fgsm_error_std", "rho_adv", "rho_adv_std", "rho_ratio",
              "paper_error", "paper_error_std", "paper_fgsm_error", "paper_fgsm_error_std",
              "paper_rho_adv", "paper_rho_adv_std", "paper_rho_ratio", "rho_ratio_std",
              "paper_rho_ratio_std"] + [
              f"{key}_{what}" for _, key, *_ in verdict.CELLS
              for what in ("status", "interval_low", "interval_high", "p")] + [
              "verdict", "rho_min_ratio", "backends", "epoch_seconds_median",
              "epoch_cpu_seconds_median", "train_minutes"]


def csv_rows(lines: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV's header and rows: every summary field, the paper's, the stronger ones."""
    extra = sorted({k for line in lines for k in line
                    if k.startswith(("strong_", "boxed_", "certified_", "autoattack_")) and
                    not k.endswith(("_flags", "_budgets", "_box"))})
    fields = CSV_FIELDS + extra + ["strong_flags"]
    rows = []
    for line in lines:
        rows.append({**line, **{f"paper_{k}": v for k, v in line["paper"].items()},
                     "seed_list": " ".join(map(str, line["seed_list"])),
                     "backends": " ".join(line.get("backends", [])),
                     "strong_flags": " ".join(line.get("strong_flags", []))})
    return fields, rows


def readme_blocks(lines: list[dict[str, Any]]) -> dict[str, str]:
    """The README's generated Results tables, by name: "verdict" (the verdict table and its
    rule), "stronger" (the stronger attacks on every Table I configuration) and "certified"
    (proven against attacked robustness, where `evaluate --certify` ran)."""
    table1 = [ln for ln in lines if ln["table"] == "table1" and not ln["quick"]]
    sections: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in table1:
        sections[section_title(line)].append(line)
    blocks = {"verdict": verdict_table(lines), "trends": trend_table(table1)}
    for name, table in (("stronger", _strong_table), ("certified", _certified_table)):
        parts = []
        for title, members in sections.items():
            rows = table(members)
            if rows:
                parts += [f"**{title}**\n"] + rows[1:]
        blocks[name] = "\n".join(parts) or "No run has been evaluated this way yet."
    return blocks


BLOCK = "<!-- generated by `keras-margin report --readme`: {name} -->"
BLOCK_END = "<!-- end of {name} -->"


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    """`text` with each generated block (between its two markers) replaced by `blocks`; a
    missing end marker is an error."""
    for name, body in blocks.items():
        begin, end = BLOCK.format(name=name), BLOCK_END.format(name=name)
        if begin not in text:
            continue
        head, _, rest = text.partition(begin)
        if end not in rest:
            raise ValueError(f"The README's block {name!r} has no end marker {end!r}.")
        _, _, tail = rest.partition(end)
        text = f"{head}{begin}\n{body.strip()}\n{end}{tail}"
    return text


def update_readme(runs_dir: str, readme: str) -> list[str]:
    """Rewrites the generated blocks of `readme` from the runs; returns the blocks' names."""
    blocks = readme_blocks(summarize(collect(runs_dir)))
    with open(readme) as f:
        text = f.read()
    write_text(readme, replace_blocks(text, blocks))
    return [name for name in blocks if BLOCK.format(name=name) in text]


def header(runs_dir: str, prefix: str) -> str:
    """The report's first lines: the folder it was made from and the command that makes it."""
    command = f"keras-margin report {shlex.quote(runs_dir)} --out {shlex.quote(prefix)}"
    return (f"# Results\n\nGenerated by `{command}` from "
            f"the run folders under `{runs_dir.rstrip('/')}/` (each run's config, environment, "
            "per-epoch history, metrics and per-point arrays); a test regenerates the "
            "published report and its `.csv` and compares them.\n")


def write(runs_dir: str, out_prefix: str | None = None,
          shown_as: tuple[str, str] | None = None) -> str:
    """Writes `<prefix>.md` and `<prefix>.csv` (default: runs_dir/report) and returns the text.
    Its header names the runs folder and the prefix as given (or as `shown_as` says: the test
    that regenerates the published report names them as the README's command does)."""
    lines = summarize(collect(runs_dir))
    if not lines:
        raise FileNotFoundError(f"No finished runs (metrics.json) under {runs_dir}.")
    prefix = out_prefix or os.path.join(runs_dir, "report")
    running = _in_progress_table(in_progress(runs_dir))
    text = header(*(shown_as or (runs_dir, prefix))) + "\n" + markdown(lines) + \
        ("\n" + running if running else "")
    fields, rows = csv_rows(lines)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text(prefix + ".md", text)
    write_text(prefix + ".csv", table.getvalue())
    return text
