"""The verdict rule (keras_margin.experiments.verdict) against SciPy and against simulation."""

import math

import numpy as np
import pytest

from keras_margin.experiments import verdict

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("df", [1, 2.5, 9, 17.3, 200])
def test_students_t_equals_scipys(df):
    for t in (-4.0, -1.0, 0.0, 0.3, 2.262, 8.0):
        assert verdict.t_cdf(t, df) == pytest.approx(stats.t.cdf(t, df), abs=1e-12)
    for p in (0.025, 0.5, 0.9, 0.975, 0.999):
        assert verdict.t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), abs=1e-8)


def test_welch_equals_scipys():
    for a, sa, na, b, sb, nb in ((1.02, 0.05, 3, 0.86, 0.04, 10),
                                 (37.7, 2.0, 5, 42.6, 1.4, 10), (0.1, 0.02, 3, 0.1, 0.001, 10)):
        expected = stats.ttest_ind_from_stats(a, sa, na, b, sb, nb, equal_var=False).pvalue
        assert verdict.welch(a, sa, na, b, sb, nb) == pytest.approx(expected, rel=1e-9)


def test_the_interval_is_the_prediction_interval_of_a_mean_of_n_seeds():
    result = verdict.judge_cell(0.9, 0.0, 1, 0.86, 0.04, "lower")
    half = stats.t.ppf(0.975, 9) * 0.04 * math.sqrt(1 + 1 / 10)
    assert result["interval"] == pytest.approx((0.86 - half, 0.86 + half))
    assert result["status"] == "reproduced"
    assert verdict.judge_cell(1.02, 0.0, 1, 0.86, 0.04, "lower")["status"] == "worse"
    assert verdict.judge_cell(0.70, 0.0, 1, 0.86, 0.04, "lower")["status"] == "better"
    assert verdict.judge_cell(0.30, 0.0, 1, 0.25, 0.01, "higher")["status"] == "better"
    assert verdict.judge_cell(0.30, 0.0, 1, 0.25, None, "higher")["status"] == "undecided"


@pytest.mark.parametrize("seeds", [1, 2, 3, 4, 5, 8])
def test_a_perfect_reproduction_fails_a_cell_five_percent_of_the_time(seeds):
    # Our seeds drawn as the paper's (normal, its mean and std), the paper's 10 seeds drawn
    # too: the rule's false-failure rate is its alpha, whatever the number of our seeds.
    rng = np.random.default_rng(seeds)
    trials, fails = 6000, 0
    for _ in range(trials):
        paper = rng.normal(1.0, 0.1, verdict.PAPER_SEEDS)
        ours = rng.normal(1.0, 0.1, seeds)
        result = verdict.judge_cell(ours.mean(), ours.std(ddof=1) if seeds > 1 else 0.0, seeds,
                                    paper.mean(), paper.std(ddof=1), "lower")
        fails += result["status"] != "reproduced"
    assert abs(fails / trials - verdict.ALPHA) < 0.01, fails / trials


def test_a_row_lists_every_missed_cell_with_its_direction():
    line = {"paper": {"error": 0.86, "error_std": 0.04, "fgsm_error": 42.56,
                      "fgsm_error_std": 1.37, "rho_adv": 0.259, "rho_adv_std": 0.005},
            "baseline": False, "seeds": 1, "error": 1.02, "fgsm_error": 37.7, "rho_adv": 0.26,
            "rho_ratio": 2.27, "paper_rho_ratio": 2.27, "paper_rho_ratio_std": 0.05}
    judged = verdict.row_verdict(line)
    assert judged["verdict"] == "not reproduced: error (ours worse), FGSM error (ours better)"
    assert set(judged["cells"]) == {"error", "FGSM error", "rho_adv", "rho_adv / baseline"}
    assert verdict.ratio_std(2.0, 0.1, 1.0, 0.05) == pytest.approx(2 * math.sqrt(0.05 ** 2 * 2))
