"""Per-interaction signals: which feedback kinds and implicit signals each interaction has
received, kept by the compactor, so that ``feedbackloop failures`` finds the signals of the
newest 200,000 interactions by a range of hours (:mod:`feedbackloop.analysis.failures
.slice_counts`) instead of scanning every feedback row ever stored for their ids (late
feedback can be anywhere in the feedback table, which is sorted by kind and hour).

``report_interaction_signals`` holds one row per interaction (and hour, for the rare id
stored at two hours) that received any feedback or implicit event: the presence of each
signal the failure analysis counts (:data:`SIGNALS`), the lowest rating (a low rating is
``min_rating <= --low-rating``), and the time of its earliest event (a read with
``--since`` recomputes the interactions with an event before it: it counts only events in
its window). The events are deduplicated as ``FINAL`` does. Report categories are not
kept: a read that counts only some categories reads the events themselves.

Kept like the report rows (:mod:`.report_rows`), exact under redelivery and late events: a
compaction round recomputes every interaction with an event (or itself) inserted after its
``since`` (the watermark less the overlap) and writes its new row (``ReplacingMergeTree``
by ``computed_at``); a read recomputes the interactions touched after the watermark it
reads, from the lookup copies and the rows not copied yet, and takes the stored rows of all
others. Migration 12 computes every interaction's row once.
"""

from __future__ import annotations

from feedbackloop.sinks.report_rows import _events

__all__ = [
    "INTERACTION_SIGNALS_DDL",
    "insert_sql",
    "SIGNALS",
    "SIGNALS_TABLE",
    "SIGNALS_COLUMNS",
    "signals_sql",
    "touched_ids_sql",
]

SIGNALS_TABLE = "report_interaction_signals"

#: (column, aggregate over the interaction's deduplicated feedback rows).
_FEEDBACK = (
    ("thumbs_up", "countIf(kind = 'thumbs' AND thumbs = 1) > 0"),
    ("thumbs_down", "countIf(kind = 'thumbs' AND thumbs = -1) > 0"),
    ("min_rating", "minIf(rating, kind = 'rating')"),
    ("correction", "countIf(kind = 'correction') > 0"),
    ("comment", "countIf(kind = 'comment') > 0"),
    ("reported", "countIf(kind = 'report') > 0"),
)
#: (column, aggregate over its deduplicated implicit rows).
_IMPLICIT = (
    ("regenerate", "countIf(signal = 'regenerate') > 0"),
    ("abandon", "countIf(signal = 'abandon') > 0"),
    ("edit", "countIf(signal = 'edit') > 0"),
    ("copy", "countIf(signal = 'copy') > 0"),
)
#: Every signal column, in table order.
SIGNALS: tuple[str, ...] = tuple(c for c, _ in (*_FEEDBACK, *_IMPLICIT))

#: The table's columns as ``DESCRIBE TABLE`` prints them (sinks/tables.py registers them).
SIGNALS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("occurred_at", "DateTime64(3, 'UTC')"),
    ("interaction_id", "UUID"),
    *((c, "Nullable(UInt8)" if c == "min_rating" else "UInt8") for c in SIGNALS),
    ("first_at", "DateTime64(3, 'UTC')"),
    ("computed_at", "DateTime64(3, 'UTC')"),
)


