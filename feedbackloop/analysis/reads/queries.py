"""ClickHouse queries that turn stored events into the sufficient statistics of an experiment.

Every query here is one read-only ``SELECT`` run through :func:`feedbackloop.sinks.run_query`,
the same path as ``feedbackloop sql``: while the embedded pipeline runs, the sink worker owns
chDB and answers through its local endpoint. Results are a handful of rows per variant (the
per-session step happens inside ClickHouse), so nothing large crosses that endpoint.

Where the variant comes from. The ``interactions`` row is the assignment record: it carries
``experiment`` and ``variant`` whether the sink wrote it from the raw topic (``sink run
--raw``) or from the stream jobs' enriched topic. Feedback, implicit and outcome rows carry
the interaction's variant only when they were enriched; a raw row has ``''``. So every query
takes the variant from ``interactions`` and joins the other tables on ``interaction_id``
(session-level outcomes, which have no interaction, on ``session_id``). The results are the
same in both modes, and the same after the stream jobs start.

Counting each event once. The event tables are ReplacingMergeTree; every read uses ``FINAL``
(docs/ARCHITECTURE.md, "Exactly-once effect by event id").

Satisfaction, as used throughout: an interaction is *rated* when it received at least one
``thumbs`` or ``rating`` feedback; it is *positive* when its latest such feedback (by
``occurred_at``, then ``event_id``) is a thumbs up or a rating of 4 or 5. A user who changes
their mind counts once, with their last word. Satisfaction = positive / rated interactions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.analysis.reads import derived as derived_reads
from feedbackloop.analysis.reads.literals import quote
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.analysis.statistics.sufficient import BinaryStats, MeanStats, RatioStats
from feedbackloop.config import Settings
from feedbackloop.errors import ConfigError

__all__ = [
    "IMPLICIT_SIGNALS",
    "POSITIVE_RATING",
    "Runner",
    "MetricSpec",
    "CORE_METRICS",
    "metric_kind",
    "VariantStats",
    "ExperimentStats",
    "OutcomeDistribution",
    "VariantImpact",
    "ImpactStats",
    "SatisfactionBucket",
    "VersionBucket",
    "VersionTotals",
    "fetch_version_totals",
    "settings_runner",
    "fetch_experiment",
    "fetch_impact",
    "fetch_satisfaction_over_time",
    "fetch_versions",
    "experiment_sql",
    "impact_sql",
    "versions_sql",
    "version_totals_sql",
    "satisfaction_over_time_sql",
]

#: Ratings at or above this count as positive (a 1-5 scale: 4 and 5).
POSITIVE_RATING = 4
IMPLICIT_SIGNALS = ("copy", "edit", "follow_up", "regenerate", "abandon", "dwell")
#: Quantiles reported for latency and time to outcome.
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)

#: Runs one read-only SQL statement and returns column names and rows. A runner whose
#: attribute ``concurrent`` is true may be called from several threads at once (the report
#: reads then run independent statements side by side: derived.READ_LANES).
Runner = Callable[[str], Any]


def settings_runner(settings: Settings, url: str | None = None, max_rows: int = 100_000) -> Runner:
    """A :data:`Runner` over ``feedbackloop sql``'s read-only path (worker endpoint or direct);
    concurrent (each statement is a request of its own, or a session of its own)."""
    from feedbackloop.sinks.query import run_query

    def run(sql: str) -> Any:
        return run_query(settings, sql, url=url, max_rows=max_rows)

    run.concurrent = True  # type: ignore[attr-defined]
    return run


def _rows(runner: Runner, sql: str) -> list[dict[str, Any]]:
    res = runner(sql)
    return [dict(zip(res.columns, r, strict=True)) for r in res.rows]


def _f(v: Any) -> float:
    """A number from either path: chDB returns floats, the JSON endpoint may return None."""
    return math.nan if v is None else float(v)


def _i(v: Any) -> int:
    return 0 if v is None else int(v)


# --- the experiment report's statistics ---------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """A per-interaction metric ``sum(num) / sum(den)``, analysed with sessions as units.

    ``kind`` is ``"proportion"`` (a share, shown in percent) or ``"mean"``.
    ``higher_is_better`` is ``None`` for signals whose direction depends on the product
    (an edit may mean "useful enough to adapt" or "wrong"): a significant change is then
    reported as an increase or decrease, not as an improvement or regression.
    """

    name: str
    label: str
    kind: str
    higher_is_better: bool | None
    num: str = ""
    den: str = ""


_SIGNAL_DIRECTION: dict[str, bool | None] = {
    "copy": True,
    "edit": None,
    "follow_up": None,
    "regenerate": False,
    "abandon": False,
    "dwell": None,
}
_OUTCOME_DIRECTION: dict[str, bool | None] = {
    "code_accepted": True,
    "code_rejected": False,
    "ticket_resolved": True,
    "ticket_escalated": False,
    "original_opened": True,
    "task_completed": True,
    "task_failed": False,
    "purchase": True,
}

#: Metrics every report computes; ``num`` / ``den`` are per-session SQL sums.
CORE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("satisfaction", "satisfaction", "proportion", True, "positive", "rated"),
    MetricSpec("rating", "mean rating (1-5)", "mean", True, "rating_sum", "ratings"),
    *(
        MetricSpec(
            f"implicit.{s}",
            f"{s.replace('_', '-')} rate",
            "proportion",
            _SIGNAL_DIRECTION[s],
            f"sig_{s}",
            "n",
        )
        for s in IMPLICIT_SIGNALS
    ),
    MetricSpec("latency_ms", "latency (ms)", "mean", False, "latency_sum", "latency_n"),
    MetricSpec("cost_usd", "cost per interaction (USD)", "mean", False, "cost_sum", "cost_n"),
)


def metric_kind(name: str) -> str | None:
    """``"proportion"`` or ``"mean"`` for a metric name a report can have (``None``: not a
    metric we know), so an MDE can be checked against it before any data is read."""
    if name.startswith("outcome."):
        return "proportion"
    return next((m.kind for m in CORE_METRICS if m.name == name), None)


def outcome_metric(outcome: str, level: str) -> MetricSpec:
    """The rate of one business outcome: per interaction, or per session when the outcome is
    recorded for the session as a whole (no ``interaction_id``)."""
    suffix = "" if level == "interaction" else " (per session)"
    name = f"outcome.{outcome}" + ("" if level == "interaction" else ".session")
    return MetricSpec(
        name, f"{outcome} rate{suffix}", "proportion", _OUTCOME_DIRECTION.get(outcome)
    )


@dataclass(frozen=True)
class VariantStats:
    """Everything the report needs about one variant.

    ``rated`` counts interactions (rated, positive) for the Wilson interval; ``metrics`` are
    session-level :class:`RatioStats`, the input of every test (the session is the unit of
    randomisation). ``latency_quantiles`` are over interactions, at :data:`QUANTILES`.
    """

    variant: str
    sessions: int
    interactions: int
    rated: BinaryStats
    metrics: dict[str, RatioStats]
    latency_quantiles: tuple[float, ...] = ()
    cost_total: float = 0.0


@dataclass(frozen=True)
class ExperimentStats:
    """Per-variant statistics of one experiment, as read from ClickHouse.

    ``cross_variant_sessions`` counts sessions seen in more than one variant: with sticky
    assignment it is 0; anything else is a broken assignment (and feeds the SRM story).
    """

    scope: Scope
    variants: dict[str, VariantStats]
    metrics: tuple[MetricSpec, ...]
    cross_variant_sessions: int = 0
    quantiles: tuple[float, ...] = QUANTILES
    #: Metrics cover only the first ``horizon`` sessions per variant (a fixed-horizon
    #: design's planned size); session counts always cover every session.
    horizon: int | None = None


def _units_cte(scope: Scope, extra: str = "", horizon: int | None = None) -> str:
    where = scope.interaction_filter()
    if horizon is not None:
        # A fixed-horizon test is evaluated once, on the first N sessions of each variant
        # (by their first interaction); later sessions cannot change its verdict.
        where += (
            " AND session_id IN (SELECT session_id FROM (SELECT variant, session_id,"
            " min(occurred_at) AS first_at FROM interactions FINAL"
            f" WHERE {scope.interaction_filter()} GROUP BY variant, session_id"
            f" ORDER BY first_at, session_id LIMIT {int(horizon)} BY variant))"
        )
    return (
        "units AS (SELECT interaction_id, session_id, variant, prompt_version, occurred_at,"
        f" latency_ms, cost_usd{extra} FROM interactions FINAL"
        f" WHERE {where})"
    )


def _feedback_cte(scope: Scope) -> str:
    # Latest explicit signal per interaction decides "positive"; tuples break ties by event id
    # so the answer does not depend on merge order.
    return f"""fb AS (
    SELECT interaction_id, 1 AS rated,
           argMax(if(kind = 'thumbs', thumbs = 1, ifNull(rating, 0) >= {POSITIVE_RATING}),
                  (occurred_at, event_id)) AS positive,
           countIf(kind = 'rating') > 0 AS has_rating,
           argMaxIf(ifNull(rating, 0), (occurred_at, event_id), kind = 'rating') AS last_rating
    FROM feedback FINAL
    WHERE kind IN ('thumbs', 'rating') AND {scope.event_filter()}
    GROUP BY interaction_id)"""


def _implicit_cte(scope: Scope) -> str:
    flags = ", ".join(f"max(signal = {quote(s)}) AS sig_{s}" for s in IMPLICIT_SIGNALS)
    return f"""imp AS (
    SELECT interaction_id, {flags}
    FROM implicit FINAL
    WHERE {scope.event_filter()}
    GROUP BY interaction_id)"""


def experiment_sql(scope: Scope, horizon: int | None = None) -> dict[str, str]:
    """The statements :func:`fetch_experiment` runs, by name (for docs and debugging).

    ``horizon``: the metrics and outcomes read the first ``horizon`` sessions per variant
    only; the assignment counts (SRM, "n of N") read every session.
    """
    sig_sums = ", ".join(f"sum(toUInt64(imp.sig_{s})) AS sig_{s}" for s in IMPLICIT_SIGNALS)
    per_session = f"""per_session AS (
    SELECT u.variant AS variant, u.session_id AS session_id, count() AS n,
           sum(toUInt64(fb.rated)) AS rated, sum(toUInt64(fb.positive)) AS positive,
           sum(toUInt64(fb.has_rating)) AS ratings,
           sum(if(fb.has_rating, toFloat64(fb.last_rating), 0)) AS rating_sum,
           count(u.latency_ms) AS latency_n, sum(ifNull(u.latency_ms, 0)) AS latency_sum,
           count(u.cost_usd) AS cost_n, sum(ifNull(u.cost_usd, 0)) AS cost_sum,
           {sig_sums}
    FROM units AS u
    LEFT JOIN fb ON u.interaction_id = fb.interaction_id
    LEFT JOIN imp ON u.interaction_id = imp.interaction_id
    GROUP BY variant, session_id)"""
    pairs: dict[str, tuple[str, str]] = {m.name: (m.num, m.den) for m in CORE_METRICS}
    cols = []
    for name, (num, den) in pairs.items():
        key = name.replace(".", "_")
        y, d = f"toFloat64({num})", f"toFloat64({den})"
        cols.append(
            f"sum({y}) AS {key}__y, sum({d}) AS {key}__d, sum({y} * {y}) AS {key}__yy, "
            f"sum({d} * {d}) AS {key}__dd, sum({y} * {d}) AS {key}__yd"
        )
    metrics = f"""WITH {_units_cte(scope, horizon=horizon)},
{_feedback_cte(scope)},
{_implicit_cte(scope)},
{per_session}
SELECT variant, count() AS sessions, sum(n) AS interactions_total,
       sum(rated) AS rated_total, sum(positive) AS positive_total,
       sum(toFloat64(n) * toFloat64(n)) AS n_sq,
       {", ".join(cols)}
