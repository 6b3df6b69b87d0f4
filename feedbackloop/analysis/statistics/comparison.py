"""The whole two-variant comparison of a binary metric, from counts alone.

``compare_counts((540, 1000), (580, 1010))`` runs every check a report needs and returns one
typed :class:`CountComparison`; :func:`format_comparison` renders it as a text table and
:meth:`CountComparison.to_dict` as JSON-ready data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from feedbackloop.analysis.statistics.bayesian import BayesianResult, beta_binomial
from feedbackloop.analysis.statistics.decision import Decision, decide
from feedbackloop.analysis.statistics.power import (
    PowerStatus,
    SampleSize,
    power_status,
    required_sample_size_proportions,
)
from feedbackloop.analysis.statistics.proportions import (
    chi_square_test,
    fisher_exact_test,
    newcombe_interval,
    relative_lift_interval,
    small_counts,
    two_proportion_ztest,
    wilson_interval,
)
from feedbackloop.analysis.statistics.results import ErrorCode, Estimate, TestResult, to_jsonable
from feedbackloop.analysis.statistics.sequential import (
    DEFAULT_TAU,
    SequentialResult,
    sequential_test_proportions,
)
from feedbackloop.analysis.statistics.srm import (
    DEFAULT_SRM_THRESHOLD,
    SrmResult,
    sample_ratio_mismatch,
)
from feedbackloop.analysis.statistics.sufficient import BinaryStats, InvalidStatistics

__all__ = ["VariantSummary", "CountComparison", "compare_counts", "format_comparison"]

Counts = BinaryStats | tuple[int, int]


@dataclass(frozen=True)
class VariantSummary:
    name: str
    n: int
    successes: int
    rate: Estimate


@dataclass(frozen=True)
class CountComparison:
    """Every number behind a two-variant decision on a binary metric.

    ``fixed_horizon`` is the test the decision uses at the planned horizon: Fisher's exact
    test when an expected cell count is below 5 (``small_counts``), else the z-test.
    ``required`` is the sample size per variant for the effect in ``required_for`` (the
    observed difference unless an MDE was given) at ``power``.
    """

    alpha: float
    power: float
    control: VariantSummary
    treatment: VariantSummary
    difference: Estimate
    lift: Estimate
    z_test: TestResult
    chi_square: TestResult
    fisher: TestResult
    small_counts: bool
    fixed_horizon: TestResult
    sequential: SequentialResult
    bayesian: BayesianResult
    srm: SrmResult
    required_for: float
    required: SampleSize
    power_status: PowerStatus
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as strings, ``nan`` as ``None``."""
        out = to_jsonable(self)
        assert isinstance(out, dict)
        return out

    def to_text(self) -> str:
        return format_comparison(self)


def _as_stats(value: Counts, name: str) -> BinaryStats:
    if isinstance(value, BinaryStats):
        return value
    try:
        successes, n = value
    except (TypeError, ValueError):
        raise InvalidStatistics(f"{name}: expected (successes, n), got {value!r}") from None
    return BinaryStats(n=int(n), successes=int(successes))


