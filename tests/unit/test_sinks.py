"""Pure logic of the sinks: batching bounds, row mapping, error triage, bisecting, read-only."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from feedbackloop.errors import BackPressure, SchemaError
from feedbackloop.schemas import DeadLetter, Feedback, Interaction, Topics, encode
from feedbackloop.sinks import (
    COLUMNS,
    BatchingSink,
    ClickHouseSink,
    QueryResult,
    ReadOnlyViolation,
    SinkBatch,
    SinkMessage,
    TopicRouter,
    check_read_only,
    format_result,
    is_rejection,
    retry_delay,
)

TOPICS = Topics("t.")


class Recording(BatchingSink):
    def __init__(self, fail: int = 0, **kw: Any) -> None:
        super().__init__(**kw)
        self.written: list[SinkBatch] = []
        self.fail = fail

    def write(self, batch: SinkBatch) -> None:
        if self.fail:
            self.fail -= 1
            raise BackPressure("down", retry_after=0.1)
        self.written.append(batch)


def test_batches_per_partition_with_size_bound_and_offsets_after_write() -> None:
    s = Recording(max_rows=3, max_age_s=10)
    for off in range(7):
        s.add("a", 0, off, off)
    s.add("a", 1, 100, "x")
    assert s.due()  # two full batches of partition 0 are waiting
    assert s.pending == 8
    assert s.flush() == {("a", 0): 7, ("a", 1): 101}
    assert [(b.partition, b.first_offset, b.last_offset) for b in s.written] == [
        (0, 0, 2),
        (0, 3, 5),
        (0, 6, 6),
        (1, 100, 100),
    ]
    assert s.pending == 0 and s.flush() == {}


def test_age_bound() -> None:
    s = Recording(max_rows=100, max_age_s=0.5)
    s.add("a", 0, 0, 0)
    start = s._open[("a", 0)].started
    assert not s.due(now=start + 0.4)
    assert s.due(now=start + 0.5)
    assert s.time_to_due(now=start + 0.2) == pytest.approx(0.3)


def test_back_pressure_keeps_the_batch_and_commits_nothing_unwritten() -> None:
    s = Recording(fail=1, max_rows=2, max_age_s=10)
    for off in range(3):
        s.add("a", 0, off, off)
    with pytest.raises(BackPressure):
        s.flush()
    assert s.pending == 3  # nothing dropped
    assert s.flush() == {("a", 0): 3}
    assert sum(len(b) for b in s.written) == 3


def test_discard_on_revoke() -> None:
    s = Recording(max_rows=10, max_age_s=10)
    s.add("a", 0, 0, 0)
    s.add("a", 1, 0, 0)
    assert s.discard([("a", 0)]) == 1
    assert s.flush() == {("a", 1): 1}


def test_retry_delay_grows_and_caps() -> None:
    assert [retry_delay(i) for i in range(4)] == [0.1, 0.2, 0.4, 0.8]
    assert retry_delay(50) == 10.0


def _interaction(**kw: Any) -> Interaction:
    return Interaction(app_id="a", session_id="s", user_input="hi", response="yo", model="m", **kw)


def test_router_maps_events_to_their_tables_in_column_order() -> None:
    r = TopicRouter(TOPICS)
    it = _interaction(experiment="e", variant="v", metadata={"n": 1, "s": "x"})
    ((table, row),) = r.route(TOPICS.events, 0, 5, encode(it)).rows
    assert table == "interactions" and len(row) == len(COLUMNS[table])
    named = dict(zip(COLUMNS[table], row, strict=True))
    assert named["event_id"] == it.event_id.int and named["variant"] == "v"  # UUID as int
    assert named["metadata"] == {"n": "1", "s": "x"}
    assert named["prompt_version"] == ""  # absent: '' (no Nullable in sort keys)
    assert named["kafka_offset"] == 5 and named["_version"] == 0
    fb = Feedback(
        app_id="a", session_id="s", interaction_id=it.interaction_id, kind="thumbs", thumbs=-1
    )
    ((table, row),) = r.route(TOPICS.events, 0, 6, encode(fb)).rows
    named = dict(zip(COLUMNS[table], row, strict=True))
    assert table == "feedback" and named["thumbs"] == -1 and named["enrichment"] == "raw"


def test_metadata_values_keep_their_json_type_in_the_stored_text() -> None:
    r = TopicRouter(TOPICS)
    meta = {"n": 1, "sn": "1", "b": True, "sb": "true", "z": None, "sz": "null", "s": "web"}
    ((_, row),) = r.route(TOPICS.events, 0, 5, encode(_interaction(metadata=meta))).rows
    stored = dict(zip(COLUMNS["interactions"], row, strict=True))["metadata"]
    assert stored == {
        "n": "1",
        "sn": '"1"',
        "b": "true",
        "sb": '"true"',
        "z": "null",
        "sz": '"null"',
        "s": "web",
    }
    assert len({stored["n"], stored["sn"]}) == len({stored["b"], stored["sb"]}) == 2


@pytest.mark.parametrize(
    "value",
    [
        1,
        "1",
        -7,
        1.5,
        "1.5",
        True,
        "true",
        False,
        "false",
        None,
        "null",
        "web",
        "",
        "tool",
        "nan",
        "NaN",
        "-Infinity",
        " 1",
        "1 ",
        "01",
        "-",
        '"q"',
        "[1]",
        "{}",
        "é",
        "\u00e9",
    ],
)
def test_a_stored_metadata_text_reads_back_as_the_value_and_its_type(value: Any) -> None:
    import json

    from feedbackloop.sinks.tables import metadata_text

    text = metadata_text(value)
    try:
        back = json.loads(text)
    except ValueError:
        back = text
    assert back == value and type(back) is type(value)


def test_enriched_rows_outrank_raw_rows() -> None:
    from feedbackloop.schemas import EnrichedEvent

    it = _interaction()
    fb = Feedback(
        app_id="a", session_id="s", interaction_id=it.interaction_id, kind="thumbs", thumbs=1
    )
    r = TopicRouter(TOPICS)
    raw = r.route(TOPICS.events, 0, 0, encode(fb)).rows[0][1]
    orphan = EnrichedEvent(event=fb, orphaned=True, source_partition=0, source_offset=0)
    orow = r.route(TOPICS.enriched, 0, 0, orphan.model_dump_json().encode()).rows[0][1]
    v = COLUMNS["feedback"].index("_version")
    assert raw[v] < orow[v]
    assert orow[COLUMNS["feedback"].index("enrichment")] == "orphaned"


def _enriched_cases() -> list[Any]:
    import datetime as dt

    from feedbackloop.schemas import EnrichedEvent, Implicit, Outcome, RequestContext
    from feedbackloop.schemas.derive import derive

    it = _interaction(
        experiment="e",
        variant="v",
        prompt_version="p2",
        latency_ms=12,
        input_tokens=3,
        cost_usd=0.5,
        user_id="u",
        metadata={
            "n": 1,
            "f": 1.5,
            "b": True,
            "z": None,
            "s": "x",
            "sn": "1",
            "sb": "true",
            "sz": "null",
            "sq": '"q"',
            "sw": " 1",
        },
    )
    plain = _interaction()
    ctx = RequestContext(
        interaction_id=it.interaction_id,
        interaction_occurred_at=it.occurred_at,
        model=it.model,
        prompt_version=it.prompt_version,
        experiment="e",
        variant="v",
        user_input=it.user_input,
        response=it.response,
        latency_ms=12.0,
        shadow=True,
    )
    d = derive(it)
    iid = it.interaction_id
    events = [
        Feedback(app_id="a", session_id="s", interaction_id=iid, kind="thumbs", thumbs=-1),
        Feedback(app_id="a", session_id="s", interaction_id=iid, kind="rating", rating=4),
        Feedback(
            app_id="a",
            session_id="s",
            interaction_id=iid,
            kind="report",
            category="harmful",
            text="bad",
        ),
        Implicit(
            app_id="a",
            session_id="s",
            interaction_id=iid,
            signal="edit",
            edited_text="x",
            edit_distance=3,
        ),
        Implicit(app_id="a", session_id="s", interaction_id=iid, signal="dwell", dwell_ms=5),
        Outcome(app_id="a", session_id="s", interaction_id=iid, outcome="purchase", value=9),
    ]
    at = dt.datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=dt.timezone.utc)
    cases = [
        EnrichedEvent(event=it, derived=d, source_partition=0, source_offset=1, enriched_at=at),
        EnrichedEvent(event=plain, source_partition=0, source_offset=1),
        EnrichedEvent(
            event=Outcome(app_id="a", session_id="s", outcome="task_done"),
            source_partition=0,
            source_offset=2,
        ),
    ]
    for ev in events:
        cases.append(
            EnrichedEvent(
                event=ev,
                context=ctx,
                derived=d,
                waited_ms=3.5,
                source_partition=1,
                source_offset=7,
                enriched_at=at,
            )
        )
        cases.append(EnrichedEvent(event=ev, context=ctx, source_partition=1, source_offset=7))
        cases.append(
            EnrichedEvent(
                event=ev, orphaned=True, waited_ms=60000.0, source_partition=1, source_offset=7
            )
        )
    return cases


@pytest.mark.parametrize("enriched", _enriched_cases())
def test_trusted_enriched_decoder_gives_the_validating_paths_rows(enriched: Any) -> None:
    from feedbackloop.schemas import EnrichedEvent
    from feedbackloop.sinks.rows import _event_row, enriched_row

    value = enriched.model_dump_json().encode()
    fast = enriched_row(value, TOPICS.enriched, 3, 9)
    assert fast is not None  # the stream jobs' own form takes the trusted path
    ev = EnrichedEvent.model_validate_json(value)
    assert fast == _event_row(ev.event, ev, TOPICS.enriched, 3, 9)
    assert [type(v) for v in fast[1]] == [
        type(v) for v in _event_row(ev.event, ev, TOPICS.enriched, 3, 9)[1]
    ]


@pytest.mark.parametrize("enriched", _enriched_cases())
def test_every_event_row_builder_gives_the_row_the_declaration_reads(enriched: Any) -> None:
    # The hand-written fast paths (validating, trusted) against their slow twin: the row read
    # column by column from sinks/tables.py, by column name and by value type.
    from feedbackloop.schemas import EnrichedEvent
    from feedbackloop.sinks.rows import _event_row, declared_row, enriched_row

    value = enriched.model_dump_json().encode()
    ev = EnrichedEvent.model_validate_json(value)
    raw = ev.event
    for fast, slow in (
        (_event_row(raw, None, TOPICS.events, 2, 4), declared_row(raw, None, TOPICS.events, 2, 4)),
        (_event_row(raw, ev, TOPICS.enriched, 3, 9), declared_row(raw, ev, TOPICS.enriched, 3, 9)),
        (enriched_row(value, TOPICS.enriched, 3, 9), declared_row(raw, ev, TOPICS.enriched, 3, 9)),
    ):
        assert fast is not None and fast[0] == slow[0]
        names = COLUMNS[slow[0]]
        assert len(fast[1]) == len(names)
        assert dict(zip(names, fast[1], strict=True)) == dict(zip(names, slow[1], strict=True))
        assert [type(v) for v in fast[1]] == [type(v) for v in slow[1]]


def test_trusted_enriched_decoder_leaves_other_forms_to_validation() -> None:
    import json

    from feedbackloop.schemas import EnrichedEvent
    from feedbackloop.sinks.rows import enriched_row

    it = _interaction(latency_ms=5.0)
    good = json.loads(
        EnrichedEvent(event=it, source_partition=0, source_offset=0).model_dump_json()
    )
    r = TopicRouter(TOPICS)
    # The event contract refuses these forms (issue 13: what the JSON Schema says is what is
    # accepted); the envelope's own enriched_at is still converted.
    for path, lax, converted in [
        (("event", "latency_ms"), "5", False),
        (("event", "occurred_at"), 1_700_000_000, False),  # a Unix time
        (("event", "event_id"), good["event"]["event_id"].replace("-", ""), False),
        (("event", "shadow"), "true", False),
        (("enriched_at",), 1_700_000_000.5, True),
    ]:
        obj = json.loads(json.dumps(good))
        *parents, leaf = path
        target = obj
        for p in parents:
            target = target[p]
        target[leaf] = lax
        value = json.dumps(obj).encode()
        assert enriched_row(value, TOPICS.enriched, 0, 0) is None, path
        if not converted:
            with pytest.raises(SchemaError) as refused:
                r.route(TOPICS.enriched, 0, 0, value)
            assert refused.value.reason == "validation_error", path
            continue
        # The validating path converts it, exactly as before.
        ev = EnrichedEvent.model_validate_json(value)
        ((table, row),) = r.route(TOPICS.enriched, 0, 0, value).rows
        assert table == "interactions" and row[0] == ev.event.event_id.int
    with pytest.raises(SchemaError) as ei:
        r.route(TOPICS.enriched, 0, 0, b'{"event": {"event_type": "feedback"}}')
    assert ei.value.reason == "validation_error"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"{", "invalid_json"),
        (b'{"event_type": "x"}', "unknown_event_type"),
        (None, "empty_message"),
    ],
)
def test_router_reasons(value: bytes | None, reason: str) -> None:
    with pytest.raises(SchemaError) as ei:
        TopicRouter(TOPICS).route(TOPICS.events, 0, 0, value)
    assert ei.value.reason == reason


def test_router_reads_dead_letter_headers() -> None:
    dl = DeadLetter(
        reason="oversized",
        error="too big",
        payload=b"x" * 3,
        source="stream",
        source_topic="t.events",
        source_partition=2,
        source_offset=9,
    )
    ((table, row),) = (
        TopicRouter(TOPICS).route(TOPICS.dead_letters, 0, 1, dl.payload, b"k", dl.headers()).rows
    )
    named = dict(zip(COLUMNS[table], row, strict=True))
    assert (named["reason"], named["source_partition"], named["source_offset"]) == (
        "oversized",
        2,
        9,
    )


def test_error_triage() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

    assert is_rejection(struct.error("ushort format requires 0 <= number <= 65535"))
    assert is_rejection(DatabaseError("Code: 469. Constraint ... (VIOLATED_CONSTRAINT)"))
    assert not is_rejection(DatabaseError("Code: 252. Too many parts (TOO_MANY_PARTS)"))
    assert not is_rejection(OperationalError("Connection refused"))
    assert not is_rejection(RuntimeError("something unknown"))  # unknown: retry, never drop


class FakeClient:
    """Rejects rows read at an offset in ``bad``; records what was inserted."""

    def __init__(self, bad: frozenset[int] = frozenset()) -> None:
        self.inserted: dict[str, list[Any]] = {}
        self.tokens: list[str] = []
        self.bad = bad

    def create_insert_context(self, table: str, **kw: Any) -> Any:
        class Ctx:
            settings: dict[str, Any] = {}
            data: Any = None

        c = Ctx()
        c.settings = {}
        c.table = table  # type: ignore[attr-defined]
        return c

    def insert(self, context: Any) -> None:
        rows = list(zip(*context.data, strict=True))
        if context.table != "dead_letters":
            offset = COLUMNS[context.table].index("kafka_offset")
            if any(r[offset] in self.bad for r in rows):
                raise struct.error("value out of range")
        self.tokens.append(context.settings["insert_deduplication_token"])
        self.inserted.setdefault(context.table, []).extend(rows)

    def query(self, sql: str, external_data: Any = None, **kw: Any) -> Any:
        """The identity lookup, answered from the event rows inserted so far (the views' job)."""
        import re
        import uuid
        from types import SimpleNamespace

        from feedbackloop.sinks.event_keys import EVENT_TABLES, row_key

        if "'JSONEachRow'" in sql:  # keys of parsed lines: this fake cannot parse JSON
            from clickhouse_connect.driver.exceptions import DatabaseError

            raise DatabaseError("Code: 27. Cannot parse input (fake)")
        self.lookups = getattr(self, "lookups", 0) + 1
        if external_data is not None:
            data = external_data.files[0].data
        else:
            path = re.search(r"file\('([^']+)', 'RowBinary'", sql).group(1)  # type: ignore[union-attr]
            with open(path, "rb") as f:
                data = f.read()
        ids = {int.from_bytes(data[i : i + 16], "big") for i in range(0, len(data), 16)}
        rows = []
        for table in EVENT_TABLES:
            for row in self.inserted.get(table, []):
                eid, key = row_key(table, row)
                if eid in ids:
                    rows.append(
                        (uuid.UUID(int=eid), key.table, key.app_id, list(key.slice), key.hour)
                    )
        return SimpleNamespace(result_rows=rows)

    def close(self) -> None:
        pass


def test_rejected_rows_are_isolated_by_bisection_and_dead_lettered() -> None:
    fake = FakeClient(bad=frozenset({2, 5}))
    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=lambda: fake)
    msgs = [_interaction() for _ in range(8)]
    for i, m in enumerate(msgs):
        sink.add(TOPICS.events, 0, i, SinkMessage(encode(m), None, None, 0, i))
    assert sink.flush() == {(TOPICS.events, 0): 8}
    assert len(fake.inserted["interactions"]) == 6
    dls = fake.inserted["dead_letters"]
    assert sorted(r[COLUMNS["dead_letters"].index("source_offset")] for r in dls) == [2, 5]
    assert {r[1] for r in dls} == {"clickhouse_rejected"}
    assert sink.stats.rejected_rows == 2
    # Tokens are derived from offsets: a replay of the same batch sends the same tokens.
    assert fake.tokens[-1] == f"{TOPICS.events}/0/0-7/dead_letters"