FROM per_session GROUP BY variant ORDER BY variant"""

    qs = ", ".join(str(q) for q in QUANTILES)
    assignment = f"""WITH {_units_cte(scope)}
SELECT variant, uniqExact(session_id) AS sessions, count() AS interactions,
       quantilesExactInclusiveIf({qs})(latency_ms, latency_ms IS NOT NULL) AS latency_q,
       sum(ifNull(cost_usd, 0)) AS cost_total,
       (SELECT count() FROM (SELECT session_id FROM units GROUP BY session_id
                             HAVING uniqExact(variant) > 1)) AS cross_variant
FROM units GROUP BY variant ORDER BY variant"""

    # Outcomes tied to an interaction count per interaction (Y_i = interactions of session i
    # with the outcome); outcomes of a whole session count per session (Y_i in {0, 1}).
    outcomes = f"""WITH {_units_cte(scope, horizon=horizon)},
sess AS (SELECT variant, session_id, count() AS n FROM units GROUP BY variant, session_id),
oi AS (
    SELECT u.variant AS variant, u.session_id AS session_id, o.outcome AS outcome,
           uniqExact(o.iid) AS y
    FROM (SELECT assumeNotNull(interaction_id) AS iid, outcome FROM outcomes FINAL
          WHERE interaction_id IS NOT NULL AND {scope.event_filter()}) AS o
    INNER JOIN units AS u ON o.iid = u.interaction_id
    GROUP BY variant, session_id, outcome),
