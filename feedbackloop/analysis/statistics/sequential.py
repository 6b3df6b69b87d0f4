"""Always-valid inference: p-values and confidence sequences that survive continuous peeking.

A live dashboard is looked at after every batch. A fixed-horizon test read that way rejects a
true null far more often than alpha; the mixture sequential probability ratio test (mSPRT)
does not, because ``1 / Lambda_n`` is a p-value at *any* data-dependent stopping time.

Method (normal mixture mSPRT on the asymptotically normal difference estimate):

* Johari, Koomen, Pekelis & Walsh (2017), "Peeking at A/B Tests", KDD / Johari,
  Pekelis & Walsh (2022), "Always Valid Inference", Operations Research 70(3), the normal
  mSPRT:
  with ``theta_hat ~ N(theta, V)`` and mixing distribution ``theta ~ N(theta_0, tau^2)``,
  ``Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (theta_hat - theta_0)^2 / (2 V (V + tau^2)))``.
* The confidence sequence is the set of ``theta_0`` with ``Lambda(theta_0) < 1/alpha``
  (Robbins (1970), Ann. Math. Statist. 41:1397; Howard, Ramdas, McAuliffe & Sekhon (2021),
  "Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2),
  the two-sided normal-mixture boundary ``sqrt((v + rho) log((v + rho) / (rho alpha^2)))``
  on the sum scale ``v = n sigma^2``, with ``rho = sigma^4 / tau^2``):
  ``theta_hat ± sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))``.

We mix on the *standardised* effect: ``tau = tau_std * sigma`` where ``sigma^2 = V * n_eff``
is the per-unit variance and ``n_eff = 1 / (1/n_c + 1/n_t)``. Then ``r = tau^2 / V =
tau_std^2 * n_eff`` and everything depends only on ``z`` and ``r``, so one default serves every
metric. ``tau_std = 0.1`` makes the boundary tightest around ``n_eff`` of a few hundred to a
few thousand units, the range LLM-app experiments live in. Ville's inequality makes the
running minimum of ``1/Lambda`` valid exactly for a martingale; here ``V`` is estimated, so
validity is asymptotic (checked by simulation in the tests).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from feedbackloop.analysis.statistics.results import ErrorCode, Estimate
from feedbackloop.analysis.statistics.sufficient import BinaryStats, MeanStats, RatioStats

__all__ = [
    "DEFAULT_TAU",
    "SequentialResult",
    "msprt_p_value",
    "confidence_sequence_halfwidth",
    "always_valid_p_values",
    "sequential_test",
    "sequential_test_proportions",
    "sequential_test_means",
    "sequential_test_ratios",
]

DEFAULT_TAU = 0.1


@dataclass(frozen=True)
class SequentialResult:
    """An always-valid p-value and confidence sequence for ``treatment - control``.

    ``p_value`` is valid at this look on its own; for a series of looks take the running
    minimum (:func:`always_valid_p_values`), which is still valid and never goes back up.
    """

    method: str
    estimate: float
    p_value: float
    confidence_sequence: Estimate
    tau: float
    n_eff: float
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def significant(self, alpha: float) -> bool:
        return self.ok and self.p_value <= alpha


def _r(n_eff: npt.ArrayLike, tau: float) -> np.ndarray:
    return tau * tau * np.asarray(n_eff, dtype=float)


def msprt_p_value(z: npt.ArrayLike, n_eff: npt.ArrayLike, tau: float = DEFAULT_TAU) -> np.ndarray:
    """``min(1, 1 / Lambda)`` for z-scores ``z`` at effective sizes ``n_eff`` (vectorised).

    Source: Johari et al. (2017), normal mSPRT, rewritten with ``r = tau^2 / V``:
    ``Lambda = (1 + r)^(-1/2) * exp(r z^2 / (2 (1 + r)))``. Computed in log space so large
    ``z`` does not overflow.
    """
    r = _r(n_eff, tau)
    zz = np.asarray(z, dtype=float)
    log_lambda = -0.5 * np.log1p(r) + r * zz * zz / (2.0 * (1.0 + r))
    return np.minimum(1.0, np.exp(-log_lambda))


def confidence_sequence_halfwidth(
    std_error: npt.ArrayLike, n_eff: npt.ArrayLike, alpha: float, tau: float = DEFAULT_TAU
) -> np.ndarray:
    """Half-width of the normal-mixture confidence sequence (vectorised).

    Source: Howard et al. (2021), normal-mixture boundary, with ``r = tau^2 / V``:
    ``se * sqrt((1 + r) / r * (2 log(1/alpha) + log(1 + r)))``.
    """
    r = _r(n_eff, tau)
    se = np.asarray(std_error, dtype=float)
    return se * np.sqrt((1.0 + r) / r * (2.0 * math.log(1.0 / alpha) + np.log1p(r)))


def always_valid_p_values(p_values: npt.ArrayLike) -> np.ndarray:
    """Running minimum over successive looks (Johari et al. 2022, definition of p_n)."""
    return np.minimum.accumulate(np.asarray(p_values, dtype=float), axis=-1)


def _n_eff(n_c: float, n_t: float) -> float:
    return 1.0 / (1.0 / n_c + 1.0 / n_t)


def sequential_test(
    estimate: float,
    null_std_error: float,
    std_error: float,
    n_eff: float,
    alpha: float = 0.05,
    tau: float = DEFAULT_TAU,
    method: str = "mSPRT (normal mixture)",
) -> SequentialResult:
    """mSPRT for one difference estimate.

    ``null_std_error`` is the standard error under H0 (e.g. pooled for proportions) and
    drives the p-value; ``std_error`` is unrestricted and drives the confidence sequence.
    """
    level = 1.0 - alpha
    if not (n_eff > 0 and math.isfinite(null_std_error) and math.isfinite(std_error)):
        return _failed(method, tau, n_eff, alpha, ErrorCode.ZERO_SAMPLES, "too few samples")
    if null_std_error <= 0.0 or std_error <= 0.0:
        return _failed(
            method,
            tau,
            n_eff,
            alpha,
            ErrorCode.ZERO_VARIANCE,
            "no variance: every unit has the same outcome",
        )
    p = float(msprt_p_value(estimate / null_std_error, n_eff, tau))
    half = float(confidence_sequence_halfwidth(std_error, n_eff, alpha, tau))
    cs = Estimate(
        "normal-mixture confidence sequence", estimate, estimate - half, estimate + half, level
    )
    return SequentialResult(method, estimate, p, cs, tau, n_eff)


def _failed(
    method: str, tau: float, n_eff: float, alpha: float, code: ErrorCode, msg: str
) -> SequentialResult:
    cs = Estimate.failed("normal-mixture confidence sequence", 1.0 - alpha, code, msg)
    return SequentialResult(method, math.nan, math.nan, cs, tau, n_eff, code, msg)


def sequential_test_proportions(
    control: BinaryStats, treatment: BinaryStats, alpha: float = 0.05, tau: float = DEFAULT_TAU
) -> SequentialResult:
    """mSPRT for ``p_t - p_c``: pooled variance for the p-value, unpooled for the sequence."""
    method = "mSPRT (normal mixture)"
    if control.n == 0 or treatment.n == 0:
        return _failed(method, tau, 0.0, alpha, ErrorCode.ZERO_SAMPLES, "a variant has no samples")
    n_eff = _n_eff(control.n, treatment.n)
    pooled = (control.successes + treatment.successes) / (control.n + treatment.n)
    null_se = math.sqrt(pooled * (1.0 - pooled) / n_eff)
    se = math.sqrt(control.variance / control.n + treatment.variance / treatment.n)
    # Both arms at 0% (or 100%) leave the unpooled SE at zero though the pooled one is not;
    # fall back to the pooled SE so the sequence still has a width.
    result = sequential_test(
        treatment.rate - control.rate, null_se, se if se > 0 else null_se, n_eff, alpha, tau
    )
    cs = result.confidence_sequence
    if not cs.ok:
        return result
    # A difference of two rates lies in [-1, 1]; early on the normal boundary is wider.
    clipped = replace(cs, lower=max(-1.0, cs.lower), upper=min(1.0, cs.upper))
    return replace(result, confidence_sequence=clipped)


def sequential_test_means(
    control: MeanStats, treatment: MeanStats, alpha: float = 0.05, tau: float = DEFAULT_TAU
) -> SequentialResult:
    """mSPRT for ``mean_t - mean_c`` with the unpooled (Welch) standard error."""
    method = "mSPRT (normal mixture)"
    if control.n < 2 or treatment.n < 2:
        return _failed(
            method, tau, 0.0, alpha, ErrorCode.TOO_FEW_SAMPLES, "each variant needs >= 2 samples"
        )
    se = math.sqrt(control.variance / control.n + treatment.variance / treatment.n)
    return sequential_test(
        treatment.mean - control.mean, se, se, _n_eff(control.n, treatment.n), alpha, tau
    )


def sequential_test_ratios(
    control: RatioStats, treatment: RatioStats, alpha: float = 0.05, tau: float = DEFAULT_TAU
) -> SequentialResult:
    """mSPRT for a ratio metric with delta-method variance; ``n_eff`` counts sessions."""
    method = "mSPRT (normal mixture, delta method)"
    if control.n < 2 or treatment.n < 2 or control.sum_den == 0 or treatment.sum_den == 0:
        return _failed(
            method,
            tau,
            0.0,
            alpha,
            ErrorCode.TOO_FEW_SAMPLES,
            "each variant needs >= 2 sessions with events",
        )
    se = math.sqrt(control.variance + treatment.variance)
    return sequential_test(
        treatment.ratio - control.ratio,
        se,
        se,
        _n_eff(control.n, treatment.n),
        alpha,
        tau,
        method,
    )
