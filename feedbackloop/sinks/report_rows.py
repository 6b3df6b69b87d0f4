"""Per-session report rows: what the experiment, impact and version reports read instead of
re-joining every event (issue 15, docs/PERFORMANCE.md "Queries").

Three layers, each exact under redelivery and late events:

1. **Session state** (``report_sessions``: one row per (app, experiment, variant, session);
   ``report_version_sessions``: one per (app, experiment, prompt version, session)). A row
   is the exact answer of the report queries (:mod:`feedbackloop.analysis.reads.queries`)
   for that one session: its interactions deduplicated the way ``FINAL`` does, the latest
   thumbs or rating per interaction, implicit flags, attributed outcomes. It is recomputed
   from the event tables only for sessions *touched* by events inserted since the last
   compaction (their ``inserted_at``), so the cost grows with what changed.
2. **Collapsing**: a recomputed session is written as its old row with ``sign = -1`` and its
   new row with ``sign = +1`` in one insert (VersionedCollapsingMergeTree, the version
   ``computed_at``: :data:`STATE_ENGINE`). Nothing is updated in place; every sum over
   ``sign * x`` is the sum over current rows, and a session's current row is its
   ``(key, computed_at)`` group whose signs do not sum to zero, however parts merged.
3. **Totals**: materialized views turn every inserted state row into ``sign``-weighted
   sums per variant / outcome / latency value / second / prompt version, in
   AggregatingMergeTree tables of sums. A report reads a handful of rows whatever the
   traffic: the per-session sums of squares the tests need are additive over sessions.

Between compactions a read adds the sessions touched since the watermark itself
(:mod:`feedbackloop.analysis.reads.derived`): the totals less those sessions' stored rows
(:func:`current_sql` with ``cancel``), plus the exact report statement restricted to them
(:func:`restricted_sql`). Both find a session's events through :data:`LOOKUPS`, copies of
the event columns they read sorted by session or interaction (the event tables are sorted
by app, slice and hour: a few hundred scattered sessions would mean scanning them).
A read uses the exact statements, not this module's state SQL: ClickHouse inlines every CTE
at each use and took 4-30 s to *plan* that statement on this machine, whatever the number
of sessions changed; the exact statements are small, and a read cannot materialize scratch
tables (it runs read-only). Quantiles read the value counts of a few buckets
(:data:`QUANTILE_BUCKETS`), not every distinct value.

What is not derived: reads with ``--since``/``until``, ``--prompt-version`` or ``--model``
(a session row cannot be split by time or by a column of its interactions), and a session
whose events straddle apps or experiments (a session id reused across apps, an event that
names another experiment than its interaction): the row counts such a session once per
(app, experiment) while the exact path joins it whole, so the reader falls back to the
exact path when a scope without both app and experiment holds one (``split``).

Values that stay exact: counts, quantiles (exact value-count histograms: the same
``quantileExactInclusive`` interpolation), minima. Sums of floats (latency, cost, time to
outcome) are the same numbers added in another order: equal to about 1e-12 relative.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from feedbackloop.sinks.input_labels import LABEL_BATCH, LABEL_PAUSE_S, label_inputs

__all__ = [
    "POSITIVE_RATING",
    "IMPLICIT_SIGNALS",
    "REPORT_ROWS_DDL",
    "STATE_ENGINE",
    "STATE_ENGINE_DDL",
    "CHECKPOINTS_DDL",
    "CHECKPOINTS_TABLE",
    "CompactionResult",
    "Compactor",
    "compact",
    "DEDUP_KEYS",
    "dedup_sql",
    "changed_rows_sql",
    "checkpoint",
    "current_sql",
    "inserts_sql",
    "cut_off_round",
    "repair_totals",
    "restricted_sql",
    "settled_sql",
    "touched_sql",
    "watermark_sql",
    "OVERLAP_MS",
]

log = logging.getLogger(__name__)

#: Ratings at or above this count as positive (a 1-5 scale: 4 and 5).
POSITIVE_RATING = 4
IMPLICIT_SIGNALS = ("copy", "edit", "follow_up", "regenerate", "abandon", "dwell")
#: Events inserted this long before the watermark are looked at again: an insert stamped
#: before the watermark but committed after the compaction read would otherwise be missed.
#: Recomputing a session is idempotent, so the overlap costs time, never correctness.
OVERLAP_MS = 5_000

_EPOCH = "toDateTime64(0, 3, 'UTC')"

# --- state rows: the per-session answer ---------------------------------------------------


#: The event tables' sorting keys (sinks/migrations.py): what ``FINAL`` deduplicates by.
DEDUP_KEYS = {
    "interactions": "app_id, prompt_version, experiment, variant, toStartOfHour(occurred_at),"
    " event_id",
    "feedback": "app_id, kind, toStartOfHour(occurred_at), event_id",
    "implicit": "app_id, signal, toStartOfHour(occurred_at), event_id",
    "outcomes": "app_id, outcome, toStartOfHour(occurred_at), event_id",
}


def dedup_sql(source: str, table: str, cols: str, where: str = "1") -> str:
    """The rows of ``source`` (event ``table``, or rows of it) matching ``where``, one per
    sorting key with the highest ``_version``: what ``FINAL`` keeps of them, without merging
    the rows that do not match (``where`` must hold for every copy of an event)."""
    return (
        f"SELECT {cols} FROM {source} WHERE {where} "
        f"ORDER BY _version DESC LIMIT 1 BY {DEDUP_KEYS[table]}"
    )


#: The columns the report statements read of each event table (a matching row would
#: otherwise pull its whole granule of prompts and responses through the deduplication).
_READ_COLUMNS = {
    "interactions": "event_id, interaction_id, session_id, app_id, experiment, variant,"
    " prompt_version, model, occurred_at, latency_ms, cost_usd, shadow",
    "feedback": "event_id, interaction_id, session_id, app_id, experiment, kind, thumbs, rating,"
    " occurred_at",
    "implicit": "event_id, interaction_id, session_id, app_id, experiment, signal, occurred_at",
    "outcomes": "event_id, interaction_id, session_id, app_id, experiment, outcome, value,"
    " time_to_outcome_ms, occurred_at",
}


#: A session-level outcome's ``unit`` in its lookup copy (its interaction id is NULL).
_NO_UNIT = "toUUID('00000000-0000-0000-0000-000000000000')"


@dataclass(frozen=True)
class _Lookup:
    """A copy of the columns the report statements read of an event table, sorted so that
    the events of given sessions (or interactions) are found by primary key instead of by
    scanning the event table, whose sorting key is by app, slice and hour. The compactor
    copies the rows inserted up to its watermark less :data:`OVERLAP_MS`; a read takes the
    rows inserted after that from the event table itself (the min-max index on
    ``inserted_at``), so the two together hold every event."""

    table: str
    source: str
    key: str
    #: Columns copied from the source, comma-separated.
    columns: str
    #: Columns computed from the source's: (name, type, expression).
    extra: tuple[tuple[str, str, str], ...] = ()

    @property
    def copied(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.columns.split(","))

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.copied, *(n for n, _, _ in self.extra))

    @property
    def select(self) -> str:
        return ", ".join((self.columns, *(f"{e} AS {n}" for n, _, e in self.extra)))

    def ddl(self) -> str:
        # Small granules: the sessions looked up are scattered, each hits about one granule.
        return (
            f"CREATE TABLE IF NOT EXISTS {{db}}.{self.table} ENGINE = MergeTree "
            f"ORDER BY ({self.key}) SETTINGS index_granularity = 256 "
            f"AS SELECT {self.select} FROM {{db}}.{self.source} WHERE 0"
        )

    def copy_sql(self, after: str, upto: str) -> str:
        """Copy the source's rows inserted in ``(after, upto]`` (``{db}`` templated)."""
        return (
            f"INSERT INTO {{db}}.{self.table} ({', '.join(self.names)}) "
            f"SELECT {self.select} FROM {{db}}.{self.source} "
            f"WHERE inserted_at > {after} AND inserted_at <= {upto}"
        )


LOOKUPS: tuple[_Lookup, ...] = (
    _Lookup(
        "report_lookup_interactions",
        "interactions",
        "session_id",
        f"{_READ_COLUMNS['interactions']}, _version",
    ),
    # Which session an interaction belongs to: late feedback names only its interaction.
    _Lookup(
        "report_lookup_units",
        "interactions",
        "interaction_id",
        "interaction_id, session_id, occurred_at",
    ),
    _Lookup(
        "report_lookup_feedback",
        "feedback",
        "interaction_id",
        f"{_READ_COLUMNS['feedback']}, _version",
    ),
    _Lookup(
        "report_lookup_implicit",
        "implicit",
        "interaction_id",
        f"{_READ_COLUMNS['implicit']}, _version",
    ),
    _Lookup(
        "report_lookup_outcomes",
        "outcomes",
        "unit, session_id",
        f"{_READ_COLUMNS['outcomes']}, _version",
        (("unit", "UUID", f"ifNull(interaction_id, {_NO_UNIT})"),),
    ),
)
_LOOKUP = {lk.source: lk for lk in LOOKUPS if lk.table != "report_lookup_units"}