os AS (
    SELECT s.variant AS variant, s.session_id AS session_id, o.outcome AS outcome
    FROM (SELECT DISTINCT session_id, outcome FROM outcomes FINAL
          WHERE interaction_id IS NULL AND {scope.event_filter()}) AS o
    INNER JOIN sess AS s ON o.session_id = s.session_id)
SELECT * FROM (
    SELECT 'interaction' AS level, oi.variant AS variant, oi.outcome AS outcome,
           sum(toFloat64(oi.y)) AS y, sum(toFloat64(oi.y) * oi.y) AS yy,
           sum(toFloat64(oi.y) * s.n) AS yd
    FROM oi INNER JOIN sess AS s ON oi.variant = s.variant AND oi.session_id = s.session_id
    GROUP BY variant, outcome
    UNION ALL
    SELECT 'session' AS level, variant, outcome, toFloat64(count()) AS y,
           toFloat64(count()) AS yy, toFloat64(count()) AS yd
    FROM os GROUP BY variant, outcome)
ORDER BY level, outcome, variant"""
    return {"metrics": metrics, "assignment": assignment, "outcomes": outcomes}


def _ratio(row: dict[str, Any], key: str, n: int) -> RatioStats:
    return RatioStats(
        n=n,
        sum_num=_f(row[f"{key}__y"]),
        sum_den=_f(row[f"{key}__d"]),
        sum_num_sq=_f(row[f"{key}__yy"]),
        sum_den_sq=_f(row[f"{key}__dd"]),
        sum_num_den=_f(row[f"{key}__yd"]),
    )


def fetch_experiment(
    runner: Runner, scope: Scope, horizon: int | None = None, *, exact: bool = False
) -> ExperimentStats:
    """Read one experiment's per-variant sufficient statistics (three small queries).

    ``horizon`` (a fixed-horizon design's planned sessions per variant): the metrics cover
    the first ``horizon`` sessions of each variant, the session counts all of them.
    Without a horizon the statistics come from the per-session report rows when they can
    answer ``scope`` (:mod:`.derived`); with one, or with ``exact``, from re-joining every
    event.

    Metrics whose numerator is zero in every variant (a signal the app never sends) are
    left out rather than reported as a vacuous 0% vs 0%.
    """
    if horizon is not None and (isinstance(horizon, bool) or int(horizon) < 1):
        raise ConfigError(f"horizon must be a positive number of sessions, got {horizon!r}")
    derived = None
    if not exact and horizon is None:
        derived = derived_reads.experiment_rows(runner, scope, QUANTILES)
    if derived is not None:
        metric_rows, assign_rows, outcome_rows = derived
    else:
        sql = experiment_sql(scope, horizon)
        metric_rows = {r["variant"]: r for r in _rows(runner, sql["metrics"])}
        assign_rows = {r["variant"]: r for r in _rows(runner, sql["assignment"])}
        outcome_rows = _rows(runner, sql["outcomes"])

    specs: list[MetricSpec] = []
    for m in CORE_METRICS:
        key = m.name.replace(".", "_")
        if m.name == "satisfaction" or any(_f(r[f"{key}__y"]) for r in metric_rows.values()):
            specs.append(m)
    outcome_keys = sorted({(r["level"], r["outcome"]) for r in outcome_rows})
    specs += [outcome_metric(o, level) for level, o in outcome_keys]

    cross = max((_i(r["cross_variant"]) for r in assign_rows.values()), default=0)
    variants: dict[str, VariantStats] = {}
    for name, row in metric_rows.items():
        sessions = _i(row["sessions"])
        metrics = {
            m.name: _ratio(row, m.name.replace(".", "_"), sessions)
            for m in CORE_METRICS
            if m in specs
        }
        n_sum, n_sq = _f(row["interactions_total"]), _f(row["n_sq"])
        for level, outcome in outcome_keys:
            hit = next(
                (
                    r
                    for r in outcome_rows
                    if r["level"] == level and r["outcome"] == outcome and r["variant"] == name
                ),
                None,
            )
            y, yy, yd = (_f(hit["y"]), _f(hit["yy"]), _f(hit["yd"])) if hit else (0.0, 0.0, 0.0)
            spec = outcome_metric(outcome, level)
            if level == "interaction":
                metrics[spec.name] = RatioStats(sessions, y, n_sum, yy, n_sq, yd)
            else:
                s = float(sessions)
                metrics[spec.name] = RatioStats(sessions, y, s, yy, s, yd)
        a = assign_rows.get(name, {})
        q = a.get("latency_q") or []
        variants[name] = VariantStats(
            variant=name,
            sessions=_i(a.get("sessions", sessions)),
            interactions=_i(a.get("interactions", row["interactions_total"])),
            rated=BinaryStats(n=_i(row["rated_total"]), successes=_i(row["positive_total"])),
            metrics=metrics,
            latency_quantiles=tuple(_f(v) for v in q),
            cost_total=_f(a.get("cost_total", 0.0)),
        )
    return ExperimentStats(scope, variants, tuple(specs), cross, horizon=horizon)


# --- satisfaction over time ----------------------------------------------------------------


@dataclass(frozen=True)
class SatisfactionBucket:
    """Satisfaction of one variant among the interactions served in one time bucket.

    ``start_s`` is the bucket's start (Unix seconds, UTC; buckets are aligned to multiples of
    their width). ``satisfaction`` counts the bucket's rated and positive interactions;
    ``cumulative`` adds every earlier bucket of the same variant: the estimate one would have
    read at the end of this bucket.
    """

    variant: str
    start_s: int
    satisfaction: BinaryStats
    cumulative: BinaryStats


def satisfaction_over_time_sql(scope: Scope, bucket_seconds: int) -> str:
    """The statement :func:`fetch_satisfaction_over_time` runs."""
    if (
        isinstance(bucket_seconds, bool)
        or not isinstance(bucket_seconds, int)
        or bucket_seconds <= 0
    ):
        raise ConfigError(
            f"bucket width must be a positive number of seconds, got {bucket_seconds!r}"
        )
    # Bucketed by when the interaction was served, not when it was rated: a late vote
    # belongs to the traffic it judges. Only rated interactions contribute (INNER JOIN).
    return f"""WITH {_units_cte(scope)},
{_feedback_cte(scope)}
SELECT u.variant AS variant,
       toUnixTimestamp(toStartOfInterval(u.occurred_at, INTERVAL {bucket_seconds} SECOND)) AS t,
       sum(toUInt64(fb.rated)) AS rated, sum(toUInt64(fb.positive)) AS positive
