"""The failure slices' read counted in ClickHouse: the newest interactions of a scope grouped
by their slice attributes and the signals they received (:class:`~.analyze.SliceCount`), a
few thousand rows instead of 200,000 judged interactions built in Python
(:mod:`.records`), whose language py3langid then detects one by one.

The same interactions, the same events and the same deduplication as
:func:`~.records.read_judged_interactions`, and the same attributes
(:func:`~.analyze.slice_attributes`). Each interaction's signals are its stored
per-interaction signals (:mod:`feedbackloop.sinks.interaction_signals`, read by hour),
recomputed in the read for the interactions touched since the last compaction (a definition
restricted to some report categories reads the events instead, :func:`~.records.sources`).
The language and code flag of an input come from its stored label
(:mod:`feedbackloop.sinks.input_labels`), computed by the same functions from the same
head. An interaction without a label yet (inserted since the labeller's last call, or
stored before the labels existed and not reached by their backfill) comes back on its own,
and its head is read and labelled here, as the per-row read always did: a missing label
costs time, never a different answer.

``feedbackloop failures`` and the dashboard's failures panel read this; the commands that
need each interaction (``complaints``, the exports) read :mod:`.records`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from feedbackloop.analysis.failures.analyze import SliceCount, slice_attributes
from feedbackloop.analysis.failures.language import HEAD_CHARS, detect_input_language
from feedbackloop.analysis.failures.negative import NegativeDefinition
from feedbackloop.analysis.failures.records import Sources, newest_hours, sources
from feedbackloop.analysis.reads.literals import datetime_literal, quote
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.config import Settings
from feedbackloop.errors import ConfigError
from feedbackloop.schemas.derive import has_code
from feedbackloop.schemas.enriched import LENGTH_BUCKETS

__all__ = ["load_slice_counts", "read_slice_counts"]

Run = Callable[[str, int], Sequence[Sequence[Any]]]

#: A bucket of ``input_chars`` as :func:`feedbackloop.schemas.derive.length_bucket` gives it.
_LENGTH_SQL = (
    "multiIf("
    + ", ".join(f"i.input_chars <= {upper}, '{name}'" for name, upper in LENGTH_BUCKETS)
    + ", 'xl')"
)

#: The interactions' columns the counts read. They are deduplicated as ``FINAL`` does with
#: ``LIMIT 1 BY`` their sorting key (sinks.report_rows.dedup_sql): at 10M interactions,
#: 0.18 s for the newest 200,000 where ``FINAL`` took 0.87 s (it merges the whole newest
#: hours' parts in key order before the limit).
_I_COLUMNS = (
    "event_id, interaction_id, prompt_version, model, experiment, variant, input_has_code,"
    " input_length_bucket, input_chars, metadata, occurred_at"
)

#: Each interaction's tag: 62 bits of a hash of the row's event id.
_TAG = "cityHash64(i.event_id) % 4611686018427387904"


def _flags(definition: NegativeDefinition) -> tuple[str, str]:
    """The feedback and implicit CTE bodies' flag columns: each signal of
    :data:`~.negative.SIGNALS` present under ``definition``, and what ``any_feedback``
    needs, as :class:`~.negative.InteractionSignals` and ``present`` count them."""
    cats = definition.report_categories
    report = (
        "kind = 'report'"
        if cats is None
        else (
            f"kind = 'report' AND category IN ({', '.join(quote(c) for c in sorted(cats))})"
            if cats
            else "0"
        )
    )
    low = int(definition.low_rating_max)
    fb = f"""countIf(kind = 'thumbs' AND thumbs = -1) > 0 AS thumbs_down,
        countIf(kind = 'rating' AND rating IS NOT NULL AND rating <= {low}) > 0 AS low_rating,
        countIf(kind = 'correction') > 0 AS correction,
        countIf({report}) > 0 AS report,
        countIf(kind = 'comment') > 0 AS comment,
        countIf((kind = 'thumbs' AND thumbs IN (1, -1)) OR (kind = 'rating' AND rating IS NOT NULL)
            OR kind IN ('correction', 'comment', 'report')) > 0 AS reacted"""
    im = """countIf(signal = 'regenerate') > 0 AS regenerate,
        countIf(signal = 'abandon') > 0 AS abandon,
        countIf(signal = 'edit') > 0 AS edit,
        countIf(signal IN ('regenerate', 'abandon', 'edit', 'copy')) > 0 AS reacted"""
    return fb, im


#: The present-signal columns of :func:`_query`'s result, in :data:`~.negative.SIGNALS` order.
_SIGNAL_COLUMNS = (
    ("thumbs_down", "fb"),
    ("low_rating", "fb"),
    ("correction", "fb"),
    ("report", "fb"),
    ("regenerate", "im"),
    ("abandon", "im"),
    ("edit", "im"),
    ("comment", "fb"),
)


def _stored_signals(sel: Scope, db: str, hour: str, since: str, low: int) -> tuple[str, str]:
    """The ``s`` CTE (each interaction's signals: the stored rows of
    :mod:`feedbackloop.sinks.interaction_signals` in the newest hours, those touched after
    ``since``, the watermark less the overlap, recomputed) and the flag columns over it."""
    from feedbackloop.sinks.interaction_signals import (
        SIGNALS,
        SIGNALS_TABLE,
        signals_sql,
        touched_ids_sql,
    )

    touched = touched_ids_sql(since)
    stored_where = f"{hour} AND interaction_id NOT IN ({touched})"
    recompute = f"({touched})"
    window = "1"
    if sel.since is not None:
        # Their events before the window do not count: recompute those that have some.
        window = f"occurred_at >= {datetime_literal(sel.since)}"
        stored_where += f" AND first_at >= {datetime_literal(sel.since)}"
        early = (
            f"SELECT interaction_id FROM {{db}}.{SIGNALS_TABLE} FINAL "
            f"WHERE {hour} AND first_at < {datetime_literal(sel.since)}"
        )
        recompute = f"({touched} UNION ALL {early})"
    cols = ", ".join(SIGNALS)
    cte = f"""s AS (
    SELECT interaction_id, {cols} FROM {{db}}.{SIGNALS_TABLE} FINAL
    WHERE {stored_where}
    LIMIT 1 BY interaction_id
    UNION ALL
    SELECT interaction_id, {cols} FROM ({signals_sql(recompute, since, window)})
)""".replace("{db}", db)
    reacted = " OR ".join(
        "s.min_rating IS NOT NULL" if c == "min_rating" else f"s.{c}" for c in SIGNALS
    )
    flags = {
        "thumbs_down": "s.thumbs_down",
        "low_rating": f"ifNull(s.min_rating <= {int(low)}, 0)",
        "correction": "s.correction",
        "report": "s.reported",
        "regenerate": "s.regenerate",
        "abandon": "s.abandon",
        "edit": "s.edit",
        "comment": "s.comment",
    }
    columns = ", ".join(flags[name] for name, _ in _SIGNAL_COLUMNS)
    return cte, f"{columns}, {reacted} AS any_feedback"


def _newest(sel: Scope, db: str, src: Sources) -> str:
    """The newest ``sel.limit`` interactions of ``sel`` within ``src``'s hours, deduplicated
    with ``LIMIT 1 BY`` their sorting key (:data:`_I_COLUMNS`)."""
    from feedbackloop.sinks.report_rows import dedup_sql  # the sinks import lazily

    which = f"{src.bound}{sel.interaction_filter()}"
    return (
        f"SELECT * FROM ({dedup_sql(f'{db}.interactions', 'interactions', _I_COLUMNS, which)}) "
        f"ORDER BY occurred_at DESC LIMIT {int(sel.limit)}"
    )


def _labels(sel: Scope, db: str, src: Sources) -> str:
    """The stored input labels of ``sel``'s app within ``src``'s hours, one per event id."""
    from feedbackloop.sinks.input_labels import labels_sql

    app = f"app_id = {quote(sel.app_id)}" if sel.app_id is not None else "1"
    return labels_sql(db, f"{app} AND {src.hour}")


def _query(
    sel: Scope, db: str, cutoff: str, definition: NegativeDefinition, since: str | None
) -> str:
    """The newest ``sel.limit`` interactions of ``sel`` counted by slice attributes and
    present signals. The signals are the stored per-interaction ones (``since``: the
    watermark less the overlap the read fixed) unless the definition counts only some report
    categories, which only the events hold (``since`` is ``None``). An interaction without
    a label is a count of its own, named by its event id (``unlabelled``), so that its head
    can be read and labelled."""
    src = sources(sel, db, cutoff)
    if since is not None:
        cte, signals = _stored_signals(sel, db, src.hour, since, definition.low_rating_max)
        joins = "LEFT JOIN s ON s.interaction_id = i.interaction_id"
    else:
        fb_flags, im_flags = _flags(definition)
        cte = f"""fb AS (
    SELECT interaction_id, {fb_flags}
    FROM ({src.feedback})
    GROUP BY interaction_id
), im AS (
    SELECT interaction_id, {im_flags}
    FROM ({src.implicit})
    GROUP BY interaction_id
)"""
        signals = ", ".join(f"{alias}.{name}" for name, alias in _SIGNAL_COLUMNS)
        signals += ", fb.reacted OR im.reacted AS any_feedback"
        joins = (
            "LEFT JOIN fb ON fb.interaction_id = i.interaction_id\n"
            "LEFT JOIN im ON im.interaction_id = i.interaction_id"
        )
    return f"""