def test_next_batch_is_prepared_while_an_insert_runs_and_back_pressure_keeps_order() -> None:
    class Slow(FakeClient):
        fail_once = True

        def insert(self, context: Any) -> None:
            if self.fail_once and context.table == "interactions" and len(self.tokens) == 1:
                self.fail_once = False
                raise ConnectionError("server went away")
            super().insert(context)

    fake = Slow()
    sink = ClickHouseSink("chdb:///x", "db", TOPICS, max_rows=2, client_factory=lambda: fake)
    for i in range(6):
        sink.add(TOPICS.events, 0, i, SinkMessage(encode(_interaction()), None, None, 0, i))
    with pytest.raises(BackPressure):
        sink.flush()  # batch 0-1 stored, batch 2-3 failed (4-5 was prepared meanwhile)
    assert fake.tokens == [f"{TOPICS.events}/0/0-1/interactions"]
    assert sink.pending == 4  # nothing dropped, nothing committed beyond what is stored
    assert sink.flush() == {(TOPICS.events, 0): 6}
    assert fake.tokens[1:] == [
        f"{TOPICS.events}/0/2-3/interactions",
        f"{TOPICS.events}/0/4-5/interactions",
    ]
    assert sink.stats.messages == 6 and sink.stats.rows["interactions"] == 6
    sink.close()