FROM units AS u INNER JOIN fb ON u.interaction_id = fb.interaction_id
GROUP BY variant, t ORDER BY variant, t"""


def fetch_satisfaction_over_time(
    runner: Runner, scope: Scope, bucket_seconds: int, *, exact: bool = False
) -> dict[str, list[SatisfactionBucket]]:
    """Per-variant satisfaction in buckets of ``bucket_seconds``, oldest bucket first.

    Satisfaction is the experiment report's (module docstring: latest thumbs or rating per
    interaction, positive / rated), so the last cumulative bucket of a variant equals the
    report's ``rated`` for it. Buckets without a rated interaction are absent. Variants are
    keyed by name in sorted order.
    """
    sql = satisfaction_over_time_sql(scope, bucket_seconds)
    found = None if exact else derived_reads.satisfaction_rows(runner, scope, bucket_seconds)
    rows = sorted(
        (str(r["variant"]), _i(r["t"]), _i(r["rated"]), _i(r["positive"]))
        for r in (found if found is not None else _rows(runner, sql))
    )
    out: dict[str, list[SatisfactionBucket]] = {}
    for name, start, rated, positive in rows:
        series = out.setdefault(name, [])
        bucket = BinaryStats(n=rated, successes=positive)
        before = series[-1].cumulative if series else BinaryStats(0, 0)
        series.append(SatisfactionBucket(name, start, bucket, before + bucket))
    return out


# --- business impact ------------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeDistribution:
    """One outcome in one variant: how often, and how long it took to happen."""

    outcome: str
    events: int
    interactions_with: int
    sessions_with: int
    value_sum: float
    time_to_outcome: MeanStats
    time_quantiles: tuple[float, ...]


@dataclass(frozen=True)
class VariantImpact:
    """Business outcomes of one variant.

    * ``code_accepted``: interactions whose code was accepted and not later rejected, out of
      interactions with any code outcome (``code_accepted`` / ``code_rejected``);
    * ``resolved_without_escalation``: sessions with ``ticket_resolved`` and no
      ``ticket_escalated``, out of sessions with either;
    * ``original_opened``: interactions with ``original_opened``, out of all interactions;
    * ``session_time``: per session, the sum of ``time_to_outcome_ms`` over its timed
      outcomes (only sessions that have one), as :class:`MeanStats` over sessions.
    """

    variant: str
    sessions: int
    interactions: int
    code_accepted: BinaryStats
    resolved_without_escalation: BinaryStats
    original_opened: BinaryStats
    session_time: MeanStats
    outcomes: dict[str, OutcomeDistribution] = field(default_factory=dict)


@dataclass(frozen=True)
class ImpactStats:
    scope: Scope
    variants: dict[str, VariantImpact]
    time_outcomes: tuple[str, ...] | None
    quantiles: tuple[float, ...] = QUANTILES


def _attributed_cte(scope: Scope) -> str:
    # Each outcome event belongs to a (variant, session): through its interaction when it has
    # one, else through its session.
    return f"""sess AS (SELECT variant, session_id, count() AS n FROM units
         GROUP BY variant, session_id),
