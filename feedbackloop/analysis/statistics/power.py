"""Power and required sample size per variant, and how far an experiment is from it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

from feedbackloop.analysis.statistics.results import ErrorCode

__all__ = [
    "cohens_h",
    "power_two_sample",
    "required_sample_size",
    "required_sample_size_proportions",
    "required_sample_size_means",
    "required_sample_size_proportions_exact",
    "fisher_exact_power",
    "SampleSize",
    "PowerStatus",
    "power_status",
]


def cohens_h(p_control: float, p_treatment: float) -> float:
    """Effect size for two proportions on the variance-stabilising arcsine scale.

    Source: Cohen, *Statistical Power Analysis for the Behavioral Sciences* (2nd ed., 1988),
    ch. 6: ``h = 2 asin(sqrt(p_t)) - 2 asin(sqrt(p_c))``.
    """
    return 2.0 * math.asin(math.sqrt(p_treatment)) - 2.0 * math.asin(math.sqrt(p_control))


def power_two_sample(
    effect_size: float, n_control: float, alpha: float = 0.05, ratio: float = 1.0
) -> float:
    """Power of the two-sided two-sample z-test for a standardised effect.

    ``n_treatment = ratio * n_control``. Source: Cohen (1988) ch. 2 / Chow, Shao & Wang,
    *Sample Size Calculations in Clinical Research* (2008), two-sample z-test, counting both
    rejection tails: ``Phi(|d| sqrt(m) - z_{a/2}) + Phi(-|d| sqrt(m) - z_{a/2})`` with
    ``m = 1 / (1/n_c + 1/n_t)``.
    """
    m = 1.0 / (1.0 / n_control + 1.0 / (ratio * n_control))
    shift = abs(effect_size) * math.sqrt(m)
    crit = float(stats.norm.isf(alpha / 2.0))
    return float(stats.norm.cdf(shift - crit) + stats.norm.cdf(-shift - crit))


@dataclass(frozen=True)
class SampleSize:
    """Units needed per variant. ``control`` is exact (fractional); round up to plan."""

    control: float
    treatment: float
    effect_size: float
    alpha: float
    power: float
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def per_variant(self) -> int | None:
        """The larger of the two arms, rounded up; ``None`` when undefined."""
        if not self.ok:
            return None
        return int(math.ceil(max(self.control, self.treatment) - 1e-9))

    @classmethod
    def failed(
        cls, effect_size: float, alpha: float, power: float, error: ErrorCode, message: str
    ) -> SampleSize:
        return cls(math.nan, math.nan, effect_size, alpha, power, error, message)


def required_sample_size(
    effect_size: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Smallest ``n_control`` with :func:`power_two_sample` >= ``power`` (solved exactly).

    The closed form ``((z_{a/2} + z_b) / d)^2 (1 + 1/ratio)`` ignores the far rejection tail;
    solving the power equation numerically makes the figure match the power we report.
    """
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0) or ratio <= 0:
        return SampleSize.failed(
            effect_size,
            alpha,
            power,
            ErrorCode.INVALID_INPUT,
            "alpha and power must lie in (0, 1) and ratio must be positive",
        )
    if effect_size == 0.0 or not math.isfinite(effect_size):
        return SampleSize.failed(
            effect_size,
            alpha,
            power,
            ErrorCode.UNDEFINED,
            "no effect to detect: any sample size is too small",
        )
    if power <= alpha / 2.0:
        return SampleSize.failed(
            effect_size, alpha, power, ErrorCode.INVALID_INPUT, "power must exceed alpha/2"
        )
    crit = float(stats.norm.isf(alpha / 2.0))
    guess = ((crit + float(stats.norm.ppf(power))) / abs(effect_size)) ** 2 * (1.0 + 1.0 / ratio)
    low, high = 1e-10, max(2.0 * guess, 1.0)
    while power_two_sample(effect_size, high, alpha, ratio) < power:
        high *= 2.0
    n = float(
        optimize.brentq(
            lambda x: power_two_sample(effect_size, x, alpha, ratio) - power,
            low,
            high,
            xtol=1e-10,
            rtol=1e-14,
        )
    )
    return SampleSize(n, n * ratio, effect_size, alpha, power)


