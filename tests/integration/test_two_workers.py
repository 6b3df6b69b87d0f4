"""Two stream workers share the partitions; third-party producers key and partition as they
like (Java's murmur2, librdkafka's crc32, by session, by nothing, upper-case ids); one worker
is SIGKILLed under load. Every event is enriched with the right context, none is orphaned,
and the window totals equal the events sent."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("faust")

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

from feedbackloop.infra import ensure_topics  # noqa: E402
from feedbackloop.schemas import (  # noqa: E402
    EnrichedEvent,
    Feedback,
    Interaction,
    Topics,
    WindowAggregate,
    encode,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fault,
    pytest.mark.slow,
    pytest.mark.timeout(600),
]

PARTITIONS = 4
#: The survivor must enrich more events within this many seconds, until it has them all.
#: After the SIGKILL it notices the death (session timeout), rebalances, recovers the dead
#: worker's tables and works off its backlog: ~15 s here, unknown on a loaded CI machine,
#: where a fixed 120 s once ended with 330 of 12,000 events still missing. A loss shows as
#: no progress: a feedback whose interaction was lost waits for the 120 s grace period and
#: is then orphaned, which the test refuses.
STALL_S = 90.0
#: ... and within this many seconds after the producers' flush, in all.
WAIT_S = 360.0


def _worker(bootstrap: str, prefix: str, data_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACKLOOP_")}
    env.update(
        FEEDBACKLOOP_BOOTSTRAP_SERVERS=bootstrap,
        FEEDBACKLOOP_TOPIC_PREFIX=prefix,
        FEEDBACKLOOP_TOPIC_PARTITIONS=str(PARTITIONS),
        FEEDBACKLOOP_DATA_DIR=str(data_dir),
        # event times lie an hour back: nothing is late, idle partitions close their windows
        FEEDBACKLOOP_STREAM_WINDOW_S="60",
        FEEDBACKLOOP_STREAM_LATENESS_S="600",
        FEEDBACKLOOP_STREAM_GRACE_S="120",
        PYTHONUNBUFFERED="1",
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    out = open(data_dir / "worker.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "feedbackloop", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


def _wait_running(log: Path, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        if log.exists() and "worker running" in log.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"worker not running: {log.read_text()[-3000:]}")


class ThirdParties:
    """Interactions and feedback the way other teams' producers send them."""

    def __init__(self, bootstrap: str, topic: str, seed: int) -> None:
        # Idempotent, as the SDK is: a retried produce must not put an event in the log twice
        # (windows count records; the stores deduplicate by event_id).
        base = {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "log_level": 0,
            "enable.idempotence": True,
        }
        self.java = Producer({**base, "partitioner": "murmur2_random"})  # Java's default
        self.librdkafka = Producer({**base, "partitioner": "consistent_random"})
        self.topic = topic
        self.rng = random.Random(seed)
        self.variant: dict[uuid.UUID, str] = {}
        #: event_id -> event type, of every event sent
        self.sent: dict[uuid.UUID, str] = {}
        self.thumbs = 0
        self.t0 = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)

    def _send(self, producer: Producer, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                producer.produce(self.topic, value, key)
                return
            except BufferError:
                producer.poll(0.05)

    def pair(self, i: int) -> None:
        rng = self.rng
        session = f"session-{rng.randrange(50)}"
        ia = Interaction(
            app_id="partner",
            session_id=session,
            user_input="q",
            response="a",
            model="m",
            experiment="exp",
            variant=rng.choice(["a", "b", "c"]),
            occurred_at=self.t0 + dt.timedelta(seconds=i * 0.05),
        )
        fb = Feedback(
            app_id="partner",
            session_id=session,
            interaction_id=ia.interaction_id,
            kind="thumbs",
            thumbs=rng.choice([1, -1]),
            occurred_at=ia.occurred_at,
        )
        self.variant[ia.interaction_id] = ia.variant or ""
        self.sent[ia.event_id] = "interaction"
        self.sent[fb.event_id] = "feedback"
        self.thumbs += 1
        upper = str(ia.interaction_id).upper()
        ia_value = encode(ia).replace(str(ia.interaction_id).encode(), upper.encode())
        # who keys by what: session (Java), upper-case id (librdkafka), nothing at all
        style = rng.randrange(3)
        ia_send = (
            (self.java, session.encode(), ia_value),
            (self.librdkafka, upper.encode(), ia_value),
            (self.java, None, encode(ia)),
        )[style]
        fb_send = (
            (self.librdkafka, session.encode(), encode(fb)),
            (self.java, str(ia.interaction_id).encode(), encode(fb)),
            (self.librdkafka, None, encode(fb)),
        )[rng.randrange(3)]
        first, second = (ia_send, fb_send) if rng.random() < 0.8 else (fb_send, ia_send)
        self._send(*first)
        self._send(*second)

    def flush(self) -> None:
        assert self.java.flush(30) == 0 and self.librdkafka.flush(30) == 0


def _read(bootstrap: str, topic: str, timeout: float = 120.0) -> list[Any]:
    """Every record of ``topic``: read at least up to the end ListOffsets reports when the read
    starts, then until nothing came for 1.5 s. Idle rounds alone stop early when a fetch is
    slow (a loaded machine). Tansu reports the base offset of a partition's last batch + 1
    and serves batches whole, so reaching that offset means the last batch was read."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "log_level": 0})
    tps = [TopicPartition(topic, p, 0) for p in range(PARTITIONS)]
    ends = [c.get_watermark_offsets(tp, timeout=30)[1] for tp in tps]
    c.assign(tps)
    positions = [0] * PARTITIONS
    out: list[Any] = []
    idle = 0
    deadline = time.monotonic() + timeout
    while idle < 3 or any(pos < end for pos, end in zip(positions, ends, strict=True)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic} read to {positions} of {ends} in {timeout:.0f} s")
        batch = [m for m in c.consume(5000, 0.5) if m.error() is None]
        for m in batch:
            positions[m.partition()] = m.offset() + 1
        out.extend(batch)
        idle = 0 if batch else idle + 1
    c.close()
    return out


def _totals(bootstrap: str, topics: Topics) -> tuple[int, int, int]:
    latest: dict[tuple[Any, ...], WindowAggregate] = {}
    for m in _read(bootstrap, topics.aggregates):
        a = WindowAggregate.model_validate_json(m.value())
        key = (a.window_start, a.variant, a.source_partition)
        if key not in latest or a.revision >= latest[key].revision:
            latest[key] = a  # what ReplacingMergeTree(revision) keeps
    aggs = latest.values()
    return (
        sum(a.interactions for a in aggs),
        sum(a.thumbs_up + a.thumbs_down for a in aggs),
        sum(a.orphaned for a in aggs),
    )


def _explain_missing(
    bootstrap: str,
    topics: Topics,
    group: str,
    sent: dict[uuid.UUID, str],
    enriched: dict[uuid.UUID, EnrichedEvent],
    killed_at_ms: float,
    survivor_log: Path,
) -> str:
    """What a failure needs to be diagnosed: the events not enriched, by where they are joined
    (their raw partition, or the repartition partition they were forwarded to), with the
    group's committed offset there (past a missing event: it was acknowledged without its
    output, unless it is a feedback waiting for a missing interaction), and the survivor's
    warnings and the tail of its log."""
    # Where each event is joined: the last topic partition it was written to.
    at: dict[uuid.UUID, tuple[str, int, int, int]] = {}
    ends: dict[tuple[str, int], int] = {}
    for topic in (topics.events, topics.repartition):
        for m in _read(bootstrap, topic):
            # faust consumes each forwarded record, the raw one is only passed on
            at[uuid.UUID(json.loads(m.value())["event_id"])] = (
                topic,
                m.partition(),
                m.offset(),
                m.timestamp()[1],
            )
            key = (topic, m.partition())
            ends[key] = max(ends.get(key, 0), m.offset() + 1)
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    tps = [TopicPartition(t, p) for t, p in sorted(ends)]
    committed = {(tp.topic, tp.partition): tp.offset for tp in c.committed(tps, timeout=10)}
    c.close()
    missing = [e for e in sent if e not in enriched]
    lines = [
        f"{len(missing)} of {len(sent)} events not enriched "
        f"({sum(1 for e in missing if sent[e] == 'feedback')} feedback, "
        f"{sum(1 for e in missing if e not in at)} not in the raw topic); the worker was "
        f"killed at {dt.datetime.fromtimestamp(killed_at_ms / 1000):%H:%M:%S.%f}",
        "committed offset / records, per topic partition: "
        + ", ".join(
            f"{t.rsplit('.', 1)[-1]}[{p}] {committed[(t, p)]}/{ends[(t, p)]}" for t, p in ends
        ),
    ]
    where: dict[tuple[str, int], list[uuid.UUID]] = defaultdict(list)
    for e in missing:
        if e in at:
            where[at[e][:2]].append(e)
    for (topic, p), ids in sorted(where.items()):
        offsets = sorted(at[e][2] for e in ids)
        done = committed[(topic, p)]
        past = sum(1 for o in offsets if o < done)
        first = min(ids, key=lambda e: at[e][2])
        lines.append(
            f"  {topic.rsplit('.', 1)[-1]}[{p}]: {len(ids)} missing "
            f"({sum(1 for e in ids if sent[e] == 'feedback')} feedback), offsets "
            f"{offsets[0]}..{offsets[-1]}, {past} of them before the committed offset {done}; "
            f"the first written {at[first][3] - killed_at_ms:+.0f} ms after the kill"
        )
    text = survivor_log.read_text(errors="replace").splitlines()
    text = [ln for ln in text if not ln.startswith(("|", "+"))]
    lines.append("survivor's warnings and errors:")
    lines += [ln[:300] for ln in text if " WARNING " in ln or " ERROR " in ln][-30:]
    lines.append("survivor's log, last lines:")
    lines += [ln[:300] for ln in text[-40:]]
    return "\n".join(lines)


def test_two_workers_any_partitioner_any_key_and_a_sigkill_give_exact_joins_and_totals(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    topics = Topics(topic_prefix)
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, topics.all(), PARTITIONS)
    workers = [_worker(kafka_bootstrap, topic_prefix, tmp_path / f"w{i}") for i in range(2)]
    try:
        for i, w in enumerate(workers):
            _wait_running(tmp_path / f"w{i}" / "worker.log", w)
        senders = ThirdParties(kafka_bootstrap, topics.events, seed=12)
        n = 6000

        def send() -> None:
            for i in range(n):
                senders.pair(i)
                if i % 200 == 199:
                    time.sleep(0.05)  # ~4,000 pairs/s at most: the kill lands mid-stream

        t = threading.Thread(target=send)
        t.start()
        time.sleep(1.0)
        workers[0].send_signal(signal.SIGKILL)
        killed_at_ms = time.time() * 1000.0
        t.join()
        senders.flush()
        assert workers[0].wait(10) == -signal.SIGKILL

        # the survivor takes over the dead worker's partitions and tables; every event is
        # enriched, with its own interaction's context
        flushed = last_progress = time.monotonic()
        progress: list[tuple[float, int, int]] = []  # (s after the kill, enriched, joined)
        while True:
            enriched: dict[uuid.UUID, EnrichedEvent] = {}
            for m in _read(kafka_bootstrap, topics.enriched):
                e = EnrichedEvent.model_validate_json(m.value())
                enriched[e.event.event_id] = e
            feedback = [e for e in enriched.values() if e.event.event_type == "feedback"]
            with_context = sum(1 for e in feedback if e.context is not None)
            if len(enriched) == 2 * n and with_context == n:
                break
            now = time.monotonic()
            since_kill = time.time() - killed_at_ms / 1000.0
            if not progress or (len(enriched), with_context) != progress[-1][1:]:
                progress.append((since_kill, len(enriched), with_context))
                last_progress = now
            if (
                now - last_progress > STALL_S
                or now - flushed > WAIT_S
                or workers[1].poll() is not None
            ):
                why = _explain_missing(
                    kafka_bootstrap,
                    topics,
                    f"{topic_prefix}feedbackloop-stream",
                    senders.sent,
                    enriched,
                    killed_at_ms,
                    tmp_path / "w1" / "worker.log",
                )
                raise AssertionError(
                    f"{len(enriched)} of {2 * n} events enriched, {with_context} of {n} "
                    f"feedback with context; survivor exit code {workers[1].poll()}; "
                    f"(s after the kill, enriched, joined): "
                    f"{[(round(t), a, j) for t, a, j in progress]}\n{why}"
                )
            time.sleep(2)
        assert workers[1].poll() is None
        joined = defaultdict(int)
        for e in feedback:
            assert not e.orphaned and e.context is not None
            assert e.context.variant == senders.variant[e.event.interaction_id]  # type: ignore[union-attr]
            joined[e.event.interaction_id] += 1  # type: ignore[union-attr]
        assert len(joined) == n and set(joined.values()) == {1}

        # window totals: the survivor's idle-close timer closes every window
        deadline = time.monotonic() + 90
        while (got := _totals(kafka_bootstrap, topics)) != (n, senders.thumbs, 0):
            if time.monotonic() > deadline:
                raw = _read(kafka_bootstrap, topics.events)
                ids = {json.loads(m.value())["event_id"] for m in raw}
                raise AssertionError(
                    f"window totals {got} != {(n, n, 0)}; the raw topic holds {len(raw)} "
                    f"records of {len(ids)} events"
                )
            time.sleep(2)
    finally:
        for w in workers:
            if w.poll() is None:
                w.send_signal(signal.SIGTERM)
                try:
                    w.wait(30)
                except subprocess.TimeoutExpired:
                    w.kill()
    log = (tmp_path / "w1" / "worker.log").read_text()
    assert "forwarded to the partition that joins them" in log
