"""The join never trusts the message key; replays never count twice; id-less events get
deterministic identities (pure pipeline, no broker)."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid

import pytest

pytest.importorskip("faust")

from test_stream_pipeline import T0, TOPICS, Collect, interaction, thumbs  # noqa: E402

from feedbackloop.schemas import EnrichedEvent, WindowAggregate, encode  # noqa: E402
from feedbackloop.schemas.identity import derived_event_id  # noqa: E402
from feedbackloop.stream_jobs import Pipeline, StreamConfig, WindowState  # noqa: E402
from feedbackloop.stream_jobs.enrich import InteractionRecord  # noqa: E402
from feedbackloop.stream_jobs.pipeline import (  # noqa: E402
    ORIGIN_HEADER,
    decode_pending,
    owner_partition,
)

MS = int(T0.timestamp() * 1000)


def rec(key, event_or_bytes, offset):  # noqa: ANN001
    value = event_or_bytes if isinstance(event_or_bytes, bytes) else encode(event_or_bytes)
    return (key, value, offset, MS + offset)


def enriched(out: Collect) -> list[EnrichedEvent]:
    return [EnrichedEvent.model_validate_json(m[2]) for m in out.on(TOPICS.enriched)]


def test_feedback_keyed_by_session_joins_its_own_interaction_not_the_keys() -> None:
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(), out)
    ie1 = interaction(session_id="shared", variant="a", prompt_version="p1")
    ie2 = interaction(session_id="shared", variant="b", prompt_version="p2")
    fb1 = thumbs(ie1)
    # a third-party producer keys everything by session id
    pipe.process(0, [rec(b"shared", ie1, 0), rec(b"shared", ie2, 1), rec(b"shared", fb1, 2)])
    (joined,) = [e for e in enriched(out) if e.event.event_type == "feedback"]
    assert joined.event.interaction_id == ie1.interaction_id
    assert joined.context is not None and joined.context.variant == "a"
    assert joined.context.prompt_version == "p1"


def test_no_key_and_upper_case_ids_join_under_the_canonical_id() -> None:
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(), out)
    ia = interaction()
    upper = str(ia.interaction_id).upper()
    fb = json.loads(encode(thumbs(ia)))
    fb["interaction_id"] = upper
    pipe.process(0, [rec(None, ia, 0), rec(upper.encode(), json.dumps(fb).encode(), 1)])
    (joined,) = [e for e in enriched(out) if e.event.event_type == "feedback"]
    assert not joined.orphaned and joined.context is not None
    assert list(pipe.interactions) == [str(ia.interaction_id).encode()]
    assert not pipe.pending


def test_events_on_a_partition_that_does_not_own_their_interaction_are_forwarded() -> None:
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(), out, partitions=4)
    ia = interaction()
    key = str(ia.interaction_id).encode()
    owner = owner_partition(key, 4)
    wrong = (owner + 1) % 4
    pipe.process(wrong, [rec(b"session-key", ia, 41)])
    assert pipe.stats.forwarded == 1 and not pipe.interactions and not enriched(out)
    (fwd,) = out.on(TOPICS.repartition)
    assert fwd[1] == key
    assert fwd[3] == [(ORIGIN_HEADER, b"%d:41:%d" % (wrong, MS + 41))]
    # the owner processes it with its origin
    pipe.process(owner, [(key, fwd[2], 0, 0)], origins=[(wrong, 41, MS + 41)])
    assert key in pipe.interactions and len(enriched(out)) == 1
    # an event already on its owner partition is processed in place
    pipe.process(owner, [rec(key, thumbs(ia), 7)])
    assert pipe.stats.forwarded == 1 and enriched(out)[-1].context is not None


def test_owner_partition_is_librdkafkas_default_partitioner() -> None:
    # CRC-32 of the key modulo the partition count (librdkafka's consistent_random)
    assert owner_partition(b"", 4) == 0
    assert owner_partition(b"123456789", 1000) == 0xCBF43926 % 1000


def _recover(out: Collect) -> dict[str, dict]:
    """The tables a restarted worker recovers: the last changelog value per key."""
    decode = {
        "interactions": InteractionRecord.from_bytes,
        "pending": decode_pending,
        "windows": WindowState.from_bytes,
        "window_ids": bytes,
        "watermarks": json.loads,
    }
    tables: dict[str, dict] = {name: {} for name in decode}
    for table, _p, key, value in out.changelog_writes:
        if value is None:
            tables[table].pop(key, None)
        else:
            tables[table][key] = decode[table](value)
    return tables


def _traffic(n: int, seed: int) -> list:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        ia = interaction(T0 + dt.timedelta(seconds=i * 0.1), variant=rng.choice("ab"))
        early = rng.random() < 0.2  # feedback before its interaction waits in `pending`
        fb = thumbs(ia, up=rng.random() < 0.6)
        events.extend([fb, ia] if early else [ia, fb])
    return events


def _aggregates(out: Collect) -> dict:
    got: dict = {}
    for _t, _k, v, _h in out.on(TOPICS.aggregates):
        a = WindowAggregate.model_validate_json(v)
        key = (a.window_start, a.variant)
        if key not in got or a.revision > got[key].revision:
            got[key] = a  # ClickHouse keeps the highest revision
    return {k: (a.interactions, a.thumbs_up, a.thumbs_down) for k, a in got.items()}


@pytest.mark.parametrize("crash_after", [150, 333, 801])
def test_a_replay_after_a_crash_counts_each_event_once_whatever_the_batch_boundaries(
    crash_after: int,
) -> None:
    events = _traffic(400, seed=crash_after)
    closer = interaction(T0 + dt.timedelta(hours=1), variant="z")
    records = [rec(e.partition_key, e, i) for i, e in enumerate([*events, closer])]
    cfg = StreamConfig(window_s=10, allowed_lateness_s=0)

    clean = Collect()
    p = Pipeline(TOPICS, cfg, clean)
    for i in range(0, len(records), 50):
        p.process(0, records[i : i + 50], now=T0.timestamp())

    # the crashed run: batches of 50 processed and flushed up to `crash_after`, but offsets
    # committed only up to 100 records before it; the restart replays from there in
    # batches of another size
    crashed = Collect()
    p1 = Pipeline(TOPICS, cfg, crashed)
    for i in range(0, crash_after, 50):
        p1.process(0, records[i : min(i + 50, crash_after)], now=T0.timestamp())
    state = _recover(crashed)
    p2 = Pipeline(
        TOPICS,
        cfg,
        crashed,
        interactions=state["interactions"],
        pending=state["pending"],
        windows=state["windows"],
        window_ids=state["window_ids"],
        watermarks=state["watermarks"],
    )
    committed = max(0, crash_after - 100)
    for i in range(committed, len(records), 37):
        p2.process(0, records[i : i + 37], now=T0.timestamp())
    assert p2.stats.replayed_effects > 0
    assert _aggregates(crashed) == _aggregates(clean)
    assert sum(v[0] for k, v in _aggregates(clean).items() if k[1] != "z") == 400


def test_events_without_event_id_or_occurred_at_get_the_same_identity_on_every_replay() -> None:
    ia = interaction()
    bare_ia = json.loads(encode(ia))
    del bare_ia["event_id"], bare_ia["occurred_at"]
    bare_fb = json.loads(encode(thumbs(ia)))
    del bare_fb["event_id"]
    records = [
        rec(None, json.dumps(bare_ia).encode(), 10),
        rec(None, json.dumps(bare_fb).encode(), 11),
    ]
    runs = []
    for batches in ([records], [records[:1], records[1:]]):
        out = Collect()
        pipe = Pipeline(TOPICS, StreamConfig(), out)
        for b in batches:
            pipe.process(0, b)
        runs.append([(e.event.event_id, e.event.occurred_at) for e in enriched(out)])
        assert pipe.stats.identities_derived == 2
    assert runs[0] == runs[1]
    (ia_id, ia_at), (fb_id, fb_at) = runs[0]
    assert ia_id == derived_event_id(TOPICS.events, 0, 10)
    assert fb_id == derived_event_id(TOPICS.events, 0, 11) and fb_id != ia_id
    assert ia_at == dt.datetime.fromtimestamp((MS + 10) / 1000, dt.timezone.utc)
    assert fb_at == ia.occurred_at  # given by the producer: kept
    assert isinstance(ia_id, uuid.UUID)


def test_a_forwarded_event_that_waited_then_joined_is_not_counted_again_when_replayed() -> None:
    cfg = StreamConfig(window_s=10, allowed_lateness_s=0)
    out = Collect()
    pipe = Pipeline(TOPICS, cfg, out)
    ia = interaction()
    fb = thumbs(ia)
    key = str(ia.interaction_id).encode()
    # on the owner partition 0: the feedback (from raw partition 2) before its interaction
    # (from raw partition 1); the feedback waits, the interaction releases it
    pipe.process(0, [(key, encode(fb), 0, MS)], origins=[(2, 5, MS)])
    pipe.process(0, [(key, encode(ia), 1, MS)], origins=[(1, 7, MS)])
    pipe.process(0, [])  # the held-back deletion of the pending list is written now
    # crash before the repartition offsets were committed: both come again
    state = _recover(out)
    assert not state["pending"]
    again = Pipeline(
        TOPICS,
        cfg,
        out,
        interactions=state["interactions"],
        pending=state["pending"],
        windows=state["windows"],
        window_ids=state["window_ids"],
        watermarks=state["watermarks"],
    )
    again.process(
        0,
        [(key, encode(fb), 0, MS), (key, encode(ia), 1, MS)],
        origins=[
            (2, 5, MS),
            (1, 7, MS),
        ],
    )
    later = interaction(T0 + dt.timedelta(hours=1))
    again.process(0, [rec(later.partition_key, later, 2)])
    ((_, ups, downs),) = [v for k, v in _aggregates(out).items() if k[1] == "a"][:1]
    assert (ups, downs) == (1, 0)
    assert again.stats.replayed_effects == 2


def test_a_recovered_pending_list_whose_interaction_is_known_joins_on_the_next_tick() -> None:
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(grace_s=30), out)
    ia = interaction()
    fb = thumbs(ia)
    pipe.process(0, [rec(ia.partition_key, fb, 0)], now=1000.0)
    pipe.process(0, [rec(ia.partition_key, ia, 1)], now=1001.0)
    # a crash lost the held-back deletion: the recovered pending list is still there
    state = _recover(out)
    assert state["pending"] and state["interactions"]
    again = Pipeline(
        TOPICS,
        StreamConfig(grace_s=30),
        out,
        interactions=state["interactions"],
        pending=state["pending"],
        windows=state["windows"],
        window_ids=state["window_ids"],
        watermarks=state["watermarks"],
    )
    again.tick(now=1002.0)
    assert not again.pending and again.stats.orphaned == 0
    assert again.stats.replayed_effects == 1  # the windows already held it
    joined = [e for e in enriched(out) if e.event.event_type == "feedback"]
    assert joined and all(not e.orphaned and e.context is not None for e in joined)


def test_a_partition_taken_over_is_not_idle_until_its_backlog_had_time_to_arrive() -> None:
    cfg = StreamConfig(window_s=10, allowed_lateness_s=5, idle_close_s=10)
    out = Collect()
    first = Pipeline(TOPICS, cfg, out)
    first.process(0, [rec(None, interaction(), 0)], now=1000.0)
    state = _recover(out)
    # another worker takes the partition over, much later by the wall clock
    taker = Pipeline(TOPICS, cfg, out, windows=state["windows"], watermarks=state["watermarks"])
    taker.tick(now=T0.timestamp() + 3600, partitions=[0])
    assert not out.on(TOPICS.aggregates)  # the backlog may still come: not closed yet
    taker.tick(now=T0.timestamp() + 3611, partitions=[0])
    assert len(out.on(TOPICS.aggregates)) == 1  # idle for idle_close_s: closed


def test_windows_close_by_the_wall_clock_only_on_partitions_known_to_be_caught_up() -> None:
    cfg = StreamConfig(window_s=10, allowed_lateness_s=5, idle_close_s=10)
    out = Collect()
    pipe = Pipeline(TOPICS, cfg, out)
    pipe.process(0, [rec(None, interaction(), 0)], now=1000.0)
    # a broker that does not answer (its storage restarting) is not idleness
    pipe.tick(now=T0.timestamp() + 3600, partitions=[0], closable=[])
    assert not out.on(TOPICS.aggregates)
    pipe.tick(now=T0.timestamp() + 3600, partitions=[0], closable=[0])
    assert len(out.on(TOPICS.aggregates)) == 1


def test_after_a_rebalance_the_state_of_partitions_now_owned_elsewhere_is_dropped() -> None:
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(), out)
    a, b = interaction(), interaction()
    pipe.process(0, [rec(None, a, 0)], now=1000.0)
    pipe.process(1, [rec(None, thumbs(b), 0)], now=1000.0)  # waits on partition 1
    pipe.process(1, [rec(None, interaction(session_id="x"), 1)], now=1000.0)
    pipe.keep_only([0])
    assert list(pipe.interactions) == [str(a.interaction_id).encode()]
    assert not pipe.pending and pipe.stats.pending == 0
    assert {json.loads(k)[0] for k in pipe.window_store} == {0}
    assert list(pipe.watermark_store) == [b"0"]
    pipe.tick(now=1000.0 + 3600)  # nothing of partition 1 is released as an orphan here
    assert pipe.stats.orphaned == 0


def test_the_sinks_raw_path_derives_the_same_identity_as_the_stream_jobs() -> None:
    from feedbackloop.sinks import COLUMNS, TopicRouter

    ia = interaction()
    bare = json.loads(encode(ia))
    del bare["event_id"], bare["occurred_at"]
    value = json.dumps(bare).encode()
    router = TopicRouter(TOPICS)
    rows = [router.rows(TOPICS.events, 3, 41, value, None, None, MS)[0][1] for _ in range(2)]
    assert rows[0] == rows[1]  # a replay: the same row, so stored once
    cols = COLUMNS["interactions"]
    row = dict(zip(cols, rows[0], strict=True))
    assert row["event_id"] in (
        derived_event_id(TOPICS.events, 3, 41),
        derived_event_id(TOPICS.events, 3, 41).int,
    )
    assert row["occurred_at"] == dt.datetime.fromtimestamp(MS / 1000, dt.timezone.utc)
    # what the stream jobs derive for the same record
    out = Collect()
    Pipeline(TOPICS, StreamConfig(), out).process(3, [(None, value, 41, MS)])
    (e,) = enriched(out)
    assert e.event.event_id == derived_event_id(TOPICS.events, 3, 41)


# --- resends: the same event_id on a new record (the SDK's spool after a broker crash) ----
def _resent(records: list, at: int, first: int) -> list:
    """``records`` with those in ``[first, at)`` sent once more after ``at``, as new records
    (new offsets), as the SDK resends what the broker had stored but not acknowledged."""
    again = [*records[:at], *records[first:at], *records[at:]]
    return [(k, v, i, ts) for i, (k, v, _o, ts) in enumerate(again)]


@pytest.mark.parametrize("batch", [7, 50, 1000])
def test_events_resent_on_new_offsets_are_counted_once_in_the_windows(batch: int) -> None:
    events = _traffic(300, seed=batch)
    closer = interaction(T0 + dt.timedelta(hours=1), variant="z")
    records = [rec(e.partition_key, e, i) for i, e in enumerate([*events, closer])]
    cfg = StreamConfig(window_s=10, allowed_lateness_s=5)
    clean, resent = Collect(), Collect()
    p = Pipeline(TOPICS, cfg, clean)
    p.process(0, records, now=T0.timestamp())
    q = Pipeline(TOPICS, cfg, resent)
    # two resends: one of events already counted, one of events still waiting (early feedback)
    twice = _resent(_resent(records, 400, 310), 200, 120)
    assert len(twice) == len(records) + 170
    for i in range(0, len(twice), batch):
        q.process(0, twice[i : i + batch], now=T0.timestamp())
    assert _aggregates(resent) == _aggregates(clean)
    assert q.stats.replayed_effects >= 170 - q.stats.late_events
    assert sum(v[0] for k, v in _aggregates(clean).items() if k[1] != "z") == 300


def test_a_resend_after_a_crash_is_counted_once_though_the_window_record_holds_one_batch() -> None:
    cfg = StreamConfig(window_s=60, allowed_lateness_s=0)
    out = Collect()
    pipe = Pipeline(TOPICS, cfg, out)
    ias = [interaction(T0 + dt.timedelta(seconds=i)) for i in range(3)]
    fbs = [thumbs(ia) for ia in ias]
    # three batches into one window: its last record holds the ids of the third only
    for i in range(3):
        pipe.process(0, [rec(None, ias[i], 2 * i), rec(None, fbs[i], 2 * i + 1)])
    state = _recover(out)
    assert len(state["window_ids"]) == 3
    again = Pipeline(
        TOPICS,
        cfg,
        out,
        interactions=state["interactions"],
        pending=state["pending"],
        windows=state["windows"],
        window_ids=state["window_ids"],
        watermarks=state["watermarks"],
    )
    # the restarted worker reads the first batch's events again, resent on new offsets
    again.process(0, [rec(None, ias[0], 6), rec(None, fbs[0], 7)])
    assert again.stats.replayed_effects == 2
    later = interaction(T0 + dt.timedelta(hours=1), variant="z")
    again.process(0, [rec(None, later, 8)])
    assert [v for k, v in _aggregates(out).items() if k[1] == "a"] == [(3, 3, 0)]


def test_an_id_chunk_whose_window_record_a_crash_lost_is_not_trusted() -> None:
    cfg = StreamConfig(window_s=60, allowed_lateness_s=0)
    out = Collect()
    pipe = Pipeline(TOPICS, cfg, out)
    ias = [interaction(T0 + dt.timedelta(seconds=i)) for i in range(2)]
    pipe.process(0, [rec(None, ias[0], 0)])
    pipe.process(0, [rec(None, ias[1], 1)])
    # the crash kept the second batch's id chunk but lost its window record (and the
    # offset commit): the second interaction was never counted, and comes again
    last = max(i for i, w in enumerate(out.changelog_writes) if w[0] == "windows")
    del out.changelog_writes[last]
    state = _recover(out)
    again = Pipeline(
        TOPICS,
        cfg,
        out,
        windows=state["windows"],
        window_ids=state["window_ids"],
        watermarks=state["watermarks"],
    )
    again.process(0, [rec(None, ias[1], 1)])
    assert again.stats.replayed_effects == 0
    again.process(0, [rec(None, interaction(T0 + dt.timedelta(hours=1), variant="z"), 2)])
    assert [v[0] for k, v in _aggregates(out).items() if k[1] == "a"] == [2]


def test_a_closed_window_leaves_no_id_chunks_behind() -> None:
    cfg = StreamConfig(window_s=60, allowed_lateness_s=0)
    out = Collect()
    pipe = Pipeline(TOPICS, cfg, out)
    for i in range(4):
        pipe.process(0, [rec(None, interaction(T0 + dt.timedelta(seconds=i)), i)])
    pipe.process(0, [rec(None, interaction(T0 + dt.timedelta(hours=1)), 4)])
    assert len(out.on(TOPICS.aggregates)) == 1
    pipe.process(0, [])  # the held-back deletions are written
    state = _recover(out)
    assert list(state["windows"]) == [next(iter(pipe.window_store))]
    assert [k.rpartition(b"#")[0] for k in state["window_ids"]] == list(state["windows"])
