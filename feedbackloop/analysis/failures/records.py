"""Judged interactions read from ClickHouse: each interaction with every signal it received.

Read-only statements (through :func:`feedbackloop.sinks.run_query`, so they work while the
sink worker holds embedded chDB) return one row per interaction in the window: its request
context, derived attributes, metadata, the counts of each feedback and implicit signal and the
free texts (corrections, comments, report texts, edits) with their event ids. A redelivered
event counts once: interactions are read with ``FINAL``, their events deduplicated the way
``FINAL`` does (docs/ARCHITECTURE.md, "Storage"). Only the newest interactions and their
events are read (:func:`read_judged_interactions`): the cost is the limit's, not everything
ever stored.

Feedback is matched to interactions by ``interaction_id``, not by time: a thumbs-down that
arrives an hour after its interaction still belongs to it. Shadow interactions are left out
(the user never saw them).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.analysis.failures.language import HEAD_CHARS
from feedbackloop.analysis.failures.negative import InteractionSignals
from feedbackloop.analysis.reads.literals import datetime_literal, quote
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.config import Settings

__all__ = [
    "FeedbackText",
    "JudgedInteraction",
    "load_judged_interactions",
    "read_judged_interactions",
    "rows_to_judged",
]


@dataclass(frozen=True)
class FeedbackText:
    """A free text about an interaction: correction, comment, report text or edited response."""

    kind: str
    text: str
    event_id: str
    occurred_at: str = ""


@dataclass(frozen=True)
class JudgedInteraction:
    """One interaction with its context and every signal it received."""

    interaction_id: str
    event_id: str
    occurred_at: str
    app_id: str
    model: str
    prompt_version: str
    experiment: str
    variant: str
    user_input: str
    response: str
    system_prompt: str
    input_has_code: bool
    input_length_bucket: str
    input_chars: int
    stored_language: str
    metadata: Mapping[str, str]
    signals: InteractionSignals
    texts: tuple[FeedbackText, ...] = field(default_factory=tuple)

    @property
    def corrections(self) -> tuple[FeedbackText, ...]:
        return tuple(t for t in self.texts if t.kind == "correction")


#: The newest hours of interactions looked at first hold this many times the limit (counted
#: before deduplication, so redelivered copies can make them hold fewer than the limit; then
#: the read runs again without the bound).
_CUTOFF_MARGIN = 1.25

#: The columns read of each event table (never the whole row: a prompt or a response would
#: be carried through the deduplication for nothing).
_FEEDBACK_COLUMNS = "interaction_id, kind, thumbs, rating, category, text, event_id, occurred_at"
_IMPLICIT_COLUMNS = "interaction_id, signal, edited_text, event_id, occurred_at"


def _cutoff_query(sel: Scope, db: str) -> str:
    """The oldest hour of the newest hours that hold ``limit`` times :data:`_CUTOFF_MARGIN`
    interactions in ``sel`` (raw rows, one cheap pass over two columns); ``''`` when all of
    them together hold fewer (then nothing is left out)."""
    target = math.ceil(sel.limit * _CUTOFF_MARGIN)
    return f"""
