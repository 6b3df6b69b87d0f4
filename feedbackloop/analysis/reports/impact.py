"""Business impact of an experiment: outcome rates, time to outcome, time saved per session.

Pure assembly over :class:`~feedbackloop.analysis.reads.queries.ImpactStats` (what
:func:`~feedbackloop.analysis.reads.queries.fetch_impact` reads from ClickHouse). The headline
rates are defined in :class:`~feedbackloop.analysis.reads.queries.VariantImpact`.

Time saved per session is ``mean(control) - mean(treatment)`` of the per-session time to
outcome, with a Welch interval: sessions are independent units (assignment is per session),
so a two-sample test over per-session totals needs no clustering correction. Positive means
treatment sessions reach their outcomes faster. Only sessions with at least one timed outcome
contribute; if the treatment changes *which* sessions reach an outcome, compare the outcome
rates too before reading the time difference as a saving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from feedbackloop.analysis.reads.queries import ImpactStats
from feedbackloop.analysis.reports.plaintext import estimate, number, table
from feedbackloop.analysis.reports.report import pick_control
from feedbackloop.analysis.statistics.means import welch_ttest
from feedbackloop.analysis.statistics.proportions import newcombe_interval, wilson_interval
from feedbackloop.analysis.statistics.results import Estimate, TestResult, to_jsonable
from feedbackloop.analysis.statistics.sufficient import BinaryStats
from feedbackloop.errors import ConfigError

__all__ = [
    "HEADLINE_RATES",
    "RateRow",
    "OutcomeRow",
    "TimeSaved",
    "VariantImpactRow",
    "ImpactReport",
    "build_impact",
    "format_impact",
]

#: (field of VariantImpact, label) of the rates every impact report leads with.
HEADLINE_RATES: tuple[tuple[str, str], ...] = (
    ("code_accepted", "code accepted (kept)"),
    ("resolved_without_escalation", "resolved without escalation"),
    ("original_opened", "original opened"),
)


@dataclass(frozen=True)
class RateRow:
    """A rate with its Wilson interval and (for treatments) the Newcombe difference."""

    name: str
    successes: int
    n: int
    rate: Estimate
    difference: Estimate | None


@dataclass(frozen=True)
class OutcomeRow:
    """One outcome in one variant; ``time_quantiles`` maps ``p50`` etc. to milliseconds."""

    outcome: str
    events: int
    interactions_with: int
    interaction_rate: float
    sessions_with: int
    session_rate: float
    value_sum: float
    time_n: int
    time_mean_ms: float
    time_quantiles: dict[str, float]


@dataclass(frozen=True)
class TimeSaved:
    """Per-session time saved vs control (ms): ``control mean - treatment mean``."""

    sessions_control: int
    sessions_treatment: int
    saved_ms: Estimate
    test: TestResult


@dataclass(frozen=True)
class VariantImpactRow:
    variant: str
    sessions: int
    interactions: int
    rates: list[RateRow]
    outcomes: list[OutcomeRow]
    sessions_timed: int
    time_per_session_ms: float
    time_saved: TimeSaved | None


@dataclass(frozen=True)
class ImpactReport:
    experiment: str | None
    since: str | None
    alpha: float
    control: str
    time_outcomes: list[str] | None
    variants: list[VariantImpactRow]

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable(self)
        assert isinstance(out, dict)
        return out

    def to_text(self) -> str:
        return format_impact(self)


def _time_saved(c: Any, t: Any, alpha: float) -> TimeSaved:
    comp = welch_ttest(c, t, alpha)
    d = comp.difference
    # welch_ttest reports treatment - control; a saving is the opposite sign.
    saved = d if not d.ok else replace(d, value=-d.value, lower=-d.upper, upper=-d.lower)
    return TimeSaved(c.n, t.n, saved, comp.test)


def build_impact(
    data: ImpactStats, *, control: str | None = None, alpha: float = 0.05
) -> ImpactReport:
    """Assemble the impact report; ``control`` defaults as in the experiment report."""
    if not data.variants:
        raise ConfigError(f"no interactions found for experiment {data.scope.experiment!r}")
    names = list(data.variants)
    ctl = pick_control(names, control)
    names = [ctl] + [n for n in names if n != ctl]
    c = data.variants[ctl]
    # An outcome no variant ever had (one the app does not send) gets no row: "0/10,584 =
    # 0.0% [0.0%, 0.0%]" in every variant reads as a measurement, and it is none.
    headline = [
        (attr, label)
        for attr, label in HEADLINE_RATES
        if any(getattr(data.variants[n], attr).successes for n in names)
    ]
    rows = []
    for name in names:
        v = data.variants[name]
        rates = []
        for attr, label in headline:
            b: BinaryStats = getattr(v, attr)
            diff = None if name == ctl else newcombe_interval(getattr(c, attr), b, alpha)
            rates.append(RateRow(label, b.successes, b.n, wilson_interval(b, alpha), diff))
        outcomes = [
            OutcomeRow(
                outcome=o.outcome,
                events=o.events,
                interactions_with=o.interactions_with,
                interaction_rate=o.interactions_with / v.interactions
                if v.interactions
                else math.nan,
                sessions_with=o.sessions_with,
                session_rate=o.sessions_with / v.sessions if v.sessions else math.nan,
                value_sum=o.value_sum,
                time_n=o.time_to_outcome.n,
                time_mean_ms=o.time_to_outcome.mean,
                time_quantiles={
                    f"p{round(q * 100):g}": x
                    for q, x in zip(data.quantiles, o.time_quantiles, strict=False)
                },
            )
            for o in sorted(v.outcomes.values(), key=lambda o: o.outcome)
        ]
        rows.append(
            VariantImpactRow(
                variant=name,
                sessions=v.sessions,
                interactions=v.interactions,
                rates=rates,
                outcomes=outcomes,
                sessions_timed=v.session_time.n,
                time_per_session_ms=v.session_time.mean,
                time_saved=None
                if name == ctl
                else _time_saved(c.session_time, v.session_time, alpha),
            )
        )
    return ImpactReport(
        experiment=data.scope.experiment,
        since=data.scope.since.isoformat() if data.scope.since else None,
        alpha=alpha,
        control=ctl,
        time_outcomes=list(data.time_outcomes) if data.time_outcomes else None,
        variants=rows,
    )


def _ms(x: float, signed: bool = False) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+,.0f}" if signed else f"{x:,.0f}"


def format_impact(r: ImpactReport) -> str:
    level = f"{1 - r.alpha:.0%}"
    title = f"Business impact of experiment {r.experiment!r}" if r.experiment else "Impact"
    out = [title + (f" since {r.since}" if r.since else "") + f"; control: {r.control}", ""]

    out.append(f"Outcome rates ({level} Wilson; difference vs {r.control}, Newcombe)")
    rows = []
    for v in r.variants:
        for rate in v.rates:
            e = rate.rate
            cell = f"{rate.successes:,}/{rate.n:,} = {number(e.value)}" + (
                f" [{number(e.lower)}, {number(e.upper)}]" if e.ok else ""
            )
            d = rate.difference
            diff = "" if d is None else estimate(d, signed=True)
            rows.append([v.variant, rate.name, cell, diff])
    out += table(["variant", "rate", "value", "difference"], rows)
    out.append("")

    out.append("Outcomes and time to outcome (ms)")
    rows = []
    for v in r.variants:
        for o in v.outcomes:
            q = o.time_quantiles
            rows.append(
                [
                    # Session-level outcomes have no interaction to be a share of.
                    v.variant,
                    o.outcome,
                    f"{o.events:,}",
                    number(o.interaction_rate) if o.interactions_with else "-",
                    number(o.session_rate),
                    _ms(o.time_mean_ms),
                    " / ".join(
                        _ms(q.get(k, math.nan)) for k in ("p10", "p25", "p50", "p75", "p90")
                    ),
                ]
            )
    out += table(
        [
            "variant",
            "outcome",
            "events",
            "of interactions",
            "of sessions",
            "mean",
            "p10 / p25 / p50 / p75 / p90",
        ],
        rows,
    )
    out.append("")

    which = ", ".join(r.time_outcomes) if r.time_outcomes else "all timed outcomes"
    out.append(f"Time per session ({which}; sessions with a timed outcome)")
    rows = []
    for v in r.variants:
        ts = v.time_saved
        saved = (
            ""
            if ts is None
            else (
                f"{_ms(ts.saved_ms.value, True)} [{_ms(ts.saved_ms.lower, True)}, "
                f"{_ms(ts.saved_ms.upper, True)}]"
                if ts.saved_ms.ok
                else f"n/a ({ts.saved_ms.message})"
            )
        )
        p = "" if ts is None or not ts.test.ok else f"{ts.test.p_value:.4f}"
        rows.append([v.variant, f"{v.sessions_timed:,}", _ms(v.time_per_session_ms), saved, p])
    out += table(
        ["variant", "sessions", "mean ms", f"saved vs {r.control} ms ({level} CI)", "Welch p"], rows
    )
    return "\n".join(out)
