"""Canary guardrails: from the stream jobs' window aggregates of control and treatment to
"roll back", "advance the ramp" or "hold" (pure functions; the canary guard in
:mod:`feedbackloop.stream_jobs.canary` runs them continuously).

A guardrail is breached when the always-valid test finds the treatment worse than control
by more than the guardrail's tolerance: with ``d`` the difference in the metric's good
direction (treatment - control for satisfaction, control - treatment for latency), the
mSPRT tests ``H0: d = -tolerance`` and a breach is ``p <= alpha`` with ``d_hat <
-tolerance``. Because the p-value is valid at any stopping time, judging after every
window keeps the false-rollback rate of a canary that is no worse than its tolerance at
most alpha (measured: ``scripts/canary_simulation.py``, docs/ARCHITECTURE.md "Canary
releases").

The verdict is the one decision function's (``analysis/statistics/decision.py``, issue 14),
in sequential mode: "significant regression" of the shifted difference is a breach.

A step *holds* once it ran ``min_step_s`` and every guardrail has ``min_step_samples``
treatment samples at it, without a breach; the guard then advances the ramp.

Units are votes, ratings and interactions (what the window aggregates count), not
sessions: several votes of one session are treated as independent, which understates the
variance when sessions differ a lot.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.analysis.statistics.decision import Evidence, Rules, Verdict, decide
from feedbackloop.analysis.statistics.sequential import SequentialResult, sequential_test
from feedbackloop.analysis.statistics.sufficient import BinaryStats, MeanStats
from feedbackloop.control.config import HIGHER_IS_BETTER, ExperimentConfig, Guardrail, Status

__all__ = ["ArmStats", "GuardrailCheck", "Judgement", "check_guardrail", "judge"]


@dataclass
class ArmStats:
    """What the guardrails read of one arm: sums of window aggregates (additive)."""

    thumbs_up: int = 0
    thumbs_down: int = 0
    rating_count: int = 0
    rating_sum: float = 0.0
    rating_sum_squares: float = 0.0
    interactions: int = 0
    regenerate: int = 0
    abandon: int = 0
    latency_count: int = 0
    latency_sum: float = 0.0
    latency_sum_squares: float = 0.0

    @classmethod
    def of(cls, agg: Any) -> ArmStats:
        """From one :class:`~feedbackloop.schemas.WindowAggregate`."""
        return cls(
            agg.thumbs_up,
            agg.thumbs_down,
            agg.rating_count,
            agg.rating_sum,
            agg.rating_sum_squares,
            agg.interactions,
            agg.implicit_regenerate,
            agg.implicit_abandon,
            agg.latency_count,
            agg.latency_sum,
            agg.latency_sum_squares,
        )

    def __iadd__(self, other: ArmStats) -> ArmStats:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def metric(self, name: str) -> BinaryStats | MeanStats:
        if name == "satisfaction":
            return BinaryStats(self.thumbs_up + self.thumbs_down, self.thumbs_up)
        if name == "rating":
            return MeanStats(self.rating_count, self.rating_sum, self.rating_sum_squares)
        if name in ("regenerate", "abandon"):
            # Signals are windowed by their own time: clamp so a rate stays a rate.
            hits = min(self.regenerate if name == "regenerate" else self.abandon, self.interactions)
            return BinaryStats(self.interactions, hits)
        if name == "latency_ms":
            return MeanStats(self.latency_count, self.latency_sum, self.latency_sum_squares)
        raise ValueError(f"unknown guardrail metric {name!r}")


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail at one look: ``good_diff`` is the difference in the good direction."""

    metric: str
    tolerance: float
    control: float
    treatment: float
    n_control: int
    n_treatment: int
    good_diff: float
    p_value: float
    breached: bool
    note: str = ""

    def text(self) -> str:
        if self.note:
            return f"{self.metric}: {self.note}"
        verb = "BREACHED" if self.breached else "holds"
        return (
            f"{self.metric} {verb}: treatment {self.treatment:.4g} (n={self.n_treatment}) vs "
            f"control {self.control:.4g} (n={self.n_control}), tolerance {self.tolerance:g}, "
            f"always-valid p={self.p_value:.3g} against a degradation of the tolerance"
        )


