"""Fixed-horizon tests and intervals for binary metrics (satisfaction, outcome rates).

Differences and lifts are always ``treatment - control`` and ``treatment / control - 1``.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from feedbackloop.analysis.statistics.results import ErrorCode, Estimate, TestResult
from feedbackloop.analysis.statistics.sufficient import BinaryStats

__all__ = [
    "two_proportion_ztest",
    "chi_square_test",
    "fisher_exact_test",
    "wilson_interval",
    "newcombe_interval",
    "relative_lift_interval",
    "small_counts",
]


def _z(alpha: float) -> float:
    return float(stats.norm.isf(alpha / 2.0))


def _empty(control: BinaryStats, treatment: BinaryStats) -> bool:
    return control.n == 0 or treatment.n == 0


def two_proportion_ztest(control: BinaryStats, treatment: BinaryStats) -> TestResult:
    """Two-sided two-proportion z-test with the pooled variance under H0: p_t = p_c.

    Source: Fleiss, Levin & Paik, *Statistical Methods for Rates and Proportions* (3rd ed.,
    2003), the pooled z-test: ``z = (p_t - p_c) / sqrt(p(1-p)(1/n_t + 1/n_c))``, ``p`` pooled.
    """
    method = "two-proportion z-test"
    if _empty(control, treatment):
        return TestResult.failed(method, ErrorCode.ZERO_SAMPLES, "a variant has no samples")
    pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
    var = pooled * (1.0 - pooled) * (1.0 / control.n + 1.0 / treatment.n)
    if var <= 0.0:
        return TestResult.failed(
            method, ErrorCode.ZERO_VARIANCE, "every unit has the same outcome in both variants"
        )
    z = (treatment.rate - control.rate) / math.sqrt(var)
    return TestResult(method, z, float(2.0 * stats.norm.sf(abs(z))))


def chi_square_test(control: BinaryStats, treatment: BinaryStats) -> TestResult:
    """Pearson chi-square test of independence on the 2x2 table, no continuity correction.

    Source: Pearson (1900); Agresti, *Categorical Data Analysis* (3rd ed., 2013), ch. 3.
    Without Yates' correction it equals the square of :func:`two_proportion_ztest`; small
    tables go to :func:`fisher_exact_test` instead of being corrected.
    """
    method = "chi-square"
    if _empty(control, treatment):
        return TestResult.failed(method, ErrorCode.ZERO_SAMPLES, "a variant has no samples")
    observed = np.array(
        [[control.successes, control.failures], [treatment.successes, treatment.failures]],
        dtype=float,
    )
    expected = observed.sum(axis=1, keepdims=True) * observed.sum(axis=0, keepdims=True)
    expected /= observed.sum()
    if (expected == 0).any():
        return TestResult.failed(
            method, ErrorCode.ZERO_VARIANCE, "every unit has the same outcome in both variants"
        )
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    return TestResult(method, chi2, float(stats.chi2.sf(chi2, 1)), df=1.0)


def fisher_exact_test(control: BinaryStats, treatment: BinaryStats) -> TestResult:
    """Two-sided Fisher exact test, conditional on both margins.

    Source: Fisher (1935); Agresti (2013) ch. 3. The p-value sums the hypergeometric
    probabilities of every table no more likely than the observed one; a relative tolerance
    of 1e-7 treats floating-point ties as ties (as R's ``fisher.test`` does). The statistic
    reported is the sample odds ratio.
    """
    method = "Fisher exact"
    if _empty(control, treatment):
        return TestResult.failed(method, ErrorCode.ZERO_SAMPLES, "a variant has no samples")
    a, b = control.successes, control.failures
    c, d = treatment.successes, treatment.failures
    total_successes = a + c
    # Condition on margins: the number of control successes is hypergeometric.
    dist = stats.hypergeom(control.n + treatment.n, total_successes, control.n)
    support = np.arange(max(0, total_successes - treatment.n), min(total_successes, control.n) + 1)
    pmf = dist.pmf(support)
    p_obs = float(dist.pmf(a))
    p_value = float(min(1.0, pmf[pmf <= p_obs * (1.0 + 1e-7)].sum()))
    odds_ratio = (a * d) / (b * c) if b * c else (math.inf if a * d else math.nan)
    return TestResult(method, odds_ratio, p_value)


def small_counts(control: BinaryStats, treatment: BinaryStats, minimum: float = 5.0) -> bool:
    """True when an expected 2x2 cell count is below ``minimum`` (Cochran's rule, 1954).

    Then the normal and chi-square approximations are unreliable and Fisher's test is used.
    """
    total = control.n + treatment.n
    if total == 0:
        return True
    s = control.successes + treatment.successes
    f = total - s
    cells = [n * m / total for n in (control.n, treatment.n) for m in (s, f)]
    return min(cells) < minimum


def wilson_interval(variant: BinaryStats, alpha: float = 0.05) -> Estimate:
    """Wilson score interval for one proportion.

    Source: Wilson (1927), JASA 22:209; Newcombe (1998a), Stat. Med. 17:857, method 3:
    ``(x + z^2/2 ± z sqrt(x(n-x)/n + z^2/4)) / (n + z^2)``.
    """
    method, level = "Wilson", 1.0 - alpha
    if variant.n == 0:
        return Estimate.failed(method, level, ErrorCode.ZERO_SAMPLES, "no samples")
    z = _z(alpha)
    n, x = variant.n, variant.successes
    denom = n + z * z
    center = (x + z * z / 2.0) / denom
    half = z / denom * math.sqrt(x * (n - x) / n + z * z / 4.0)
    return Estimate(method, variant.rate, max(0.0, center - half), min(1.0, center + half), level)


def newcombe_interval(
    control: BinaryStats, treatment: BinaryStats, alpha: float = 0.05
) -> Estimate:
    """Newcombe hybrid score interval for the difference ``p_t - p_c``.

    Source: Newcombe (1998b), "Interval estimation for the difference between independent
    proportions", Stat. Med. 17:873, method 10: with Wilson limits ``(l_i, u_i)``,
    ``L = d - sqrt((p_t - l_t)^2 + (u_c - p_c)^2)``,
    ``U = d + sqrt((u_t - p_t)^2 + (p_c - l_c)^2)``.
    Good coverage even for small counts and rates near 0 or 1, unlike the Wald interval.
    """
    method, level = "Newcombe hybrid score", 1.0 - alpha
    if _empty(control, treatment):
        return Estimate.failed(method, level, ErrorCode.ZERO_SAMPLES, "a variant has no samples")
    wc, wt = wilson_interval(control, alpha), wilson_interval(treatment, alpha)
    pc, pt = control.rate, treatment.rate
    d = pt - pc
    lower = d - math.sqrt((pt - wt.lower) ** 2 + (wc.upper - pc) ** 2)
    upper = d + math.sqrt((wt.upper - pt) ** 2 + (pc - wc.lower) ** 2)
    return Estimate(method, d, lower, upper, level)


def relative_lift_interval(
    control: BinaryStats, treatment: BinaryStats, alpha: float = 0.05
) -> Estimate:
    """Relative lift ``p_t / p_c - 1`` with a delta-method interval on the log risk ratio.

    Source: Katz, Baptista, Azen & Pike (1978), Biometrics 34:469:
    ``Var(log(p_t/p_c)) ~ 1/x_t - 1/n_t + 1/x_c - 1/n_c``; the interval
    ``exp(log RR ± z se) - 1`` is asymmetric, as a ratio's should be.
    """
    method, level = "log risk ratio (delta method)", 1.0 - alpha
    if _empty(control, treatment):
        return Estimate.failed(method, level, ErrorCode.ZERO_SAMPLES, "a variant has no samples")
    if control.successes == 0:
        return Estimate.failed(
            method, level, ErrorCode.UNDEFINED, "control has no successes: lift is undefined"
        )
    if treatment.successes == 0:
        return Estimate.failed(
            method, level, ErrorCode.UNDEFINED, "treatment has no successes: log ratio undefined"
        )
    if control.failures == 0 or treatment.failures == 0:
        return _mover_ratio(control, treatment, alpha)
    log_rr = math.log(treatment.rate / control.rate)
    se = math.sqrt(
        1.0 / treatment.successes - 1.0 / treatment.n + 1.0 / control.successes - 1.0 / control.n
    )
    z = _z(alpha)
    return Estimate(
        method,
        math.exp(log_rr) - 1.0,
        math.exp(log_rr - z * se) - 1.0,
        math.exp(log_rr + z * se) - 1.0,
        level,
    )


def _mover_ratio(control: BinaryStats, treatment: BinaryStats, alpha: float) -> Estimate:
    """Lift ``p_t / p_c - 1`` by MOVER-R from the two Wilson intervals.

    For an arm at 100% the log-risk-ratio variance ``1/x - 1/n`` is 0, so Katz's interval
    shrinks to a point (both arms at 100%: ``+0% [+0%, +0%]`` however few the units). The
    method of variance estimates recovery for a ratio (Donner & Zou 2012, Stat. Methods Med.
    Res. 21:347, eq. 6; Li, Tang & Wong 2014, Stat. Med. 33:3030) keeps the width the Wilson
    limits ``(l, u)`` carry: with ``p_1 = p_t``, ``p_2 = p_c``,
    ``L = (p1 p2 - sqrt((p1 p2)^2 - l1 u2 (2 p1 - l1)(2 p2 - u2))) / (u2 (2 p2 - u2))`` and
    ``U = (p1 p2 + sqrt((p1 p2)^2 - u1 l2 (2 p1 - u1)(2 p2 - l2))) / (l2 (2 p2 - l2))``.
    """
    method, level = "MOVER-R (Wilson limits)", 1.0 - alpha
    wt, wc = wilson_interval(treatment, alpha), wilson_interval(control, alpha)
    p1, p2 = treatment.rate, control.rate
    l1, u1, l2, u2 = wt.lower, wt.upper, wc.lower, wc.upper
    prod = p1 * p2
    den_l, den_u = u2 * (2.0 * p2 - u2), l2 * (2.0 * p2 - l2)
    lower = prod - math.sqrt(max(0.0, prod * prod - l1 * u2 * (2 * p1 - l1) * (2 * p2 - u2)))
    upper = prod + math.sqrt(max(0.0, prod * prod - u1 * l2 * (2 * p1 - u1) * (2 * p2 - l2)))
    lo = lower / den_l if den_l > 0 else 0.0
    hi = upper / den_u if den_u > 0 else math.inf
    return Estimate(method, p1 / p2 - 1.0, lo - 1.0, hi - 1.0, level)