def _events(table: str, cols: str, cond: str, since: str, key_cond: str | None = None) -> str:
    """The rows of event ``table`` matching ``cond``, one per sorting key with the highest
    ``_version``: what ``FINAL`` keeps, without merging the rows that do not match (FINAL
    would). Found in the table's lookup copy (``key_cond``, on its sorting key, narrows the
    search there) and among the rows inserted after ``since`` (not copied yet); a row in
    both is one row after the deduplication."""
    lk, read = _LOOKUP[table], f"{_READ_COLUMNS[table]}, _version"
    copied = f"SELECT {read} FROM {{db}}.{lk.table} WHERE ({cond})"
    if key_cond is not None:
        copied += f" AND ({key_cond})"
    fresh = f"SELECT {read} FROM {{db}}.{table} WHERE inserted_at > {since} AND ({cond})"
    return dedup_sql(f"({copied} UNION ALL {fresh})", table, cols)


def _unit_ids(sessions: str, since: str) -> str:
    """``(SELECT interaction_id …)`` of the interactions of ``sessions`` (a set expression)."""
    return (
        f"(SELECT interaction_id FROM {{db}}.report_lookup_interactions "
        f"WHERE session_id IN {sessions} UNION ALL SELECT interaction_id FROM {{db}}.interactions "
        f"WHERE inserted_at > {since} AND session_id IN {sessions})"
    )


def _outcome_key(ids: str, sessions: str) -> str:
    """The lookup copy's sorting-key condition for the outcomes of ``ids`` (interaction
    level) or of ``sessions`` (session level)."""
    return f"unit IN {ids} OR (unit = {_NO_UNIT} AND session_id IN {sessions})"


def restricted_sql(sql: str, sessions: str, since: str, materialized: bool = True) -> str:
    """An exact report statement (:mod:`feedbackloop.analysis.reads.queries`: ``WITH …``,
    reading ``<table> FINAL``) answered for the sessions ``sessions`` only (a tuple
    literal): each ``FINAL`` read becomes the rows of those sessions (events: of their
    interactions, or session-level ones of those sessions), deduplicated as ``FINAL`` does,
    found through the lookup copies plus the rows inserted after ``since`` (a DateTime64
    literal: the watermark less :data:`OVERLAP_MS` the touched sessions were read at).
    Every statement there sums over sessions, so its answer is their share of the whole.

    Those rows, the sessions' interaction ids and the sessions themselves are
    ``MATERIALIZED`` common table expressions: found once per statement, where an ordinary
    one is inlined, planned and run again at every use (the statements use ``units`` up to
    six times; a tuple of a thousand sessions took half the planning, once per use). A
    session without ``enable_materialized_cte``
    (:data:`~feedbackloop.sinks.query.READ_SETTINGS`), or ``materialized=False``, inlines
    them: the same answer, slower."""
    if not (sessions.startswith("(") and sessions.endswith(")")):
        raise ValueError("sessions must be a tuple literal")
    mat = "MATERIALIZED " if materialized else ""
    ctes = [f"_sessions AS {mat}(SELECT arrayJoin([{sessions[1:-1]}]) AS session_id)"]
    touched = "(SELECT session_id FROM _sessions)"
    ids = "(SELECT interaction_id FROM _ids)"
    where = {
        "interactions": (f"session_id IN {touched}", None),
        "feedback": (f"interaction_id IN {ids}", None),
        "implicit": (f"interaction_id IN {ids}", None),
        "outcomes": (
            f"interaction_id IN {ids} OR (interaction_id IS NULL AND session_id IN {touched})",
            _outcome_key(ids, touched),
        ),
    }
    if any(f"FROM {t} FINAL" in sql for t in ("feedback", "implicit", "outcomes")):
        ctes.append(f"_ids AS {mat}{_unit_ids(touched, since)}")
    for table, (cond, key_cond) in where.items():
        if f"FROM {table} FINAL" in sql:
            found = _events(table, _READ_COLUMNS[table], cond, since, key_cond)
            ctes.append(f"_{table} AS {mat}({found})")
            sql = sql.replace(f"FROM {table} FINAL", f"FROM _{table}")
    if " FINAL" in sql or not sql.startswith("WITH "):
        raise ValueError("not a report statement this module can restrict")
    return f"WITH {', '.join(ctes)},\n{sql.removeprefix('WITH ')}"


_MATCH = "e.experiment IN (u.experiment, '') AND e.app_id = u.app_id"


def _sources(touched: str, since: str) -> tuple[tuple[str, str], ...]:
    """The touched sessions and their deduplicated events, in dependency order (``since``,
    a DateTime64 expression: the rows inserted after it are read from the event tables, the
    lookup copies hold every row before it)."""
    ids = "(SELECT interaction_id FROM units)"
    sessions = "(SELECT session_id FROM touched)"
    units = _events(
        "interactions",
        "interaction_id, session_id, app_id, experiment, variant, prompt_version, occurred_at,"
        " latency_ms, cost_usd, shadow",
        f"session_id IN {sessions}",
        since,
    )
    fb = _events(
        "feedback",
        "event_id, occurred_at, interaction_id, kind, thumbs, rating, app_id, experiment",
        f"kind IN ('thumbs', 'rating') AND interaction_id IN {ids}",
        since,
    )
    imp = _events(
        "implicit", "interaction_id, signal, app_id, experiment", f"interaction_id IN {ids}", since
    )
    oc = _events(
        "outcomes",
        "event_id, outcome, interaction_id, session_id, value, time_to_outcome_ms, app_id,"
        " experiment",
        f"(interaction_id IS NOT NULL AND interaction_id IN {ids})"
        f" OR (interaction_id IS NULL AND session_id IN {sessions})",
        since,
        _outcome_key(ids, sessions),
    )
    return (
        ("touched", touched),
        ("units", f"SELECT * FROM ({units}) WHERE NOT shadow"),
        ("fb_e", fb),
        ("imp_e", imp),
        ("oc_e", oc),
    )


def _state_ctes(scratch: dict[str, str]) -> str:
    """CTEs shared by both state queries: the touched sessions' deduplicated events (the
    ``scratch`` tables the compaction materialized from :func:`_sources`), and per
    interaction the latest explicit feedback and the implicit flags. Each event is kept only
    where the exact path's scope filter (``experiment IN (x, '')``, the app) would keep it
    for its interaction's own app and experiment."""
    sources = ",\n".join(f"{name} AS (SELECT * FROM {table})" for name, table in scratch.items())
    flags = ", ".join(f"max(e.signal = '{s}') AS sig_{s}" for s in IMPLICIT_SIGNALS)
    return f"""{sources},
fb AS (
    SELECT e.interaction_id AS interaction_id, 1 AS rated,
           argMax(if(e.kind = 'thumbs', e.thumbs = 1, ifNull(e.rating, 0) >= {POSITIVE_RATING}),
                  (e.occurred_at, e.event_id)) AS positive,
           countIf(e.kind = 'rating') > 0 AS has_rating,
           argMaxIf(ifNull(e.rating, 0), (e.occurred_at, e.event_id), e.kind = 'rating')
               AS last_rating
    FROM fb_e AS e INNER JOIN units AS u ON e.interaction_id = u.interaction_id
    WHERE {_MATCH}
    GROUP BY interaction_id),
imp AS (
    SELECT e.interaction_id AS interaction_id, {flags}
    FROM imp_e AS e INNER JOIN units AS u ON e.interaction_id = u.interaction_id
    WHERE {_MATCH}
    GROUP BY interaction_id),
sess AS (SELECT app_id, experiment, variant, session_id, count() AS n FROM units
         GROUP BY app_id, experiment, variant, session_id),
split AS (
    SELECT session_id FROM units GROUP BY session_id
    HAVING uniqExact(app_id, experiment) > 1
    UNION DISTINCT
    SELECT u.session_id FROM (
        SELECT interaction_id, app_id, experiment FROM fb_e
        UNION ALL SELECT interaction_id, app_id, experiment FROM imp_e
        UNION ALL SELECT assumeNotNull(interaction_id), app_id, experiment FROM oc_e
                  WHERE interaction_id IS NOT NULL) AS e
    INNER JOIN units AS u ON e.interaction_id = u.interaction_id
    WHERE NOT ({_MATCH})
    UNION DISTINCT
    SELECT e.session_id FROM oc_e AS e INNER JOIN sess AS u ON e.session_id = u.session_id
    WHERE e.interaction_id IS NULL AND NOT ({_MATCH}))"""