def test_transient_failure_is_back_pressure_and_reconnects() -> None:
    calls = {"n": 0}

    def factory() -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("refused")
        return FakeClient()

    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=factory)
    sink.add(TOPICS.events, 0, 0, SinkMessage(encode(_interaction())))
    with pytest.raises(BackPressure) as ei:
        sink.flush()
    assert ei.value.retry_after > 0
    assert sink.flush() == {(TOPICS.events, 0): 1}


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "  with x as (select 1) select * from x",
        "-- c\nSHOW TABLES",
        "DESCRIBE feedback",
        "EXPLAIN SELECT 1",
        "SELECT ';' AS semi",
        "(SELECT 1)",
    ],
)
def test_read_only_statements_pass(sql: str) -> None:
    check_read_only(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "drop table t",
        "",
        ";",
        "ALTER TABLE t DELETE WHERE 1",
        "SET readonly = 0",
        "/* x */ TRUNCATE t",
        "OPTIMIZE TABLE t FINAL",
        "SYSTEM STOP MERGES",
    ],
)
def test_writes_are_refused_before_anything_is_sent(sql: str) -> None:
    with pytest.raises(ReadOnlyViolation):
        check_read_only(sql)


def test_the_quick_check_never_rewrites_the_statement() -> None:
    # Comments and literals reach ClickHouse as written; its parser is the authority.
    for sql in ("SELECT 'a/*b*/c'", "-- c\nSELECT 'x--y' /* z */", "SELECT $$'$$"):
        assert check_read_only(sql) is sql