ev AS (SELECT event_id, outcome, interaction_id, session_id, value, time_to_outcome_ms
       FROM outcomes FINAL
       WHERE {scope.event_filter()}),
attributed AS (
    SELECT * FROM (
        SELECT u.variant AS variant, u.session_id AS session_id, e.event_id AS event_id,
               e.outcome AS outcome, toNullable(u.interaction_id) AS interaction_id,
               e.value AS value, e.time_to_outcome_ms AS ttm
        FROM ev AS e INNER JOIN units AS u ON assumeNotNull(e.interaction_id) = u.interaction_id
        WHERE e.interaction_id IS NOT NULL
        UNION ALL
        SELECT s.variant AS variant, s.session_id AS session_id, e.event_id AS event_id,
               e.outcome AS outcome, CAST(NULL, 'Nullable(UUID)') AS interaction_id,
               e.value AS value, e.time_to_outcome_ms AS ttm
        FROM ev AS e INNER JOIN sess AS s ON e.session_id = s.session_id
        WHERE e.interaction_id IS NULL))"""


def impact_sql(scope: Scope, time_outcomes: Sequence[str] | None = None) -> dict[str, str]:
    """The statements :func:`fetch_impact` runs, by name."""
    qs = ", ".join(str(q) for q in QUANTILES)
    head = f"WITH {_units_cte(scope)},\n{_attributed_cte(scope)}"
    per_outcome = f"""{head}
