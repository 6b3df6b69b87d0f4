"""The one decision function: test results in, a verdict and its reason out.

``ab report``, the dashboard, ``stats compare`` and the alerts all call :func:`decide`, so
the same data prints the same verdict everywhere. The rules (docs/STATISTICS.md, "Verdicts"):

1. an error in the inputs (no data, no variance): **cannot decide**, with the reason;
2. a sample-ratio mismatch: **do not trust**, whatever the tests say;
3. *sequential* mode (the default), only the always-valid p-value and confidence sequence
   are read, so the verdict keeps its error rates under any schedule of looks:
   p <= alpha: **significant improvement / regression** (direction by the metric);
   the confidence sequence inside ``(-MDE, +MDE)``: **no difference as large as the MDE**
   (futility); otherwise **keep running**;
4. *fixed* mode: before the planned horizon (``n < N`` units per variant in the smallest
   arm) **keep running (n of N)**, whatever the p-values; at it, the fixed-horizon test
   (computed by the caller on the first ``N`` units per variant) decides once:
   significant, else **no difference as large as the MDE** (the design had ``power`` to
   detect it).

p-values come in already adjusted for multiplicity by the caller (Holm across treatments
for the headline, BH or Holm across treatments x metrics for metric rows).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

__all__ = ["Verdict", "Decision", "Evidence", "Rules", "decide", "VERDICT_PROMISES"]


class Verdict(str, Enum):
    CANNOT_DECIDE = "cannot_decide"
    DO_NOT_TRUST = "do_not_trust"
    SIGNIFICANT_IMPROVEMENT = "significant_improvement"
    SIGNIFICANT_REGRESSION = "significant_regression"
    NO_DIFFERENCE = "no_difference"
    KEEP_RUNNING = "keep_running"


#: What each verdict promises (docs/STATISTICS.md prints this table).
VERDICT_PROMISES: dict[Verdict, str] = {
    Verdict.SIGNIFICANT_IMPROVEMENT: "with no true difference, printed (at any look, however "
    "often you look) in at most alpha of experiments",
    Verdict.SIGNIFICANT_REGRESSION: "same as significant improvement, in the other direction",
    Verdict.NO_DIFFERENCE: "sequential: with a true difference of the MDE or more, printed in at "
    "most alpha of experiments (the confidence sequence covers the truth at every look); "
    "fixed: at most 1 - power of experiments",
    Verdict.KEEP_RUNNING: "nothing yet: neither 0 nor the MDE is ruled out (sequential) or the "
    "planned horizon is not reached (fixed)",
    Verdict.DO_NOT_TRUST: "the split of sessions differs from the configured one (p < 0.001): "
    "every other number is suspect",
    Verdict.CANNOT_DECIDE: "no data, or no variance, to test",
}


@dataclass(frozen=True)
class Decision:
    """A verdict, its words (``text``) and why (``reason``); ``basis`` names the rule."""

    verdict: Verdict
    text: str
    reason: str
    basis: str


@dataclass(frozen=True)
class Evidence:
    """What the tests found for ``treatment - control`` on one metric.

    ``sequential_p`` and ``fixed_p`` are adjusted for multiplicity; ``cs_lower`` /
    ``cs_upper`` bound the confidence sequence; ``fixed_p`` must come from the first
    ``horizon`` units per variant (fixed mode). ``n_smallest`` counts units in the smaller
    arm (all of them, not capped). ``error`` is why there is nothing to test.
    """

    estimate: float
    sequential_p: float
    cs_lower: float
    cs_upper: float
    fixed_p: float
    n_smallest: int
    fixed_method: str = "fixed-horizon test"
    srm_mismatch: bool = False
    srm_p: float = math.nan
    error: str | None = None


@dataclass(frozen=True)
class Rules:
    """The design, resolved for one metric: ``mde`` absolute on its scale (or ``None``),
    ``horizon`` units per variant (fixed mode). ``higher_is_better`` ``None``: a neutral
    metric (a change is an increase or a decrease). ``fmt`` renders a difference."""

    mode: str = "sequential"
    alpha: float = 0.05
    power: float = 0.8
    mde: float | None = None
    horizon: int | None = None
    higher_is_better: bool | None = True
    fmt: Callable[[float], str] = lambda x: f"{x:+.4g}"


def _p(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def decide(e: Evidence, r: Rules) -> Decision:
    """The verdict for one comparison (rules in the module docstring)."""
    if e.error:
        return Decision(Verdict.CANNOT_DECIDE, f"cannot decide: {e.error}", e.error, "input")
    if e.srm_mismatch:
        return Decision(
            Verdict.DO_NOT_TRUST,
            "do not trust: sample-ratio mismatch",
            f"sessions per variant do not match the configured split (p = {e.srm_p:.2g})",
            "srm",
        )

    def significant(reason: str, basis: str) -> Decision:
        up = e.estimate > 0
        if r.higher_is_better is None:
            words = "significant increase" if up else "significant decrease"
            v = Verdict.SIGNIFICANT_IMPROVEMENT if up else Verdict.SIGNIFICANT_REGRESSION
            return Decision(v, words, reason, basis)
        if up == r.higher_is_better:
            return Decision(
                Verdict.SIGNIFICANT_IMPROVEMENT, "significant improvement", reason, basis
            )
        return Decision(Verdict.SIGNIFICANT_REGRESSION, "significant regression", reason, basis)

    mde = f"±{r.fmt(r.mde).lstrip('+')}" if r.mde is not None else ""
    if r.mode == "fixed":
        if r.horizon is None:
            return Decision(
                Verdict.CANNOT_DECIDE,
                "cannot decide: fixed-horizon mode without a planned sample size",
                "no planned horizon",
                "input",
            )
        if e.n_smallest < r.horizon:
            return Decision(
                Verdict.KEEP_RUNNING,
                f"keep running ({e.n_smallest:,} of {r.horizon:,})",
                f"fixed horizon: the test is evaluated once, at {r.horizon:,} per variant",
                "horizon",
            )
        if not math.isfinite(e.fixed_p):
            return Decision(
                Verdict.CANNOT_DECIDE, "cannot decide: no p-value", "no p-value", "input"
            )
        if e.fixed_p <= r.alpha:
            return significant(
                f"{e.fixed_method} p {_p(e.fixed_p)} <= alpha {r.alpha:g} at the planned "
                f"horizon ({r.horizon:,} per variant)",
                "fixed-horizon",
            )
        return Decision(
            Verdict.NO_DIFFERENCE,
            "no difference as large as the MDE",
            f"{e.fixed_method} p {_p(e.fixed_p)} > alpha {r.alpha:g} at the planned horizon "
            f"({r.horizon:,} per variant), planned for {r.power:.0%} power at {mde or 'the MDE'}",
            "fixed-horizon",
        )

    cs = f"[{r.fmt(e.cs_lower)}, {r.fmt(e.cs_upper)}]"
    if math.isfinite(e.sequential_p) and e.sequential_p <= r.alpha:
        return significant(
            f"always-valid p {_p(e.sequential_p)} <= alpha {r.alpha:g}", "sequential"
        )
    if r.mde is not None and -r.mde < e.cs_lower and e.cs_upper < r.mde:
        return Decision(
            Verdict.NO_DIFFERENCE,
            "no difference as large as the MDE",
            f"the confidence sequence {cs} excludes the MDE {mde}",
            "futility",
        )
    why = f"always-valid p {_p(e.sequential_p)} > alpha {r.alpha:g}"
    if r.mde is not None:
        why += f"; the confidence sequence {cs} still includes the MDE {mde}"
    else:
        why += "; no MDE, so no futility verdict"
    return Decision(Verdict.KEEP_RUNNING, "keep running", why, "sequential")