WITH {cte}
SELECT
    i.prompt_version, i.model, i.experiment, i.variant,
    l.language AS language,
    multiIf(i.input_length_bucket != '', toInt8(i.input_has_code),
        l.language != '', toInt8(l.has_code), toInt8(-1)) AS code,
    if(i.input_length_bucket != '', i.input_length_bucket, {_LENGTH_SQL}) AS length,
    if(empty(i.metadata), '', toValidUTF8(toJSONString(i.metadata))) AS meta,
    {signals},
    if(l.language = '', toString(i.event_id), '') AS unlabelled,
    count() AS interactions,
    sum({_TAG}) AS tag
FROM ({_newest(sel, db, src)}) AS i
{joins}
LEFT JOIN ({_labels(sel, db, src)}) AS l ON l.event_id = i.event_id
GROUP BY ALL
"""


#: Up to this many unlabelled interactions are named in the heads' statement (~45 bytes
#: each, far below ClickHouse's 256 KiB statement limit); more are found again by a join.
_NAMED_HEADS = 2_000


def _heads_query(sel: Scope, db: str, cutoff: str, ids: Sequence[str]) -> str:
    """``event_id, head`` of the unlabelled interactions ``ids`` that :func:`_query` counted
    (or, past :data:`_NAMED_HEADS`, of every unlabelled one of its newest interactions)."""
    src = sources(sel, db, cutoff)
    which = f"{src.bound}{sel.interaction_filter()}"
    if len(ids) <= _NAMED_HEADS:
        named = ", ".join(f"toUUID({quote(i)})" for i in ids)
        return f"""