# Columns of the two state tables, in insert order: (name, ClickHouse type).
_KEY_TYPES = {
    "app_id": "LowCardinality(String)",
    "experiment": "LowCardinality(String)",
    "variant": "LowCardinality(String)",
    "prompt_version": "LowCardinality(String)",
    "session_id": "String",
}
_SESSION_COLUMNS: tuple[tuple[str, str], ...] = (
    *((k, _KEY_TYPES[k]) for k in ("app_id", "experiment", "variant", "session_id")),
    ("sign", "Int8"),
    ("computed_at", "DateTime64(3, 'UTC')"),
    ("split", "UInt8"),
    ("cross_variant", "UInt8"),
    ("n", "UInt64"),
    ("rated", "UInt64"),
    ("positive", "UInt64"),
    ("ratings", "UInt64"),
    ("rating_sum", "UInt64"),
    ("latency_n", "UInt64"),
    ("latency_sum", "Float64"),
    ("cost_n", "UInt64"),
    ("cost_sum", "Float64"),
    *((f"sig_{s}", "UInt64") for s in IMPLICIT_SIGNALS),
    ("latency_values", "Array(Float64)"),
    ("rated_at", "Array(DateTime('UTC'))"),
    ("rated_positive", "Array(UInt8)"),
    ("po_outcome", "Array(String)"),
    ("po_events", "Array(UInt64)"),
    ("po_interactions", "Array(UInt64)"),
    ("po_session_level", "Array(UInt8)"),
    ("po_value_sum", "Array(Float64)"),
    ("po_t_n", "Array(UInt64)"),
    ("po_t_sum", "Array(Float64)"),
    ("po_t_sq", "Array(Float64)"),
    ("po_t_values", "Array(Array(Float64))"),
    ("code_n", "UInt64"),
    ("code_ok", "UInt64"),
    ("opened", "UInt64"),
    ("resolved", "UInt8"),
    ("escalated", "UInt8"),
    ("st_t", "Float64"),
    ("st_timed", "UInt8"),
)
_VERSION_COLUMNS: tuple[tuple[str, str], ...] = (
    *((k, _KEY_TYPES[k]) for k in ("app_id", "experiment", "prompt_version", "session_id")),
    ("sign", "Int8"),
    ("computed_at", "DateTime64(3, 'UTC')"),
    ("split", "UInt8"),
    ("n", "UInt64"),
    ("rated", "UInt64"),
    ("positive", "UInt64"),
    ("t0", "DateTime64(3, 'UTC')"),
    ("t1", "DateTime64(3, 'UTC')"),
    ("b_kind", "Array(String)"),
    ("b_start", "Array(Date)"),
    ("b_n", "Array(UInt64)"),
    ("b_rated", "Array(UInt64)"),
    ("b_positive", "Array(UInt64)"),
)


def _sessions_select(computed_at: str) -> str:
    """CTEs ending in ``new_rows``: one ``report_sessions`` row per (app, experiment,
    variant, session) of ``units``, as the exact queries would aggregate that session."""
    sigs = ", ".join(f"sum(toUInt64(imp.sig_{s})) AS sig_{s}" for s in IMPLICIT_SIGNALS)
    sig_cols = ", ".join(f"p.sig_{s} AS sig_{s}" for s in IMPLICIT_SIGNALS)
    unit = "app_id, experiment, variant, session_id"
    on = " AND ".join(f"p.{k} = {{a}}.{k}" for k in unit.split(", "))
    return f"""per_unit AS (
    SELECT u.app_id AS app_id, u.experiment AS experiment, u.variant AS variant,
           u.session_id AS session_id, count() AS n,
           sum(toUInt64(fb.rated)) AS rated, sum(toUInt64(fb.positive)) AS positive,
           sum(toUInt64(fb.has_rating)) AS ratings,
           sum(if(fb.has_rating, toUInt64(fb.last_rating), 0)) AS rating_sum,
           count(u.latency_ms) AS latency_n, sum(ifNull(u.latency_ms, 0)) AS latency_sum,
           count(u.cost_usd) AS cost_n, sum(ifNull(u.cost_usd, 0)) AS cost_sum,
           {sigs},
           arraySort(groupArrayIf(assumeNotNull(u.latency_ms), u.latency_ms IS NOT NULL))
               AS latency_values,
           arraySort(groupArrayIf((toDateTime(u.occurred_at, 'UTC'), toUInt8(fb.positive)),
                                  fb.rated = 1)) AS _rated
    FROM units AS u
    LEFT JOIN fb ON u.interaction_id = fb.interaction_id
    LEFT JOIN imp ON u.interaction_id = imp.interaction_id
    GROUP BY app_id, experiment, variant, session_id),
attributed AS (
    SELECT u.app_id AS app_id, u.experiment AS experiment, u.variant AS variant,
           u.session_id AS session_id, e.outcome AS outcome,
           toNullable(u.interaction_id) AS interaction_id, e.value AS value,
           e.time_to_outcome_ms AS ttm
    FROM oc_e AS e INNER JOIN units AS u ON assumeNotNull(e.interaction_id) = u.interaction_id
    WHERE e.interaction_id IS NOT NULL AND {_MATCH}
    UNION ALL
    SELECT u.app_id, u.experiment, u.variant, u.session_id, e.outcome,
           CAST(NULL, 'Nullable(UUID)'), e.value, e.time_to_outcome_ms
    FROM oc_e AS e INNER JOIN sess AS u ON e.session_id = u.session_id
    WHERE e.interaction_id IS NULL AND {_MATCH}),
per_outcome AS (
    SELECT {unit}, outcome, count() AS events,
           uniqExactIf(interaction_id, interaction_id IS NOT NULL) AS iw,
           toUInt8(countIf(interaction_id IS NULL) > 0) AS session_level,
           sum(ifNull(value, 0)) AS value_sum, count(ttm) AS t_n, sum(ifNull(ttm, 0)) AS t_sum,
           sum(ifNull(ttm, 0) * ifNull(ttm, 0)) AS t_sq,
           arraySort(groupArrayIf(assumeNotNull(ttm), ttm IS NOT NULL)) AS t_values
    FROM attributed GROUP BY {unit}, outcome),
outcome_rows AS (
    SELECT {unit},
           arraySort(groupArray((outcome, events, iw, session_level, value_sum, t_n, t_sum,
                                 t_sq, t_values))) AS _o,
           max(outcome = 'ticket_resolved') AS resolved,
           max(outcome = 'ticket_escalated') AS escalated,
           sum(t_sum) AS st_t, sum(t_n) > 0 AS st_timed
    FROM per_outcome GROUP BY {unit}),
per_interaction AS (
    SELECT {unit}, interaction_id,
           max(outcome = 'code_accepted') AS acc, max(outcome = 'code_rejected') AS rej,
           max(outcome = 'original_opened') AS op
    FROM attributed WHERE interaction_id IS NOT NULL GROUP BY {unit}, interaction_id),
code_rows AS (
    SELECT {unit}, countIf(acc OR rej) AS code_n, countIf(acc AND NOT rej) AS code_ok,
           countIf(op) AS opened
    FROM per_interaction GROUP BY {unit}),
variants_of AS (
    SELECT app_id, experiment, session_id, min(variant) AS first_variant,
           uniqExact(variant) AS variants
    FROM sess GROUP BY app_id, experiment, session_id),
new_rows AS (
    SELECT p.app_id AS app_id, p.experiment AS experiment, p.variant AS variant,
           p.session_id AS session_id, toInt8(1) AS sign, {computed_at} AS computed_at,
           toUInt8(p.session_id IN (SELECT session_id FROM split)) AS split,
           toUInt8(v.variants > 1 AND p.variant = v.first_variant) AS cross_variant,
           p.n AS n, p.rated AS rated, p.positive AS positive, p.ratings AS ratings,
           p.rating_sum AS rating_sum, p.latency_n AS latency_n, p.latency_sum AS latency_sum,
           p.cost_n AS cost_n, p.cost_sum AS cost_sum, {sig_cols},
           p.latency_values AS latency_values,
           arrayMap(x -> x.1, p._rated) AS rated_at,
           arrayMap(x -> x.2, p._rated) AS rated_positive,
           arrayMap(x -> x.1, o._o) AS po_outcome,
           arrayMap(x -> x.2, o._o) AS po_events,
           arrayMap(x -> x.3, o._o) AS po_interactions,
           arrayMap(x -> x.4, o._o) AS po_session_level,
           arrayMap(x -> x.5, o._o) AS po_value_sum,
           arrayMap(x -> x.6, o._o) AS po_t_n,
           arrayMap(x -> x.7, o._o) AS po_t_sum,
           arrayMap(x -> x.8, o._o) AS po_t_sq,
           arrayMap(x -> x.9, o._o) AS po_t_values,
           c.code_n AS code_n, c.code_ok AS code_ok, c.opened AS opened,
           toUInt8(o.resolved) AS resolved, toUInt8(o.escalated) AS escalated,
           o.st_t AS st_t, toUInt8(o.st_timed) AS st_timed
    FROM per_unit AS p
    LEFT JOIN outcome_rows AS o ON {on.format(a="o")}
    LEFT JOIN code_rows AS c ON {on.format(a="c")}
    LEFT JOIN variants_of AS v ON p.app_id = v.app_id AND p.experiment = v.experiment
         AND p.session_id = v.session_id)"""


