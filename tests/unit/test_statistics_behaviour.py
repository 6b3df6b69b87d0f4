"""Degenerate input, sufficient-statistic arithmetic, decisions and the full comparison."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from feedbackloop.analysis.statistics import (
    VERDICT_PROMISES,
    BinaryStats,
    CountComparison,
    ErrorCode,
    Evidence,
    InvalidStatistics,
    MeanStats,
    RatioStats,
    Rules,
    Verdict,
    beta_binomial,
    chi_square_test,
    compare_counts,
    decide,
    fisher_exact_test,
    format_comparison,
    holm,
    mann_whitney,
    newcombe_interval,
    power_status,
    ratio_ztest,
    relative_lift_interval,
    required_sample_size,
    required_sample_size_means,
    required_sample_size_proportions,
    sample_ratio_mismatch,
    sequential_test_means,
    sequential_test_proportions,
    sequential_test_ratios,
    two_proportion_ztest,
    welch_ttest,
    wilson_interval,
)
from feedbackloop.errors import FeedbackLoopError

# --- sufficient statistics ------------------------------------------------------------------


def test_mean_stats_properties_and_addition() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(3, 2, 100), rng.normal(5, 1, 50)
    sa, sb = MeanStats.from_values(a), MeanStats.from_values(b)
    merged = sa + sb
    both = np.concatenate([a, b])
    assert merged.n == 150
    assert merged.mean == pytest.approx(both.mean())
    assert merged.variance == pytest.approx(both.var(ddof=1))
    assert sa.std == pytest.approx(a.std(ddof=1))


def test_binary_stats_addition_and_parse() -> None:
    assert BinaryStats(10, 3) + BinaryStats(5, 1) == BinaryStats(15, 4)
    assert BinaryStats.parse(" 540 / 1000 ") == BinaryStats(1000, 540)
    assert BinaryStats(4, 1).rate == 0.25 and math.isnan(BinaryStats(0, 0).rate)


@pytest.mark.parametrize("text", ["5/0", "abc", "1/2/3", "-1/10", "1.5/10", ""])
def test_binary_stats_parse_rejects_bad_input(text: str) -> None:
    with pytest.raises(InvalidStatistics) as err:
        BinaryStats.parse(text)
    assert isinstance(err.value, FeedbackLoopError)


def test_invalid_statistics_raise() -> None:
    with pytest.raises(InvalidStatistics):
        BinaryStats(n=10, successes=11)
    with pytest.raises(InvalidStatistics):
        MeanStats(n=-1, sum=0, sum_squares=0)
    with pytest.raises(InvalidStatistics):
        RatioStats(n=1, sum_num=math.nan, sum_den=1, sum_num_sq=0, sum_den_sq=1, sum_num_den=0)


def test_ratio_stats_addition_matches_concatenation() -> None:
    rng = np.random.default_rng(2)
    y1, d1 = rng.integers(0, 5, 30), rng.integers(1, 8, 30)
    y2, d2 = rng.integers(0, 5, 20), rng.integers(1, 8, 20)
    merged = RatioStats.from_sessions(y1, d1) + RatioStats.from_sessions(y2, d2)
    whole = RatioStats.from_sessions(np.concatenate([y1, y2]), np.concatenate([d1, d2]))
    assert merged.variance == pytest.approx(whole.variance)
    assert merged.ratio == pytest.approx(whole.ratio)


def test_constant_data_has_zero_variance_not_negative() -> None:
    s = MeanStats.from_values([0.1] * 1000)
    assert s.variance == 0.0
    assert welch_ttest(s, MeanStats.from_values([0.1] * 50)).test.error == ErrorCode.ZERO_VARIANCE
    # A real but small spread is kept.
    assert MeanStats.from_values([1000.0, 1000.01]).variance == pytest.approx(5e-5, rel=1e-4)


# --- degenerate input returns a coded result, never raises ---------------------------------

EMPTY, SOME = BinaryStats(0, 0), BinaryStats(100, 30)


@pytest.mark.parametrize(
    "fn",
    [
        two_proportion_ztest,
        chi_square_test,
        fisher_exact_test,
        newcombe_interval,
        relative_lift_interval,
        sequential_test_proportions,
    ],
)
def test_zero_samples(fn: object) -> None:
    res = fn(EMPTY, SOME)  # type: ignore[operator]
    assert res.error == ErrorCode.ZERO_SAMPLES
    assert res.message


def test_zero_variance_binary() -> None:
    pairs = [(BinaryStats(50, 0), BinaryStats(60, 0)), (BinaryStats(50, 50), BinaryStats(9, 9))]
    for c, t in pairs:
        assert two_proportion_ztest(c, t).error == ErrorCode.ZERO_VARIANCE
        assert chi_square_test(c, t).error == ErrorCode.ZERO_VARIANCE
        assert sequential_test_proportions(c, t).error == ErrorCode.ZERO_VARIANCE
        assert fisher_exact_test(c, t).p_value == pytest.approx(1.0)
    assert wilson_interval(EMPTY).error == ErrorCode.ZERO_SAMPLES
    lift = relative_lift_interval(BinaryStats(50, 0), SOME)
    assert lift.error == ErrorCode.UNDEFINED


def test_zero_variance_and_too_few_means() -> None:
    flat = MeanStats.from_values([2.0] * 10)
    res = welch_ttest(flat, flat)
    assert res.test.error == ErrorCode.ZERO_VARIANCE and res.difference.error is not None
    one = MeanStats.from_values([1.0])
    assert welch_ttest(one, flat).test.error == ErrorCode.TOO_FEW_SAMPLES
    assert welch_ttest(MeanStats(0, 0, 0), flat).test.error == ErrorCode.ZERO_SAMPLES
    assert sequential_test_means(one, flat).error == ErrorCode.TOO_FEW_SAMPLES
    assert sequential_test_means(flat, flat).error == ErrorCode.ZERO_VARIANCE
    assert mann_whitney([], [1.0]).test.error == ErrorCode.ZERO_SAMPLES
    assert mann_whitney([1.0, 1.0], [1.0]).test.error == ErrorCode.ZERO_VARIANCE


def test_degenerate_ratio_metrics() -> None:
    empty = RatioStats(0, 0, 0, 0, 0, 0)
    some = RatioStats.from_sessions([1, 2, 0], [2, 3, 1])
    assert ratio_ztest(empty, some).test.error == ErrorCode.ZERO_SAMPLES
    single = RatioStats.from_sessions([1], [2])
    assert ratio_ztest(single, some).test.error == ErrorCode.TOO_FEW_SAMPLES
    flat = RatioStats.from_sessions([1, 2, 3], [2, 4, 6])  # every session at exactly 0.5
    assert ratio_ztest(flat, flat).test.error == ErrorCode.ZERO_VARIANCE
    assert sequential_test_ratios(single, some).error == ErrorCode.TOO_FEW_SAMPLES


def test_degenerate_power_srm_and_multiple() -> None:
    assert required_sample_size(0.0).error == ErrorCode.UNDEFINED
    assert required_sample_size(0.1, alpha=1.5).error == ErrorCode.INVALID_INPUT
    assert required_sample_size_means(0.0, 1.0).error == ErrorCode.ZERO_VARIANCE
    assert required_sample_size_proportions(0.99, 0.05).error == ErrorCode.INVALID_INPUT
    assert sample_ratio_mismatch([0, 0]).error == ErrorCode.ZERO_SAMPLES
    assert sample_ratio_mismatch([1, 2], [1.0]).error == ErrorCode.INVALID_INPUT
    zero_weight = sample_ratio_mismatch([100, 3], [1.0, 0.0])
    assert zero_weight.mismatch and zero_weight.p_value == 0.0
    assert holm([]).adjusted == ()
    assert math.isnan(beta_binomial(EMPTY, EMPTY, prior_alpha=0).prob_treatment_beats_control)


def test_bayesian_without_data_is_the_prior() -> None:
    res = beta_binomial(EMPTY, EMPTY)
    assert res.prob_treatment_beats_control == pytest.approx(0.5)
    assert res.expected_loss_treatment == pytest.approx(res.expected_loss_control)


# --- power status ---------------------------------------------------------------------------


def test_power_status_says_how_far() -> None:
    need = required_sample_size_proportions(0.2, 0.03)
    status = power_status(need, 1000, 1200)
    assert status.required_per_variant == 2941
    assert status.smallest_variant == 1000
    assert status.remaining_per_variant == 1941
    assert not status.reached and "1,000 of 2,941" in status.message
    assert power_status(need, 3000, 3000).reached


# --- decisions ------------------------------------------------------------------------------


def _evidence(**overrides: object) -> Evidence:
    kwargs: dict = dict(
        estimate=0.02,
        sequential_p=0.5,
        cs_lower=-0.05,
        cs_upper=0.09,
        fixed_p=0.5,
        n_smallest=1000,
    )
    kwargs.update(overrides)
    return Evidence(**kwargs)


def _verdict(rules: Rules | None = None, **overrides: object) -> Verdict:
    return decide(_evidence(**overrides), rules or Rules()).verdict


def test_decision_precedence_in_sequential_mode() -> None:
    assert _verdict(error="boom") == Verdict.CANNOT_DECIDE
    # SRM wins even over a tiny p-value.
    assert _verdict(srm_mismatch=True, sequential_p=1e-9) == Verdict.DO_NOT_TRUST
    assert _verdict(sequential_p=0.01) == Verdict.SIGNIFICANT_IMPROVEMENT
    assert _verdict(sequential_p=0.01, estimate=-0.02) == Verdict.SIGNIFICANT_REGRESSION
    lower = Rules(higher_is_better=False)
    assert _verdict(lower, sequential_p=0.01, estimate=-0.02) == Verdict.SIGNIFICANT_IMPROVEMENT
    # Sequential mode never reads the fixed-horizon p, however small and however large n.
    assert _verdict(fixed_p=1e-6, n_smallest=10**6) == Verdict.KEEP_RUNNING
    # Futility: the confidence sequence inside (-MDE, +MDE); touching the MDE is not enough.
    mde = Rules(mde=0.1)
    assert _verdict(mde) == Verdict.NO_DIFFERENCE
    assert _verdict(mde, cs_upper=0.1) == Verdict.KEEP_RUNNING
    assert _verdict(Rules(mde=0.05)) == Verdict.KEEP_RUNNING
    assert _verdict() == Verdict.KEEP_RUNNING  # no MDE: no futility verdict at all


def test_decision_in_fixed_mode_waits_for_the_planned_horizon() -> None:
    fixed = Rules(mode="fixed", mde=0.03, horizon=3299)
    d = decide(_evidence(fixed_p=1e-9, sequential_p=1e-9, n_smallest=1000), fixed)
    assert d.verdict == Verdict.KEEP_RUNNING and d.text == "keep running (1,000 of 3,299)"
    at = decide(_evidence(fixed_p=0.01, n_smallest=3299), fixed)
    assert at.verdict == Verdict.SIGNIFICANT_IMPROVEMENT and at.basis == "fixed-horizon"
    miss = decide(_evidence(fixed_p=0.2, sequential_p=1e-9, n_smallest=5000), fixed)
    assert miss.verdict == Verdict.NO_DIFFERENCE and "80% power" in miss.reason


def test_every_verdict_has_a_reason_and_a_promise() -> None:
    cases = [
        _evidence(error="no samples"),
        _evidence(srm_mismatch=True, srm_p=1e-5),
        _evidence(sequential_p=0.001),
        _evidence(sequential_p=0.001, estimate=-1.0),
        _evidence(cs_lower=-0.01, cs_upper=0.01),
        _evidence(),
    ]
    seen = set()
    for e in cases:
        d = decide(e, Rules(mde=0.05))
        assert d.reason and d.text
        seen.add(d.verdict)
    assert seen == set(Verdict) == set(VERDICT_PROMISES)


# --- the full comparison --------------------------------------------------------------------


def test_compare_counts_example() -> None:
    res = compare_counts(control=(540, 1000), treatment=(580, 1010), alpha=0.05)
    assert isinstance(res, CountComparison)
    assert res.control.rate.value == pytest.approx(0.54)
    assert res.difference.value == pytest.approx(580 / 1010 - 0.54)
    assert res.z_test is not None and res.z_test.p_value == pytest.approx(0.122105, abs=1e-6)
    assert res.fixed_horizon is res.z_test and not res.small_counts and res.fisher is None
    assert 0 < res.sequential.p_value <= 1 and res.sequential.p_value > res.z_test.p_value
    cs = res.sequential.confidence_sequence
    assert cs.lower < res.difference.lower and cs.upper > res.difference.upper
    assert 0.9 < res.bayesian.prob_treatment_beats_control < 0.97
    assert not res.srm.mismatch
    # No MDE: nothing is planned, and certainly not from the observed difference.
    assert res.required.per_variant is None and res.mde is None
    assert res.decision.verdict == Verdict.KEEP_RUNNING


def test_compare_counts_significant_and_srm_cases() -> None:
    big = compare_counts((5000, 10000), (5400, 10000))
    assert big.decision.verdict == Verdict.SIGNIFICANT_IMPROVEMENT
    assert big.decision.basis == "sequential"
    worse = compare_counts((5400, 10000), (5000, 10000))
    assert worse.decision.text == "significant regression"
    lower = compare_counts((5400, 10000), (5000, 10000), higher_is_better=False)
    assert lower.decision.verdict == Verdict.SIGNIFICANT_IMPROVEMENT
    srm = compare_counts((5000, 10000), (5400, 9000))
    assert srm.decision.verdict == Verdict.DO_NOT_TRUST
    assert srm.decision.text == "do not trust: sample-ratio mismatch"
    futile = compare_counts((5000, 20000), (5010, 20000), mde=0.02)
    assert futile.decision.verdict == Verdict.NO_DIFFERENCE
    assert futile.decision.text == "no difference as large as the MDE"


def test_compare_counts_small_counts_uses_fisher() -> None:
    res = compare_counts((1, 12), (6, 12))
    assert res.small_counts and res.fixed_horizon is res.fisher
    assert "Fisher exact p" in format_comparison(res)


def test_compare_counts_degenerate_never_raises() -> None:
    res = compare_counts((0, 0), (3, 10))
    assert res.decision.verdict == Verdict.CANNOT_DECIDE
    assert "no samples" in res.decision.text
    json.dumps(res.to_dict())  # nan became None: valid JSON
    # No successes anywhere: Fisher (small counts) still answers; no effect to plan for.
    same = compare_counts((0, 100), (0, 100))
    assert same.fixed_horizon is same.fisher and same.fisher.p_value == pytest.approx(1.0)
    assert same.sequential.error == ErrorCode.ZERO_VARIANCE
    assert same.decision.verdict == Verdict.CANNOT_DECIDE


def test_compare_counts_rejects_impossible_input() -> None:
    with pytest.raises(InvalidStatistics):
        compare_counts((5, 0), (1, 10))
    with pytest.raises(FeedbackLoopError, match="alpha"):
        compare_counts((1, 10), (1, 10), alpha=0)


def test_to_dict_is_plain_json() -> None:
    d = compare_counts((540, 1000), (580, 1010)).to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back["decision"]["verdict"] == "keep_running"
    assert back["z_test"]["method"] == "two-proportion z-test"
    assert back["srm"]["observed"] == [1000, 1010]
    assert set(back) >= {
        "control",
        "treatment",
        "difference",
        "lift",
        "sequential",
        "bayesian",
        "required",
        "power_status",
        "srm",
        "decision",
    }


def test_format_comparison_puts_srm_first_and_decision_last() -> None:
    lines = format_comparison(compare_counts((540, 1000), (580, 1010))).splitlines()
    assert lines[0].startswith("sample ratio")
    assert lines[-2].startswith("verdict") and lines[-1].startswith("why")
    assert any("sequential p (always valid)" in line for line in lines)