def test_table_functions_are_found_at_any_depth_of_the_syntax_tree() -> None:
    from feedbackloop.sinks.query import table_functions

    ast = [
        "DescribeQuery (children 2)",
        " TableExpression (children 1)",
        "  Function file (children 1)",
        "   ExpressionList (children 2)",
        "SelectWithUnionQuery (children 2)",
        " ExpressionList (children 1)",
        "  SelectQuery (children 3)",
        "   Function in (children 1)",
        "    ExpressionList (children 2)",
        "     Subquery (children 1)",
        "      TableExpression (children 1)",
        "       Function url (alias u) (children 1)",
        "   TableExpression (children 1)",
        "    TableIdentifier t",
    ]
    assert table_functions(ast) == ["file", "url"]


def test_formats() -> None:
    res = QueryResult(["a", "b"], ["String", "Nullable(Float64)"], [["x", 1.5], ["y", None]])
    table = format_result(res, "table")
    assert table.splitlines()[0].split() == ["a", "|", "b"] and "(2 rows)" in table
    assert format_result(res, "csv") == "a,b\nx,1.5\ny,NULL"
    assert '"b": null' in format_result(res, "json")


# --- the ClickHouse-parsed path of the enriched topic (sinks/ingest.py) ---------------------
def _enriched(**kw: Any) -> bytes:
    from feedbackloop.schemas import EnrichedEvent

    e = EnrichedEvent(event=_interaction(**kw), source_partition=0, source_offset=0)
    return e.model_dump_json().encode()