def _versions_select(computed_at: str) -> str:
    """CTEs ending in ``new_rows``: one ``report_version_sessions`` row per (app, experiment,
    prompt version, session), with its day and week buckets."""
    unit = "app_id, experiment, prompt_version, session_id"
    return f"""pv AS (
    SELECT u.app_id AS app_id, u.experiment AS experiment, u.prompt_version AS prompt_version,
           u.session_id AS session_id, u.occurred_at AS occurred_at,
           toUInt64(fb.rated) AS rated, toUInt64(fb.positive) AS positive
    FROM units AS u LEFT JOIN fb ON u.interaction_id = fb.interaction_id),
pv_b AS (
    SELECT {unit}, kind,
           if(kind = 'day', toDate(occurred_at), toMonday(occurred_at)) AS start,
           count() AS n, sum(rated) AS r, sum(positive) AS p
    FROM pv ARRAY JOIN ['day', 'week'] AS kind
    GROUP BY {unit}, kind, start),
pv_bs AS (
    SELECT {unit}, arraySort(groupArray((kind, start, n, r, p))) AS _b
    FROM pv_b GROUP BY {unit}),
new_rows AS (
    SELECT s.app_id AS app_id, s.experiment AS experiment, s.prompt_version AS prompt_version,
           s.session_id AS session_id, toInt8(1) AS sign, {computed_at} AS computed_at,
           toUInt8(s.session_id IN (SELECT session_id FROM split)) AS split,
           s.n AS n, s.rated AS rated, s.positive AS positive, s.t0 AS t0, s.t1 AS t1,
           arrayMap(x -> x.1, b._b) AS b_kind, arrayMap(x -> x.2, b._b) AS b_start,
           arrayMap(x -> x.3, b._b) AS b_n, arrayMap(x -> x.4, b._b) AS b_rated,
           arrayMap(x -> x.5, b._b) AS b_positive
    FROM (SELECT {unit}, count() AS n, sum(rated) AS rated, sum(positive) AS positive,
                 min(occurred_at) AS t0, max(occurred_at) AS t1
          FROM pv GROUP BY {unit}) AS s
    INNER JOIN pv_bs AS b ON s.app_id = b.app_id AND s.experiment = b.experiment
         AND s.prompt_version = b.prompt_version AND s.session_id = b.session_id)"""


@dataclass(frozen=True)
class _State:
    table: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    select: Any  # (computed_at SQL) -> CTE text ending in new_rows


_STATES = (
    _State(
        "report_sessions",
        _SESSION_COLUMNS,
        ("session_id", "app_id", "experiment", "variant"),
        _sessions_select,
    ),
    _State(
        "report_version_sessions",
        _VERSION_COLUMNS,
        ("session_id", "app_id", "experiment", "prompt_version"),
        _versions_select,
    ),
)

# --- touched sessions and the delta ---------------------------------------------------------


def watermark_sql() -> str:
    """The last compaction's watermark (the epoch before the first)."""
    return f"(SELECT ifNull(max(watermark), {_EPOCH}) FROM {{db}}.report_rows_watermark)"


def _touched(since: str) -> str:
    """Sessions with an event inserted after ``since``: a new interaction, or an event about
    one of its interactions (late feedback, an outcome: its session from the lookup copy,
    which holds every interaction inserted up to ``since``; a later one is in the first
    part), or a session-level outcome."""
    new = f"inserted_at > {since}"
    return f"""SELECT session_id FROM {{db}}.interactions WHERE {new}
    UNION DISTINCT
    SELECT session_id FROM {{db}}.report_lookup_units WHERE interaction_id IN (
        SELECT interaction_id FROM {{db}}.feedback WHERE {new}
        UNION ALL SELECT interaction_id FROM {{db}}.implicit WHERE {new}
        UNION ALL SELECT assumeNotNull(interaction_id) FROM {{db}}.outcomes
                  WHERE {new} AND interaction_id IS NOT NULL)
    UNION DISTINCT
    SELECT session_id FROM {{db}}.outcomes WHERE {new} AND interaction_id IS NULL"""


def _delta_ctes(table: str, computed_at: str, scratch: dict[str, str]) -> tuple[str, str]:
    """``WITH`` clauses ending in ``delta``: for every session touched since the watermark
    (less :data:`OVERLAP_MS`), its stored row with ``sign = -1`` and its recomputed row with
    ``sign = +1``; and the column list."""
    state = next(s for s in _STATES if s.table == table)
    names = ", ".join(c for c, _ in state.columns)
    keys = ", ".join(state.key)
    # Stored rows are identical to their cancel rows, so the live ones are the (key,
    # computed_at) groups whose signs do not sum to zero.
    inner = ", ".join(
        c if c in state.key or c == "computed_at" else f"any({c}) AS _{c}"
        for c, _ in state.columns
        if c != "sign"
    )
    outer = ", ".join(
        c
        if c in state.key or c == "computed_at"
        else ("toInt8(-1) AS sign" if c == "sign" else f"_{c} AS {c}")
        for c, _ in state.columns
    )
    ctes = f"""WITH {_state_ctes(scratch)},
{state.select(computed_at)},
old_rows AS (
    SELECT {outer} FROM (
        SELECT {inner}, sum(sign) AS _live FROM {{db}}.{table}
        WHERE session_id IN (SELECT session_id FROM touched)
        GROUP BY {keys}, computed_at)
    WHERE _live > 0),
delta AS (SELECT {names} FROM new_rows UNION ALL SELECT {names} FROM old_rows)"""
    return ctes, names


def _cte_list(ctes: str) -> list[tuple[str, str]]:
    """``name AS (body), …`` (each name at the start of a line, as written in this module)
    as ``[(name, body)]``."""
    text = ctes.removeprefix("WITH ").strip()
    out = []
    for chunk in _split_top(text):
        name, _, rest = chunk.partition(" AS (")
        out.append((name.strip(), rest.rstrip()[:-1]))
    return out


def _split_top(text: str) -> list[str]:
    cuts = list(re.finditer(r",\n(?=\w+ AS \()", text))
    starts = [0] + [m.end() for m in cuts]
    ends = [m.start() for m in cuts] + [len(text)]
    return [text[a:b] for a, b in zip(starts, ends, strict=True)]


def _since() -> str:
    """The watermark less :data:`OVERLAP_MS` (``{db}`` templated): events inserted after it
    are looked at again; the lookup copies hold every event inserted before it."""
    return f"({watermark_sql()} - toIntervalMillisecond({OVERLAP_MS}))"


def since_sql() -> str:
    """``SELECT since``: :func:`_since` as text, for a read or a round to fix it once."""
    return f"SELECT toString({_since()}) AS since"


def time_literal(text: str) -> str:
    """A DateTime64(3, UTC) literal of ``text`` as ClickHouse prints one."""
    if not re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{1,9})?", text):
        raise ValueError(f"not a ClickHouse time: {text!r}")
    return f"toDateTime64('{text}', 3, 'UTC')"


def touched_sql(since: str | None = None) -> str:
    """``SELECT session_id`` of the sessions touched after ``since`` (a DateTime64
    expression; default the watermark less :data:`OVERLAP_MS`; ``{db}`` templated): what
    a read recomputes beside the totals."""
    return _touched(since or _since())


def changed_rows_sql(after: str | None = None) -> str:
    """How many event rows were inserted after ``after`` (a DateTime64 expression; default
    the watermark; ``{db}`` templated): the compactor's first check, which then has nothing
    to do (min-max index on ``inserted_at``, no join)."""
    w = after or watermark_sql()
    counts = " + ".join(
        f"(SELECT count() FROM {{db}}.{t} WHERE inserted_at > {w})"
        for t in ("interactions", "feedback", "implicit", "outcomes")
    )
    return f"SELECT {counts} AS changed"


# --- totals: sign-weighted sums maintained by materialized views ---------------------------


def _i(expr: str) -> str:
    return f"toInt64(sign) * toInt64({expr})"


def _f(expr: str) -> str:
    return f"sign * toFloat64({expr})"


#: The per-session ratio metrics (num, den, whether num is a float): the experiment report's
#: CORE_METRICS (feedbackloop.analysis.reads.queries) by key.
METRIC_COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("satisfaction", "positive", "rated", False),
    ("rating", "rating_sum", "ratings", False),
    *((f"implicit_{s}", f"sig_{s}", "n", False) for s in IMPLICIT_SIGNALS),
    ("latency_ms", "latency_sum", "latency_n", True),
    ("cost_usd", "cost_sum", "cost_n", True),
)


def _metric_sums() -> list[tuple[str, str, str]]:
    out = []
    for key, num, den, is_float in METRIC_COLUMNS:
        w = _f if is_float else _i
        t = "Float64" if is_float else "Int64"
        out += [
            (f"{key}__y", t, w(num)),
            (f"{key}__d", "Int64", _i(den)),
            (f"{key}__yy", t, w(f"{num} * {num}")),
            (f"{key}__dd", "Int64", _i(f"{den} * {den}")),
            (f"{key}__yd", t, w(f"{num} * {den}")),
        ]
    return out


#: Every totals table's stamp (migration 13): the latest ``computed_at`` of the state rows
#: its view summed. Not a sum a report reads: :func:`cut_off_round` looks for a stamp
#: later than the watermark, left by a round whose views were written but whose state part
#: (or watermark) was not.
STAMP = ("computed_at", "SimpleAggregateFunction(max, DateTime64(3, 'UTC'))")


