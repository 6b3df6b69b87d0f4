"""The enriched topic parsed by ClickHouse (sinks/ingest.py) stores exactly the Python path's rows.

Every message is written twice, by a sink with the ClickHouse-parsed path and by one without
it, into two databases; each table must hold the same rows (``EXCEPT`` both ways) and the
same number of events. The messages are what the stream jobs' ``Pipeline`` writes, plus
variants in every lax form pydantic accepts upstream (numbers as text, other time forms,
metadata numbers, missing defaults, duplicate keys, line breaks, ...), each in its own block
so that one form's fallback cannot hide another's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sink_helpers import make_events

from feedbackloop.infra import get_client, is_embedded
from feedbackloop.schemas import EnrichedEvent, Topics, encode
from feedbackloop.sinks import COLUMNS, ClickHouseSink, SinkMessage, migrate

pytestmark = pytest.mark.integration

TOPICS = Topics("jp.")
TABLES = ("interactions", "feedback", "implicit", "outcomes", "dead_letters")
KAFKA_TS = 1_764_000_000_000


@pytest.fixture
def client(clickhouse_dsn: str) -> Iterator[Any]:
    if not is_embedded(clickhouse_dsn):
        pytest.skip("the ClickHouse-parsed path is for embedded chDB only")
    c = get_client(clickhouse_dsn)
    dbs = [f"fljp_{uuid.uuid4().hex[:8]}_{n}" for n in ("json", "py")]
    for db in dbs:
        migrate(c, db)
    c.test_dbs = dbs
    yield c
    for db in dbs:
        c.command(f"DROP DATABASE IF EXISTS {db}")


def pipeline_messages() -> list[bytes]:
    """What the stream jobs write to the enriched topic for make_events (interactions first)."""
    from feedbackloop.stream_jobs import Pipeline, StreamConfig

    out: list[bytes] = []

    class Capture:
        def produce(
            self, topic: str, key: Any, value: Any, partition: Any = None, headers: Any = None
        ) -> None:
            if topic == TOPICS.enriched:
                out.append(value)

        def changelog(self, table: str, partition: int, key: bytes, value: Any) -> None:
            pass

    pipe = Pipeline(TOPICS, StreamConfig(), Capture())
    events = make_events(30)
    # Session-level outcomes (no interaction id) and metadata of every JSON type.
    from feedbackloop.schemas import Interaction, Outcome

    events.append(Outcome(app_id="app1", session_id="s-x", outcome="churned", value=None))
    events.append(
        Interaction(
            app_id="app1",
            session_id="s-y",
            user_input='é 😀 "q"\n',
            response="r",
            model="m",
            metadata={
                "i": -7,
                "b": True,
                "n": None,
                "s": "x1",
                # Text that reads as another JSON type is stored quoted on both paths.
                "si": "-7",
                "sb": "true",
                "sn": "null",
                "sf": "1.5",
                "sx": "NaN",
                "t": "tool",
                "big": 2**63,
            },
        )
    )
    pipe.process(0, [(None, encode(e), i, 0) for i, e in enumerate(events)])
    return out


def _find(messages: list[bytes], event_type: str, with_context: bool | None = None) -> bytes:
    for m in messages:
        d = orjson.loads(m)
        if d["event"]["event_type"] != event_type:
            continue
        if with_context is None or (d["context"] is not None) == with_context:
            return m
    raise LookupError(event_type)


def _event_sub(message: bytes, old: bytes, new: bytes) -> bytes:
    assert old in message, (old, message[:200])
    return message.replace(old, new, 1)


def _set(message: bytes, path: tuple[str, ...], value: Any, drop: bool = False) -> bytes:
    d = orjson.loads(message)
    node = d
    for p in path[:-1]:
        node = node[p]
    if drop:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return orjson.dumps(d)


def lax_variants(messages: list[bytes]) -> list[bytes]:
    """The same events in other forms; only those the stream jobs' validation would pass."""
    it = _find(messages, "interaction")
    fb = _find(messages, "feedback", with_context=True)
    d_it = orjson.loads(it)
    ev = d_it["event"]
    eid, iid, occ = ev["event_id"], ev["interaction_id"], ev["occurred_at"]
    fid = orjson.loads(fb)["event"]["event_id"]
    imp = _find(messages, "implicit", with_context=True)
    out = _find(messages, "outcome", with_context=True)
    variants = [
        _set(it, ("event", "input_tokens"), "40"),
        _set(it, ("event", "input_tokens"), 40.0),
        _set(it, ("event", "input_tokens"), 5_000_000_000),  # too big for the column
        _set(it, ("event", "latency_ms"), "200.5"),
        _set(it, ("event", "cost_usd"), 1),
        _set(it, ("event", "event_id"), eid.upper()),
        _set(it, ("event", "event_id"), eid.replace("-", "")),
        _set(it, ("event", "interaction_id"), "{" + iid + "}"),
        _set(it, ("event", "occurred_at"), occ.replace("Z", "+02:00")),
        _set(it, ("event", "occurred_at"), occ[:19] + "Z"),
        _set(it, ("event", "occurred_at"), occ[:23] + "Z"),
        _set(it, ("event", "occurred_at"), occ.replace("T", " ")),
        _set(it, ("event", "occurred_at"), 1_764_000_000.25),
        _set(it, ("event", "occurred_at"), "1764000000"),
        _set(it, ("event", "schema_version"), None, drop=True),
        _set(it, ("event", "schema_version"), "1"),
        _set(it, ("event", "user_id"), None, drop=True),
        _set(it, ("event", "user_id"), "u-1"),
        _set(it, ("event", "system_prompt"), None, drop=True),
        _set(it, ("event", "shadow"), "true"),
        _set(it, ("event", "shadow"), 1),
        _set(it, ("event", "metadata"), None, drop=True),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":1.50,'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":1e5,'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":-0,'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":"007",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":2.5,'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":"2.5",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":" 1",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":"1 ",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":"\\"q\\"",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":"[1]",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":"[1",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":"\\u0031",'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":-9223372036854775809,'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"k":18446744073709551616,'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"event_type":"feedback","k":0,'),
        _event_sub(it, b'"model":"m1"', b'"model":"first","model":"m1"'),
        _event_sub(it, b'"metadata":{"k":0,', b'"metadata":{"tag":"y","k":0,'),  # "tag" twice
        _event_sub(fb, b'"context":{', b'"context":{"model":"first",'),  # "model" twice
        _event_sub(it, b'"model":"m1"', b'"model":\n"m1"'),
        _event_sub(it, b'"response":"', b'"response":"\\u00e9\\ud83d\\ude00'),
        _set(it, ("derived",), None),
        _set(it, ("derived", "input_chars"), None, drop=True),
        _set(fb, ("event", "thumbs"), "1"),
        _set(fb, ("event", "thumbs"), 1.0),
        _set(fb, ("event", "interaction_id"), iid.upper()),
        _set(fb, ("event", "text"), None, drop=True),
        _set(fb, ("context",), None),
        _set(_set(_set(fb, ("context",), None), ("orphaned",), True), ("waited_ms",), 5000),
        _set(fb, ("context", "prompt_version"), None, drop=True),
        _set(fb, ("derived",), None),
        _set(fb, ("enriched_at",), "2026-01-02T03:04:05.678+00:00"),
        _set(fb, ("enriched_at",), "2026-01-02T03:04:05"),
        _set(fb, ("enriched_schema_version",), 2),
        _set(fb, ("event", "event_id"), fid.replace("-", "")),
        _set(imp, ("event", "copied_chars"), "5"),
        _set(imp, ("event", "dwell_ms"), 1),
        _set(imp, ("event", "copied_chars"), -1),
        _set(out, ("event", "value"), "2.5"),
        _set(out, ("event", "interaction_id"), None),
        _set(out, ("event", "outcome"), "Bad Name"),
    ]
    # Only what the stream jobs' validation passes can be on the enriched topic (a form
    # pydantic refuses, such as thumbs "1", never reaches it); plus two broken messages for
    # the dead-letter path.
    return [v for v in variants if _valid(v)] + [
        b'{"enriched_schema_version":1,"event":{"event_type":"feedback"}}',
        b"not json",
    ]


