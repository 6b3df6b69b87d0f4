"""Canary guardrails: from per-session totals of control and treatment to "roll back",
"advance the ramp" or "hold" (pure functions and an accumulator; the canary guard in
:mod:`feedbackloop.stream_jobs.canary` feeds them from the enriched events).

**The unit is the session**, the unit of assignment, as in ``ab report``: every guardrail
metric is a ratio of two per-session totals (:data:`RATIOS`: thumbs up over votes,
regenerations over interactions, latency over timed interactions, ...), and its variance is
the delta-method variance across sessions (:class:`~feedbackloop.analysis.statistics.
sufficient.RatioStats`, Deng, Knoblich & Lu 2018). Votes of one session are correlated (one
user, one conversation); testing them as independent units makes a chatty session count
many times and the test anti-conservative (``scripts/canary_simulation.py`` measures both).

A guardrail is breached when the always-valid test finds the treatment worse than control
by more than the guardrail's tolerance: with ``d`` the difference in the metric's good
direction (treatment - control for satisfaction, control - treatment for latency), the
mSPRT tests ``H0: d = -tolerance`` with ``n_eff`` counted in sessions, and a breach is
``p <= alpha`` with ``d_hat < -tolerance``. Because the p-value is valid at any stopping
time, judging after every look keeps the false-rollback rate of a canary that is no worse
than its tolerance at most alpha (measured, chatty sessions included: docs/ARCHITECTURE.md
"Canary releases").

The verdict is the one decision function's (``analysis/statistics/decision.py``), in
sequential mode: "significant regression" of the shifted difference is a breach.

A step *holds* once it ran ``min_step_s`` and every guardrail has ``min_step_samples``
treatment sessions with that metric at it, without a breach; the guard then advances.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from feedbackloop.analysis.statistics.decision import Evidence, Rules, Verdict, decide
from feedbackloop.analysis.statistics.sequential import SequentialResult, sequential_test
from feedbackloop.analysis.statistics.sufficient import RatioStats
from feedbackloop.control.config import HIGHER_IS_BETTER, ExperimentConfig, Guardrail, Status

__all__ = [
    "ArmStats",
    "FIELDS",
    "GuardrailCheck",
    "MIN_SESSIONS",
    "Judgement",
    "RATIOS",
    "check_guardrail",
    "is_error",
    "judge",
]

#: What the guard adds up per session (one row per session and arm).
FIELDS = (
    "interactions",
    "votes",
    "up",
    "rating_n",
    "rating_sum",
    "regenerate",
    "abandon",
    "latency_n",
    "latency_sum",
    "cost_n",
    "cost_sum",
    "errors",
)
_IDX = {name: i for i, name in enumerate(FIELDS)}

#: Each guardrail metric as (numerator, denominator) of per-session totals.
RATIOS: dict[str, tuple[str, str]] = {
    "satisfaction": ("up", "votes"),
    "rating": ("rating_sum", "rating_n"),
    "regenerate": ("regenerate", "interactions"),
    "abandon": ("abandon", "interactions"),
    "latency_ms": ("latency_sum", "latency_n"),
    "cost_usd": ("cost_sum", "cost_n"),
    "error": ("errors", "interactions"),
}
_RATIO_IDX = {m: (_IDX[y], _IDX[d]) for m, (y, d) in RATIOS.items()}
#: Metrics that read each field, so an update touches only those.
_READERS = {f: tuple(m for m, (y, d) in RATIOS.items() if f in (y, d)) for f in FIELDS}

#: Sessions each arm needs (with the metric) before a guardrail is judged: the delta-method
#: variance of a handful of sessions, one of them chatty, is too unreliable for the
#: normal approximation the mSPRT rests on (the A/A simulation rolled back at the first look
#: without it).
MIN_SESSIONS = 30

#: Interaction metadata keys that mark a failed call: ``error`` (set by the app, any value
#: but false / empty) and ``stream_error`` (set by the provider integrations when a stream
#: fails, :mod:`feedbackloop.integrations.recording`).
ERROR_KEYS = ("error", "stream_error")


def is_error(metadata: Mapping[str, object] | None) -> bool:
    """Whether an interaction's metadata marks it as a failed call (see :data:`ERROR_KEYS`)."""
    if not metadata:
        return False
    return any(metadata.get(k) not in (None, False, "", 0) for k in ERROR_KEYS)


