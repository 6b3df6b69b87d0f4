"""Tests for numeric metrics: ratings, latencies, time to outcome, cost."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from feedbackloop.analysis.statistics.results import ErrorCode, Estimate, TestResult
from feedbackloop.analysis.statistics.sufficient import MeanStats

__all__ = ["MeanComparison", "welch_ttest", "RankTestResult", "mann_whitney"]


@dataclass(frozen=True)
class MeanComparison:
    """Welch's test of ``mean_t - mean_c`` and its interval on the same t distribution."""

    test: TestResult
    difference: Estimate


def welch_ttest(control: MeanStats, treatment: MeanStats, alpha: float = 0.05) -> MeanComparison:
    """Welch's unequal-variance t-test from sufficient statistics.

    Source: Welch (1947), Biometrika 34:28; degrees of freedom by Satterthwaite (1946),
    Biometrics Bulletin 2:110: ``df = (v_t/n_t + v_c/n_c)^2 /
    ((v_t/n_t)^2/(n_t-1) + (v_c/n_c)^2/(n_c-1))``.
    """
    method, level = "Welch t-test", 1.0 - alpha
    if control.n < 2 or treatment.n < 2:
        code = (
            ErrorCode.ZERO_SAMPLES
            if min(control.n, treatment.n) == 0
            else (ErrorCode.TOO_FEW_SAMPLES)
        )
        msg = "each variant needs at least 2 samples for a variance"
        return MeanComparison(
            TestResult.failed(method, code, msg), Estimate.failed(method, level, code, msg)
        )
    qc, qt = control.variance / control.n, treatment.variance / treatment.n
    se2 = qc + qt
    diff = treatment.mean - control.mean
    if se2 <= 0.0:
        # MeanStats.variance floors a spread under ~1e-6 of the values' magnitude to 0: the
        # data may vary (1.7e12 +- 1000 does), but sums of squares cannot tell.
        msg = (
            "no variance above the precision limit: both variants are constant, or vary by "
            "less than ~1e-6 of their magnitude (subtract a typical value to test such data)"
        )
        return MeanComparison(
            TestResult.failed(method, ErrorCode.ZERO_VARIANCE, msg),
            Estimate.failed(method, level, ErrorCode.ZERO_VARIANCE, msg),
        )
    se = math.sqrt(se2)
    df = se2 * se2 / (qc * qc / (control.n - 1) + qt * qt / (treatment.n - 1))
    t = diff / se
    p = float(2.0 * stats.t.sf(abs(t), df))
    q = float(stats.t.isf(alpha / 2.0, df))
    return MeanComparison(
        TestResult(method, t, p, df=df),
        Estimate(method, diff, diff - q * se, diff + q * se, level),
    )


@dataclass(frozen=True)
class RankTestResult:
    """Mann-Whitney U test plus ``P(T > C) + P(T = C)/2``, the probability of superiority."""

    test: TestResult
    u_statistic: float
    prob_superiority: float


def mann_whitney(control: npt.ArrayLike, treatment: npt.ArrayLike) -> RankTestResult:
    """Two-sided Mann-Whitney U test, normal approximation with tie and continuity corrections.

    For skewed metrics (latency, time to outcome) where a few huge values dominate a t-test.
    Source: Mann & Whitney (1947), Ann. Math. Stat. 18:50; tie-corrected variance from
    Lehmann, *Nonparametrics* (1975), ch. 1:
    ``Var(U) = n_c n_t / 12 * ((N+1) - sum(t^3 - t) / (N(N-1)))``.
    ``statistic`` is the z-score of ``U_t`` (treatment's U); positive means treatment larger.
    Needs raw values: ranks have no sufficient statistic that a SQL sum could return.
    """
    method = "Mann-Whitney U"
    c = np.asarray(control, dtype=float).ravel()
    t = np.asarray(treatment, dtype=float).ravel()
    nan = math.nan
    if c.size == 0 or t.size == 0:
        return RankTestResult(
            TestResult.failed(method, ErrorCode.ZERO_SAMPLES, "a variant has no samples"),
            nan,
            nan,
        )
    n_c, n_t = c.size, t.size
    n = n_c + n_t
    ranks = stats.rankdata(np.concatenate([c, t]))
    u_t = float(ranks[n_c:].sum() - n_t * (n_t + 1) / 2.0)
    _, tie_counts = np.unique(np.concatenate([c, t]), return_counts=True)
    ties = float((tie_counts.astype(float) ** 3 - tie_counts).sum())
    var = n_c * n_t / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    superiority = u_t / (n_c * n_t)
    if var <= 0.0:
        return RankTestResult(
            TestResult.failed(method, ErrorCode.ZERO_VARIANCE, "all values are equal"),
            u_t,
            superiority,
        )
    centered = u_t - n_c * n_t / 2.0
    # Continuity correction: move |U - mean| half a step toward zero.
    z = math.copysign(max(0.0, abs(centered) - 0.5), centered) / math.sqrt(var)
    p = float(min(1.0, 2.0 * stats.norm.sf(abs(z))))
    return RankTestResult(TestResult(method, z, p), u_t, superiority)
