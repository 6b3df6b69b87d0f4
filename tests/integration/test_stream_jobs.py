"""The real faust worker against the real broker: dead letters, enrichment, windows, alerts.

Each test gets a fresh topic prefix and runs the worker in-process (``StreamJobs.running``)
with short windows and grace periods so the whole module stays well under a minute or two.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import random
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

pytest.importorskip("faust")

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.infra import ensure_topics  # noqa: E402
from feedbackloop.schemas import (  # noqa: E402
    Alert,
    DeadLetter,
    EnrichedEvent,
    Feedback,
    Interaction,
    Topics,
    WindowAggregate,
    encode,
)
from feedbackloop.stream_jobs import StreamConfig, StreamJobs  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PARTITIONS = 2
FAST = dict(window_s=10.0, allowed_lateness_s=2.0, grace_s=2.0, tick_s=0.25, idle_close_s=1.0)


def settings(bootstrap: str, prefix: str) -> Settings:
    return Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, topic_partitions=PARTITIONS)


def produce(bootstrap: str, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
    # lz4 and a larger client limit let the "oversized" poison message reach the broker.
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "compression.type": "lz4",
            "message.max.bytes": 4_000_000,
        }
    )
    for key, value in items:
        p.produce(topic, value, key)
    assert p.flush(30) == 0


def events(evs) -> list[tuple[bytes, bytes]]:
    return [(e.partition_key, encode(e)) for e in evs]


def read_all(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list:
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expect and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None and m.error() is None:
                got.append(m)
    finally:
        c.close()
    return got


async def until(pred, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def interaction(t: dt.datetime, variant: str = "a", **kw) -> Interaction:
    base = dict(
        app_id="app",
        session_id="s1",
        user_input="How do I sort a list in Python?",
        response="Use sorted(xs).",
        model="m1",
        prompt_version="v1",
        experiment="exp",
        variant=variant,
        latency_ms=120.0,
        occurred_at=t,
    )
    return Interaction(**{**base, **kw})


def thumbs(ia: Interaction, up: bool) -> Feedback:
    return Feedback(
        app_id="app",
        session_id=ia.session_id,
        interaction_id=ia.interaction_id,
        kind="thumbs",
        thumbs=1 if up else -1,
        occurred_at=ia.occurred_at,
    )


def create_topics(kafka_bootstrap: str, prefix: str) -> None:
    s = settings(kafka_bootstrap, prefix)
    ensure_topics(s.kafka_client_config(), Topics(prefix).all(), PARTITIONS)


def jobs_for(kafka_bootstrap: str, prefix: str, tmp_path: Path, **cfg) -> StreamJobs:
    """Call inside the event loop that will run it: faust binds its services to that loop."""
    s = settings(kafka_bootstrap, prefix)
    return StreamJobs(s, StreamConfig(**{**FAST, **cfg}), data_dir=tmp_path / "faust")


def test_poison_messages_go_to_dead_letters_and_counts_add_up(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    now = dt.datetime.now(dt.timezone.utc)
    good = []
    for i in range(50):
        ia = interaction(now, session_id=f"s{i}")
        good += [ia, thumbs(ia, up=i % 3 > 0)]
    poison = [
        (b"k1", b"{definitely not json"),
        (b"k2", json.dumps({"event_type": "telepathy", "app_id": "a", "session_id": "s"}).encode()),
        (b"k3", b'{"event_type":"interaction","user_input":"' + b"x" * 1_000_100 + b'"}'),
        (b"k4", json.dumps({"event_type": "feedback", "schema_version": 42}).encode()),
    ]
    items = events(good[:50]) + poison + events(good[50:])
    create_topics(kafka_bootstrap, topic_prefix)
    produce(kafka_bootstrap, topics.events, items)

    async def main() -> StreamJobs:
        jobs = jobs_for(kafka_bootstrap, topic_prefix, tmp_path)
        async with jobs.running():
            await until(lambda: jobs.pipeline.stats.records_in >= len(items), what="all records")
        return jobs

    jobs = asyncio.run(main())
    s = jobs.pipeline.stats
    assert s.records_in == len(items) == s.valid + s.dead_letters
    assert (s.valid, s.dead_letters) == (100, 4)

    dead = [
        DeadLetter.from_message(m.value(), m.key(), m.headers())
        for m in read_all(kafka_bootstrap, topics.dead_letters, 4)
    ]
    assert sorted(d.reason for d in dead) == sorted(
        ["invalid_json", "unknown_event_type", "oversized", "unsupported_schema_version"]
    )
    for d in dead:
        assert d.source_topic == topics.events and d.source_partition in range(PARTITIONS)
        assert d.source_offset is not None and d.source == "stream"
        assert (d.key, d.payload) in poison

    enriched = [
        EnrichedEvent.model_validate_json(m.value())
        for m in read_all(kafka_bootstrap, topics.enriched, 100)
    ]
    assert len(enriched) == 100  # the worker kept going after every poison message
    fb = [e for e in enriched if e.event.event_type == "feedback"]
    assert len(fb) == 50 and all(e.context is not None and not e.orphaned for e in fb)
    assert {e.context.variant for e in fb if e.context} == {"a"}


def test_early_feedback_waits_then_is_enriched_or_orphaned(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    now = dt.datetime.now(dt.timezone.utc)
    late_ia, never_ia = interaction(now), interaction(now, session_id="s2")
    create_topics(kafka_bootstrap, topic_prefix)

    async def main() -> None:
        jobs = jobs_for(kafka_bootstrap, topic_prefix, tmp_path, grace_s=3.0)
        async with jobs.running():
            await jobs.wait_assigned()
            produce(
                kafka_bootstrap,
                topics.events,
                events([thumbs(late_ia, False), thumbs(never_ia, True)]),
            )
            await until(lambda: jobs.pipeline.stats.pending == 2, what="two pending")
            await asyncio.sleep(1.0)  # within the grace period: nothing emitted yet
            assert jobs.pipeline.stats.enriched == 0
            produce(kafka_bootstrap, topics.events, events([late_ia]))
            await until(lambda: jobs.pipeline.stats.orphaned == 1, what="the orphan")

    asyncio.run(main())
    enriched = [
        EnrichedEvent.model_validate_json(m.value())
        for m in read_all(kafka_bootstrap, topics.enriched, 3)
    ]
    by_iid = {
        (e.event.event_type, str(getattr(e.event, "interaction_id", ""))): e for e in enriched
    }
    joined = by_iid[("feedback", str(late_ia.interaction_id))]
    assert not joined.orphaned and joined.context is not None and joined.waited_ms >= 1000
    orphan = by_iid[("feedback", str(never_ia.interaction_id))]
    assert orphan.orphaned and orphan.context is None and orphan.waited_ms >= 3000


def test_window_totals_are_exact_across_a_restart(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    rng = random.Random(42)
    t0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=1)
    evs, truth = [], Counter()
    for i in range(1200):
        t = t0 + dt.timedelta(seconds=i * 0.05)  # 60 s of event time: six 10 s windows
        ia = interaction(t, variant=rng.choice("ab"), session_id=f"s{rng.randrange(30)}")
        evs.append(ia)
        w = int(t.timestamp() // 10 * 10)
        truth[(w, ia.variant, "interactions")] += 1
        if rng.random() < 0.6:
            up = rng.random() < 0.7
            evs.append(thumbs(ia, up))
            truth[(w, ia.variant, "thumbs_up" if up else "thumbs_down")] += 1
    half = len(evs) // 2

    async def run_until(n: int, close: bool) -> StreamJobs:
        jobs = jobs_for(kafka_bootstrap, topic_prefix, tmp_path)
        async with jobs.running():
            await until(lambda: jobs.pipeline.stats.records_in >= n, what=f"{n} records")
            if close:
                await until(
                    lambda: not any(pw.open for pw in jobs.pipeline.partitions.values()),
                    what="every window closed",
                )
        return jobs

    create_topics(kafka_bootstrap, topic_prefix)
    produce(kafka_bootstrap, topics.events, events(evs[:half]))
    asyncio.run(run_until(half, close=False))
    produce(kafka_bootstrap, topics.events, events(evs[half:]))
    # The second worker resumes at the committed offsets and recovers the open windows
    # from their changelog; it sees only the second half.
    second = asyncio.run(run_until(len(evs) - half, close=True))
    # It may also see the last records of the first half again, when the first worker's
    # last commit did not land before it stopped (seen under heavy CPU load): a replay is
    # not counted twice (windows skip what they hold, or the records are late for windows
    # already emitted), so the totals below stay exact either way.
    replayed = second.pipeline.stats.records_in - (len(evs) - half)
    assert 0 <= replayed <= half
    if replayed:
        stats = second.pipeline.stats
        assert stats.replayed_effects + stats.late_events >= replayed

    msgs = read_all(kafka_bootstrap, topics.aggregates, 10_000, timeout=5)
    latest: dict[tuple, WindowAggregate] = {}
    for m in msgs:  # a later revision of a (group, window, partition) replaces the earlier
        a = WindowAggregate.model_validate_json(m.value())
        k = (a.window_start, a.variant, a.source_partition)
        if k not in latest or a.revision >= latest[k].revision:
            latest[k] = a
    got: Counter = Counter()
    for a in latest.values():
        w = int(a.window_start.timestamp())
        for field in ("interactions", "thumbs_up", "thumbs_down"):
            if getattr(a, field):
                got[(w, a.variant, field)] += getattr(a, field)
    assert got == truth


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_alert_fires_on_an_injected_drop_and_not_on_stable_traffic(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    rng = random.Random(9)
    t0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=2)
    evs = []
    windows, per_window, drop_at = 40, 150, 30
    for w in range(windows):
        for i in range(per_window):
            t = t0 + dt.timedelta(seconds=w * 10 + i * 10 / per_window)
            for variant in "ab":
                p = 0.55 if variant == "b" and w >= drop_at else 0.75
                ia = interaction(t, variant=variant, session_id=f"s{i}")
                evs += [ia, thumbs(ia, rng.random() < p)]
    create_topics(kafka_bootstrap, topic_prefix)
    produce(kafka_bootstrap, topics.events, events(evs))

    async def main() -> None:
        jobs = jobs_for(
            kafka_bootstrap,
            topic_prefix,
            tmp_path,
            alert_baseline_windows=15,
            alert_baseline_lag_windows=2,
            alert_webhook_url=url,
        )
        async with jobs.running():
            await until(lambda: jobs.pipeline.stats.records_in >= len(evs), what="all records")
            await until(lambda: bool(jobs.alerts_sent), what="an alert", timeout=60)
            await asyncio.sleep(2.0)  # let the remaining windows through the detector

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
    alerts = [
        Alert.model_validate_json(m.value())
        for m in read_all(kafka_bootstrap, topics.alerts, 10, timeout=5)
    ]
    variant_alerts = [a for a in alerts if a.dimension == "variant"]
    assert [a.variant for a in variant_alerts] == ["b"]  # none for the stable arm
    a = variant_alerts[0]
    assert a.baseline_rate == pytest.approx(0.75, abs=0.04)
    assert a.recent_rate < 0.65
    drop_start = t0 + dt.timedelta(seconds=drop_at * 10)
    assert drop_start <= a.detected_at <= drop_start + dt.timedelta(seconds=5 * 10)
    assert any("dropped from" in r["text"] for r in _Hook.received)
    groups = defaultdict(int)
    for x in alerts:
        groups[x.dimension] += 1
    # the prompt-version detector pools both arms; it may or may not fire, never twice
    assert groups["prompt_version"] <= 1


def test_recovery_end_offsets_are_after_the_last_record_of_the_last_batch(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    # Tansu answers ListOffsets(latest) with the last batch's base offset + 1; faust recovers a
    # table only up to that offset, so every record after the first of the changelog's last
    # batch was lost to the restarted worker (docs/RELIABILITY.md, "Table recovery").
    from faust.types import TP

    topic = f"{topic_prefix}end-offsets"
    s = settings(kafka_bootstrap, topic_prefix)
    ensure_topics(s.kafka_client_config(), [topic], PARTITIONS)
    p = Producer(
        {
            "bootstrap.servers": kafka_bootstrap,
            "linger.ms": 50,
            "compression.type": "lz4",
            "batch.size": 1_000_000,
        }
    )
    for i in range(10):  # one flush: one record batch on partition 0
        p.produce(topic, b"v", b"k%d" % i, 0)
    assert p.flush(30) == 0

    async def main() -> dict:
        jobs = jobs_for(kafka_bootstrap, topic_prefix, tmp_path)
        async with jobs.running():
            await jobs.wait_assigned()
            return dict(await jobs.app.consumer.highwaters(TP(topic, 0), TP(topic, 1)))

    assert asyncio.run(main()) == {TP(topic, 0): 10, TP(topic, 1): 0}
