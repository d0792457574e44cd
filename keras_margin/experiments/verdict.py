"""When a Table I cell reproduces the paper's: one statistical rule for every cell.

The paper reports, per row, the mean and standard deviation over `PAPER_SEEDS` seeds. Ours is
the mean over our seeds. A cell is reproduced when ours could come from the paper's seeds'
distribution at the 5 % level (two-sided), whatever the measure:

* one to four seeds of ours: the 95 % prediction interval of a mean of n new seeds from the
  paper's, mean_p +- t(0.975, n_p - 1) * std_p * sqrt(1/n + 1/n_p) (ours is taken to spread as
  the paper's seeds do);
* `WELCH_FROM` (5) seeds or more: Welch's t-test of the two means (each side's own std),
  p >= 0.05. Below 5 seeds Welch's test is liberal: simulated with both sides drawn alike
  (20,000 trials against 10 paper seeds) it failed 6.4 % of cells at 3 seeds, 5.5 % at 4,
  5.0 % at 5 (tests/test_verdict.py checks the rule's own rate).

For a perfect reproduction (our seeds drawn as the paper's) a cell fails 5 % of the time; a row
of k cells at most k x 5 % (3 cells: 15 %, 4 cells: 20 %). The ratio to the baseline's rho_adv
takes its std from both rows' by the delta method. A cell whose paper number has no spread
cannot be tested: "undecided". Everything here is plain Python (no SciPy): Student's t from
the regularised incomplete beta function, tested against SciPy.
"""

from __future__ import annotations

import math
from typing import Any

ALPHA = 0.05
WELCH_FROM = 5  # our seeds from which Welch's test replaces the prediction interval
PAPER_SEEDS = 10  # Table I: "averaged over 10 runs"

# (cell, key of our mean, key of its std, digits, "lower" or "higher" is better)
CELLS = (("error", "error", "error_std", 2, "lower"),
         ("FGSM error", "fgsm_error", "fgsm_error_std", 1, "lower"),
         ("rho_adv", "rho_adv", "rho_adv_std", 3, "higher"),
         ("rho_adv / baseline", "rho_ratio", "rho_ratio_std", 2, "higher"))

RULE = (
    "A cell is reproduced when ours could come from the paper's seeds at the 5 % level: with "
    "one to four seeds of ours, inside the 95 % prediction interval [shown] of a mean of that "
    "many seeds drawn as the paper's (mean ± t(0.975, 9) · std · √(1/n + 1/10)); with five or "
    "more, Welch's t-test of the two means, p ≥ 0.05 [p shown] (below five it fails more than 5"
    " %). rho_adv / baseline takes its std from both rows' by the delta method. A perfect "
    "reproduction fails a cell 5 % of the time and a row of three or four cells at most 15 % or"
    " 20 %. A row is reproduced when every cell is; ✗ says whether ours is better or worse. The"
    " paper averages 10 seeds of 100 epochs; our epochs are in the table.")


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t cumulative distribution function."""
    if t * t < df:  # near 0: from t^2 / (df + t^2), which keeps the small t's digits
        tail = 0.5 * (1.0 - betainc(0.5, df / 2.0, t * t / (df + t * t)))
    else:
        tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on `t_cdf`, to 1e-12)."""
    low, high = -1e3, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < p else (low, middle)
        if high - low < 1e-12:
            break
    return (low + high) / 2


def welch(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float,
          n_b: int) -> float:
    """Two-sided p-value of Welch's t-test of two means."""
    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    if va + vb == 0:
        return 1.0 if mean_a == mean_b else 0.0
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    t = (mean_a - mean_b) / math.sqrt(va + vb)
    return 2.0 * (1.0 - t_cdf(abs(t), df))


def ratio_std(a: float, std_a: float, b: float, std_b: float) -> float:
    """The std of a / b for independent a and b, by the delta method."""
    return abs(a / b) * math.sqrt((std_a / a) ** 2 + (std_b / b) ** 2)


def judge_cell(ours: float, ours_std: float, seeds: int, paper: float, paper_std: float | None,
              better: str, paper_seeds: int = PAPER_SEEDS) -> dict[str, Any]:
    """The rule for one cell: {"status": "reproduced" | "better" | "worse" | "undecided",
    "interval": (low, high) or "p": p-value}."""
    if paper_std is None or not math.isfinite(paper_std) or paper_std <= 0 or \
            not math.isfinite(ours) or not math.isfinite(paper):
        return {"status": "undecided"}
    if seeds < WELCH_FROM:
        half = t_quantile(1 - ALPHA / 2, paper_seeds - 1) * paper_std * math.sqrt(
            1 / seeds + 1 / paper_seeds)
        out = {"interval": (paper - half, paper + half)}
        inside = paper - half <= ours <= paper + half
    else:
        out = {"p": welch(ours, ours_std, seeds, paper, paper_std, paper_seeds)}
        inside = out["p"] >= ALPHA
    higher = ours > paper
    out["status"] = "reproduced" if inside else (
        "better" if higher == (better == "higher") else "worse")
    return out


def row_verdict(line: dict[str, Any]) -> dict[str, Any]:
    """Every cell's test and the row's verdict, for a report line with the paper's numbers
    ("cells": {cell: result}, "verdict": text); empty where the paper has no number."""
    p = line["paper"]
    if not {"error", "fgsm_error", "rho_adv"} <= set(p):
        return {}
    paper = {"error": (p["error"], p.get("error_std")),
             "fgsm_error": (p["fgsm_error"], p.get("fgsm_error_std")),
             "rho_adv": (p["rho_adv"], p.get("rho_adv_std")),
             "rho_ratio": (line.get("paper_rho_ratio", math.nan),
                           line.get("paper_rho_ratio_std"))}
    cells = {}
    for name, key, std_key, _, better in CELLS:
        if key == "rho_ratio" and line["baseline"]:
            continue
        cells[name] = judge_cell(line[key], line.get(std_key, 0.0), line["seeds"],
                                 paper[key][0], paper[key][1], better)
    missed = [f"{name} (ours {r['status']})" for name, r in cells.items()
              if r["status"] in ("better", "worse")]
    undecided = [name for name, r in cells.items() if r["status"] == "undecided"]
    text = ("not reproduced: " + ", ".join(missed) if missed else
            "undecided: " + ", ".join(undecided) + " (the paper gives no spread)"
            if undecided else "reproduced")
    return {"cells": cells, "verdict": text}