def _valid(message: bytes) -> bool:
    try:
        EnrichedEvent.model_validate_json(message)
    except ValueError:
        return False
    return True


def _write(
    client: Any, db: str, json_path: bool, batches: list[list[bytes]], offset: int = 0
) -> ClickHouseSink:
    sink = ClickHouseSink(
        "",
        db,
        TOPICS,
        max_rows=100_000,
        max_age_s=60,
        client_factory=lambda: client,
        json_path=json_path,
    )
    for batch in batches:
        for value in batch:
            sink.add(TOPICS.enriched, 0, offset, SinkMessage(value, b"k", None, KAFKA_TS, offset))
            offset += 1
        sink.flush()
    return sink


def _assert_same_rows(client: Any, a: str, b: str) -> None:
    for table in TABLES:
        cols = ", ".join(f"`{c}`" for c in COLUMNS[table])
        for x, y in ((a, b), (b, a)):
            diff = client.query(
                f"SELECT {cols} FROM {x}.{table} EXCEPT SELECT {cols} FROM {y}.{table}"
            ).result_rows
            assert diff == [], (table, x, diff[:3])
        counts = [client.command(f"SELECT count() FROM {db}.{table} FINAL") for db in (a, b)]
        assert counts[0] == counts[1], (table, counts)


def test_parsed_path_stores_exactly_the_python_paths_rows(client: Any) -> None:
    json_db, py_db = client.test_dbs
    canonical = pipeline_messages()
    variants = lax_variants(canonical)
    # One block of everything the stream jobs wrote, then each variant alone.
    batches = [canonical] + [[v] for v in variants]
    fast = _write(client, json_db, True, batches[:1])
    assert fast.stats.json_fallbacks == 0, fast.stats
    assert fast.stats.inserts <= 4, fast.stats  # one insert per table: nothing went row by row
    fast_all = _write(client, json_db, True, batches[1:], offset=len(canonical))
    _write(client, py_db, False, batches)
    _assert_same_rows(client, json_db, py_db)
    # Some variants were parsed by ClickHouse, others refused and decoded in Python.
    assert 0 < fast_all.stats.json_fallbacks < len(variants), fast_all.stats
    assert client.command(f"SELECT count() FROM {json_db}.dead_letters") > 0