def test_route_reads_table_and_stamp_from_the_bytes_only() -> None:
    from feedbackloop.sinks.ingest import route, stamp_ms

    value = _enriched()
    table, stamp = route(value)  # type: ignore[misc]
    assert table == "interactions" and stamp.startswith(b"20") and stamp.endswith(b"Z")
    assert stamp_ms(stamp) is not None
    assert stamp_ms(b"2026-01-02 03:04:05") is None  # not the stream jobs' form
    assert route(b"not json") is None
    assert route(encode(_interaction())) is None  # no enriched_at: not the enriched form
    # A key that looks like the event type elsewhere routes wrongly; ClickHouse's check of the
    # parsed event type then refuses the block (tests/integration/test_sink_json_path.py).
    assert route(value.replace(b'"event_type":"interaction"', b'"event_type":"feedback"'))


class FakeChdb(FakeClient):
    """A client that looks embedded: ``command`` receives the parsed path's inserts."""

    uri = "chdb:///x"

    def __init__(self, error: Exception | None = None) -> None:
        super().__init__()
        self.error = error
        self.commands: list[tuple[str, dict[str, Any]]] = []
        self.files: list[bytes] = []

    def command(self, sql: str, settings: dict[str, Any] | None = None) -> None:
        import re

        path = re.search(r"FROM file\('([^']+)'", sql).group(1)  # type: ignore[union-attr]
        with open(path, "rb") as f:
            self.files.append(f.read())
        self.commands.append((sql, settings))
        if self.error is not None:
            raise self.error


def _paths(fake: FakeChdb) -> list[str]:
    import re

    return [re.search(r"FROM file\('([^']+)'", s).group(1) for s, _ in fake.commands]  # type: ignore[union-attr]


def test_enriched_batch_is_one_parsed_insert_per_table_with_its_token() -> None:
    import os

    fake = FakeChdb()
    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=lambda: fake)
    for i in range(3):
        sink.add(TOPICS.enriched, 0, 10 + i, SinkMessage(_enriched(), None, None, 0, 10 + i))
    assert sink.flush() == {(TOPICS.enriched, 0): 13}
    assert len(fake.commands) == 1 and "interactions" not in fake.inserted
    sql, _ = fake.commands[0]
    assert sql.startswith("INSERT INTO `db`.`interactions`")
    token = f"insert_deduplication_token = '{TOPICS.enriched}/0/10-12/interactions/json'"
    assert token in sql and "async_insert = 0" in sql
    assert fake.files[0].count(b"\n") == 3 and fake.files[0].startswith(b'{"_o":10,"_i":"')
    assert b'","m":{' in fake.files[0] and "_o NOT IN" not in sql
    assert not any(os.path.exists(p) for p in _paths(fake))  # block files are removed
    assert sink.stats.rows == {"interactions": 3} and sink.stats.json_fallbacks == 0


def test_a_block_clickhouse_refuses_takes_the_python_path() -> None:
    from clickhouse_connect.driver.exceptions import DatabaseError

    fake = FakeChdb(DatabaseError("Code: 395. feedbackloop: a message not in the strict form"))
    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=lambda: fake)
    sink.add(TOPICS.enriched, 0, 0, SinkMessage(_enriched(), None, None, 0, 0))
    sink.add(TOPICS.enriched, 0, 1, SinkMessage(b"not json", None, None, 0, 1))
    assert sink.flush() == {(TOPICS.enriched, 0): 2}
    assert len(fake.commands) == 1 and sink.stats.json_fallbacks == 1
    assert len(fake.inserted["interactions"]) == 1  # decoded in Python, Native insert
    assert [r[1] for r in fake.inserted["dead_letters"]] == ["validation_error"]