def required_sample_size_proportions(
    baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Units per variant to detect an absolute change ``mde`` from rate ``baseline``.

    Uses Cohen's h (:func:`cohens_h`), the same convention as statsmodels'
    ``NormalIndPower`` with ``proportion_effectsize``.
    """
    target = baseline + mde
    if not (0.0 <= baseline <= 1.0 and 0.0 <= target <= 1.0):
        return SampleSize.failed(
            math.nan,
            alpha,
            power,
            ErrorCode.INVALID_INPUT,
            f"baseline {baseline} and baseline + mde {target} must both lie in [0, 1]",
        )
    return required_sample_size(cohens_h(baseline, target), alpha, power, ratio)


def required_sample_size_means(
    std: float, mde: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> SampleSize:
    """Units per variant to detect an absolute change ``mde`` in a mean with std ``std``.

    Standardised effect ``d = mde / std`` (Cohen 1988, ch. 2).
    """
    if not std > 0:
        return SampleSize.failed(
            math.nan, alpha, power, ErrorCode.ZERO_VARIANCE, "standard deviation must be > 0"
        )
    return required_sample_size(mde / std, alpha, power, ratio)


@dataclass(frozen=True)
class PowerStatus:
    """Where an experiment stands against the sample size it needs."""

    required_per_variant: int | None
    smallest_variant: int
    fraction: float
    remaining_per_variant: int | None
    reached: bool
    message: str


def power_status(required: SampleSize, *variant_sizes: int) -> PowerStatus:
    """Compare the smallest variant with the required size; the smallest arm limits power."""
    smallest = min(variant_sizes) if variant_sizes else 0
    need = required.per_variant
    if need is None:
        return PowerStatus(None, smallest, math.nan, None, False, required.message)
    fraction = smallest / need if need else math.inf
    remaining = max(0, need - smallest)
    reached = remaining == 0
    message = f"{smallest:,} of {need:,} needed per variant" + (
        "" if reached else f" ({fraction:.0%}; {remaining:,} more)"
    )
    return PowerStatus(need, smallest, fraction, remaining, reached, message)


# --- exact power of Fisher's test (small counts) ----------------------------------------

# Outcomes further than this into a binomial tail carry less than 1e-12 of the mass
# together: leaving them out changes a power figure in the 12th digit.
_TAIL = 1e-13


def _binomial_support(n: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    lo = int(stats.binom.ppf(_TAIL, n, p)) if p > 0.0 else 0
    hi = int(stats.binom.isf(_TAIL, n, p)) + 1 if p < 1.0 else n
    x = np.arange(max(0, lo - 1), min(n, hi) + 1)
    return x, stats.binom.pmf(x, n, p)


def fisher_exact_power(
    p_control: float, p_treatment: float, n_control: int, n_treatment: int, alpha: float = 0.05
) -> float:
    """Exact power of the two-sided Fisher test (the one :func:`fisher_exact_test` runs).

    ``sum over (x, y) of Bin(x; n_c, p_c) Bin(y; n_t, p_t) 1[p_Fisher(x, y) <= alpha]``, the
    definition (e.g. Agresti 2013, sec. 3.5; the same sum as R's ``Exact::power.exact.test``
    for Fisher's test). The p-value of every table with the same total of successes comes
    from one hypergeometric distribution, so each total is handled at once; tables whose
    probability is below 1e-13 in both arms are left out.
    """
    if n_control <= 0 or n_treatment <= 0:
        return math.nan
    xs, px = _binomial_support(n_control, p_control)
    ys, py = _binomial_support(n_treatment, p_treatment)
    total = n_control + n_treatment
    power = 0.0
    for s in np.unique((xs[:, None] + ys[None, :]).ravel()):
        # Control successes given s successes in all: hypergeometric over its support.
        lo, hi = max(0, s - n_treatment), min(s, n_control)
        support = np.arange(lo, hi + 1)
        pmf = stats.hypergeom.pmf(support, total, s, n_control)
        order = np.sort(pmf)
        cum = np.cumsum(order)
        # p(x) = sum of pmf over tables no more likely than x (relative tie tolerance 1e-7).
        p_values = cum[np.searchsorted(order, pmf * (1.0 + 1e-7), side="right") - 1]
        reject = support[p_values <= alpha]
        if reject.size == 0:
            continue
        x = reject[(reject >= xs[0]) & (reject <= xs[-1]) & (s - reject >= ys[0])]
        x = x[s - x <= ys[-1]]
        power += float((px[x - xs[0]] * py[s - x - ys[0]]).sum())
    return min(1.0, power)


def required_sample_size_proportions_exact(
    baseline: float, mde: float, alpha: float = 0.05, power: float = 0.8
) -> SampleSize:
    """Units per variant for the test the report will use at that size.

    From :func:`required_sample_size_proportions` (z-test); when an expected 2x2 cell count
    at that size is below 5 (Cochran's rule, as :func:`~feedbackloop.analysis.proportions.
    small_counts` decides), the report will use Fisher's exact test, which has less power
    there, so the size is searched again with :func:`fisher_exact_power`: the smallest ``n``
    from the z-test's size upward at which the exact power reaches ``power``. (Exact power is
    a saw-tooth in ``n``; this is the first size that reaches it, not a size above which it
    always stays.)
    """
    normal = required_sample_size_proportions(baseline, mde, alpha, power)
    n = normal.per_variant
    if n is None:
        return normal
    target = baseline + mde
    if _min_expected_cell(baseline, target, n) >= 5.0:
        return normal
    lo, hi = n, max(n + 1, 2 * n)
    while fisher_exact_power(baseline, target, hi, hi, alpha) < power:
        lo, hi = hi, 2 * hi
        if hi > 10_000_000:
            return SampleSize.failed(
                normal.effect_size, alpha, power, ErrorCode.UNDEFINED, "effect too small to plan"
            )
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fisher_exact_power(baseline, target, mid, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    if fisher_exact_power(baseline, target, lo, lo, alpha) >= power:
        hi = lo
    return SampleSize(float(hi), float(hi), normal.effect_size, alpha, power)


def _min_expected_cell(p_control: float, p_treatment: float, n: int) -> float:
    pooled = (p_control + p_treatment) / 2.0
    return n * min(pooled, 1.0 - pooled)