def compare_counts(
    control: Counts,
    treatment: Counts,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    mde: float | None = None,
    weights: Sequence[float] | None = None,
    srm_threshold: float = DEFAULT_SRM_THRESHOLD,
    tau: float = DEFAULT_TAU,
    higher_is_better: bool = True,
) -> CountComparison:
    """Compare ``treatment`` with ``control``, each ``(successes, n)`` or :class:`BinaryStats`.

    ``mde`` is an absolute difference in rate to plan for; without it the required sample
    size is for the observed difference (so it answers "how much data would confirm an effect
    this large?"). ``weights`` is the configured split (default equal) for the SRM check.
    Raises :class:`InvalidStatistics` only for impossible input (negative counts, successes >
    n, alpha outside (0, 1)); degenerate data yields an ``invalid`` decision with the reason.
    """
    if not 0.0 < alpha < 1.0:
        raise InvalidStatistics(f"alpha must lie in (0, 1), got {alpha}")
    if not 0.0 < power < 1.0:
        raise InvalidStatistics(f"power must lie in (0, 1), got {power}")
    c, t = _as_stats(control, "control"), _as_stats(treatment, "treatment")

    z_test = two_proportion_ztest(c, t)
    fisher = fisher_exact_test(c, t)
    small = small_counts(c, t)
    fixed = fisher if small else z_test
    difference = newcombe_interval(c, t, alpha)
    srm = sample_ratio_mismatch([c.n, t.n], weights, srm_threshold)
    sequential = sequential_test_proportions(c, t, alpha, tau)

    effect = mde if mde is not None else difference.value
    baseline = c.rate
    if math.isfinite(baseline) and math.isfinite(effect):
        required = required_sample_size_proportions(baseline, effect, alpha, power)
    else:
        required = SampleSize.failed(
            math.nan, alpha, power, ErrorCode.UNDEFINED, "no baseline rate or effect to plan for"
        )
    status = power_status(required, c.n, t.n)

    error = next((r.message for r in (fixed, difference) if not r.ok), None)
    decision = decide(
        estimate=difference.value,
        alpha=alpha,
        sequential_p=sequential.p_value,
        fixed_p=fixed.p_value,
        n_smallest=min(c.n, t.n),
        n_required=required.per_variant,
        srm_mismatch=srm.mismatch,
        error=error,
        higher_is_better=higher_is_better,
    )
    return CountComparison(
        alpha=alpha,
        power=power,
        control=VariantSummary("control", c.n, c.successes, wilson_interval(c, alpha)),
        treatment=VariantSummary("treatment", t.n, t.successes, wilson_interval(t, alpha)),
        difference=difference,
        lift=relative_lift_interval(c, t, alpha),
        z_test=z_test,
        chi_square=chi_square_test(c, t),
        fisher=fisher,
        small_counts=small,
        fixed_horizon=fixed,
        sequential=sequential,
        bayesian=beta_binomial(c, t),
        srm=srm,
        required_for=effect,
        required=required,
        power_status=status,
        decision=decision,
    )


def _pct(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.2%}" if signed else f"{x:.2%}"


def _interval(e: Estimate, signed: bool = True) -> str:
    if not e.ok:
        return f"n/a ({e.message})"
    return f"{_pct(e.value, signed)} [{_pct(e.lower, signed)}, {_pct(e.upper, signed)}]"


def _p(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def format_comparison(c: CountComparison) -> str:
    """A plain-text report: SRM first (it overrides everything), decision last."""
    level = f"{1 - c.alpha:.0%}"
    rows: list[tuple[str, str]] = [
        ("sample ratio", c.srm.message if c.srm.ok else f"n/a ({c.srm.message})"),
    ]
    for v in (c.control, c.treatment):
        rows.append(
            (f"{v.name} rate", f"{v.successes:,}/{v.n:,} = {_interval(v.rate, signed=False)}")
        )
    rows += [
        (f"difference ({level} CI)", _interval(c.difference)),
        (f"relative lift ({level} CI)", _interval(c.lift)),
        ("z-test p", _p(c.z_test.p_value)),
        ("chi-square p", _p(c.chi_square.p_value)),
    ]
    if c.small_counts:
        rows.append(("Fisher exact p (small counts)", _p(c.fisher.p_value)))
    rows += [
        ("sequential p (always valid)", _p(c.sequential.p_value)),
        (f"confidence sequence ({level})", _interval(c.sequential.confidence_sequence)),
        ("P(treatment beats control)", _pct(c.bayesian.prob_treatment_beats_control)),
        (
            "expected loss: ship / keep",
            f"{_pct(c.bayesian.expected_loss_treatment)} / "
            f"{_pct(c.bayesian.expected_loss_control)}",
        ),
        (
            f"needed per variant ({c.power:.0%} power, effect {_pct(c.required_for, True)})",
            c.power_status.message,
        ),
        ("decision", c.decision.text),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