def test_a_parsed_insert_without_an_answer_is_back_pressure_and_retried_as_it_is() -> None:
    from clickhouse_connect.driver.exceptions import OperationalError

    fake = FakeChdb(OperationalError("connection refused"))
    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=lambda: fake)
    sink._drop_client = lambda: None  # type: ignore[method-assign]  # keep the fake
    sink.add(TOPICS.enriched, 0, 0, SinkMessage(_enriched(), None, None, 0, 0))
    with pytest.raises(BackPressure):
        sink.flush()
    fake.error = None
    assert sink.flush() == {(TOPICS.enriched, 0): 1}
    assert len(fake.commands) == 2 and fake.files[0] == fake.files[1]  # written again
    assert sink.stats.json_fallbacks == 0 and "interactions" not in fake.inserted


def test_discarded_batches_leave_no_block_files() -> None:
    import os
    import threading

    from clickhouse_connect.driver.exceptions import OperationalError

    gate = threading.Event()

    class Blocking(FakeChdb):
        def command(self, sql: str, settings: dict[str, Any] | None = None) -> None:
            gate.wait(5)
            super().command(sql, settings)

    fake = Blocking(OperationalError("connection refused"))
    sink = ClickHouseSink("chdb:///x", "db", TOPICS, max_rows=1, client_factory=lambda: fake)
    sink.add(TOPICS.enriched, 0, 0, SinkMessage(_enriched(), None, None, 0, 0))
    sink.add(TOPICS.enriched, 0, 1, SinkMessage(_enriched(), None, None, 0, 1))
    # The second batch is prepared (its block file written) while the first insert runs ...
    files = list(sink._closed[1].state.files.values())
    assert files and all(os.path.exists(p) for p in files)
    gate.set()
    with pytest.raises(BackPressure):
        sink.flush()  # ... which fails: the second batch's insert is not attempted
    assert all(os.path.exists(p) for p in files)
    assert sink.discard([(TOPICS.enriched, 0)]) == 2  # a rebalance takes the partition away
    assert not any(os.path.exists(p) for p in files)
    sink.close()


def test_tables_of_a_batch_go_in_side_by_side_and_only_failed_ones_are_retried() -> None:
    from clickhouse_connect.driver.exceptions import OperationalError

    from feedbackloop.schemas import EnrichedEvent

    class FailsFeedbackOnce(FakeChdb):
        def command(self, sql: str, settings: dict[str, Any] | None = None) -> None:
            super().command(sql, settings)
            if "`feedback`" in sql.split(" SELECT ", 1)[0] and not self.failed:
                self.failed = True
                raise OperationalError("connection reset")

    fake = FailsFeedbackOnce()
    fake.failed = False  # type: ignore[attr-defined]
    clients = []

    def factory() -> Any:
        clients.append(fake)
        return fake

    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=factory)
    sink._drop_client = lambda: None  # type: ignore[method-assign]  # keep the fake
    it = _interaction()
    fb = Feedback(
        app_id="a", session_id="s", interaction_id=it.interaction_id, kind="thumbs", thumbs=1
    )
    values = [
        _enriched(),
        EnrichedEvent(event=fb, source_partition=0, source_offset=0).model_dump_json().encode(),
    ]
    for i, v in enumerate(values):
        sink.add(TOPICS.enriched, 0, i, SinkMessage(v, None, None, 0, i))
    with pytest.raises(BackPressure):
        sink.flush()
    assert len(clients) == 2  # the second table had its own client
    assert sink.flush() == {(TOPICS.enriched, 0): 2}
    tables = [sql.split("`")[3] for sql, _ in fake.commands]
    assert sorted(tables) == ["feedback", "feedback", "interactions"]  # interactions once
    assert sink.stats.rows == {"interactions": 1, "feedback": 1}
    assert sink.stats.json_fallbacks == 0
    sink.close()


def test_block_files_of_dead_processes_are_removed(tmp_path: Any) -> None:
    import os
    import subprocess
    import sys

    from feedbackloop.sinks.ingest import remove_stale_blocks

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = tmp_path / f"feedbackloop-sink-{dead}-abc.jsonl"
    mine = tmp_path / f"feedbackloop-sink-{os.getpid()}-abc.jsonl"
    other = tmp_path / "feedbackloop-sink-x.jsonl"
    for p in (stale, mine, other):
        p.write_bytes(b"{}")
    assert remove_stale_blocks(str(tmp_path)) == 1
    assert not stale.exists() and mine.exists() and other.exists()


