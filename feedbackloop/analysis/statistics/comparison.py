"""The whole two-variant comparison of a binary metric, from counts alone.

``compare_counts((540, 1000), (580, 1010))`` runs every check a report needs and returns one
typed :class:`CountComparison`; :func:`format_comparison` renders it as a text table and
:meth:`CountComparison.to_dict` as JSON-ready data. The verdict comes from
:func:`~.decision.decide`, the same function ``ab report``, the dashboard and the alerts use,
under an :class:`~.design.ExperimentDesign` built from the same parameters ``feedbackloop
experiments design`` registers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from feedbackloop.analysis.statistics.bayesian import BayesianResult, beta_binomial
from feedbackloop.analysis.statistics.decision import Decision, Evidence, Rules, decide
from feedbackloop.analysis.statistics.design import ExperimentDesign, check_mde
from feedbackloop.analysis.statistics.power import (
    PowerStatus,
    SampleSize,
    cohens_h,
    fisher_exact_power,
    power_status,
    power_two_sample,
    required_sample_size_proportions_exact,
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

    ``fixed_horizon`` is the fixed-horizon test: Fisher's exact test when an expected cell
    count is below 5 (``small_counts``; then ``z_test`` and ``chi_square`` are ``None``, not
    alternatives), else the z-test (then ``fisher`` is ``None``: it is not computed).
    ``mde`` is the design's MDE as an absolute difference; ``power_at_n`` the power of the
    test actually used, at the current sizes, against it (exact for Fisher's test);
    ``required`` the units per variant that test needs for it (the planned horizon in fixed
    mode). None of them is ever sized from the observed difference.
    """

    design: ExperimentDesign
    control: VariantSummary
    treatment: VariantSummary
    difference: Estimate
    lift: Estimate
    z_test: TestResult | None
    chi_square: TestResult | None
    fisher: TestResult | None
    small_counts: bool
    fixed_horizon: TestResult
    sequential: SequentialResult
    bayesian: BayesianResult
    srm: SrmResult
    mde: float | None
    power_at_n: float
    power_method: str
    required: SampleSize
    power_status: PowerStatus
    decision: Decision

    @property
    def alpha(self) -> float:
        return self.design.alpha

    @property
    def power(self) -> float:
        return self.design.power

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as strings, ``nan`` as ``None``."""
        out = to_jsonable(self)
        assert isinstance(out, dict)
        out["alpha"], out["power"] = self.alpha, self.power
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


def _power_at_n(
    fisher: bool, base: float, mde: float | None, c: BinaryStats, t: BinaryStats, alpha: float
) -> tuple[float, str]:
    """Power of the test in use, at these sizes, for a true difference of ``mde`` from
    ``base`` (away from the nearer bound of [0, 1])."""
    if mde is None or not math.isfinite(base) or c.n == 0 or t.n == 0:
        return math.nan, ""
    target = base + mde if base + mde <= 1.0 else base - mde
    if not 0.0 <= target <= 1.0:
        return math.nan, ""
    if fisher:
        return fisher_exact_power(base, target, c.n, t.n, alpha), "Fisher exact test, exact"
    h = cohens_h(base, target)
    return power_two_sample(h, c.n, alpha, t.n / c.n), "z-test, normal approximation"


def compare_counts(
    control: Counts,
    treatment: Counts,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    mde: float | None = None,
    mde_relative: bool = False,
    mode: str = "sequential",
    baseline: float | None = None,
    sessions: int | None = None,
    weights: Sequence[float] | None = None,
    srm_threshold: float = DEFAULT_SRM_THRESHOLD,
    tau: float = DEFAULT_TAU,
    higher_is_better: bool = True,
    design: ExperimentDesign | None = None,
) -> CountComparison:
    """Compare ``treatment`` with ``control``, each ``(successes, n)`` or :class:`BinaryStats`.

    The parameters are a design's (:class:`ExperimentDesign`; or pass ``design``): ``mde``
    the smallest difference worth detecting (absolute, or a share of the baseline with
    ``mde_relative``), ``mode`` ``"sequential"`` (always-valid, the default) or ``"fixed"``
    (planned at ``sessions`` per variant, or from ``baseline`` and ``mde``). ``weights`` is
    the configured split (default equal) for the SRM check. Raises :class:`ConfigError` for
    an invalid design and :class:`InvalidStatistics` for impossible counts (negative,
    successes > n); degenerate data yields a "cannot decide" verdict with the reason.
    """
    if design is None:
        design = ExperimentDesign(
            mde=mde,
            mde_relative=mde_relative,
            alpha=alpha,
            power=power,
            mode=mode,
            baseline=baseline,
            planned_sessions=sessions,
        )
    if design.mde is not None:
        check_mde(design.mde, design.mde_relative, proportion=True)
    alpha = design.alpha
    c, t = _as_stats(control, "control"), _as_stats(treatment, "treatment")

    small = small_counts(c, t)
    # Fisher's test costs time and memory linear in n: run it only where it decides.
    fisher = fisher_exact_test(c, t) if small else None
    z_test = None if small else two_proportion_ztest(c, t)
    chi = None if small else chi_square_test(c, t)
    fixed = fisher if fisher is not None else z_test
    assert fixed is not None
    difference = newcombe_interval(c, t, alpha)
    srm = sample_ratio_mismatch([c.n, t.n], weights, srm_threshold)
    sequential = sequential_test_proportions(c, t, alpha, tau)

    base = design.baseline if design.baseline is not None else c.rate
    mde_abs = design.absolute_mde(c.rate)
    power_n, power_method = _power_at_n(small, base, mde_abs, c, t, alpha)
    if design.mode == "fixed" and design.planned_sessions is not None:
        n = design.planned_sessions
        required = SampleSize(float(n), float(n), math.nan, alpha, design.power)
    elif mde_abs is not None and math.isfinite(base):
        target = base + mde_abs if base + mde_abs <= 1.0 else base - mde_abs
        required = required_sample_size_proportions_exact(base, target - base, alpha, design.power)
    else:
        required = SampleSize.failed(
            math.nan, alpha, design.power, ErrorCode.UNDEFINED, "no MDE given: nothing to plan for"
        )
    status = power_status(required, c.n, t.n)

    # Only the test that decides in this mode can make the verdict undecidable.
    deciding: list[TestResult | Estimate | SequentialResult] = [difference]
    deciding.insert(0, fixed if design.mode == "fixed" else sequential)
    error = next((r.message for r in deciding if not r.ok), None)
    cs = sequential.confidence_sequence
    decision = decide(
        Evidence(
            estimate=difference.value,
            sequential_p=sequential.p_value,
            cs_lower=cs.lower if cs.ok else math.nan,
            cs_upper=cs.upper if cs.ok else math.nan,
            fixed_p=fixed.p_value,
            n_smallest=min(c.n, t.n),
            fixed_method=fixed.method,
            srm_mismatch=srm.mismatch,
            srm_p=srm.p_value,
            error=error,
        ),
        Rules(
            mode=design.mode,
            alpha=alpha,
            power=design.power,
            mde=mde_abs,
            horizon=design.planned_sessions if design.mode == "fixed" else None,
            higher_is_better=higher_is_better,
            fmt=lambda x: _pct(x, True),
        ),
    )
    horizon = design.planned_sessions if design.mode == "fixed" else None
    if horizon is not None and min(c.n, t.n) > horizon and decision.basis == "fixed-horizon":
        # Counts alone cannot be cut back to the first N units, as ab report's are.
        decision = replace(
            decision,
            reason=decision.reason
            + f"; these counts go past the horizon ({min(c.n, t.n):,} > {horizon:,}): the "
            "test is valid only if this is its one evaluation",
        )
    return CountComparison(
        design=design,
        control=VariantSummary("control", c.n, c.successes, wilson_interval(c, alpha)),
        treatment=VariantSummary("treatment", t.n, t.successes, wilson_interval(t, alpha)),
        difference=difference,
        lift=relative_lift_interval(c, t, alpha),
        z_test=z_test,
        chi_square=chi,
        fisher=fisher,
        small_counts=small,
        fixed_horizon=fixed,
        sequential=sequential,
        bayesian=beta_binomial(c, t),
        srm=srm,
        mde=mde_abs,
        power_at_n=power_n,
        power_method=power_method,
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
    """A plain-text report: SRM first (it overrides everything), the verdict and why last."""
    level = f"{1 - c.alpha:.0%}"
    d = c.design
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
    ]
    if c.fisher is not None:
        rows.append(("Fisher exact p (small counts)", _p(c.fisher.p_value)))
    if c.z_test is not None and c.chi_square is not None:
        rows += [("z-test p", _p(c.z_test.p_value)), ("chi-square p", _p(c.chi_square.p_value))]
    rows += [
        ("sequential p (always valid)", _p(c.sequential.p_value)),
        (f"confidence sequence ({level})", _interval(c.sequential.confidence_sequence)),
        ("P(treatment beats control)", _pct(c.bayesian.prob_treatment_beats_control)),
        (
            "expected loss: ship / keep",
            f"{_pct(c.bayesian.expected_loss_treatment)} / "
            f"{_pct(c.bayesian.expected_loss_control)}",
        ),
    ]
    mode = (
        "sequential (always valid)"
        if d.mode == "sequential"
        else f"fixed horizon ({d.planned_sessions:,} per variant)"
    )
    mde = "none (no futility verdict)" if c.mde is None else f"±{_pct(c.mde)}"
    rows.append(("design", f"{mode}; MDE {mde}; alpha {d.alpha:g}; power {d.power:g}"))
    if c.mde is not None:
        if math.isfinite(c.power_at_n):
            rows.append(
                ("power for the MDE at these sizes", f"{c.power_at_n:.1%} ({c.power_method})")
            )
        what = "planned per variant" if d.mode == "fixed" else "fixed-horizon size for the MDE"
        rows.append((what, c.power_status.message))
    rows += [("verdict", c.decision.text), ("why", c.decision.reason)]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)
