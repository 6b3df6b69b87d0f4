"""Ratio metrics with the session as the unit: per-event rates without per-event independence.

Satisfaction is "positive ratings / rated interactions", but a chatty session contributes many
correlated interactions. Treating them as independent understates the variance and inflates
significance. Aggregating to sessions and using the delta method keeps the per-event metric
while counting sessions as the independent units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

from feedbackloop.analysis.statistics.results import ErrorCode, Estimate, TestResult
from feedbackloop.analysis.statistics.sufficient import RatioStats

__all__ = ["RatioComparison", "ratio_ztest"]


@dataclass(frozen=True)
class RatioComparison:
    """Difference ``ratio_t - ratio_c`` with a delta-method z-test and interval."""

    control_ratio: float
    treatment_ratio: float
    test: TestResult
    difference: Estimate


def ratio_ztest(control: RatioStats, treatment: RatioStats, alpha: float = 0.05) -> RatioComparison:
    """Two-sided z-test for a difference of ratio metrics, sessions as independent units.

    Source: Deng, Knoblich & Lu (2018), "Applying the Delta Method in Metric Analytics", KDD,
    (variance of a ratio of means, see :attr:`RatioStats.variance`);
    ``z = (R_t - R_c) / sqrt(Var(R_t) + Var(R_c))``. Equivalent to a regression with
    cluster-robust (session-clustered) standard errors.
    """
    method, level = "delta-method z-test", 1.0 - alpha
    rc, rt = control.ratio, treatment.ratio

    def failed(code: ErrorCode, msg: str) -> RatioComparison:
        return RatioComparison(
            rc, rt, TestResult.failed(method, code, msg), Estimate.failed(method, level, code, msg)
        )

    if min(control.n, treatment.n) == 0 or control.sum_den == 0 or treatment.sum_den == 0:
        return failed(ErrorCode.ZERO_SAMPLES, "a variant has no sessions with events")
    if min(control.n, treatment.n) < 2:
        return failed(ErrorCode.TOO_FEW_SAMPLES, "each variant needs at least 2 sessions")
    var = control.variance + treatment.variance
    if not var > 0:
        return failed(ErrorCode.ZERO_VARIANCE, "the metric does not vary between sessions")
    se = math.sqrt(var)
    diff = rt - rc
    z = diff / se
    q = float(stats.norm.isf(alpha / 2.0))
    return RatioComparison(
        rc,
        rt,
        TestResult(method, z, float(2.0 * stats.norm.sf(abs(z)))),
        Estimate(method, diff, diff - q * se, diff + q * se, level),
    )