class ArmStats:
    """Per-session totals of one arm, and per metric the sums a :class:`RatioStats` reads
    (``n`` sessions with a denominator, sums of y, d, y², d², y·d), kept up to date as
    events arrive: an event changes its session's row, and the sums lose the row's old
    contribution and gain its new one (exact for the integer counts; :meth:`rebuild`
    recomputes the float sums from the rows when drift matters).

    A session idle for ``idle_s`` of event time is *closed* by :meth:`close_idle`: its
    contribution stays, its row is freed, and a later event of it starts a new unit (the
    analytics definition of a session, which keeps memory to the sessions active lately).
    """

    __slots__ = ("rows", "seen", "_sums", "_closed")

    def __init__(self) -> None:
        #: session id -> totals in :data:`FIELDS` order.
        self.rows: dict[str, list[float]] = {}
        #: session id -> last event time (epoch seconds).
        self.seen: dict[str, float] = {}
        self._sums: dict[str, list[float]] = {m: [0.0] * 6 for m in RATIOS}
        #: What closed sessions added (exact: summed once, when each was closed).
        self._closed: dict[str, list[float]] = {m: [0.0] * 6 for m in RATIOS}

    def add(self, session_id: str, at: float = 0.0, **increments: float) -> None:
        """Add ``increments`` (field name -> amount) to one session's totals."""
        row = self.rows.get(session_id)
        if row is None:
            row = self.rows[session_id] = [0.0] * len(FIELDS)
        if at > self.seen.get(session_id, -math.inf):
            self.seen[session_id] = at
        touched: set[str] = set()
        for name in increments:
            touched.update(_READERS[name])
        for m in touched:
            self._contribute(m, row, -1.0)
        for name, amount in increments.items():
            row[_IDX[name]] += amount
        for m in touched:
            self._contribute(m, row, 1.0)

    def _contribute(
        self,
        metric: str,
        row: list[float],
        sign: float,
        into: dict[str, list[float]] | None = None,
    ) -> None:
        iy, idn = _RATIO_IDX[metric]
        y, d = row[iy], row[idn]
        if d <= 0:  # a session enters a metric with its first unit of the denominator
            return
        s = (self._sums if into is None else into)[metric]
        s[0] += sign
        s[1] += sign * y
        s[2] += sign * d
        s[3] += sign * y * y
        s[4] += sign * d * d
        s[5] += sign * y * d

    def close_idle(self, before: float) -> int:
        """Close the sessions whose last event is older than ``before``; returns how many.
        Their contribution stays in the sums (and in the closed share :meth:`rebuild` keeps)."""
        idle = [s for s, t in self.seen.items() if t < before]
        for s in idle:
            row = self.rows.pop(s)
            del self.seen[s]
            for m in RATIOS:
                self._contribute(m, row, 1.0, self._closed)
        return len(idle)

    def rebuild(self) -> None:
        """Recompute the sums exactly (``math.fsum`` over the open rows plus the closed
        share): removes the rounding drift the add-and-subtract updates of float sums leave."""
        for m, (iy, idn) in _RATIO_IDX.items():
            open_rows = [(r[iy], r[idn]) for r in self.rows.values() if r[idn] > 0]
            exact = [
                float(len(open_rows)),
                math.fsum(y for y, _ in open_rows),
                math.fsum(d for _, d in open_rows),
                math.fsum(y * y for y, _ in open_rows),
                math.fsum(d * d for _, d in open_rows),
                math.fsum(y * d for y, d in open_rows),
            ]
            self._sums[m] = [a + b for a, b in zip(exact, self._closed[m], strict=True)]

    def metric(self, name: str) -> RatioStats:
        n, sy, sd, syy, sdd, syd = self._sums[name]
        # Rounding of the float sums may leave -0.0-ish squares: clamp to what RatioStats takes.
        return RatioStats(int(round(n)), sy, max(sd, 0.0), max(syy, 0.0), max(sdd, 0.0), syd)

    @property
    def sessions(self) -> int:
        """Open sessions (rows held)."""
        return len(self.rows)


@dataclass(frozen=True)
class GuardrailCheck:
    """One guardrail at one look: ``good_diff`` is the difference in the good direction;
    ``n_control`` / ``n_treatment`` count sessions."""

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
            f"{self.metric} {verb}: treatment {self.treatment:.4g} ({self.n_treatment} sessions) "
            f"vs control {self.control:.4g} ({self.n_control} sessions), tolerance "
            f"{self.tolerance:g}, always-valid p={self.p_value:.3g} against a degradation of "
            "the tolerance"
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
    """The mSPRT of the session-level ratio metric (delta method), shifted by the tolerance."""
    metric, tol = guardrail.metric, guardrail.tolerance
    c, t = control.metric(metric), treatment.metric(metric)
    cv, tv = c.ratio, t.ratio
    if min(c.n, t.n) < MIN_SESSIONS:
        return GuardrailCheck(
            metric,
            tol,
            cv,
            tv,
            c.n,
            t.n,
            math.nan,
            math.nan,
            False,
            f"too few sessions yet ({min(c.n, t.n)} of {MIN_SESSIONS} in each arm)",
        )
    var = c.variance + t.variance
    se = math.sqrt(var) if var > 0 else 0.0
    sign = 1.0 if HIGHER_IS_BETTER[metric] else -1.0
    good = sign * (tv - cv)
    n_eff = 1.0 / (1.0 / c.n + 1.0 / t.n)
    result = sequential_test(good + tol, se, se, n_eff, alpha, method="mSPRT (delta method)")
    if not result.ok:
        note = (
            "the metric does not vary between sessions"
            if se == 0.0
            else result.message or "no verdict"
        )
        return GuardrailCheck(metric, tol, cv, tv, c.n, t.n, good, math.nan, False, note)
    return GuardrailCheck(
        metric, tol, cv, tv, c.n, t.n, good, result.p_value, _breached(result, alpha, min(c.n, t.n))
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
    at_step: ArmStats,
    now: dt.datetime,
) -> Judgement:
    """The guard's decision for a running canary, given (control, treatment) session totals
    since the canary started and the treatment's since its current step started."""
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
    short = [g.metric for g in c.guardrails if at_step.metric(g.metric).n < c.min_step_samples]
    if short:
        return Judgement(
            None,
            f"fewer than {c.min_step_samples} treatment sessions at this step: {', '.join(short)}",
            checks,
        )
    held = "; ".join(ch.text() for ch in checks)
    return Judgement(
        "advance",
        f"step {c.step + 1} held for {ran:.0f} s: {held}",
        checks,
    )
