"""Input labels: each interaction's input language (py3langid) and whether its input holds
code, computed once in Python and stored, so that ``feedbackloop failures`` can count its
slices in ClickHouse (:mod:`feedbackloop.analysis.failures.slice_counts`) instead of
detecting the language of 200,000 inputs at every read (~65 µs each: 13 s).

The labels are exactly what the failure analysis computes from an interaction's head
(:data:`~feedbackloop.analysis.failures.language.HEAD_CHARS` characters of its input):
:func:`~feedbackloop.analysis.failures.language.detect_input_language` and
:func:`~feedbackloop.schemas.derive.has_code`. The stream jobs' stored ``input_language``
is a cheaper stop-word heuristic and is not what the analysis slices by.

:func:`label_inputs` labels the interactions inserted after its cursor, oldest first, at
most ``batch`` per call; the sink's compactor runs it in a thread of its own, a call at a
time with a pause between calls (:data:`LABEL_PAUSE_S`), so a database that held
interactions before this table existed is labelled in the background.
The read treats an interaction without a label as the analysis always did (detects it from
the head it reads), so a label that is missing or late changes the time, never the answer.
A label is keyed by the interaction row's event id (its raw and enriched copies have the
same input, so the same label) and sorted by app and hour like the interactions, so the
read takes only the newest hours' labels.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "CURSOR_COLUMNS",
    "INPUT_LABELS_DDL",
    "LABEL_BATCH",
    "LABEL_COLUMNS",
    "LABEL_PAUSE_S",
    "label_inputs",
    "labels_sql",
]

log = logging.getLogger(__name__)

#: Interactions labelled per call: ~65 µs each of Python, ~30 ms a call.
LABEL_BATCH = 500
#: The compactor's labeller pauses this long between full calls (a backlog): ~3,000
#: labels a second at most, with the sink's threads running in between.
LABEL_PAUSE_S = 0.1

_ZERO = "toUUID('00000000-0000-0000-0000-000000000000')"
_EPOCH = "toDateTime64(0, 3, 'UTC')"

#: The labels' columns as ``DESCRIBE TABLE`` prints them (sinks/tables.py registers them).
#: ``inserted_at`` is the labelled row's (the cursor's order).
LABEL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("app_id", "LowCardinality(String)"),
    ("occurred_at", "DateTime64(3, 'UTC')"),
    ("event_id", "UUID"),
    ("language", "LowCardinality(String)"),
    ("has_code", "Bool"),
    ("inserted_at", "DateTime64(3, 'UTC')"),
)
#: The cursor's columns: ``(name, type, default)``.
CURSOR_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("inserted_at", "DateTime64(3, 'UTC')", ""),
    ("event_id", "UUID", ""),
    ("computed_at", "DateTime64(3, 'UTC')", "DEFAULT now64(3)"),
)


def _columns(cols: Iterable[Sequence[str]]) -> str:
    return ",\n    ".join(" ".join(c for c in col if c) for col in cols)


#: Migration 11 (``{db}`` templated). Sorted by app and hour as the interactions are, so a
#: read takes the newest hours' labels; the optional TTL expires them by ``occurred_at``.
INPUT_LABELS_DDL: tuple[str, ...] = (
    f"""CREATE TABLE IF NOT EXISTS {{db}}.report_input_labels
(
    {_columns(LABEL_COLUMNS)}
)
ENGINE = ReplacingMergeTree
ORDER BY (app_id, toStartOfHour(occurred_at), event_id)""",
    f"""CREATE TABLE IF NOT EXISTS {{db}}.report_input_labels_cursor
(
    {_columns(CURSOR_COLUMNS)}
)
ENGINE = ReplacingMergeTree(computed_at)
ORDER BY tuple()""",
)


def labels_sql(db: str, where: str) -> str:
    """``event_id, language, has_code`` of the labels matching ``where`` (on ``app_id`` and
    ``occurred_at``), one per event id (two copies of a label until they merge)."""
    return (
        f"SELECT event_id, any(language) AS language, any(has_code) AS has_code "
        f"FROM {db}.report_input_labels WHERE {where} GROUP BY event_id"
    )


_warned = threading.Event()


def label_inputs(
    client: Any, database: str, batch: int = LABEL_BATCH, overlap_ms: int | None = None
) -> int:
    """Label up to ``batch`` interactions inserted after the cursor and at least the
    compactor's overlap ago (rows stamped before that are visible: the report rows' own
    assumption), oldest first; returns how many were labelled (0: caught up, or py3langid
    is not installed here: then the reads detect the languages themselves)."""
    from feedbackloop.errors import MissingDependency

    try:
        from feedbackloop.analysis.failures.language import (
            HEAD_CHARS,
            detect_input_language,
            load_model,
        )
        from feedbackloop.schemas.derive import has_code

        load_model()
    except (ImportError, MissingDependency) as e:
        if not _warned.is_set():
            _warned.set()
            log.warning("input labels not computed here (%s): failures reads detect them", e)
        return 0
    from feedbackloop.sinks.report_rows import OVERLAP_MS, time_literal

    overlap = OVERLAP_MS if overlap_ms is None else overlap_ms
    db = database
    at, eid = client.query(
        f"SELECT toString(if(count() = 0, {_EPOCH}, max(inserted_at))), "
        f"toString(if(count() = 0, {_ZERO}, argMax(event_id, (inserted_at, event_id)))) "
        f"FROM {db}.report_input_labels_cursor"
    ).result_rows[0]
    after = time_literal(at)
    eid = str(uuid.UUID(eid))
    rows = client.query(
        f"SELECT app_id, occurred_at, event_id, substring(user_input, 1, {HEAD_CHARS}), "
        f"inserted_at FROM {db}.interactions "
        f"WHERE NOT shadow AND inserted_at >= {after} "
        f"AND (inserted_at, event_id) > ({after}, toUUID('{eid}')) "
        f"AND inserted_at <= now64(3) - toIntervalMillisecond({int(overlap)}) "
        f"ORDER BY inserted_at, event_id LIMIT {int(batch)}"
    ).result_rows
    if not rows:
        return 0
    labelled = [
        (app, occurred, event, detect_input_language(head), has_code(head), inserted)
        for app, occurred, event, head, inserted in rows
    ]
    client.insert(
        f"{db}.report_input_labels",
        labelled,
        column_names=[c for c, _ in LABEL_COLUMNS],
    )
    last = rows[-1]
    client.insert(
        f"{db}.report_input_labels_cursor",
        [(last[4], last[2])],
        column_names=["inserted_at", "event_id"],
    )
    return len(rows)