SELECT variant, outcome, count() AS events,
       uniqExactIf(interaction_id, interaction_id IS NOT NULL) AS interactions_with,
       uniqExact(session_id) AS sessions_with, sum(ifNull(value, 0)) AS value_sum,
       count(ttm) AS t_n, sum(ifNull(ttm, 0)) AS t_sum,
       sum(ifNull(ttm, 0) * ifNull(ttm, 0)) AS t_sq,
       quantilesExactInclusiveIf({qs})(ttm, ttm IS NOT NULL) AS t_q
FROM attributed GROUP BY variant, outcome ORDER BY variant, outcome"""
    timed = "ttm IS NOT NULL"
    if time_outcomes:
        timed += f" AND outcome IN ({', '.join(quote(o) for o in time_outcomes)})"
    headline = f"""{head},
per_interaction AS (
    SELECT variant, interaction_id, max(outcome = 'code_accepted') AS acc,
           max(outcome = 'code_rejected') AS rej, max(outcome = 'original_opened') AS opened
    FROM attributed WHERE interaction_id IS NOT NULL GROUP BY variant, interaction_id),
per_session AS (
    SELECT variant, session_id, max(outcome = 'ticket_resolved') AS resolved,
           max(outcome = 'ticket_escalated') AS escalated,
           sumIf(ifNull(ttm, 0), {timed}) AS t, countIf({timed}) > 0 AS timed
    FROM attributed GROUP BY variant, session_id),