@dataclass(frozen=True)
class _Totals:
    """One totals table: key columns, ``(name, type, per-row expression)`` sums, what the
    view selects from (a state table with an optional ARRAY JOIN) and min/max columns."""

    table: str
    source: str
    array_join: str
    keys: tuple[tuple[str, str, str], ...]  # (name, type, expression)
    sums: tuple[tuple[str, str, str], ...]
    extremes: tuple[tuple[str, str, str, str], ...] = ()  # (name, func, type, expression)

    @property
    def names(self) -> list[str]:
        """Every column: keys, sums, extremes."""
        return [
            *(n for n, _, _ in self.keys),
            *(n for n, _, _ in self.sums),
            *(n for n, *_ in self.extremes),
        ]

    def held(self) -> list[str]:
        """What the table holds per group: each sum and extreme aggregated under its name."""
        return [
            *(f"sum({n}) AS {n}" for n, _, _ in self.sums),
            *(f"{f}({n}) AS {n}" for n, f, _, _ in self.extremes),
        ]

    def select(self, source: str, stamped: bool = True) -> str:
        """The view's ``SELECT`` over ``source`` (state rows); ``stamped``: with the latest
        ``computed_at`` it saw (:data:`STAMP`; not before migration 13)."""
        cols = [f"{e} AS {n}" for n, _, e in self.keys]
        cols += [f"sum({e}) AS {n}" for n, _, e in self.sums]
        cols += [f"{f}({e}) AS {n}" for n, f, _, e in self.extremes]
        if stamped:
            cols.append(f"max(computed_at) AS {STAMP[0]}")
        keys = ", ".join(n for n, _, _ in self.keys)
        return f"SELECT {', '.join(cols)} FROM {source} {self.array_join} GROUP BY {keys}"

    def ddl(self, stamped: bool = True) -> tuple[str, str]:
        """The table (as migrations 7 and 10 made it: the stamp is added by 13) and its
        view (``stamped``: as migration 13 makes it)."""
        cols = [f"{n} {t}" for n, t, _ in self.keys]
        cols += [f"{n} SimpleAggregateFunction(sum, {t})" for n, t, _ in self.sums]
        cols += [f"{n} SimpleAggregateFunction({f}, {t})" for n, f, t, _ in self.extremes]
        body = ",\n    ".join(cols)
        keys = ", ".join(n for n, _, _ in self.keys)
        table = (
            f"CREATE TABLE IF NOT EXISTS {{db}}.{self.table}\n(\n    {body}\n)\n"
            f"ENGINE = AggregatingMergeTree\nORDER BY ({keys})"
        )
        view = (
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.{self.table}_mv TO "
            f"{{db}}.{self.table}\nAS {self.select('{db}.' + self.source, stamped)}"
        )
        return table, view


_APP_EXP = (
    ("app_id", "LowCardinality(String)", "app_id"),
    ("experiment", "LowCardinality(String)", "experiment"),
)
_VARIANT = (*_APP_EXP, ("variant", "LowCardinality(String)", "variant"))
_PO = (
    "ARRAY JOIN po_outcome AS o, po_events AS o_events, po_interactions AS o_iw, "
    "po_session_level AS o_sl, po_value_sum AS o_value, po_t_n AS o_tn, po_t_sum AS o_tsum, "
    "po_t_sq AS o_tsq"
)

TOTALS: tuple[_Totals, ...] = (
    _Totals(
        "report_variant_totals",
        "report_sessions",
        "",
        _VARIANT,
        (
            ("sessions", "Int64", "sign"),
            ("split", "Int64", _i("split")),
            ("cross_variant", "Int64", _i("cross_variant")),
            ("interactions", "Int64", _i("n")),
            ("n_sq", "Int64", _i("n * n")),
            ("cost_total", "Float64", _f("cost_sum")),
            *_metric_sums(),
            ("code_n", "Int64", _i("code_n")),
            ("code_ok", "Int64", _i("code_ok")),
            ("opened", "Int64", _i("opened")),
            ("ticket_n", "Int64", _i("resolved OR escalated")),
            ("ticket_ok", "Int64", _i("resolved AND NOT escalated")),
            ("st_n", "Int64", _i("st_timed")),
            ("st_sum", "Float64", _f("if(st_timed, st_t, 0)")),
            ("st_sq", "Float64", _f("if(st_timed, st_t * st_t, 0)")),
        ),
    ),
    _Totals(
        "report_variant_outcomes",
        "report_sessions",
        _PO,
        (*_VARIANT, ("outcome", "LowCardinality(String)", "o")),
        (
            ("events", "Int64", _i("o_events")),
            ("sessions_with", "Int64", "sign"),
            ("iw", "Int64", _i("o_iw")),
            ("iw_sq", "Int64", _i("o_iw * o_iw")),
            ("iw_n", "Int64", _i("o_iw * n")),
            ("session_level", "Int64", _i("o_sl")),
            ("value_sum", "Float64", _f("o_value")),
            ("t_n", "Int64", _i("o_tn")),
            ("t_sum", "Float64", _f("o_tsum")),
            ("t_sq", "Float64", _f("o_tsq")),
        ),
    ),
    _Totals(
        "report_variant_latency",
        "report_sessions",
        "ARRAY JOIN latency_values AS v",
        (*_VARIANT, ("value", "Float64", "v")),
        (("n", "Int64", "sign"),),
    ),
    _Totals(
        "report_variant_time_to_outcome",
        "report_sessions",
        "ARRAY JOIN po_outcome AS o, po_t_values AS vs ARRAY JOIN vs AS v",
        (*_VARIANT, ("outcome", "LowCardinality(String)", "o"), ("value", "Float64", "v")),
        (("n", "Int64", "sign"),),
    ),
    _Totals(
        "report_variant_seconds",
        "report_sessions",
        "ARRAY JOIN rated_at AS t, rated_positive AS p",
        (*_VARIANT, ("t", "DateTime('UTC')", "t")),
        (("rated", "Int64", "sign"), ("positive", "Int64", _i("p"))),
    ),
    _Totals(
        "report_version_totals",
        "report_version_sessions",
        "",
        (*_APP_EXP, ("prompt_version", "LowCardinality(String)", "prompt_version")),
        (
            ("sessions", "Int64", "sign"),
            ("split", "Int64", _i("split")),
            ("interactions", "Int64", _i("n")),
            ("s_y", "Int64", _i("positive")),
            ("s_d", "Int64", _i("rated")),
            ("s_yy", "Int64", _i("positive * positive")),
            ("s_dd", "Int64", _i("rated * rated")),
            ("s_yd", "Int64", _i("positive * rated")),
        ),
        (
            ("t0", "min", "DateTime64(3, 'UTC')", "t0"),
            ("t1", "max", "DateTime64(3, 'UTC')", "t1"),
        ),
    ),
    _Totals(
        "report_version_buckets",
        "report_version_sessions",
        "ARRAY JOIN b_kind AS k, b_start AS b, b_n AS bn, b_rated AS br, b_positive AS bp",
        (
            *_APP_EXP,
            ("prompt_version", "LowCardinality(String)", "prompt_version"),
            ("kind", "LowCardinality(String)", "k"),
            ("start", "Date", "b"),
        ),
        (
            ("interactions", "Int64", _i("bn")),
            ("sessions", "Int64", "sign"),
            ("rated", "Int64", _i("br")),
            ("positive", "Int64", _i("bp")),
        ),
    ),
)


def bucket_sql(value: str) -> str:
    """The quantile bucket of ``value`` (a Float64 expression): its IEEE-754 bits made
    monotone in the value (a negative's turned around), less the 42 lowest. 1 024 buckets
    per power of two, so a bucket's values lie within 0.1 % of each other and a few
    thousand buckets cover a latency distribution, however many distinct values it has."""
    b = f"reinterpretAsUInt64(toFloat64({value}))"
    return (
        f"bitShiftRight(if(bitTest({b}, 63), bitNot({b}), "
        f"bitOr({b}, toUInt64(9223372036854775808))), 42)"
    )


_BUCKET_SUMS = (("n", "Int64", "sign"),)
_BUCKET_RANGE = (("lo", "min", "Float64", "v"), ("hi", "max", "Float64", "v"))

#: Value counts per bucket of the two value -> count tables above (migration 10): a quantile
#: finds the buckets holding its ranks here, then reads only those buckets' values (the
#: value -> count table has a row per distinct value: millions for latencies in ms).
#: ``lo``/``hi`` are the least and greatest value ever counted in the bucket (cancelled
#: rows only widen them), so ``value BETWEEN lo AND hi`` finds a bucket's values by key.
QUANTILE_BUCKETS: tuple[_Totals, ...] = (
    _Totals(
        "report_variant_latency_buckets",
        "report_sessions",
        "ARRAY JOIN latency_values AS v",
        (*_VARIANT, ("bucket", "UInt64", bucket_sql("v"))),
        _BUCKET_SUMS,
        _BUCKET_RANGE,
    ),
    _Totals(
        "report_variant_time_to_outcome_buckets",
        "report_sessions",
        "ARRAY JOIN po_outcome AS o, po_t_values AS vs ARRAY JOIN vs AS v",
        (
            *_VARIANT,
            ("outcome", "LowCardinality(String)", "o"),
            ("bucket", "UInt64", bucket_sql("v")),
        ),
        _BUCKET_SUMS,
        _BUCKET_RANGE,
    ),
)


#: Every table a view on the state rows fills.
SUMMED: tuple[_Totals, ...] = (*TOTALS, *QUANTILE_BUCKETS)

