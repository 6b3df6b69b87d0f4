"""Event identity on real chDB: a resend under other key columns is refused, on both paths.

The sink writes what the stream jobs wrote for make_events, then resends some of those
event ids with a different prompt version, variant, kind, signal, outcome, app, hour or day
(each would land under another ReplacingMergeTree key), identically, and with the same key
but other content. Every event must read as one row under FINAL, and every changed-key
resend must be one ``conflicting_resend`` dead letter; on the ClickHouse-parsed path and on
the Python path alike, in separate batches and within one batch, and again after a replay.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from test_sink_json_path import _find, _set, pipeline_messages

from feedbackloop.infra import get_client, is_embedded
from feedbackloop.schemas import Topics
from feedbackloop.sinks import ClickHouseSink, SinkMessage, migrate

pytestmark = pytest.mark.integration

TOPICS = Topics("id.")
EVENT_TABLES = ("interactions", "feedback", "implicit", "outcomes")


@pytest.fixture
def client(clickhouse_dsn: str) -> Iterator[Any]:
    c = get_client(clickhouse_dsn)
    db = f"flid_{uuid.uuid4().hex[:8]}"
    migrate(c, db)
    c.test_db = db
    yield c
    c.command(f"DROP DATABASE IF EXISTS {db}")


def _shift(message: bytes, delta: dt.timedelta) -> bytes:
    t = dt.datetime.fromisoformat(orjson.loads(message)["event"]["occurred_at"]) + delta
    return _set(message, ("event", "occurred_at"), t.isoformat().replace("+00:00", "Z"))


def _conflicting(messages: list[bytes]) -> list[bytes]:
    """Resends of stored ids, each under other key columns (a new ReplacingMergeTree key)."""
    it = _find(messages, "interaction")
    fb = _find(messages, "feedback", with_context=True)
    imp = _find(messages, "implicit", with_context=True)
    out = _find(messages, "outcome", with_context=True)
    comment = _set(_set(fb, ("event", "thumbs"), None, drop=True), ("event", "kind"), "comment")
    return [
        _set(it, ("event", "prompt_version"), "p-other"),
        _set(it, ("event", "variant"), "zz"),
        _set(it, ("event", "app_id"), "another-app"),
        _shift(it, dt.timedelta(hours=-1)),  # another hour, maybe the same day
        _shift(it, dt.timedelta(days=-1)),  # another day: another partition
        _set(comment, ("event", "text"), "changed my mind"),
        _shift(fb, dt.timedelta(days=-2)),
        _set(imp, ("event", "signal"), "dwell"),
        _set(out, ("event", "outcome"), "refunded"),
    ]


def _harmless(messages: list[bytes]) -> list[bytes]:
    """Resends that keep the key: stored once, no dead letter."""
    it = _find(messages, "interaction")
    fb = _find(messages, "feedback", with_context=True)
    return [it, fb, _set(it, ("event", "response"), "the same event, other content")]


def _write(client: Any, json_path: bool, batches: list[list[bytes]], offset: int = 0) -> Any:
    sink = ClickHouseSink(
        "",
        client.test_db,
        TOPICS,
        max_rows=100_000,
        max_age_s=60,
        client_factory=lambda: client,
        json_path=json_path,
    )
    for batch in batches:
        for value in batch:
            sink.add(TOPICS.enriched, 0, offset, SinkMessage(value, b"k", None, 1, offset))
            offset += 1
        sink.flush()

    return sink


def _final_counts(client: Any) -> dict[str, int]:
    db = client.test_db
    return {t: int(client.command(f"SELECT count() FROM {db}.{t} FINAL")) for t in EVENT_TABLES}


def _raw_counts(client: Any) -> dict[str, int]:
    db = client.test_db
    tables = (*EVENT_TABLES, "dead_letters")
    return {t: int(client.command(f"SELECT count() FROM {db}.{t}")) for t in tables}


def _distinct_ids(client: Any) -> dict[str, int]:
    db = client.test_db
    return {
        t: int(client.command(f"SELECT uniqExact(event_id) FROM {db}.{t}")) for t in EVENT_TABLES
    }


def _refused(client: Any) -> list[tuple[int, str]]:
    return [
        (int(o), e)
        for o, e in client.query(
            f"SELECT source_offset, error FROM {client.test_db}.dead_letters FINAL "
            "WHERE reason = 'conflicting_resend' ORDER BY source_offset"
        ).result_rows
    ]


@pytest.mark.parametrize("json_path", [True, False], ids=["parsed", "python"])
def test_a_resend_under_other_key_columns_is_one_dead_letter_and_the_event_one_row(
    client: Any, json_path: bool, clickhouse_dsn: str
) -> None:
    if json_path and not is_embedded(clickhouse_dsn):
        pytest.skip("the ClickHouse-parsed path is for embedded chDB only")
    stored = pipeline_messages()
    conflicting, harmless = _conflicting(stored), _harmless(stored)
    first = _write(client, json_path, [stored])
    if json_path:
        assert first.stats.json_fallbacks == 0, first.stats
    counts = _final_counts(client)
    assert counts == _distinct_ids(client)
    # One batch of resends, interleaved; then the same again as a replay after a crash
    # (same offsets: same dead-letter rows, same tokens).
    resends = [m for pair in zip(conflicting, harmless * 3, strict=False) for m in pair]
    resends += conflicting[len(harmless) * 3 :]
    sink = _write(client, json_path, [resends], offset=len(stored))
    assert sink.stats.by_reason["conflicting_resend"] == len(conflicting), sink.stats
    if json_path:  # resends are keyed by ClickHouse and stay on the parsed path
        assert sink.stats.json_fallbacks == 0, sink.stats
    parts = _raw_counts(client)
    _write(client, json_path, [resends], offset=len(stored))
    assert _raw_counts(client) == parts  # the replay was dropped by its tokens
    assert _final_counts(client) == counts
    refused = _refused(client)
    assert len(refused) == len(conflicting)
    assert all("was first stored in" in e for _, e in refused)
    it = orjson.loads(_find(stored, "interaction"))["event"]
    row = client.query(
        f"SELECT prompt_version, variant, app_id, response FROM {client.test_db}.interactions "
        f"FINAL WHERE event_id = '{it['event_id']}'"
    ).result_rows
    # The first key stays; the same-key resend with other content replaced the content.
    assert row == [(it["prompt_version"] or "", it["variant"] or "", it["app_id"], row[0][3])], row


@pytest.mark.parametrize("json_path", [True, False], ids=["parsed", "python"])
def test_conflicting_copies_of_a_new_id_in_one_batch_keep_the_first(
    client: Any, json_path: bool, clickhouse_dsn: str
) -> None:
    if json_path and not is_embedded(clickhouse_dsn):
        pytest.skip("the ClickHouse-parsed path is for embedded chDB only")
    stored = pipeline_messages()
    it = _find(stored, "interaction")
    batch = [it, _set(it, ("event", "prompt_version"), "p-late"), it, *stored[1:5]]
    _write(client, json_path, [batch])
    eid = orjson.loads(it)["event"]["event_id"]
    rows = client.query(
        f"SELECT prompt_version FROM {client.test_db}.interactions FINAL WHERE event_id = '{eid}'"
    ).result_rows
    assert rows == [(orjson.loads(it)["event"]["prompt_version"] or "",)]
    assert [o for o, _ in _refused(client)] == [1]


def test_existing_rows_are_known_after_the_migration(client: Any) -> None:
    # A database migrated before event_keys existed: its rows are backfilled once.
    from feedbackloop.sinks.migrations import MIGRATIONS

    db = client.test_db
    stored = pipeline_messages()
    _write(client, False, [stored])
    client.command(f"TRUNCATE TABLE {db}.event_keys")
    client.command(f"ALTER TABLE {db}.schema_migrations DELETE WHERE version = 6")
    six = [m for m in MIGRATIONS if m.version == 6]
    assert migrate(client, db, migrations=tuple(six)) == [6]
    assert int(client.command(f"SELECT uniqExact(event_id) FROM {db}.event_keys")) == sum(
        _distinct_ids(client).values()
    )
    _write(client, False, [_conflicting(stored)], offset=len(stored))
    assert len(_refused(client)) == len(_conflicting(stored))


def test_a_message_that_hides_its_event_id_from_the_scan_is_still_checked(
    client: Any, clickhouse_dsn: str
) -> None:
    if not is_embedded(clickhouse_dsn):
        pytest.skip("the ClickHouse-parsed path is for embedded chDB only")
    stored = pipeline_messages()
    _write(client, True, [stored])
    counts = _final_counts(client)
    d = orjson.loads(_set(_find(stored, "interaction"), ("event", "prompt_version"), "p-hidden"))
    # A client orders its keys as it likes: a metadata entry named event_id, first in the
    # event, is what a scan of the bytes finds before the real id.
    decoy = str(uuid.uuid4())
    event = d["event"]
    d["event"] = {"metadata": {"event_id": decoy, **event.pop("metadata")}, **event}
    hidden = orjson.dumps(d)
    assert hidden.find(decoy.encode()) < hidden.find(event["event_id"].encode())
    sink = _write(client, True, [[hidden, *stored[1:4]]], offset=len(stored))
    assert sink.stats.json_fallbacks >= 1, sink.stats  # the parsed id is not the scanned one
    assert sink.stats.by_reason["conflicting_resend"] == 1, sink.stats
    assert _final_counts(client) == counts


def test_a_hidden_id_that_an_earlier_message_of_the_batch_stores_elsewhere_is_refused(
    client: Any, clickhouse_dsn: str
) -> None:
    if not is_embedded(clickhouse_dsn):
        pytest.skip("the ClickHouse-parsed path is for embedded chDB only")
    # The feedback block is parsed and stored; the interaction block is refused (its parsed
    # id is not the scanned decoy) and its messages are checked in Python after that: the
    # interaction's real id is the feedback's, so it is held to the key just stored.
    stored = pipeline_messages()
    fb = _find(stored, "feedback", with_context=True)
    taken = orjson.loads(fb)["event"]["event_id"]
    d = orjson.loads(_find(stored, "interaction"))
    event = d["event"]
    event["event_id"] = taken
    d["event"] = {"metadata": {"event_id": str(uuid.uuid4()), **event.pop("metadata")}, **event}
    sink = _write(client, True, [[fb, orjson.dumps(d)]])
    assert sink.stats.json_fallbacks >= 1, sink.stats
    assert sink.stats.by_reason["conflicting_resend"] == 1, sink.stats
    db = client.test_db
    assert client.command(f"SELECT count() FROM {db}.interactions") == 0
    assert client.command(f"SELECT count() FROM {db}.feedback WHERE event_id = '{taken}'") == 1