def signals_sql(ids: str, since: str, window: str = "1") -> str:
    """``SELECT interaction_id, <SIGNALS>, first_at`` of the interactions ``ids`` (a set
    expression) that have any feedback or implicit event matching ``window`` (a condition on
    ``occurred_at``), from the lookup copies and the rows inserted after ``since`` (a
    DateTime64 expression; ``{db}`` templated)."""
    cond = f"interaction_id IN {ids} AND ({window})"
    fb = _events("feedback", "interaction_id, kind, thumbs, rating, occurred_at", cond, since)
    im = _events("implicit", "interaction_id, signal, occurred_at", cond, since)
    none = {"min_rating": "CAST(NULL AS Nullable(UInt8))"}
    fb_cols = ", ".join(
        [f"{agg} AS {c}" for c, agg in _FEEDBACK] + [f"0 AS {c}" for c, _ in _IMPLICIT]
    )
    im_cols = ", ".join(
        [f"{none.get(c, '0')} AS {c}" for c, _ in _FEEDBACK] + [f"{a} AS {c}" for c, a in _IMPLICIT]
    )
    merged = ", ".join(
        f"min({c}) AS {c}" if c == "min_rating" else f"max({c}) AS {c}" for c in SIGNALS
    )
    first = "min(occurred_at) AS first_at"
    return f"""SELECT interaction_id, {merged}, min(first_at) AS first_at FROM (
    SELECT interaction_id, {fb_cols}, {first} FROM ({fb}) GROUP BY interaction_id
    UNION ALL
    SELECT interaction_id, {im_cols}, {first} FROM ({im}) GROUP BY interaction_id
) GROUP BY interaction_id"""


def touched_ids_sql(since: str) -> str:
    """``SELECT interaction_id`` of the interactions with an event, or themselves, inserted
    after ``since`` (min-max index on ``inserted_at``; ``{db}`` templated)."""
    new = f"inserted_at > {since}"
    return (
        f"SELECT interaction_id FROM {{db}}.interactions WHERE {new} "
        f"UNION ALL SELECT interaction_id FROM {{db}}.feedback WHERE {new} "
        f"UNION ALL SELECT interaction_id FROM {{db}}.implicit WHERE {new}"
    )


def _hours(ids: str, since: str) -> str:
    """``interaction_id, occurred_at`` (the earliest of each hour) of the interactions
    ``ids``, from the lookup copy and the rows inserted after ``since``."""
    return f"""SELECT interaction_id, min(at) AS occurred_at FROM (
    SELECT interaction_id, occurred_at AS at FROM {{db}}.report_lookup_units
    WHERE interaction_id IN {ids}
    UNION ALL
    SELECT interaction_id, occurred_at AS at FROM {{db}}.interactions
    WHERE inserted_at > {since} AND interaction_id IN {ids}
) GROUP BY interaction_id, toStartOfHour(at)"""


def insert_sql(ids: str, since: str, computed_at: str) -> str:
    """Insert the rows of the interactions ``ids`` (a set expression) as they are now: the
    compactor's step (``since``: what its lookup copies hold; ``{db}`` templated)."""
    names = ", ".join(c for c, _ in SIGNALS_COLUMNS)
    return f"""INSERT INTO {{db}}.{SIGNALS_TABLE} ({names})
SELECT h.occurred_at, h.interaction_id, {", ".join(f"s.{c}" for c in SIGNALS)}, s.first_at,
    {computed_at}
FROM ({_hours(ids, since)}) AS h
INNER JOIN ({signals_sql(ids, since)}) AS s ON s.interaction_id = h.interaction_id"""


#: Parts migration 12 computes the rows of a database in (each part's interactions at once).
_BACKFILL_PARTS = 8


def _backfill(part: int) -> str:
    """Every stored interaction's row (one part of them), from the event tables themselves
    (the lookup copies may not be filled; the compactor recomputes whatever is inserted
    after the watermark it has)."""
    ids = (
        f"(SELECT interaction_id FROM {{db}}.interactions "
        f"WHERE cityHash64(interaction_id) % {_BACKFILL_PARTS} = {part})"
    )
    # ``since`` = the epoch less a second: every row is a fresh one, none from a copy.
    epoch = "toDateTime64(-1, 3, 'UTC')"
    return insert_sql(ids, epoch, "now64(3, 'UTC')")


#: Migration 12 (``{db}`` templated): the table, then every interaction's row.
INTERACTION_SIGNALS_DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {{db}}.{SIGNALS_TABLE}
(
    {", ".join(f"{c} {t}" for c, t in SIGNALS_COLUMNS)}
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY (toStartOfHour(occurred_at), interaction_id)""",
    *(_backfill(p) for p in range(_BACKFILL_PARTS)),
)