#: The tables a round's inserts write: the state tables and every table their views fill.
_WRITTEN: tuple[str, ...] = (*(s.table for s in _STATES), *(t.table for t in SUMMED))


def totals(table: str) -> _Totals:
    return next(t for t in SUMMED if t.table == table)


def current_sql(
    table: str,
    where: str,
    group: tuple[str, ...],
    having: str = "1",
    db: str = "",
    cancel: str | None = None,
) -> str:
    """The totals ``table`` summed by ``group`` (``expr AS name`` or column names) over the
    rows matching ``where`` (on its key columns): the report rows as of the last compaction;
    with ``cancel`` (a tuple literal of session ids), less those sessions' stored rows
    (through the view's own ``SELECT``): the totals of every other session.
    Tables are qualified with ``db`` (unqualified when empty: the client's database)."""
    t = totals(table)
    cols = [*group, *t.held()]
    names = ", ".join(g.rsplit(" AS ", 1)[-1] for g in group)
    source = f"{{db}}.{table}"
    if cancel is not None:
        every = ", ".join(t.names)
        # The stored rows of a session (live and cancelled) sum to its live row; with the
        # sign turned they take it out. Minima and maxima stay: a session's first and last
        # interaction only move outwards as events arrive.
        state = next(s for s in _STATES if s.table == t.source)
        view = t.select("_")
        used = ", ".join(
            "toInt8(-sign) AS sign" if c == "sign" else c
            for c, _ in state.columns
            if re.search(rf"\b{c}\b", view)
        )  # only the columns the view reads: a stored row's arrays are the bulk of it
        stored = f"(SELECT {used} FROM {{db}}.{t.source} WHERE session_id IN {cancel})"
        source = f"""(SELECT {every} FROM {{db}}.{table}
    UNION ALL SELECT {every} FROM ({t.select(stored)}))"""
    sql = f"""SELECT {", ".join(cols)} FROM {source} WHERE {where}
GROUP BY {names} HAVING {having} ORDER BY {names}"""
    return sql.replace("{db}.", f"{db}." if db else "")


#: The state tables' engine. A row and its cancel row share ``computed_at``, and only such
#: a pair is removed when parts merge, whatever the order of rows and parts. Migration 7's
#: ``CollapsingMergeTree(sign)`` collapsed by sorting key and row order, and a round's
#: rows come in no defined order: a block ``+r2 -r1`` (as many cancels as rows, the last a
#: cancel) was collapsed to nothing as it was written, and so was a merge of two later
#: rounds' parts (``+r2 -r1 +r3 -r2``); the views had taken the delta, but ``r1`` was the
#: session's row again (migration 13; on the kept 30M bench database: 9 interactions).
STATE_ENGINE = "VersionedCollapsingMergeTree(sign, computed_at)"


def _state_ddl(state: _State, engine: str = STATE_ENGINE) -> str:
    body = ",\n    ".join(f"{c} {t}" for c, t in state.columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {{db}}.{state.table}\n(\n    {body}\n)\n"
        f"ENGINE = {engine}\nORDER BY ({', '.join(state.key)})"
    )


#: Migration statements (``{db}`` templated): state tables, totals tables and their views,
#: the watermark, and a min-max index on ``inserted_at`` so finding what changed since the
#: watermark skips the parts written before it.
REPORT_ROWS_DDL: tuple[str, ...] = (
    *(_state_ddl(s, "CollapsingMergeTree(sign)") for s in _STATES),
    *(stmt for t in TOTALS for stmt in t.ddl(stamped=False)),
    """CREATE TABLE IF NOT EXISTS {db}.report_rows_watermark
(
    watermark DateTime64(3, 'UTC'),
    computed_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY tuple()""",
    *(
        f"ALTER TABLE {{db}}.{t} ADD INDEX IF NOT EXISTS idx_inserted_at inserted_at "
        "TYPE minmax GRANULARITY 1"
        for t in ("interactions", "feedback", "implicit", "outcomes")
    ),
)

#: Migration statements for the quantile buckets: each table, the rows of the sessions
#: stored so far (before its view exists: the sink migrates before its compactor starts),
#: then its view.
QUANTILE_BUCKETS_DDL: tuple[str, ...] = tuple(
    stmt
    for t in QUANTILE_BUCKETS
    for stmt in (
        t.ddl()[0],
        f"INSERT INTO {{db}}.{t.table} {t.select('{db}.' + t.source, stamped=False)}",
        t.ddl(stamped=False)[1],
    )
)

#: Migration 13 (``{db}`` templated): the state tables on :data:`STATE_ENGINE`, rebuilt
#: from the events. Rows a merge already resurrected cannot be told from current ones, so
#: nothing is carried over: the views are dropped, the state tables made anew, the totals,
#: buckets, lookup copies and watermark emptied and the views made again. The compactor's
#: next round then builds everything from the epoch, as on a new database; until its
#: watermark every session counts as touched, so the reads recompute them all (the exact
#: path beyond ``MAX_TOUCHED``). Each statement can run again after an interruption. Stop
#: the sink first: a round of the old code between these statements would write rows no
#: view sees.
STATE_ENGINE_DDL: tuple[str, ...] = (
    *(f"DROP VIEW IF EXISTS {{db}}.{t.table}_mv" for t in SUMMED),
    *(f"DROP TABLE IF EXISTS {{db}}.{s.table} SYNC" for s in _STATES),
    *(_state_ddl(s) for s in _STATES),
    *(
        f"TRUNCATE TABLE IF EXISTS {{db}}.{t}"
        for t in (
            *(t.table for t in SUMMED),
            *(lk.table for lk in LOOKUPS),
            "report_rows_watermark",
        )
    ),
    *(
        f"ALTER TABLE {{db}}.{t.table} ADD COLUMN IF NOT EXISTS {STAMP[0]} {STAMP[1]}"
        for t in SUMMED
    ),
    *(t.ddl()[1] for t in SUMMED),
)

#: Where the compactor records the moments the totals agree with the state rows they sum
#: (:func:`inserts_sql` after each of its inserts has returned): a read compares the
#: tables' inserts with these before and after each statement that reads both, so it never
#: reads one of the two half-way through a round (:mod:`~feedbackloop.analysis.reads.derived`).
CHECKPOINTS_TABLE = "report_rows_checkpoints"

