"""Judged interactions read from ClickHouse: each interaction with every signal it received.

One read-only query (through :func:`feedbackloop.sinks.run_query`, so it works while the sink
worker holds embedded chDB) returns one row per interaction in the window: its request
context, derived attributes, metadata, the counts of each feedback and implicit signal and the
free texts (corrections, comments, report texts, edits) with their event ids. Tables are
read with ``FINAL`` so that a redelivered event counts once (docs/ARCHITECTURE.md, "Storage").

Feedback is matched to interactions by ``interaction_id``, not by time: a thumbs-down that
arrives an hour after its interaction still belongs to it. Shadow interactions are left out
(the user never saw them).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.analysis.failures.negative import InteractionSignals
from feedbackloop.analysis.reads.literals import datetime_literal
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.config import Settings

__all__ = [
    "FeedbackText",
    "JudgedInteraction",
    "load_judged_interactions",
]

#: Enough of an input to detect its language and show it in a table.
HEAD_CHARS = 600


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


def _query(select_texts: bool, text_chars: int | None, sel: Scope, db: str) -> str:
    def head(col: str) -> str:
        return f"i.{col}" if text_chars is None else f"substring(i.{col}, 1, {int(text_chars)})"

    fb_since = im_since = ""
    if sel.since is not None:
        # Feedback follows its interaction: older feedback cannot belong to the window.
        fb_since = im_since = f"WHERE occurred_at >= {datetime_literal(sel.since)}"
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
    FROM {db}.feedback FINAL
    {fb_since}
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
    FROM {db}.implicit FINAL
    {im_since}
    GROUP BY interaction_id
)
SELECT
    toString(i.interaction_id), toString(i.event_id), toString(i.occurred_at),
    i.app_id, i.model, i.prompt_version, i.experiment, i.variant,
    {head("user_input")}, {response}, {system},
    i.input_has_code, i.input_length_bucket, i.input_chars, i.input_language, i.metadata,
    fb.thumbs_up, fb.thumbs_down, fb.ratings, fb.corrections, fb.comments,
    fb.report_categories, fb.texts,
    im.regenerates, im.abandons, im.edits, im.copies, im.edit_texts
FROM {db}.interactions AS i FINAL
LEFT JOIN fb ON fb.interaction_id = i.interaction_id
LEFT JOIN im ON im.interaction_id = i.interaction_id
WHERE {sel.interaction_filter("i")}{with_text}
ORDER BY i.occurred_at DESC
LIMIT {int(sel.limit)}
"""


def _texts(raw: Any) -> tuple[FeedbackText, ...]:
    out = []
    for item in raw or ():
        kind, text, eid, at = (list(item) + ["", "", "", ""])[:4]
        out.append(FeedbackText(str(kind), str(text), str(eid), str(at)))
    return tuple(out)


def _metadata(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):  # a server may hand a Map over as JSON text
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return {str(k): str(v) for k, v in dict(raw or {}).items()}


def row_to_judged(row: list[Any]) -> JudgedInteraction:
    """One result row of the query above (from a client or the worker's JSON endpoint)."""
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
        ratings,
        corr,
        comm,
        reports,
        texts,
        regen,
        abandon,
        edits,
        copies,
        edit_texts,
    ) = row
    signals = InteractionSignals(
        thumbs_up=int(t_up or 0),
        thumbs_down=int(t_down or 0),
        ratings=tuple(int(r) for r in ratings or ()),
        corrections=int(corr or 0),
        comments=int(comm or 0),
        report_categories=tuple(str(c) for c in reports or ()),
        regenerates=int(regen or 0),
        abandons=int(abandon or 0),
        edits=int(edits or 0),
        copies=int(copies or 0),
    )
    return JudgedInteraction(
        interaction_id=str(iid),
        event_id=str(eid),
        occurred_at=str(at),
        app_id=str(app),
        model=str(model),
        prompt_version=str(pv),
        experiment=str(exp),
        variant=str(var),
        user_input=str(user_input),
        response=str(response),
        system_prompt=str(system),
        input_has_code=bool(has_code),
        input_length_bucket=str(bucket),
        input_chars=int(chars),
        stored_language=str(lang),
        metadata=_metadata(meta),
        signals=signals,
        texts=_texts(texts) + _texts(edit_texts),
    )


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

    db = _check_identifier(settings.clickhouse_database)
    sql = _query(full_text, None if full_text else HEAD_CHARS, selection, db)
    res = run_query(settings, sql, url=url, max_rows=selection.limit)
    return [row_to_judged(list(r)) for r in res.rows]


def normalized(text: str) -> str:
    """``text`` with runs of whitespace collapsed and case folded: the key under which two
    inputs or corrections count as the same."""
    return " ".join(text.split()).casefold()


def new_case_id(*parts: str) -> str:
    """A stable id from text parts (same inputs, same id across exports)."""
    return uuid.uuid5(uuid.NAMESPACE_URL, "\x1f".join(parts)).hex[:16]