def test_without_a_second_client_the_tables_go_in_one_after_the_other() -> None:
    from feedbackloop.schemas import EnrichedEvent

    fake = FakeChdb()
    calls = {"n": 0}

    def factory() -> Any:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ConnectionError("no second connection")
        return fake

    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=factory)
    it = _interaction()
    fb = Feedback(
        app_id="a", session_id="s", interaction_id=it.interaction_id, kind="thumbs", thumbs=1
    )
    fb_value = EnrichedEvent(event=fb, source_partition=0, source_offset=0).model_dump_json()
    sink.add(TOPICS.enriched, 0, 0, SinkMessage(_enriched(), None, None, 0, 0))
    sink.add(TOPICS.enriched, 0, 1, SinkMessage(fb_value.encode(), None, None, 0, 1))
    assert sink.flush() == {(TOPICS.enriched, 0): 2}
    assert sink.stats.rows == {"interactions": 1, "feedback": 1} and len(fake.commands) == 2
    sink.close()


# --- event identity (sinks/event_keys.py) ------------------------------------------------------


def _dead_letters_by_reason(fake: FakeClient, reason: str) -> list[Any]:
    return [r for r in fake.inserted.get("dead_letters", []) if r[1] == reason]


def test_a_resend_that_changes_a_key_column_is_a_dead_letter_and_not_a_second_row() -> None:
    import datetime as dt

    fake = FakeClient()
    sink = ClickHouseSink("http://x", "db", TOPICS, client_factory=lambda: fake)
    earlier = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)
    first = _interaction(prompt_version="p1", experiment="e", variant="a", occurred_at=earlier)
    other = _interaction(prompt_version="p1")
    for i, m in enumerate([first, other]):
        sink.add(TOPICS.events, 0, i, SinkMessage(encode(m), None, None, 0, i))
    sink.flush()
    later = first.occurred_at + dt.timedelta(hours=1)
    resends = [
        first.model_copy(update={"prompt_version": "p2"}),
        first.model_copy(update={"variant": "b"}),
        first.model_copy(update={"occurred_at": later}),
        first.model_copy(update={"app_id": "another"}),
        first,  # identical: stored once, as before
        other.model_copy(update={"response": "changed"}),  # same key, other content
    ]
    for i, m in enumerate(resends, start=2):
        sink.add(TOPICS.events, 0, i, SinkMessage(encode(m), None, None, 0, i))
    assert sink.flush() == {(TOPICS.events, 0): 8}
    ids = [r[0] for r in fake.inserted["interactions"]]
    assert ids.count(first.event_id.int) == 2 and ids.count(other.event_id.int) == 2
    stored_versions = {r[8] for r in fake.inserted["interactions"] if r[0] == first.event_id.int}
    assert stored_versions == {"p1"}
    refused = _dead_letters_by_reason(fake, "conflicting_resend")
    assert sorted(r[COLUMNS["dead_letters"].index("source_offset")] for r in refused) == [
        2,
        3,
        4,
        5,
    ]
    assert "prompt_version='p2'" in refused[0][2] and str(first.event_id) in refused[0][2]
    assert sink.stats.by_reason["conflicting_resend"] == 4


def test_conflicting_copies_within_one_batch_keep_the_first() -> None:
    fake = FakeClient()
    sink = ClickHouseSink("http://x", "db", TOPICS, client_factory=lambda: fake)
    fb = Feedback(
        app_id="a",
        session_id="s",
        interaction_id=_interaction().interaction_id,
        kind="thumbs",
        thumbs=1,
    )
    comment = Feedback(
        event_id=fb.event_id,
        app_id="a",
        session_id="s",
        interaction_id=fb.interaction_id,
        kind="comment",
        text="meh",
    )
    for i, m in enumerate([fb, comment, fb]):
        sink.add(TOPICS.events, 0, i, SinkMessage(encode(m), None, None, 0, i))
    sink.flush()
    assert [r[7] for r in fake.inserted["feedback"]] == ["thumbs", "thumbs"]
    refused = _dead_letters_by_reason(fake, "conflicting_resend")
    assert [r[COLUMNS["dead_letters"].index("source_offset")] for r in refused] == [1]
    assert fake.lookups == 1  # one lookup for the batch


def test_an_event_id_used_by_another_event_type_is_refused() -> None:
    fake = FakeClient()
    sink = ClickHouseSink("http://x", "db", TOPICS, client_factory=lambda: fake)
    it = _interaction()
    fb = Feedback(
        event_id=it.event_id,
        app_id="a",
        session_id="s",
        interaction_id=it.interaction_id,
        kind="thumbs",
        thumbs=1,
    )
    for i, m in enumerate([it, fb]):
        sink.add(TOPICS.events, 0, i, SinkMessage(encode(m), None, None, 0, i))
    sink.flush()
    assert "feedback" not in fake.inserted
    assert len(_dead_letters_by_reason(fake, "conflicting_resend")) == 1


def test_the_key_hour_is_the_utc_hour_whatever_the_offset() -> None:
    import datetime as dt

    from feedbackloop.sinks.event_keys import row_key
    from feedbackloop.sinks.rows import declared_row

    t = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    a = _interaction(occurred_at=t)
    b = a.model_copy(update={"occurred_at": t.astimezone(dt.timezone.utc)})
    rows = [declared_row(e, None, "t", 0, 0)[1] for e in (a, b)]
    assert row_key("interactions", rows[0]) == row_key("interactions", rows[1])
    assert row_key("interactions", rows[0])[1].hour == int(
        dt.datetime(2026, 3, 1, 21, tzinfo=dt.timezone.utc).timestamp()
    )