#: Migration 14 (``{db}`` templated). Empty at first: the compactor records a checkpoint as
#: it starts (after :func:`repair_totals`, when a round was cut off) and after each insert.
CHECKPOINTS_DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {{db}}.{CHECKPOINTS_TABLE}
(
    inserts String,
    computed_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY tuple()""",
)


def inserts_sql(database: str | None = None) -> str:
    """A scalar subquery: the newest insert into each state and totals table, as one string
    (``system.parts``: a part's ``max_block_number``; a merged part keeps the greatest of
    its parts'). It moves with every part an insert (a round's, or its views') commits,
    and with nothing else. ``database``: the client's current one when ``None``.

    A state table and its views' tables are written by one ``INSERT``, but each commits
    its own part: for a moment a read can see the state rows of a round without the totals
    its views derive from them, or the other way round (the report is then off by that
    round's change). Reads therefore only trust moments recorded in
    :data:`CHECKPOINTS_TABLE`."""
    tables = ", ".join(f"'{t}'" for t in _WRITTEN)
    db = f"'{database}'" if database else "currentDatabase()"
    return f"""(SELECT arrayStringConcat(arraySort(groupArray(
        concat(table, ':', partition_id, ':', toString(newest)))), ',')
    FROM (SELECT table, partition_id, max(max_block_number) AS newest FROM system.parts
          WHERE database = {db} AND active AND table IN ({tables})
          GROUP BY table, partition_id))"""


def checkpoint(client: Any, database: str) -> None:
    """Record the state and totals tables' inserts as agreeing, unless recorded already:
    only after an insert into them (and its views) has returned, with nothing else writing
    them."""
    table = f"{database}.{CHECKPOINTS_TABLE}"
    client.command(
        f"INSERT INTO {table} (inserts) SELECT now_inserts FROM "
        f"(SELECT {inserts_sql(database)} AS now_inserts) "
        f"WHERE now_inserts NOT IN (SELECT inserts FROM {table})"
    )


def settled_sql() -> str:
    """``SELECT since, inserts, settled`` (``{db}`` templated): the watermark less the
    overlap as text (:func:`since_sql`), :func:`inserts_sql` now, and whether a checkpoint
    recorded it (the totals then agree with the state rows)."""
    return f"""WITH {inserts_sql()} AS now_inserts
SELECT toString({_since()}) AS since, now_inserts AS inserts,
    has((SELECT groupArray(inserts) FROM {{db}}.{CHECKPOINTS_TABLE}), now_inserts) AS settled"""


#: Migration statements for the lookup copies (``{db}`` templated): each table, then the
#: rows already inserted up to the watermark less the overlap (the compactor copies the
#: rest; none on a database never compacted).
LOOKUPS_DDL: tuple[str, ...] = (
    *(lk.ddl() for lk in LOOKUPS),
    *(lk.copy_sql(_EPOCH, _since()) for lk in LOOKUPS),
)


# --- compaction ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactionResult:
    """One compaction round: the new watermark, sessions recomputed, seconds."""

    watermark: dt.datetime
    rows: dict[str, int]
    sessions: int
    seconds: float


#: Sessions recomputed per compaction step: bounds the memory of the scratch tables.
CHUNK_SESSIONS = 200_000


def compact(client: Any, database: str, chunk: int = CHUNK_SESSIONS) -> CompactionResult:
    """Bring the state tables up to date with every event inserted so far.

    Sessions touched since the last watermark are recomputed and written as (old row
    cancelled, new row); the views update the totals in the same insert. The watermark moves
    to the time this round started, so an event inserted during the round is looked at
    again next time. The touched sessions and their deduplicated events are materialized
    once in Memory scratch tables (a CTE would be evaluated once per reference), ``chunk``
    sessions at a time. One compactor per database: two at once would both cancel the same
    rows.
    """
    t0 = time.perf_counter()
    start = client.query("SELECT now64(3, 'UTC')").result_rows[0][0]
    stamp = f"toDateTime64('{start:%Y-%m-%d %H:%M:%S.%f}', 3, 'UTC')"
    since = time_literal(client.query(since_sql().replace("{db}", database)).result_rows[0][0])
    scratch = {name: f"{database}.report_scratch_{name}" for name, _ in _sources("", "")}
    rows = dict.fromkeys((s.table for s in _STATES), 0)
    changed = client.query(changed_rows_sql(since).replace("{db}", database)).result_rows
    if not int(changed[0][0]):  # the common case between flushes: one statement more
        checkpoint(client, database)  # a database the last rounds left without one
        return CompactionResult(start, rows, 0, time.perf_counter() - t0)
    try:
        # Copy what was inserted up to this round's watermark less the overlap: a read (and
        # the next round) takes every later row from the event tables themselves, and so
        # does this round (its sessions' events: the copies plus the rows after ``upto``).
        # A round that fails after this copies the same rows again: two rows, one after
        # the deduplication.
        upto = f"{stamp} - toIntervalMillisecond({OVERLAP_MS})"
        for lk in LOOKUPS:
            client.command(lk.copy_sql(since, upto).replace("{db}", database))
        _interaction_signals(client, database, since, upto, stamp)
        _drop(client, scratch)
        all_touched = f"{database}.report_scratch_all"
        client.command(f"DROP TABLE IF EXISTS {all_touched}")
        client.command(
            f"CREATE TABLE {all_touched} ENGINE = Memory AS "
            + _touched(since).replace("{db}", database)
        )
        total = int(client.command(f"SELECT count() FROM {all_touched}"))
        parts = max(1, -(-total // chunk))
        for part in range(parts):
            this = (
                f"SELECT session_id FROM {all_touched} "
                f"WHERE cityHash64(session_id) % {parts} = {part}"
            )
            done: list[str] = []
            for name, body in _sources(this, upto):
                prior = ", ".join(f"{d} AS (SELECT * FROM {scratch[d]})" for d in done)
                sql = (f"WITH {prior} " if prior else "") + body.replace("{db}", database)
                client.command(f"CREATE TABLE {scratch[name]} ENGINE = Memory AS {sql}")
                done.append(name)
            for state in _STATES:
                _insert_state(client, database, state, stamp, scratch)
                rows[state.table] += int(
                    client.command(f"SELECT count() FROM {scratch['touched']}")
                )
            _drop(client, scratch)
        client.command(f"DROP TABLE IF EXISTS {all_touched}")
        client.command(f"INSERT INTO {database}.report_rows_watermark (watermark) SELECT {stamp}")
    finally:
        _drop(client, scratch)
    return CompactionResult(start, rows, total, time.perf_counter() - t0)


def _totals_diff(t: _Totals, db: str) -> str:
    """Per key of totals table ``t``: what its view would hold if it had seen every insert
    into the state table (``e``: the view's own ``SELECT`` over the state rows) beside what
    it holds (``a``), where an integer sum differs; ``_e`` / ``_a`` say which side has the
    key."""
    keys = ", ".join(n for n, _, _ in t.keys)
    expected = f"SELECT *, 1 AS _e FROM ({t.select(f'{db}.{t.source}')})"
    actual = f"SELECT {keys}, {', '.join(t.held())}, 1 AS _a FROM {db}.{t.table} GROUP BY {keys}"
    ints = [n for n, ty, _ in t.sums if "Int" in ty]
    # A key whose sessions were all cancelled (and then merged away) holds zeros.
    differs = " OR ".join(f"e.{n} != a.{n}" for n in ints)
    return f"FROM ({expected}) AS e FULL OUTER JOIN ({actual}) AS a USING ({keys}) WHERE {differs}"


def cut_off_round(client: Any, database: str) -> bool:
    """Whether a compaction round wrote session rows or totals and then stopped before its
    watermark (a round's rows carry its stamp as ``computed_at``, and each totals row the
    latest stamp its view summed; the round's last statement writes the same stamp as the
    watermark): the only time the totals can differ from the session rows. A scan of one
    column of each state and totals table."""
    w = watermark_sql().replace("{db}", database)
    newer = " + ".join(
        f"(SELECT count() FROM {database}.{t} WHERE computed_at > {w})" for t in _WRITTEN
    )
    return bool(int(client.command(f"SELECT {newer}")))


def repair_totals(client: Any, database: str, writer: Any = None) -> list[str]:
    """The totals tables that differ from the state rows they sum, made equal again.

    A state row and the totals its views derive from it are written by one ``INSERT``, but
    not atomically: a process killed between the state table's part and a view's part
    leaves that totals table off by the round's delta for good (the round is made again,
    from the state rows, and cancels what the state table holds). Seen on bench databases
    whose compactions were interrupted: a variant's totals 16,071 interactions apart from
    its session rows at 10M (part of such a gap was the session rows' own loss under
    migration 7's engine: :data:`STATE_ENGINE`). Each table whose integer sums differ gets
    one corrective insert (expected less held, per key: the sums are
    ``SimpleAggregateFunction(sum)``, the extremes can only widen). The compactor runs
    this before its first round, with nothing else writing the report rows, when
    :func:`cut_off_round` says one was cut off (the check reads every session row: 205 s
    at 30M interactions, where nine tables were off, and on embedded chDB the sink's
    inserts wait between its statements); ``writer`` (default ``client``) runs the
    inserts. Returns the tables repaired."""
    writer = writer or client
    repaired = []
    for t in SUMMED:
        diff = _totals_diff(t, database)
        if not int(client.command(f"SELECT count() {diff}")):
            continue
        cols = [n for n, _, _ in t.keys]
        cols += [f"e.{n} - a.{n}" for n, _, _ in t.sums]
        cols += [f"if(e._e = 1, e.{n}, a.{n})" for n, _, _, _ in t.extremes]
        writer.command(
            f"INSERT INTO {database}.{t.table} ({', '.join(t.names)}) "
            f"SELECT {', '.join(cols)} {diff}"
        )
        repaired.append(t.table)
    return repaired


def _interaction_signals(client: Any, database: str, since: str, upto: str, stamp: str) -> None:
    """The per-interaction signals (:mod:`.interaction_signals`) of every interaction with
    an event, or itself, inserted after ``since``, recomputed (the copies hold ``upto``)."""
    from feedbackloop.sinks.interaction_signals import insert_sql, touched_ids_sql

    ids = f"{database}.report_scratch_signal_ids"
    client.command(f"DROP TABLE IF EXISTS {ids}")
    try:
        client.command(
            f"CREATE TABLE {ids} ENGINE = Memory AS SELECT DISTINCT interaction_id FROM ("
            + touched_ids_sql(since).replace("{db}", database)
            + ")"
        )
        sql = insert_sql(f"(SELECT interaction_id FROM {ids})", upto, stamp)
        client.command(sql.replace("{db}", database))
    finally:
        client.command(f"DROP TABLE IF EXISTS {ids}")


def _insert_state(
    client: Any, database: str, state: _State, stamp: str, scratch: dict[str, str]
) -> None:
    """Materialize every step of the state query in its own Memory table, then insert the
    delta rows: one statement per step keeps each plan small (the whole query inlines its
    CTEs dozens of times and takes seconds to plan)."""
    ctes, names = _delta_ctes(state.table, stamp, scratch)
    steps = [(n, b) for n, b in _cte_list(ctes) if n not in scratch]
    made: dict[str, str] = dict(scratch)
    try:
        for name, body in steps[:-1]:
            prior = ", ".join(f"{d} AS (SELECT * FROM {t})" for d, t in made.items())
            table = f"{database}.report_scratch_{name}"
            client.command(f"DROP TABLE IF EXISTS {table}")
            sql = f"WITH {prior} {body}".replace("{db}", database)
            client.command(f"CREATE TABLE {table} ENGINE = Memory AS {sql}")
            made[name] = table
        prior = ", ".join(f"{d} AS (SELECT * FROM {t})" for d, t in made.items())
        last, body = steps[-1]
        sql = f"WITH {prior}, {last} AS ({body}) SELECT {names} FROM {last}"
        client.command(
            f"INSERT INTO {database}.{state.table} ({names}) {sql.replace('{db}', database)}"
        )
        # A read waits for it from the moment the insert's first part commits (on embedded
        # chDB a sink flush may run between the two: held together, they delayed the
        # flushes more than the reads gained).
        checkpoint(client, database)
    finally:
        _drop(client, {n: t for n, t in made.items() if n not in scratch})


def _drop(client: Any, scratch: dict[str, str]) -> None:
    for table in scratch.values():
        client.command(f"DROP TABLE IF EXISTS {table}")


#: How long the compactor may stand aside for reads before it runs a statement anyway, at
#: most; it earns that time back by working (the seconds its statements take), so under
#: reads that never stop it still gets half of the time it would have.
YIELD_CREDIT_S = 2.0
_YIELD_POLL_S = 0.005
#: A round that recomputed more sessions than this says the compactor is behind: it stops
#: standing aside until a round recomputes fewer (each session it leaves is one more that
#: every read recomputes itself; measured at 500 interactions/s, docs/PERFORMANCE.md).
YIELD_MAX_SESSIONS = 1_000


class _Yield:
    """Makes the compactor's statements wait while analyst statements run in this process
    (``reading()``), within a credit of :data:`YIELD_CREDIT_S` that its own statements'
    time earns back: a read takes both cores for itself, and the rounds still go on. Off
    (``on``) while the compactor is behind (:data:`YIELD_MAX_SESSIONS`)."""

    def __init__(self, reading: Callable[[], bool] | None, stop: threading.Event) -> None:
        self.reading, self.stop = reading, stop
        self.credit = YIELD_CREDIT_S
        self.waited = 0.0
        self.on = True
        self._lock = threading.Lock()

    def after_round(self, sessions: int) -> None:
        """A round recomputed ``sessions``: stand aside again only if it was few."""
        self.on = sessions <= YIELD_MAX_SESSIONS

    def wait(self) -> None:
        if self.reading is None or not self.on:
            return
        while self.credit > 0 and self.reading() and not self.stop.is_set():
            t0 = time.monotonic()
            time.sleep(_YIELD_POLL_S)
            with self._lock:
                took = time.monotonic() - t0
                self.credit -= took
                self.waited += took

    def worked(self, seconds: float) -> None:
        with self._lock:
            self.credit = min(YIELD_CREDIT_S, self.credit + seconds)


_STATE_INSERT = re.compile(
    rf"\s*INSERT INTO \S+\.({'|'.join(s.table for s in _STATES)}) ", re.IGNORECASE
)


class _Locked:
    """A client whose statements each run under ``lock`` (after ``gate`` let them)."""

    def __init__(self, client: Any, lock: threading.Lock, gate: _Yield | None = None) -> None:
        self.client, self.lock, self.gate = client, lock, gate
        self.after_state = False

    def _run(self, sql: str, fn: Callable[..., Any], *a: Any, **kw: Any) -> Any:
        if self.gate is not None and not self.after_state:
            self.gate.wait()
        # The statement after an insert into a state table never waits: it is that insert's
        # checkpoint, which the reads themselves wait for (_insert_state).
        self.after_state = bool(_STATE_INSERT.match(sql))
        t0 = time.monotonic()
        try:
            with self.lock:
                return fn(*a, **kw)
        finally:
            if self.gate is not None:
                self.gate.worked(time.monotonic() - t0)

    def command(self, sql: str, *a: Any, **kw: Any) -> Any:
        return self._run(sql, self.client.command, sql, *a, **kw)

    def query(self, sql: str, *a: Any, **kw: Any) -> Any:
        return self._run(sql, self.client.query, sql, *a, **kw)

    def insert(self, *a: Any, **kw: Any) -> Any:
        return self._run("", self.client.insert, *a, **kw)

    def close(self) -> None:
        self.client.close()


class Compactor:
    """Runs :func:`compact` every ``interval_s`` in a thread of its own, on a client of its
    own, so the sink's flushes never wait for a whole round (only, on embedded chDB, for the
    statement running at that moment). A failed round is logged and retried next time: the
    report rows lag, the reads stay exact (they recompute what changed).

    A second thread labels the inputs (:func:`~feedbackloop.sinks.input_labels.label_inputs`)
    a slice at a time with a pause between slices: it is Python (py3langid), and a long run
    of it would hold the interpreter from the sink's own threads (measured: +300 ms on the
    pipeline's send -> visible p99 when a round labelled everything at once)."""

    def __init__(
        self,
        client_factory: Any,
        database: str,
        interval_s: float,
        lock: threading.Lock | None = None,
        idle: Any = None,
        max_lag_s: float = 10.0,
        reading: Callable[[], bool] | None = None,
    ) -> None:
        self._factory = client_factory
        #: ``idle()`` says the sink has nothing pending; a round waits for that (it would
        #: delay the next flush on embedded chDB) unless the last one is ``max_lag_s`` old.
        self._idle = idle
        self.max_lag_s = max_lag_s
        #: Held by the sink for a whole flush and by the compactor for each statement, so a
        #: flush's inserts into several tables become visible together, never split by a
        #: compaction statement (a reader that saw the interactions sees their feedback).
        self.lock = lock or threading.Lock()
        self.database = database
        self.interval_s = interval_s
        self._stop = threading.Event()
        #: ``reading()`` says analyst statements run in this process now: the rounds and the
        #: labelling wait between statements (:class:`_Yield`).
        self.gate = _Yield(reading, self._stop)
        self._threads: list[threading.Thread] = []
        self.last: CompactionResult | None = None
        #: Interactions whose input labels this compactor computed (sinks/input_labels.py).
        self.labelled = 0
        self.failures = 0

    def start(self) -> None:
        self._threads = [
            threading.Thread(target=self._run, name="report-compactor", daemon=True),
            threading.Thread(target=self._label, name="input-labeller", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop after the running round (and labelling slice); whether both ended within
        ``timeout`` seconds each."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        ended = not any(t.is_alive() for t in self._threads)
        self._threads = []
        return ended

    def _label(self) -> None:
        client = None
        try:
            while not self._stop.is_set():
                done = 0
                try:
                    client = client or _Locked(self._factory(), self.lock, self.gate)
                    done = label_inputs(client, self.database)
                    self.labelled += done
                except Exception as e:  # retried; the reads label what is missing
                    self.failures += 1
                    log.warning("input labelling failed (will retry): %s", e)
                # A full slice: more are waiting, after a pause that lets the sink run.
                self._stop.wait(LABEL_PAUSE_S if done == LABEL_BATCH else self.interval_s)
        finally:
            if client is not None:
                client.close()

    def _repair(self) -> None:
        """:func:`repair_totals` before the first round, if the last one was cut off (the
        checks read without the lock; the corrective inserts take it); then a
        :func:`checkpoint`: nothing else writes the report rows yet, and they agree."""
        raw = self._factory()
        try:
            repaired = []
            if cut_off_round(raw, self.database):
                repaired = repair_totals(raw, self.database, _Locked(raw, self.lock))
            checkpoint(_Locked(raw, self.lock), self.database)
        finally:
            raw.close()
        if repaired:
            log.warning(
                "report totals repaired from the session rows (a compaction was cut off "
                "between its inserts): %s",
                ", ".join(repaired),
            )

    def _run(self) -> None:
        client = None
        try:
            try:
                self._repair()
            except Exception as e:  # the rounds go on; a read stays as exact as the rows
                self.failures += 1
                log.warning("report totals check failed: %s", e)
            last = time.monotonic()
            while not self._stop.wait(self.interval_s):
                busy = self._idle is not None and not self._idle()
                if busy and time.monotonic() - last < self.max_lag_s:
                    continue
                last = time.monotonic()
                try:
                    client = client or _Locked(self._factory(), self.lock, self.gate)
                    self.last = compact(client, self.database)
                    self.gate.after_round(self.last.sessions)
                    if self.last.sessions:
                        log.debug(
                            "compacted %d sessions in %.2f s",
                            self.last.sessions,
                            self.last.seconds,
                        )
                except Exception as e:  # a round that fails is retried; ingestion goes on
                    self.failures += 1
                    log.warning("report rows compaction failed (will retry): %s", e)
        finally:
            if client is not None:
                client.close()


def declared_columns() -> dict[str, tuple[tuple[str, str, str], ...]]:
    """Every report-rows table's columns as ``(name, type, default)`` the way ``DESCRIBE
    TABLE`` prints them: what :data:`feedbackloop.sinks.tables.TABLES` registers."""
    out = {s.table: tuple((c, t, "") for c, t in s.columns) for s in _STATES}
    for t in SUMMED:
        out[t.table] = (
            *((n, ty, "") for n, ty, _ in t.keys),
            *((n, f"SimpleAggregateFunction(sum, {ty})", "") for n, ty, _ in t.sums),
            *((n, f"SimpleAggregateFunction({f}, {ty})", "") for n, f, ty, _ in t.extremes),
            (*STAMP, ""),
        )
    out["report_rows_watermark"] = (
        ("watermark", "DateTime64(3, 'UTC')", ""),
        ("computed_at", "DateTime64(3, 'UTC')", "DEFAULT now64(3)"),
    )
    out[CHECKPOINTS_TABLE] = (
        ("inserts", "String", ""),
        ("computed_at", "DateTime64(3, 'UTC')", "DEFAULT now64(3)"),
    )
    return out