code AS (SELECT variant, countIf(acc OR rej) AS code_n, countIf(acc AND NOT rej) AS code_ok,
                countIf(opened) AS opened FROM per_interaction GROUP BY variant),
tickets AS (SELECT variant, countIf(resolved OR escalated) AS ticket_n,
                   countIf(resolved AND NOT escalated) AS ticket_ok,
                   countIf(timed) AS st_n, sumIf(t, timed) AS st_sum, sumIf(t * t, timed) AS st_sq
            FROM per_session GROUP BY variant)
SELECT s.variant AS variant, count() AS sessions, sum(s.n) AS interactions,
       any(c.code_n) AS code_n, any(c.code_ok) AS code_ok, any(c.opened) AS opened,
       any(k.ticket_n) AS ticket_n, any(k.ticket_ok) AS ticket_ok,
       any(k.st_n) AS st_n, any(k.st_sum) AS st_sum, any(k.st_sq) AS st_sq
FROM sess AS s
LEFT JOIN code AS c ON s.variant = c.variant
LEFT JOIN tickets AS k ON s.variant = k.variant
GROUP BY variant ORDER BY variant"""
    return {"per_outcome": per_outcome, "headline": headline}


def fetch_impact(
    runner: Runner,
    scope: Scope,
    time_outcomes: Sequence[str] | None = None,
    *,
    exact: bool = False,
) -> ImpactStats:
    """Read per-variant business outcomes; ``time_outcomes`` limits which outcomes' times
    make up a session's time (default: every outcome with a ``time_to_outcome_ms``)."""
    found = None
    if not exact and not time_outcomes:
        found = derived_reads.impact_rows(runner, scope, QUANTILES)
    if found is None:
        sql = impact_sql(scope, time_outcomes)
        found = (_rows(runner, sql["per_outcome"]), _rows(runner, sql["headline"]))
    per_outcome: dict[str, dict[str, OutcomeDistribution]] = {}
    for r in found[0]:
        per_outcome.setdefault(r["variant"], {})[r["outcome"]] = OutcomeDistribution(
            outcome=r["outcome"],
            events=_i(r["events"]),
            interactions_with=_i(r["interactions_with"]),
            sessions_with=_i(r["sessions_with"]),
            value_sum=_f(r["value_sum"]),
            time_to_outcome=MeanStats(_i(r["t_n"]), _f(r["t_sum"]), _f(r["t_sq"])),
            time_quantiles=tuple(_f(v) for v in (r["t_q"] or [])),
        )
    variants: dict[str, VariantImpact] = {}
    for r in found[1]:
        name = r["variant"]
        variants[name] = VariantImpact(
            variant=name,
            sessions=_i(r["sessions"]),
            interactions=_i(r["interactions"]),
            code_accepted=BinaryStats(_i(r["code_n"]), _i(r["code_ok"])),
            resolved_without_escalation=BinaryStats(_i(r["ticket_n"]), _i(r["ticket_ok"])),
            original_opened=BinaryStats(_i(r["interactions"]), _i(r["opened"])),
            session_time=MeanStats(_i(r["st_n"]), _f(r["st_sum"]), _f(r["st_sq"])),
            outcomes=per_outcome.get(name, {}),
        )
    return ImpactStats(scope, variants, tuple(time_outcomes) if time_outcomes else None)


# --- satisfaction over release cycles -------------------------------------------------------


@dataclass(frozen=True)
class VersionBucket:
    """Satisfaction of one prompt version in one time bucket (``bucket`` is ISO date)."""

    prompt_version: str
    bucket: str
    interactions: int
    sessions: int
    satisfaction: BinaryStats
    first_seen: str


