"""Beta-binomial view of a binary metric: probability to beat control and expected loss.

Exact closed forms, no Monte Carlo, so the numbers are reproducible to the last digit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import integrate, special, stats

from feedbackloop.analysis.statistics.results import ErrorCode
from feedbackloop.analysis.statistics.sufficient import BinaryStats, RatioStats

__all__ = [
    "BayesianResult",
    "beta_binomial",
    "prob_beta_greater",
    "expected_loss",
    "normal_difference_posterior",
]

# Above this many terms the exact sum is slow and the Beta posteriors are normal to far
# better than display precision, so the normal approximation takes over.
_MAX_TERMS = 2_000_000


@dataclass(frozen=True)
class BayesianResult:
    """Posterior comparison of ``p_t`` with ``p_c`` under independent Beta priors.

    ``expected_loss_treatment`` is ``E[max(p_c - p_t, 0)]``: the rate we expect to give up
    by shipping treatment if it is in fact worse. ``expected_loss_control`` is the converse.
    """

    prob_treatment_beats_control: float
    expected_loss_treatment: float
    expected_loss_control: float
    posterior_control: tuple[float, float]
    posterior_treatment: tuple[float, float]
    prior: tuple[float, float]
    method: str
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


def _is_int(x: float) -> bool:
    return float(x).is_integer()


def _miller_sum(a: float, b: float, c: float, d: float) -> float:
    """P(X > Y), X ~ Beta(a, b), Y ~ Beta(c, d), for integer ``a``.

    Source: Evan Miller (2015), "Formulas for Bayesian A/B Testing", the formula for
    ``Pr(p_B > p_A) = sum_{i=0}^{a-1} B(c+i, b+d) / ((b+i) B(1+i, b) B(c, d))``; summed in
    log space.
    """
    i = np.arange(int(a), dtype=float)
    log_terms = (
        special.betaln(c + i, b + d)
        - np.log(b + i)
        - special.betaln(1.0 + i, b)
        - special.betaln(c, d)
    )
    return float(np.exp(log_terms).sum())


def _by_quadrature(a: float, b: float, c: float, d: float) -> float:
    """``P(X > Y) = int f_Y(s) (1 - F_X(s)) ds`` over where both densities have mass."""
    x, y = stats.beta(a, b), stats.beta(c, d)
    lo = min(x.ppf(1e-15), y.ppf(1e-15))
    hi = max(x.isf(1e-15), y.isf(1e-15))
    value = integrate.quad(
        lambda s: float(y.pdf(s) * x.sf(s)), lo, hi, epsabs=1e-12, epsrel=1e-10, limit=200
    )[0]
    return float(min(1.0, max(0.0, value)))


def prob_beta_greater(a: float, b: float, c: float, d: float) -> tuple[float, str]:
    """``P(X > Y)`` for independent ``X ~ Beta(a, b)``, ``Y ~ Beta(c, d)`` and the method used.

    Uses whichever of four equivalent forms of Miller's sum has the fewest terms (by symmetry
    ``P(X > Y) = 1 - P(Y > X) = P(1-Y > 1-X)``). Miller's sum needs an integral parameter; with
    none (non-integer prior) the integral is computed numerically. When every form needs more
    than two million terms both posteriors are normal to far better than display precision,
    and a normal approximation is used.
    """
    options = []
    if _is_int(a):
        options.append((a, lambda: _miller_sum(a, b, c, d)))
    if _is_int(c):
        options.append((c, lambda: 1.0 - _miller_sum(c, d, a, b)))
    if _is_int(d):
        options.append((d, lambda: _miller_sum(d, c, b, a)))
    if _is_int(b):
        options.append((b, lambda: 1.0 - _miller_sum(b, a, d, c)))
    options = [o for o in options if o[0] <= _MAX_TERMS]
    if options:
        _, fn = min(options, key=lambda o: o[0])
        return min(1.0, max(0.0, fn())), "closed form (Miller 2015)"
    if max(a + b, c + d) <= _MAX_TERMS:
        return _by_quadrature(a, b, c, d), "numerical integration"
    mean_x, var_x = a / (a + b), a * b / ((a + b) ** 2 * (a + b + 1))
    mean_y, var_y = c / (c + d), c * d / ((c + d) ** 2 * (c + d + 1))
    return (
        float(stats.norm.sf(0.0, mean_x - mean_y, math.sqrt(var_x + var_y))),
        "normal approximation",
    )


def expected_loss(a: float, b: float, c: float, d: float) -> float:
    """``E[max(X - Y, 0)]`` for independent ``X ~ Beta(a, b)``, ``Y ~ Beta(c, d)``.

    Source: Stucchio (2015), "Bayesian A/B Testing at VWO" (expected loss):
    ``E[(X - Y)^+] = a/(a+b) P(X' > Y) - c/(c+d) P(X > Y')`` with
    ``X' ~ Beta(a+1, b)``, ``Y' ~ Beta(c+1, d)`` (since ``x f_{a,b}(x) = a/(a+b) f_{a+1,b}(x)``).
    """
    p1, _ = prob_beta_greater(a + 1.0, b, c, d)
    p2, _ = prob_beta_greater(a, b, c + 1.0, d)
    return max(0.0, a / (a + b) * p1 - c / (c + d) * p2)


def beta_binomial(
    control: BinaryStats,
    treatment: BinaryStats,
    prior_alpha: float = 1.0,
    prior_beta: float = 1.0,
) -> BayesianResult:
    """Posterior ``Beta(prior_alpha + successes, prior_beta + failures)`` per variant.

    Source: conjugate Beta-binomial model (Gelman et al., *Bayesian Data Analysis*, 3rd ed.,
    ch. 2). The default uniform prior ``Beta(1, 1)`` lets the data speak; with no data the
    answer is the prior's (probability 0.5), which is honest rather than an error.
    """
    prior = (float(prior_alpha), float(prior_beta))
    if not (prior_alpha > 0 and prior_beta > 0):
        nan = math.nan
        return BayesianResult(
            nan,
            nan,
            nan,
            (nan, nan),
            (nan, nan),
            prior,
            "",
            ErrorCode.INVALID_INPUT,
            "prior parameters must be > 0",
        )
    ac, bc = prior_alpha + control.successes, prior_beta + control.failures
    at, bt = prior_alpha + treatment.successes, prior_beta + treatment.failures
    prob, method = prob_beta_greater(at, bt, ac, bc)
    return BayesianResult(
        prob_treatment_beats_control=prob,
        expected_loss_treatment=expected_loss(ac, bc, at, bt),
        expected_loss_control=expected_loss(at, bt, ac, bc),
        posterior_control=(float(ac), float(bc)),
        posterior_treatment=(float(at), float(bt)),
        prior=prior,
        method=method,
    )


def normal_difference_posterior(
    control: RatioStats, treatment: RatioStats, higher_is_better: bool | None = True
) -> BayesianResult:
    """P(treatment beats control) and expected loss with the *session* as the unit.

    The per-session ratio metric's difference ``D = R_t - R_c`` has, with a flat prior and
    many sessions, the normal posterior ``N(d, Var(R_t) + Var(R_c))`` with the delta-method
    variances (Deng et al. 2018), so the figures are as calibrated as the session-level test:
    on an A/A experiment P(beats) falls outside [2.5%, 97.5%] in 5% of runs, however chatty
    the sessions (an interaction-level Beta-binomial would count correlated interactions as
    independent and be over-confident). With ``s`` the posterior sd and ``g = d`` (``-d``
    when lower is better): ``P(beats) = Phi(g / s)``; expected loss of shipping
    ``E[max(-G, 0)] = s phi(g/s) - g Phi(-g/s)``, of keeping control ``E[max(G, 0)] =
    s phi(g/s) + g Phi(g/s)`` (the normal partial expectation). A neutral metric counts
    "higher" as beating.
    """
    method = "normal posterior of the session-level difference (delta method)"
    nan = math.nan
    posterior_c = (control.ratio, math.sqrt(control.variance) if control.n >= 2 else nan)
    posterior_t = (treatment.ratio, math.sqrt(treatment.variance) if treatment.n >= 2 else nan)

    def failed(code: ErrorCode, msg: str) -> BayesianResult:
        return BayesianResult(
            nan, nan, nan, posterior_c, posterior_t, (nan, nan), method, code, msg
        )

    if min(control.n, treatment.n) < 2 or not control.sum_den or not treatment.sum_den:
        return failed(ErrorCode.TOO_FEW_SAMPLES, "each variant needs >= 2 sessions with events")
    var = control.variance + treatment.variance
    if not var > 0:
        return failed(ErrorCode.ZERO_VARIANCE, "the metric does not vary between sessions")
    s = math.sqrt(var)
    gain = treatment.ratio - control.ratio
    if higher_is_better is False:
        gain = -gain
    z = gain / s
    return BayesianResult(
        prob_treatment_beats_control=float(stats.norm.cdf(z)),
        expected_loss_treatment=float(s * stats.norm.pdf(z) - gain * stats.norm.cdf(-z)),
        expected_loss_control=float(s * stats.norm.pdf(z) + gain * stats.norm.cdf(z)),
        posterior_control=posterior_c,
        posterior_treatment=posterior_t,
        prior=(nan, nan),
        method=method,
    )