SELECT if(sum(n) < {target}, '', toString(toDateTime(min(hour), 'UTC')))
FROM (
    SELECT hour, n,
        sum(n) OVER (ORDER BY hour DESC ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS newer
    FROM (
        SELECT toStartOfHour(occurred_at) AS hour, count() AS n
        FROM {db}.interactions
        WHERE {sel.interaction_filter()}
        GROUP BY hour
    )
)
WHERE newer < {target}
"""


def newest_hours(run: Callable[[str, int], Sequence[Sequence[Any]]], sel: Scope, db: str) -> str:
    """The oldest of the newest hours that hold :data:`_CUTOFF_MARGIN` times ``sel.limit``
    interactions (``''``: all of them hold fewer), through ``run(sql, max_rows) -> rows``."""
    return str(run(_cutoff_query(sel, db), 1)[0][0] or "")


@dataclass(frozen=True)
class Sources:
    """What a read of the newest interactions in a scope takes from each table."""

    #: ``toStartOfHour(occurred_at) >= cutoff`` (``1``: no cutoff): the newest hours.
    hour: str
    #: The feedback and implicit rows (``SELECT``) those interactions may have, deduplicated.
    feedback: str
    implicit: str

    @property
    def bound(self) -> str:
        """:attr:`hour` as the first term of a ``WHERE`` (``''`` without a cutoff)."""
        return "" if self.hour == "1" else f"{self.hour} AND "


def sources(sel: Scope, db: str, cutoff: str) -> Sources:
    """The interactions' bound and their events' statements for ``cutoff`` (an hour, or
    ``''``): every row of a sorting key shares its hour, so the bound drops whole keys and
    ``FINAL`` keeps what it kept without it. Events are then only those of these
    interactions (any time: a late thumbs still counts), deduplicated as ``FINAL`` does but
    only among the matching rows (``LIMIT 1 BY`` the sorting key): ``FINAL`` of a whole
    event table would merge every row ever stored."""
    fb_since = im_since = "1"
    if sel.since is not None:
        # Feedback follows its interaction: older feedback cannot belong to the window.
        fb_since = im_since = f"occurred_at >= {datetime_literal(sel.since)}"
    if not cutoff:
        return Sources(
            "1",
            f"SELECT {_FEEDBACK_COLUMNS} FROM {db}.feedback FINAL WHERE {fb_since}",
            f"SELECT {_IMPLICIT_COLUMNS} FROM {db}.implicit FINAL WHERE {im_since}",
        )
    hour = f"toStartOfHour(occurred_at) >= toDateTime({quote(cutoff)}, 'UTC')"
    ids = f"interaction_id IN (SELECT interaction_id FROM {db}.interactions WHERE {hour})"
    from feedbackloop.sinks.report_rows import dedup_sql  # the sinks import lazily

    return Sources(
        hour,
        dedup_sql(f"{db}.feedback", "feedback", _FEEDBACK_COLUMNS, f"{ids} AND {fb_since}"),
        dedup_sql(f"{db}.implicit", "implicit", _IMPLICIT_COLUMNS, f"{ids} AND {im_since}"),
    )


def _query(select_texts: bool, text_chars: int | None, sel: Scope, db: str, cutoff: str) -> str:
    """One row per interaction in ``sel``, newest first, with its signals, from the
    :func:`sources` of ``cutoff``.

    The lists (ratings, report categories, texts) come back as one JSON text, ``''`` when
    all are empty, and the metadata likewise: an ``Array`` or ``Map`` column costs ~2 µs a
    row to decode even when empty, an empty string next to nothing, and most interactions
    have no rating, report or text. ``toValidUTF8``: a driver hands over a string that is not
    UTF-8 as hex, which would not parse as JSON (the pipeline stores only UTF-8; this keeps
    a row written around it readable).
    """

    def head(col: str) -> str:
        return col if text_chars is None else f"substring({col}, 1, {int(text_chars)})"

    src = sources(sel, db, cutoff)
    bound, feedback, implicit = src.bound, src.feedback, src.implicit
    newest = ""
    if cutoff and not sel.with_text:  # with_text filters after the join: the limit comes last
        newest = f"ORDER BY occurred_at DESC LIMIT {int(sel.limit)}"
    with_text = " AND (notEmpty(fb.texts) OR notEmpty(im.edit_texts))" if sel.with_text else ""
    response = head("response") if select_texts else "''"
    system = head("system_prompt") if select_texts else "''"
    return f"""
WITH fb AS (
    SELECT interaction_id,
        countIf(kind = 'thumbs' AND thumbs = 1) AS thumbs_up,
        countIf(kind = 'thumbs' AND thumbs = -1) AS thumbs_down,
        groupArrayIf(assumeNotNull(rating), kind = 'rating' AND rating IS NOT NULL) AS ratings,
        countIf(kind = 'correction') AS corrections,
        countIf(kind = 'comment') AS comments,
        groupArrayIf(category, kind = 'report') AS report_categories,
        groupArrayIf(
            (kind, text, toString(event_id), toString(occurred_at)), text != ''
        ) AS texts
    FROM ({feedback})
    GROUP BY interaction_id
), im AS (
    SELECT interaction_id,
        countIf(signal = 'regenerate') AS regenerates,
        countIf(signal = 'abandon') AS abandons,
        countIf(signal = 'edit') AS edits,
        countIf(signal = 'copy') AS copies,
        groupArrayIf(
            ('edit', edited_text, toString(event_id), toString(occurred_at)),
            signal = 'edit' AND edited_text != ''
        ) AS edit_texts
    FROM ({implicit})
    GROUP BY interaction_id
)
SELECT
    toString(i.interaction_id), toString(i.event_id), toString(i.occurred_at),
    i.app_id, i.model, i.prompt_version, i.experiment, i.variant,
    i.user_input, i.response, i.system_prompt,
    i.input_has_code, i.input_length_bucket, i.input_chars, i.input_language,
    if(empty(i.metadata), '', toValidUTF8(toJSONString(i.metadata))),
    fb.thumbs_up, fb.thumbs_down, fb.corrections, fb.comments,
    im.regenerates, im.abandons, im.edits, im.copies,
    if(empty(fb.ratings) AND empty(fb.report_categories) AND empty(fb.texts)
        AND empty(im.edit_texts), '',
        toValidUTF8(toJSONString((fb.ratings, fb.report_categories, fb.texts, im.edit_texts))))
FROM (
    SELECT interaction_id, event_id, occurred_at, app_id, model, prompt_version, experiment,
        variant, {head("user_input")} AS user_input, {response} AS response,
        {system} AS system_prompt, input_has_code, input_length_bucket, input_chars,
        input_language, metadata
    FROM {db}.interactions FINAL
    WHERE {bound}{sel.interaction_filter()}
    {newest}
) AS i
LEFT JOIN fb ON fb.interaction_id = i.interaction_id
LEFT JOIN im ON im.interaction_id = i.interaction_id
WHERE 1{with_text}
ORDER BY i.occurred_at DESC
LIMIT {int(sel.limit)}
"""


def _json(raw: Any) -> Any:
    """A list or map of the query (JSON text), or one handed over as a value already."""
    if isinstance(raw, str):
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None
    return raw


def _texts(raw: Any) -> tuple[FeedbackText, ...]:
    out = []
    for item in raw or ():
        kind, text, eid, at = (list(item) + ["", "", "", ""])[:4]
        out.append(FeedbackText(str(kind), str(text), str(eid), str(at)))
    return tuple(out)


def _metadata(raw: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in dict(_json(raw) or {}).items()}


_NO_LISTS: tuple[Any, ...] = ((), (), (), ())


def rows_to_judged(rows: Iterable[Sequence[Any]]) -> list[JudgedInteraction]:
    """The result rows of :func:`_query` (from a client or the worker's JSON endpoint).

    Interactions that received the same signals share one :class:`InteractionSignals`
    (frozen): most received none or one thumbs, and building one per row was a fifth of
    the read's Python time at 200,000 rows."""
    shared: dict[tuple[Any, ...], InteractionSignals] = {}
    out = []
    for row in rows:
        (
            iid,
            eid,
            at,
            app,
            model,
            pv,
            exp,
            var,
            user_input,
            response,
            system,
            has_code,
            bucket,
            chars,
            lang,
            meta,
            t_up,
            t_down,
            corr,
            comm,
            regen,
            abandon,
            edits,
            copies,
            lists,
        ) = row
        ratings, reports, texts, edit_texts = _json(lists) or _NO_LISTS
        key = (t_up, t_down, corr, comm, regen, abandon, edits, copies, lists)
        signals = shared.get(key)
        if signals is None:
            signals = shared[key] = InteractionSignals(
                thumbs_up=int(t_up or 0),
                thumbs_down=int(t_down or 0),
                ratings=tuple(int(r) for r in ratings),
                corrections=int(corr or 0),
                comments=int(comm or 0),
                report_categories=tuple(str(c) for c in reports),
                regenerates=int(regen or 0),
                abandons=int(abandon or 0),
                edits=int(edits or 0),
                copies=int(copies or 0),
            )
        # Every text column is a String of the query (toString where it is not): no str().
        out.append(
            JudgedInteraction(
                interaction_id=iid,
                event_id=eid,
                occurred_at=at,
                app_id=app,
                model=model,
                prompt_version=pv,
                experiment=exp,
                variant=var,
                user_input=user_input,
                response=response,
                system_prompt=system,
                input_has_code=bool(has_code),
                input_length_bucket=bucket,
                input_chars=int(chars),
                stored_language=lang,
                metadata=_metadata(meta) if meta else {},
                signals=signals,
                texts=_texts(texts) + _texts(edit_texts) if texts or edit_texts else (),
            )
        )
    return out


def read_judged_interactions(
    run: Callable[[str, int], Sequence[Sequence[Any]]],
    selection: Scope,
    db: str,
    *,
    full_text: bool = False,
) -> list[JudgedInteraction]:
    """:func:`load_judged_interactions` through ``run(sql, max_rows) -> rows``.

    Two statements: the hour from which the newest interactions are read
    (:func:`_cutoff_query`), then the rows (:func:`_query`). If that hour turns out to hold
    fewer than ``selection.limit`` interactions once deduplicated, the rows are read again
    without it, so the answer never depends on the guess.
    """
    text_chars = None if full_text else HEAD_CHARS
    with _collector_paused():
        cutoff = ""
        if not selection.with_text:  # which interactions have a text is known after the join
            cutoff = newest_hours(run, selection, db)
        rows = run(_query(full_text, text_chars, selection, db, cutoff), selection.limit)
        if cutoff and len(rows) < selection.limit:
            rows = run(_query(full_text, text_chars, selection, db, ""), selection.limit)
        return rows_to_judged(rows)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector paused (if it ran) while the rows are built.

    200,000 rows are a few million objects, none in a cycle; the collections their
    allocation triggers each walk every object built so far: a third of the time to build
    them (1.9 s -> 1.2-1.4 s at 1M interactions, load ~4.6). Nothing is lost: objects in
    cycles made meanwhile are collected at the next collection after it resumes.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def load_judged_interactions(
    settings: Settings,
    selection: Scope,
    *,
    full_text: bool = False,
    url: str | None = None,
) -> list[JudgedInteraction]:
    """Every non-shadow interaction in ``selection``, newest first, with its signals.

    ``full_text`` also reads the whole input, response and system prompt (exports need
    them); otherwise only the head of the input is read, which is all slicing needs.
    """
    from feedbackloop.sinks import run_query
    from feedbackloop.sinks.migrations import _check_identifier

    def run(sql: str, max_rows: int) -> list[list[Any]]:
        return run_query(settings, sql, url=url, max_rows=max_rows).rows

    db = _check_identifier(settings.clickhouse_database)
    return read_judged_interactions(run, selection, db, full_text=full_text)


def normalized(text: str) -> str:
    """``text`` with runs of whitespace collapsed and case folded: the key under which two
    inputs or corrections count as the same."""
    return " ".join(text.split()).casefold()


def new_case_id(*parts: str) -> str:
    """A stable id from text parts (same inputs, same id across exports)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "\x1f".join(parts)).hex[:16]
