"""Paired statistics of the shadow report: golden values, an independent implementation, and
the coverage of the printed interval by fixed-seed simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from feedbackloop.analysis.statistics import (
    ErrorCode,
    InvalidStatistics,
    MeanStats,
    PairedCounts,
    paired_mean_difference,
    win_tie_loss,
)


def test_win_tie_loss_matches_the_agresti_min_formula_by_hand() -> None:
    r = win_tie_loss(PairedCounts(wins=30, ties=50, losses=20))
    # Agresti & Min (2005): add 1/2 to each cell, n + 2 = 102
    centre = (30.5 - 20.5) / 102
    se = math.sqrt(((30.5 + 20.5) - (30.5 - 20.5) ** 2 / 102) / 102**2)
    assert r.net.value == pytest.approx(0.10)
    assert r.net.lower == pytest.approx(centre - 1.959964 * se, abs=1e-6)
    assert r.net.upper == pytest.approx(centre + 1.959964 * se, abs=1e-6)
    assert (r.win_rate, r.tie_rate, r.loss_rate) == (0.30, 0.50, 0.20)
    assert r.sign_test.p_value == pytest.approx(stats.binomtest(30, 50, 0.5).pvalue)
    for w, lo in ((0, 7), (12, 3), (5, 5)):
        p = win_tie_loss(PairedCounts(w, 1, lo)).sign_test.p_value
        assert p == pytest.approx(stats.binomtest(w, w + lo, 0.5).pvalue)


def test_every_pair_tied_is_even_with_a_real_interval_not_a_point() -> None:
    r = win_tie_loss(PairedCounts(0, 200, 0))
    assert r.net.value == 0.0 and r.net.lower < 0 < r.net.upper
    assert r.net.upper < 0.02  # 200 ties: any difference is small
    assert r.sign_test.p_value == 1.0 and "tied" in r.sign_test.message


def test_no_pairs_is_an_error_code_not_an_exception() -> None:
    r = win_tie_loss(PairedCounts(0, 0, 0))
    assert r.net.error is ErrorCode.ZERO_SAMPLES and math.isnan(r.net.value)
    with pytest.raises(InvalidStatistics):
        PairedCounts(-1, 0, 0)


def test_all_wins_stays_inside_minus_one_to_one() -> None:
    r = win_tie_loss(PairedCounts(40, 0, 0))
    assert r.net.value == 1.0 and 0.8 < r.net.lower < r.net.upper <= 1.0


@pytest.mark.parametrize(
    ("p_win", "p_loss", "n"), [(0.3, 0.2, 200), (0.1, 0.1, 60), (0.05, 0.0, 100), (0.6, 0.3, 40)]
)
def test_the_net_interval_covers_the_truth_about_95_percent_of_the_time(
    p_win: float, p_loss: float, n: int
) -> None:
    rng = np.random.default_rng(20261129)
    truth, runs, hits = p_win - p_loss, 3000, 0
    for w, t, lo in rng.multinomial(n, [p_win, 1 - p_win - p_loss, p_loss], size=runs):
        hits += win_tie_loss(PairedCounts(int(w), int(t), int(lo))).net.contains(truth)
    # Agresti-Min is near nominal; 3000 runs: a binomial s.e. of ~0.4 pp
    assert 0.93 <= hits / runs <= 0.975


def test_paired_mean_difference_equals_scipys_one_sample_t_interval() -> None:
    rng = np.random.default_rng(5)
    d = rng.normal(-12.0, 30.0, size=80)
    e = paired_mean_difference(MeanStats.from_values(d))
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert (e.lower, e.upper) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert e.value == pytest.approx(d.mean())


def test_identical_differences_report_the_difference_with_an_error_code() -> None:
    e = paired_mean_difference(MeanStats.from_values([0.0] * 10))
    assert e.value == 0.0 and e.error is ErrorCode.ZERO_VARIANCE
    assert paired_mean_difference(MeanStats.from_values([1.0])).error is ErrorCode.TOO_FEW_SAMPLES