def _breached(result: SequentialResult, alpha: float, n_smallest: int) -> bool:
    """Does the one decision function (:func:`~feedbackloop.analysis.statistics.decide`, the
    verdict ``ab report`` prints, in sequential mode) call the treatment a significant
    regression? ``result`` tests the good-direction difference shifted by the tolerance, so
    a regression of it is a degradation beyond the tolerance."""
    cs = result.confidence_sequence
    evidence = Evidence(
        estimate=result.estimate,
        sequential_p=result.p_value,
        cs_lower=cs.lower,
        cs_upper=cs.upper,
        fixed_p=math.nan,
        n_smallest=n_smallest,
        error=None if result.ok else result.message,
    )
    verdict = decide(evidence, Rules(mode="sequential", alpha=alpha, higher_is_better=True))
    return verdict.verdict is Verdict.SIGNIFICANT_REGRESSION


def check_guardrail(
    guardrail: Guardrail, control: ArmStats, treatment: ArmStats, alpha: float
) -> GuardrailCheck:
    metric, tol = guardrail.metric, guardrail.tolerance
    c, t = control.metric(metric), treatment.metric(metric)
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    n_c, n_t = c.n, t.n
    if isinstance(c, BinaryStats) and isinstance(t, BinaryStats):
        cv, tv = c.rate, t.rate
        ok = n_c > 0 and n_t > 0
        if ok:
            n_eff = 1.0 / (1.0 / n_c + 1.0 / n_t)
            pooled = (c.successes + t.successes) / (n_c + n_t)
            se = math.sqrt(c.variance / n_c + t.variance / n_t)
            # Against 0 the pooled SE is the exact null one; against -tol it is not, so a
            # tolerance uses the unpooled SE (the pooled one when both rates are 0 or 1).
            null_se = math.sqrt(pooled * (1.0 - pooled) / n_eff)
            if tol > 0 and se > 0:
                null_se = se
    else:
        assert isinstance(c, MeanStats) and isinstance(t, MeanStats)
        cv, tv = c.mean, t.mean
        ok = n_c >= 2 and n_t >= 2
        if ok:
            n_eff = 1.0 / (1.0 / n_c + 1.0 / n_t)
            se = math.sqrt(c.variance / n_c + t.variance / n_t)
            null_se = se
    if not ok:
        return GuardrailCheck(
            metric, tol, cv, tv, n_c, n_t, math.nan, math.nan, False, "too few samples yet"
        )
    good = sign * (tv - cv)
    result = sequential_test(good + tol, null_se, se if se > 0 else null_se, n_eff, alpha)
    if not result.ok:
        return GuardrailCheck(metric, tol, cv, tv, n_c, n_t, good, math.nan, False, result.message)
    return GuardrailCheck(
        metric, tol, cv, tv, n_c, n_t, good, result.p_value, _breached(result, alpha, min(n_c, n_t))
    )


@dataclass(frozen=True)
class Judgement:
    """What the guard does with a canary now: ``rollback``, ``advance`` or ``None``."""

    action: str | None
    reason: str
    checks: tuple[GuardrailCheck, ...] = field(default_factory=tuple)


def judge(
    cfg: ExperimentConfig,
    since_start: tuple[ArmStats, ArmStats],
    at_step: tuple[ArmStats, ArmStats],
    now: dt.datetime,
) -> Judgement:
    """The guard's decision for a running canary, given (control, treatment) sums since the
    canary started and since its current step started."""
    c = cfg.canary
    if c is None or cfg.status is not Status.running:
        return Judgement(None, "not a running canary")
    checks = tuple(check_guardrail(g, *since_start, c.alpha) for g in c.guardrails)
    breaches = [ch for ch in checks if ch.breached]
    if breaches:
        return Judgement(
            "rollback", "guardrail breached: " + "; ".join(b.text() for b in breaches), checks
        )
    if c.last_step:
        return Judgement(None, "at the last step; guarding", checks)
    ran = (now - c.step_started_at).total_seconds()
    if ran < c.min_step_s:
        return Judgement(None, f"step ran {ran:.0f} of {c.min_step_s:.0f} s", checks)
    short = [g.metric for g in c.guardrails if at_step[1].metric(g.metric).n < c.min_step_samples]
    if short:
        return Judgement(
            None,
            f"fewer than {c.min_step_samples} treatment samples at this step: {', '.join(short)}",
            checks,
        )
    held = "; ".join(ch.text() for ch in checks)
    return Judgement(
        "advance",
        f"step {c.step + 1} held for {ran:.0f} s: {held}",
        checks,
    )
