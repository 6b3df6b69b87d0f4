"""``feedbackloop failures``'s read (feedbackloop.analysis.failures.records) returns what the
plain query over every event table with ``FINAL`` returns, on data with redelivered events
(identical copies and raw copies under enriched ones), changed votes, late and early (clock
lag) feedback, orphaned feedback, implicit signals with edits, outcomes and shadow
interactions, for every scope and for limits that take each of its paths (no bound on the
newest hours, a bound, a bound that redelivered copies make too tight).

The reference is the read as it was before it bounded the newest hours (kept here verbatim,
``_REFERENCE``). Lists whose order ClickHouse does not define (``groupArray``) compare as
sorted; there are no floats in the read, so equality is exact.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from feedbackloop.analysis.failures.records import (
    HEAD_CHARS,
    JudgedInteraction,
    load_judged_interactions,
    read_judged_interactions,
)
from feedbackloop.analysis.reads.literals import datetime_literal
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.config import Settings
from feedbackloop.infra import get_client
from feedbackloop.sinks import migrate
from feedbackloop.sinks.query import execute, readonly_client

pytestmark = pytest.mark.integration

#: The newest interaction's time: one interaction every 45 s back from here, so the newest
#: hour (12:00-13:00) holds 80 of them.
NEWEST = dt.datetime(2026, 6, 1, 12, 59, 59, tzinfo=dt.timezone.utc)
N = 600
ENRICHED = 2 * 10**13  # _version of an enriched row (sinks/migrations.py); raw copies: 0
#: A text with what JSON must escape: control characters, backslashes, quotes, a line
#: separator, an emoji.
_ODD = "".join(chr(i) for i in range(1, 32)) + ' \\ "x" \u2028 \U0001f389 \x7f'


def _reference(select_texts: bool, text_chars: int | None, sel: Scope, db: str) -> str:
    """The read before this module bounded the newest hours (main at c08234d)."""

    def head(col: str) -> str:
        return f"i.{col}" if text_chars is None else f"substring(i.{col}, 1, {int(text_chars)})"

    fb_since = im_since = ""
    if sel.since is not None:
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


def _reference_row(row: list[Any]) -> tuple[Any, ...]:
    (*head, meta, t_up, t_down, ratings, corr, comm, cats, texts) = row[:23]
    regen, abandon, edits, copies, edit_texts = row[23:]
    return (
        *head,
        tuple(sorted(dict(meta).items())),
        t_up,
        t_down,
        tuple(sorted(ratings)),
        corr,
        comm,
        tuple(sorted(cats)),
        regen,
        abandon,
        edits,
        copies,
        tuple(sorted(tuple(t) for t in [*texts, *edit_texts])),
    )


def _comparable(ji: JudgedInteraction) -> tuple[Any, ...]:
    s = ji.signals
    return (
        ji.interaction_id,
        ji.event_id,
        ji.occurred_at,
        ji.app_id,
        ji.model,
        ji.prompt_version,
        ji.experiment,
        ji.variant,
        ji.user_input,
        ji.response,
        ji.system_prompt,
        ji.input_has_code,
        ji.input_length_bucket,
        ji.input_chars,
        ji.stored_language,
        tuple(sorted(ji.metadata.items())),
        s.thumbs_up,
        s.thumbs_down,
        tuple(sorted(s.ratings)),
        s.corrections,
        s.comments,
        tuple(sorted(s.report_categories)),
        s.regenerates,
        s.abandons,
        s.edits,
        s.copies,
        tuple(sorted((t.kind, t.text, t.event_id, t.occurred_at) for t in ji.texts)),
    )


_INTERACTION_COLUMNS = [
    "event_id",
    "occurred_at",
    "app_id",
    "session_id",
    "schema_version",
    "interaction_id",
    "model",
    "prompt_version",
    "experiment",
    "variant",
    "system_prompt",
    "user_input",
    "response",
    "metadata",
    "shadow",
    "input_language",
    "input_has_code",
    "input_chars",
    "input_length_bucket",
    "kafka_topic",
    "kafka_offset",
    "_version",
]
_EVENT_COLUMNS = {
    "feedback": ["kind", "thumbs", "rating", "text", "category"],
    "implicit": ["signal", "edited_text"],
    "outcomes": ["outcome", "value"],
}
_CONTEXT_COLUMNS = ["enrichment", "orphaned", "experiment", "variant", "prompt_version"]


def _data(seed: int = 5) -> dict[str, list[list[Any]]]:
    """Rows per table; a row listed twice is inserted twice (in separate inserts)."""
    rnd = random.Random(seed)
    tables: dict[str, list[list[Any]]] = {"interactions": [], **{t: [] for t in _EVENT_COLUMNS}}
    later: dict[str, list[list[Any]]] = {t: [] for t in tables}  # redelivered copies
    offset = 0

    def event(table: str, ctx: tuple[str, str, str] | None, at: dt.datetime, *vals: Any) -> None:
        nonlocal offset
        iid = vals[0]
        exp, var, pv = ctx or ("", "", "")
        envelope = [uuid.UUID(int=rnd.getrandbits(128)), at, "a1", "s", 1, iid]
        enriched = [*envelope, *vals[1:], "enriched", ctx is None, exp, var, pv, "t", offset]
        tables[table].append([*enriched, ENRICHED + offset])
        offset += 1
        r = rnd.random()
        if r < 0.15:  # the same message again (a redelivered batch)
            later[table].append([*enriched, ENRICHED + offset - 1])
        elif r < 0.3:  # its raw copy, without the request context: the enriched row wins
            later[table].append([*envelope, *vals[1:], "raw", False, "", "", "", "t", offset, 0])

    for k in range(N):
        at = NEWEST - dt.timedelta(seconds=45 * k)
        iid = uuid.UUID(int=rnd.getrandbits(128))
        app = "a2" if k % 5 == 0 else "a1"
        exp, var = ("e1", ("control", "treatment")[k % 2]) if k % 3 else ("", "")
        pv = f"v{k % 3}"
        text = rnd.choice(["How do I sort a list?", "Wie sortiere ich eine Liste?", "x" * 900])
        meta = {"plan": rnd.choice(["pro", "free", _ODD])} if k % 4 else {}
        row = [
            uuid.UUID(int=rnd.getrandbits(128)),
            at,
            app,
            f"s{k // 3}",
            1,
            iid,
            rnd.choice(["m-small", "m-large"]),
            pv,
            exp,
            var,
            "You are helpful.",
            text,
            f"Answer {k}",
            meta,
            k % 7 == 0,
            "en",
            False,
            len(text),
            "short",
            "t",
            k,
            ENRICHED + k,
        ]
        tables["interactions"].append(row)
        if at >= NEWEST.replace(minute=0, second=0):  # the newest hour, redelivered twice
            later["interactions"] += [row, [*row[:15], "", *row[16:21], 0]]
        elif rnd.random() < 0.1:
            later["interactions"].append([*row[:15], "", *row[16:21], 0])  # a raw copy
        ctx = (exp, var, pv)
        # Feedback: thumbs (some changed later), ratings, texts; late and clock-lagged.
        if rnd.random() < 0.6:
            vote = rnd.choice([1, 1, -1])
            event("feedback", ctx, at + dt.timedelta(seconds=5), iid, "thumbs", vote, None, "", "")
            if rnd.random() < 0.2:  # the user changed the vote, a day later
                late = at + dt.timedelta(days=1)
                event("feedback", ctx, late, iid, "thumbs", -vote, None, "", "")
        if rnd.random() < 0.2:
            lag = dt.timedelta(hours=rnd.choice([-3, 0, 50]))  # device clock behind; or late
            event("feedback", ctx, at + lag, iid, "rating", 0, rnd.randint(1, 5), "", "")
        for kind, p in (("correction", 0.05), ("comment", 0.05), ("report", 0.04)):
            if rnd.random() < p:
                said = rnd.choice(["wrong", "Falsch!", 'n\'est pas ça\n"quoted"', _ODD])
                cat = rnd.choice(["harmful", "wrong"]) if kind == "report" else ""
                event("feedback", ctx, at + dt.timedelta(minutes=2), iid, kind, 0, None, said, cat)
        for signal, p in (("regenerate", 0.1), ("abandon", 0.1), ("copy", 0.2), ("edit", 0.05)):
            if rnd.random() < p:
                edited = rnd.choice(["", "edited answer"]) if signal == "edit" else ""
                event("implicit", ctx, at + dt.timedelta(seconds=30), iid, signal, edited)
        if rnd.random() < 0.2:
            event("outcomes", ctx, at + dt.timedelta(minutes=5), iid, "task_completed", 1.0)
    for _ in range(20):  # orphaned feedback: no interaction with these ids
        ghost = uuid.UUID(int=rnd.getrandbits(128))
        event("feedback", None, NEWEST, ghost, "thumbs", -1, None, "", "")
        event("feedback", None, NEWEST, ghost, "comment", 0, None, "orphan", "")
    return {t: tables[t] + [[]] + later[t] for t in tables}  # [] separates the two inserts


@pytest.fixture(scope="module")
def loaded(clickhouse_dsn: str) -> Iterator[tuple[str, str]]:
    db = f"flread_{uuid.uuid4().hex[:8]}"
    client = get_client(clickhouse_dsn)
    migrate(client, db)
    for table, rows in _data().items():
        # Duplicates stay until a merge; without one, FINAL (and the read) has them to fold.
        client.command(f"SYSTEM STOP MERGES {db}.{table}")
        if table == "interactions":
            cols = _INTERACTION_COLUMNS
        else:
            cols = [
                "event_id",
                "occurred_at",
                "app_id",
                "session_id",
                "schema_version",
                "interaction_id",
                *_EVENT_COLUMNS[table],
                *_CONTEXT_COLUMNS,
                "kafka_topic",
                "kafka_offset",
                "_version",
            ]
        cut = rows.index([])
        for part in (rows[:cut], rows[cut + 1 :]):
            # optimize_on_insert=0 as the sink inserts: copies in one block are not folded
            client.insert(
                table, part, database=db, column_names=cols, settings={"optimize_on_insert": 0}
            )
    yield clickhouse_dsn, db
    client.command(f"DROP DATABASE IF EXISTS {db}")
    client.close()


def _read(dsn: str, db: str, sel: Scope, full_text: bool) -> tuple[list[Any], int]:
    client = readonly_client(dsn, db, None, None)
    statements = 0

    def run(sql: str, max_rows: int) -> list[list[Any]]:
        nonlocal statements
        statements += 1
        return execute(client, sql, max_rows).rows

    try:
        got = read_judged_interactions(run, sel, db, full_text=full_text)
        ref_sql = _reference(full_text, None if full_text else HEAD_CHARS, sel, db)
        want = [_reference_row(r) for r in execute(client, ref_sql, sel.limit).rows]
    finally:
        client.close()
    assert [_comparable(ji) for ji in got] == want
    return want, statements


def test_the_data_has_what_the_comparison_needs(loaded: tuple[str, str]) -> None:
    dsn, db = loaded
    client = get_client(dsn, database=db)
    try:

        def one(sql: str) -> int:
            return int(client.query(sql).result_rows[0][0])

        assert one("SELECT count() - uniqExact(event_id) FROM interactions") > 150
        assert one("SELECT count() - uniqExact(event_id) FROM feedback") > 50
        assert one("SELECT count() - uniqExact(event_id) FROM implicit") > 10
        orphans = "SELECT uniqExact(interaction_id) FROM feedback WHERE interaction_id NOT IN"
        assert one(f"{orphans} (SELECT interaction_id FROM interactions)") == 20
        changed = (
            "SELECT count() FROM (SELECT interaction_id FROM feedback FINAL WHERE kind = 'thumbs'"
            " GROUP BY interaction_id HAVING uniqExact(thumbs) = 2)"
        )
        assert one(changed) > 10
    finally:
        client.close()


@pytest.mark.parametrize(
    ("limit", "statements"),
    [
        (50, 2),  # the newest hour holds enough: bounded to it
        (100, 3),  # its redelivered copies counted, not enough once deduplicated: read again
        (10_000, 2),  # fewer interactions than the limit: no bound
    ],
)
def test_the_newest_interactions_equal_the_plain_final_read(
    loaded: tuple[str, str], limit: int, statements: int
) -> None:
    dsn, db = loaded
    rows, ran = _read(dsn, db, Scope(limit=limit), full_text=False)
    assert len(rows) == min(limit, N - len(range(0, N, 7)))
    assert ran == statements
    with_feedback = [r for r in rows if r[16] or r[17] or r[18] or r[19] or r[20] or r[21]]
    assert with_feedback and any(r[-1] for r in rows)
    if limit > 100:  # the odd text came back intact, in a text and in the metadata
        assert any(t[1] == _ODD for r in rows for t in r[-1])
        assert any(("plan", _ODD) in r[15] for r in rows)


@pytest.mark.parametrize(
    "sel",
    [
        Scope(limit=120, experiment="e1"),
        Scope(limit=40, app_id="a2", prompt_version="v1"),
        Scope(limit=60, since=NEWEST - dt.timedelta(hours=3), model="m-large"),
        Scope(limit=30, since=NEWEST - dt.timedelta(hours=2), until=NEWEST - dt.timedelta(hours=1)),
        Scope(limit=25, with_text=True),
        Scope(since=NEWEST - dt.timedelta(hours=4)),
    ],
    ids=["experiment", "app-and-version", "since-and-model", "window", "with-text", "since-all"],
)
@pytest.mark.parametrize("full_text", [False, True], ids=["heads", "full-text"])
def test_every_scope_reads_what_the_plain_final_read_returns(
    loaded: tuple[str, str], sel: Scope, full_text: bool
) -> None:
    dsn, db = loaded
    rows, _ = _read(dsn, db, sel, full_text)
    assert rows


def test_load_judged_interactions_reads_through_run_query(
    loaded: tuple[str, str], tmp_path: Any
) -> None:
    dsn, db = loaded
    settings = Settings(clickhouse_url=dsn, clickhouse_database=db, data_dir=tmp_path)
    got = load_judged_interactions(settings, Scope(limit=70), url=dsn)
    want, _ = _read(dsn, db, Scope(limit=70), full_text=False)
    assert [_comparable(ji) for ji in got] == want