def test_metadata_text_and_its_json_lookalikes_are_stored_apart_on_both_paths(
    client: Any,
) -> None:
    json_db, py_db = client.test_dbs
    canonical = pipeline_messages()
    fast = _write(client, json_db, True, [canonical])
    assert fast.stats.json_fallbacks == 0, fast.stats
    _write(client, py_db, False, [canonical])
    _assert_same_rows(client, json_db, py_db)
    for db in (json_db, py_db):
        ((meta,),) = client.query(
            f"SELECT metadata FROM {db}.interactions WHERE mapContains(metadata, 'si')"
        ).result_rows
        assert meta == {
            "i": "-7",
            "si": '"-7"',
            "b": "true",
            "sb": '"true"',
            "n": "null",
            "sn": '"null"',
            "s": "x1",
            "sf": '"1.5"',
            "sx": '"NaN"',
            "t": "tool",
            "big": str(2**63),
        }, db


def test_a_refused_message_falls_back_with_its_block_and_dead_letters(client: Any) -> None:
    json_db, py_db = client.test_dbs
    canonical = pipeline_messages()
    bad = _set(_find(canonical, "interaction"), ("event", "input_tokens"), 5_000_000_000)
    block = [*canonical[:10], bad, *canonical[10:]]
    sink = _write(client, json_db, True, [block])
    _write(client, py_db, False, [block])
    assert sink.stats.json_fallbacks == 1, sink.stats
    assert sink.stats.by_reason == {"clickhouse_rejected": 1}, sink.stats
    _assert_same_rows(client, json_db, py_db)


def test_a_replayed_block_is_dropped_by_its_token(client: Any) -> None:
    json_db, _ = client.test_dbs
    canonical = pipeline_messages()
    _write(client, json_db, True, [canonical])
    before = client.command(f"SELECT count() FROM {json_db}.feedback")
    sink = _write(client, json_db, True, [canonical])  # same offsets: same tokens
    assert sink.stats.json_fallbacks == 0
    assert client.command(f"SELECT count() FROM {json_db}.feedback") == before
    n = sum(1 for m in canonical if b'"event_type":"feedback"' in m)
    assert before == n


def test_most_variants_are_valid_upstream() -> None:
    # Guards the corpus against drifting into forms the stream jobs would refuse anyway.
    # Since the contract became strict (issue 13: numbers as text, Unix times, bare-hex or
    # braced ids, "true" for a flag are refused upstream), 34 of the 52 forms remain.
    assert len(lax_variants(pipeline_messages())) >= 34