SELECT DISTINCT toString(event_id), substring(user_input, 1, {HEAD_CHARS})
FROM {db}.interactions WHERE {which} AND event_id IN ({named})
"""
    return f"""
SELECT DISTINCT toString(event_id), substring(user_input, 1, {HEAD_CHARS})
FROM {db}.interactions
WHERE {which}
    AND event_id IN (SELECT event_id FROM ({_newest(sel, db, src)}))
    AND event_id NOT IN (SELECT event_id FROM ({_labels(sel, db, src)}))
"""


def _heads(run: Run, sel: Scope, db: str, cutoff: str, ids: Sequence[str]) -> dict[str, str]:
    """Event id -> head of the unlabelled interactions ``ids``. The labeller runs beside
    the reads: past :data:`_NAMED_HEADS` the heads' statement finds them again as the
    newest interactions without a label, which leaves out any labelled since the counts
    were read (and any that newer interactions pushed out of the newest): those are then
    read by name (the whole suite once failed on one in the demo)."""
    if not ids:
        return {}
    heads = {str(e): str(h) for e, h in run(_heads_query(sel, db, cutoff, ids), 2 * sel.limit)}
    missing = [i for i in ids if i not in heads]
    for k in range(0, len(missing), _NAMED_HEADS):
        named = missing[k : k + _NAMED_HEADS]
        heads.update(
            (str(e), str(h)) for e, h in run(_heads_query(sel, db, cutoff, named), 2 * len(named))
        )
    return heads


def read_slice_counts(
    run: Run, selection: Scope, db: str, definition: NegativeDefinition | None = None
) -> list[SliceCount]:
    """The :class:`~.analyze.SliceCount` of the newest ``selection.limit`` interactions,
    through ``run(sql, max_rows) -> rows``. Like :func:`~.records.read_judged_interactions`,
    the newest hours first, and all of them again when those turn out to hold fewer than
    the limit once deduplicated."""
    if selection.with_text:
        raise ConfigError("failure slices count every interaction: with_text is not one")
    definition = definition or NegativeDefinition()
    since = None
    if definition.report_categories is None:  # the stored signals keep no category
        from feedbackloop.sinks.report_rows import since_sql, time_literal

        since = time_literal(str(run(since_sql().replace("{db}", db), 1)[0][0]))
    cutoff = newest_hours(run, selection, db)
    limit = selection.limit
    rows = run(_query(selection, db, cutoff, definition, since), limit)
    if cutoff and sum(int(r[-2]) for r in rows) < limit:
        cutoff = ""
        rows = run(_query(selection, db, cutoff, definition, since), limit)
    heads = _heads(run, selection, db, cutoff, [str(r[-3]) for r in rows if r[-3]])
    out = []
    for row in rows:
        pv, model, exp, var, lang, code, length, meta, *flags = row[:-3]
        unlabelled, n, tag = row[-3:]
        *present, reacted = flags
        if unlabelled:
            head = heads[str(unlabelled)]
            lang = detect_input_language(head)
            if int(code) < 0:
                code = has_code(head)
        metadata = {str(k): str(v) for k, v in json.loads(meta).items()} if meta else {}
        out.append(
            SliceCount(
                slice_attributes(pv, model, exp, var, lang, bool(code), length, metadata),
                tuple(
                    name for (name, _), on in zip(_SIGNAL_COLUMNS, present, strict=True) if int(on)
                ),
                bool(int(reacted)),
                int(n),
                int(tag) % 2**64,
            )
        )
    return out


def load_slice_counts(
    settings: Settings,
    selection: Scope,
    definition: NegativeDefinition | None = None,
    *,
    url: str | None = None,
) -> list[SliceCount]:
    """:func:`read_slice_counts` through :func:`feedbackloop.sinks.run_query` (which works
    while the sink worker holds embedded chDB)."""
    from feedbackloop.sinks import run_query
    from feedbackloop.sinks.migrations import _check_identifier

    def run(sql: str, max_rows: int) -> list[list[Any]]:
        return run_query(settings, sql, url=url, max_rows=max_rows).rows

    db = _check_identifier(settings.clickhouse_database)
    return read_slice_counts(run, selection, db, definition)
