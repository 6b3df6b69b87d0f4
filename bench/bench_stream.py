"""Benchmark: events/s through validation + enrichment + windows, beside raw aiokafka.

Not a test. Produces N realistic raw events (interactions, feedback, implicit signals,
outcomes) to a fresh topic, then in the same run measures

* baseline: a bare aiokafka consumer reading the topic (no processing), and
* ours: the stream-jobs worker (faust app, tables, changelogs, enriched output, windows)
  processing the same backlog, from its first record to its last.

    .venv/bin/python bench/bench_stream.py [--events 400000] [--bootstrap host:port]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from feedbackloop.config import Settings
from feedbackloop.infra import EmbeddedBroker, ensure_topics
from feedbackloop.schemas import Feedback, Implicit, Interaction, Outcome, Topics, encode


def produce(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    ensure_topics({"bootstrap.servers": bootstrap}, [topic], partitions)
    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    rng = random.Random(7)
    base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=20)
    sent = 0
    i = 0
    while sent < n:
        t = base + dt.timedelta(milliseconds=i * 2)
        ia = Interaction(
            app_id="bench",
            session_id=f"s{rng.randrange(5000)}",
            model="gpt-4o-mini",
            prompt_version=f"v{i % 3}",
            experiment="tone",
            variant="ab"[i % 2],
            user_input="How do I read a CSV file in Python and sum one column?",
            response="Use the csv module: `sum(float(r['x']) for r in csv.DictReader(f))`.",
            latency_ms=rng.uniform(200, 900),
            input_tokens=20,
            output_tokens=40,
            occurred_at=t,
        )
        evs: list = [ia]
        evs.append(
            Feedback(
                app_id="bench",
                session_id=ia.session_id,
                interaction_id=ia.interaction_id,
                kind="thumbs",
                thumbs=1 if rng.random() < 0.75 else -1,
                occurred_at=t,
            )
        )
        if i % 2 == 0:
            evs.append(
                Implicit(
                    app_id="bench",
                    session_id=ia.session_id,
                    interaction_id=ia.interaction_id,
                    signal="copy",
                    occurred_at=t,
                )
            )
        if i % 4 == 0:
            evs.append(
                Outcome(
                    app_id="bench",
                    session_id=ia.session_id,
                    interaction_id=ia.interaction_id,
                    outcome="task_completed",
                    value=1.0,
                    occurred_at=t,
                )
            )
        for e in evs[: n - sent]:
            while True:
                try:
                    p.produce(topic, encode(e), e.partition_key)
                    break
                except BufferError:
                    p.poll(0.05)
            sent += 1
        i += 1
        if i % 1000 == 0:
            p.poll(0)
    p.flush()


async def raw_baseline(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await c.start()
    got, t0 = 0, None
    try:
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=10_000)
            for msgs in batch.values():
                if t0 is None:
                    t0 = time.perf_counter()
                got += len(msgs)
    finally:
        await c.stop()
    assert t0 is not None
    return n / (time.perf_counter() - t0)


async def ours(
    bootstrap: str, prefix: str, n: int, partitions: int, max_poll_records: int | None = None
) -> tuple[float, dict]:
    from feedbackloop.stream_jobs import StreamConfig, StreamJobs

    settings = Settings(
        bootstrap_servers=bootstrap, topic_prefix=prefix, topic_partitions=partitions
    )
    cfg = StreamConfig(tick_s=0.5)
    if max_poll_records:
        cfg = dataclasses.replace(cfg, max_poll_records=max_poll_records)
    jobs = StreamJobs(settings, cfg, data_dir=Path(tempfile.mkdtemp()))
    stats = jobs.pipeline.stats
    async with jobs.running():
        t0 = None
        first = 0
        deadline = time.monotonic() + 600
        while stats.records_in < n and time.monotonic() < deadline:
            if t0 is None and stats.records_in:
                # the batches done before the first observation are not in the timed span:
                # count from what they left
                t0, first = time.perf_counter(), stats.records_in
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - (t0 or time.perf_counter())
        rate = (stats.records_in - first) / elapsed if elapsed > 0 else float("nan")
        summary = {
            "records_in": stats.records_in,
            "valid": stats.valid,
            "dead_letters": stats.dead_letters,
            "enriched": stats.enriched,
            "pending": stats.pending,
            "aggregates": stats.aggregates,
            "interactions_table": len(jobs.pipeline.interactions),
            **{k: round(v, 2) for k, v in jobs.timing.items()},
            "elapsed_s": round(elapsed, 2),
        }
    return rate, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=400_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--bootstrap", help="use this broker instead of an embedded Tansu")
    ap.add_argument("--max-poll-records", type=int, help="override StreamConfig's batch size")
    args = ap.parse_args()

    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker(port=0).start()
        bootstrap = broker.bootstrap_servers
    try:
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        topic = Topics(prefix).events
        t = time.perf_counter()
        produce(bootstrap, topic, args.events, args.partitions)
        print(f"produced {args.events} events in {time.perf_counter() - t:.1f} s", flush=True)
        base = asyncio.run(raw_baseline(bootstrap, topic, args.events))
        print(f"baseline (raw aiokafka consume):  {base:>10,.0f} events/s", flush=True)
        rate, summary = asyncio.run(
            ours(bootstrap, prefix, args.events, args.partitions, args.max_poll_records)
        )
        print(f"ours (validate+enrich+windows):   {rate:>10,.0f} events/s")
        print(f"ratio ours/baseline:              {rate / base:>10.3f}")
        print(f"pipeline counters: {summary}")
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