def versions_sql(scope: Scope, bucket: str = "day") -> str:
    if bucket not in ("day", "week"):
        raise ConfigError(f"bucket must be 'day' or 'week', got {bucket!r}")
    # Weeks start on Monday (mode 1), the ISO convention.
    start = "toDate(occurred_at)" if bucket == "day" else "toMonday(occurred_at)"
    return f"""WITH {_units_cte(scope)},
{_feedback_cte(scope)}
SELECT u.prompt_version AS prompt_version, toString({start.replace("occurred_at", "u.occurred_at")})
         AS bucket,
       count() AS interactions, uniqExact(u.session_id) AS sessions,
       sum(toUInt64(fb.rated)) AS rated, sum(toUInt64(fb.positive)) AS positive,
       toString(min(min(u.occurred_at)) OVER (PARTITION BY u.prompt_version)) AS first_seen
FROM units AS u LEFT JOIN fb ON u.interaction_id = fb.interaction_id
GROUP BY prompt_version, bucket
ORDER BY first_seen, prompt_version, bucket"""


def fetch_versions(
    runner: Runner, scope: Scope, bucket: str = "day", *, exact: bool = False
) -> list[VersionBucket]:
    """Satisfaction per ``prompt_version`` and day (or week), oldest version first."""
    return [
        VersionBucket(
            prompt_version=r["prompt_version"],
            bucket=str(r["bucket"]),
            interactions=_i(r["interactions"]),
            sessions=_i(r["sessions"]),
            satisfaction=BinaryStats(_i(r["rated"]), _i(r["positive"])),
            first_seen=str(r["first_seen"]),
        )
        for r in _version_rows(runner, scope, bucket, exact)
    ]


def _version_rows(runner: Runner, scope: Scope, bucket: str, exact: bool) -> list[dict[str, Any]]:
    sql = versions_sql(scope, bucket)
    found = None if exact else derived_reads.version_rows(runner, scope, bucket)
    return found if found is not None else _rows(runner, sql)


@dataclass(frozen=True)
class VersionTotals:
    """One prompt version over the whole period: session-level satisfaction for tests."""

    prompt_version: str
    first_seen: str
    last_seen: str
    interactions: int
    satisfaction: BinaryStats
    sessions: RatioStats


def version_totals_sql(scope: Scope) -> str:
    return f"""WITH {_units_cte(scope)},
{_feedback_cte(scope)},
per_session AS (
    SELECT u.prompt_version AS prompt_version, u.session_id AS session_id, count() AS n,
           toFloat64(sum(toUInt64(fb.rated))) AS d, toFloat64(sum(toUInt64(fb.positive))) AS y,
           min(u.occurred_at) AS t0, max(u.occurred_at) AS t1
    FROM units AS u LEFT JOIN fb ON u.interaction_id = fb.interaction_id
    GROUP BY prompt_version, session_id)
SELECT prompt_version, toString(min(t0)) AS first_seen, toString(max(t1)) AS last_seen,
       sum(n) AS interactions, count() AS sessions, sum(y) AS s_y, sum(d) AS s_d,
       sum(y * y) AS s_yy, sum(d * d) AS s_dd, sum(y * d) AS s_yd
FROM per_session GROUP BY prompt_version ORDER BY first_seen, prompt_version"""


def fetch_version_totals(
    runner: Runner, scope: Scope, *, exact: bool = False
) -> list[VersionTotals]:
    """Per ``prompt_version`` totals, oldest first (a session using two versions is a unit
    of each)."""
    return [
        VersionTotals(
            prompt_version=r["prompt_version"],
            first_seen=str(r["first_seen"]),
            last_seen=str(r["last_seen"]),
            interactions=_i(r["interactions"]),
            satisfaction=BinaryStats(int(_f(r["s_d"])), int(_f(r["s_y"]))),
            sessions=RatioStats(
                _i(r["sessions"]),
                _f(r["s_y"]),
                _f(r["s_d"]),
                _f(r["s_yy"]),
                _f(r["s_dd"]),
                _f(r["s_yd"]),
            ),
        )
        for r in _version_total_rows(runner, scope, exact)
    ]


def _version_total_rows(runner: Runner, scope: Scope, exact: bool) -> list[dict[str, Any]]:
    found = None if exact else derived_reads.version_total_rows(runner, scope)
    return found if found is not None else _rows(runner, version_totals_sql(scope))
