"""Several producers writing one partition of the durable broker at once: the sink and the
stream worker, reading meanwhile, take every record (on Tansu's S3 engine a fetch can run
ahead of a produce and return a later batch before an earlier one is written;
docs/RELIABILITY.md, "A fetch can run ahead of a produce")."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from sink_helpers import make_events, running_worker, settings_for, wait_until

from feedbackloop.config import Settings
from feedbackloop.infra import get_client
from feedbackloop.infra.broker import EmbeddedBroker
from feedbackloop.schemas import Interaction, Topics, encode
from feedbackloop.sinks import SinkConfig, migrate

pytestmark = [pytest.mark.integration, pytest.mark.fault]

PRODUCERS = 4
PER_PRODUCER = 400


def _produce_one_by_one(bootstrap: str, topic: str, values: list[bytes]) -> None:
    # One produce request per record, like many SDK processes each sending a trickle.
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 0})
    for v in values:
        p.produce(topic, v, partition=0)
        p.flush(30)
    assert p.flush(30) == 0


def _producers(bootstrap: str, topic: str, payloads: list[bytes]) -> list[threading.Thread]:
    threads = [
        threading.Thread(
            target=_produce_one_by_one, args=(bootstrap, topic, payloads[k::PRODUCERS])
        )
        for k in range(PRODUCERS)
    ]
    for t in threads:
        t.start()
    return threads


def test_a_sink_reading_while_several_producers_write_one_partition_stores_every_record(
    tmp_path: Path, clickhouse_dsn: str, clickhouse_database: str, topic_prefix: str
) -> None:
    events = [e for e in make_events(PRODUCERS * PER_PRODUCER) if isinstance(e, Interaction)]
    payloads = [encode(e) for e in events]
    broker = EmbeddedBroker(
        port=0, storage="durable", data_dir=tmp_path / "broker", log_path=tmp_path / "b.log"
    ).start()
    ch: Any = get_client(clickhouse_dsn)
    try:
        migrate(ch, clickhouse_database)
        s = settings_for(
            broker.bootstrap_servers, clickhouse_dsn, clickhouse_database, topic_prefix, tmp_path
        )
        topic = Topics(topic_prefix).events
        cfg = SinkConfig(
            raw=True,
            group_id=f"g-{uuid.uuid4().hex[:6]}",
            max_age_s=0.2,
            query_endpoint=False,
            compact_interval_s=0,
            consumer_overrides={"fetch.wait.max.ms": 100},
        )
        with running_worker(s, cfg) as worker:
            for t in _producers(broker.bootstrap_servers, topic, payloads):
                t.join(120)
            wait_until(lambda: worker.sink.stats.messages >= len(payloads), timeout=30)
            print(f"holes waited for: {worker.gaps.waited}, offsets skipped: {worker.gaps.skipped}")
            assert worker.gaps.skipped == 0
        stored = ch.query(
            f"SELECT uniqExact(event_id) FROM {clickhouse_database}.interactions"
        ).result_rows[0][0]
        assert stored == len(events)
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {clickhouse_database}")
        ch.close()
        broker.stop()


def test_a_stream_worker_reading_while_several_producers_write_one_partition_takes_every_record(
    tmp_path: Path, topic_prefix: str
) -> None:
    pytest.importorskip("faust")
    from feedbackloop.stream_jobs import StreamConfig, StreamJobs

    events = [e for e in make_events(PRODUCERS * PER_PRODUCER) if isinstance(e, Interaction)]
    payloads = [encode(e) for e in events]
    broker = EmbeddedBroker(
        port=0, storage="durable", data_dir=tmp_path / "broker", log_path=tmp_path / "b.log"
    ).start()

    async def run() -> tuple[int, int, int]:
        s = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            topic_prefix=topic_prefix,
            topic_partitions=1,  # every event joins where it is read: nothing forwarded
        )
        jobs = StreamJobs(s, StreamConfig(tick_s=0.25), data_dir=tmp_path / "faust")
        async with jobs.running():
            await jobs.wait_assigned()
            threads = _producers(broker.bootstrap_servers, Topics(topic_prefix).events, payloads)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and (
                any(t.is_alive() for t in threads) or jobs.pipeline.stats.records_in < len(payloads)
            ):
                await asyncio.sleep(0.2)
            gaps = jobs.app.consumer.gaps
            return jobs.pipeline.stats.valid, gaps.waited, gaps.skipped

    try:
        valid, waited, skipped = asyncio.run(run())
    finally:
        broker.stop()
    print(f"holes waited for: {waited}, offsets skipped: {skipped}")
    assert (valid, skipped) == (len(payloads), 0)