@pytest.mark.parametrize(
    ("value", "found"),
    [
        (b'{"event":{"event_type":"interaction","event_id":"%s","x":1}}', True),
        (b'{"event":{"event_type":"interaction","event_id":"%s"}}', True),
        (b'{"event":{"event_type":"interaction","event_id":"not-an-id"}}', False),
        (b'{"event":{"event_id":"0000000g-0000-4000-8000-000000000000"}}', False),
        (b'{"event":{"event_id":"00000000-0000-4000-8000-000000000000-"}}', False),
        (b'{"event":{"event_type":"interaction","event_id":null}}', False),
        (b'{"event":{"event_type":"interaction"}}', False),
    ],
)
def test_the_event_id_is_scanned_from_the_bytes_or_not_at_all(value: bytes, found: bool) -> None:
    import uuid

    from feedbackloop.sinks.event_keys import scan_event_id

    eid = str(uuid.uuid4()).upper().encode()
    msg = value % eid if b"%s" in value else value
    assert scan_event_id(msg) == (eid.lower() if found else None)


def test_an_id_and_its_canonical_text_convert_both_ways() -> None:
    import uuid

    from feedbackloop.sinks.event_keys import id_of_text, text_of_id

    for u in (uuid.uuid4(), uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1)):
        assert text_of_id(u.int) == str(u).encode()
        assert id_of_text(str(u).encode()) == u.int


def test_copies_of_one_id_the_engine_cannot_key_take_the_python_path_first_key_wins() -> None:
    import orjson

    fake = FakeChdb()
    sink = ClickHouseSink("chdb:///x", "db", TOPICS, client_factory=lambda: fake)
    first = _enriched(prompt_version="p1")
    d = orjson.loads(first)
    d["event"]["prompt_version"] = "p2"
    values = [first, orjson.dumps(d), first, _enriched()]
    for i, v in enumerate(values):
        sink.add(TOPICS.enriched, 0, 10 + i, SinkMessage(v, None, None, 0, 10 + i))
    assert sink.flush() == {(TOPICS.enriched, 0): 14}
    sql, _ = fake.commands[0]
    assert "AND _o NOT IN (10, 11, 12) " in sql and "/interactions/json/x" in sql
    assert [r[8] for r in fake.inserted["interactions"]] == ["p1", "p1"]  # Python path
    refused = _dead_letters_by_reason(fake, "conflicting_resend")
    assert [r[COLUMNS["dead_letters"].index("source_offset")] for r in refused] == [11]
    assert sink.stats.rows == {"interactions": 3, "dead_letters": 1}


def test_a_failed_identity_lookup_retries_the_batch_with_nothing_inserted_twice() -> None:
    from clickhouse_connect.driver.exceptions import OperationalError

    class FailsFirstLookup(FakeClient):
        failed = False

        def query(self, sql: str, external_data: Any = None, **kw: Any) -> Any:
            if not self.failed:
                self.failed = True
                raise OperationalError("connection reset")
            return super().query(sql, external_data, **kw)

    fake = FailsFirstLookup()
    sink = ClickHouseSink("http://x", "db", TOPICS, client_factory=lambda: fake)
    it = _interaction(prompt_version="p1")
    values = [it, it.model_copy(update={"prompt_version": "p2"}), _interaction()]
    for i, m in enumerate(values):
        sink.add(TOPICS.events, 0, i, SinkMessage(encode(m), None, None, 0, i))
    with pytest.raises(BackPressure):
        sink.flush()
    assert fake.inserted == {}
    assert sink.flush() == {(TOPICS.events, 0): 3}
    assert [r[8] for r in fake.inserted["interactions"]] == ["p1", ""]
    assert len(_dead_letters_by_reason(fake, "conflicting_resend")) == 1
    assert sink.stats.by_reason["conflicting_resend"] == 1


def test_compaction_goes_by_partition_on_a_server_and_not_on_embedded_chdb(tmp_path: Path) -> None:
    """Several sink workers may share a server's database and only one may compact; embedded
    chDB opens in one process only, whose worker compacts from its start."""
    from feedbackloop.config import Settings
    from feedbackloop.sinks import SinkConfig, SinkWorker

    def worker(url: str, **cfg: Any) -> SinkWorker:
        settings = Settings(clickhouse_url=url, data_dir=tmp_path, topic_prefix="p.")
        return SinkWorker(settings, SinkConfig(**cfg), client_factory=lambda: None)

    assert worker("http://localhost:8123/").compacts_by_partition
    assert not worker(f"chdb://{tmp_path}/ch").compacts_by_partition
    assert worker(f"chdb://{tmp_path}/ch", compact_by_partition=True).compacts_by_partition
    # Partition 0 of the enriched topic, which the raw and the default subscriptions share.
    assert worker("http://h/").compaction_partition == ("p.enriched", 0)
    assert worker("http://h/", raw=True).compaction_partition == ("p.enriched", 0)
    assert worker("http://h/", topics=("p.b", "p.a")).compaction_partition == ("p.a", 0)
