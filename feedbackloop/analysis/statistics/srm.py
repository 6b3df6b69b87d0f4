"""Sample-ratio mismatch: did assignment deliver the configured traffic split?"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from feedbackloop.analysis.statistics.results import ErrorCode

__all__ = ["SrmResult", "sample_ratio_mismatch", "DEFAULT_SRM_THRESHOLD"]

# A mismatch invalidates every other number in a report, so the bar is strict: at 0.001 a
# healthy experiment is flagged once in a thousand looks (as Fabijan et al., KDD 2019, advise).
DEFAULT_SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SrmResult:
    """Chi-square goodness of fit of observed units per variant against the configured split."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    statistic: float
    p_value: float
    threshold: float
    mismatch: bool
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def sample_ratio_mismatch(
    counts: Sequence[int],
    weights: Sequence[float] | None = None,
    threshold: float = DEFAULT_SRM_THRESHOLD,
) -> SrmResult:
    """Pearson chi-square goodness-of-fit test of assignment counts against ``weights``.

    Source: Pearson (1900); applied to A/B testing by Fabijan, Gupchup, Gupta et al. (2019),
    "Diagnosing Sample Ratio Mismatch in Online Controlled Experiments", KDD:
    ``X^2 = sum((O_i - E_i)^2 / E_i)``, ``E_i = N w_i / sum(w)``, ``k - 1`` degrees of freedom.
    ``weights`` default to an equal split. ``mismatch`` is ``p_value < threshold``.
    """
    observed = tuple(int(c) for c in counts)
    w = np.ones(len(observed)) if weights is None else np.asarray(weights, dtype=float)
    nan = math.nan

    def failed(code: ErrorCode, msg: str) -> SrmResult:
        return SrmResult(observed, (), nan, nan, threshold, False, code, msg)

    if len(observed) < 2 or w.shape != (len(observed),):
        return failed(ErrorCode.INVALID_INPUT, "need one weight per variant and >= 2 variants")
    if (w < 0).any() or not w.sum() > 0 or any(c < 0 for c in observed):
        return failed(ErrorCode.INVALID_INPUT, "weights and counts must be >= 0, weights not all 0")
    total = sum(observed)
    if total == 0:
        return failed(ErrorCode.ZERO_SAMPLES, "no units assigned yet")
    expected = total * w / w.sum()
    zero = expected == 0
    if zero.any():
        # A variant configured at weight 0 that still receives traffic is a certain mismatch.
        if any(observed[i] for i in np.flatnonzero(zero)):
            return SrmResult(
                observed,
                tuple(map(float, expected)),
                math.inf,
                0.0,
                threshold,
                True,
                None,
                "units arrived in a variant configured with weight 0",
            )
        keep = ~zero
        obs_kept = np.asarray(observed, dtype=float)[keep]
        exp_kept = expected[keep]
    else:
        obs_kept, exp_kept = np.asarray(observed, dtype=float), expected
    if obs_kept.size < 2:
        return failed(ErrorCode.INVALID_INPUT, "need >= 2 variants with positive weight")
    chi2 = float(((obs_kept - exp_kept) ** 2 / exp_kept).sum())
    p = float(stats.chi2.sf(chi2, obs_kept.size - 1))
    mismatch = p < threshold
    message = (
        f"sample-ratio mismatch (p = {p:.2g} < {threshold}): do not trust this experiment"
        if mismatch
        # A large p is no proof the split is right, only the absence of evidence against it.
        else f"no evidence of mismatch (p = {p:.2g})"
    )
    return SrmResult(
        observed, tuple(map(float, expected)), chi2, p, threshold, mismatch, None, message
    )
