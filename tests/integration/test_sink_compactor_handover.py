"""One compactor per database (two at once would both cancel the same report rows): when
compaction goes by partition, as on a ClickHouse server where several sink workers share a
database, only the worker that owns partition 0 of the enriched topic compacts, and another
takes over when it leaves the group."""

from __future__ import annotations

import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import enrich, make_events, running_worker, settings_for, wait_until

from feedbackloop.sinks import SinkConfig, SinkWorker

pytestmark = pytest.mark.integration


def test_only_the_owner_of_partition_0_compacts_and_the_next_owner_takes_over(
    kafka_bootstrap: str,
    clickhouse_dsn: str,
    clickhouse_database: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    from confluent_kafka import Producer

    s = settings_for(kafka_bootstrap, clickhouse_dsn, clickhouse_database, topic_prefix, tmp_path)
    cfg = SinkConfig(
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        max_age_s=0.2,
        query_endpoint=False,
        compact_by_partition=True,
    )
    enriched = f"{topic_prefix}enriched"
    events = iter(make_events(2_000))
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "log_level": 3})
    seen: dict[int, set[int]] = {}  # worker -> partitions of the enriched topic it consumed

    def watch(worker: SinkWorker) -> SinkWorker:
        add, mine = worker.sink.add, seen.setdefault(id(worker), set())

        def counted(topic: str, partition: int, *a: Any) -> Any:
            if topic == enriched:
                mine.add(partition)
            return add(topic, partition, *a)

        worker.sink.add = counted  # type: ignore[method-assign]
        return worker

    def send_to_both() -> None:
        for partition in (0, 1):
            producer.produce(enriched, enrich(next(events), {}), partition=partition)
        producer.flush(10)

    def consumed(worker: SinkWorker, partition: int | None = None) -> bool:
        send_to_both()
        got = seen[id(worker)]
        return bool(got) if partition is None else partition in got

    with ExitStack() as stack:
        first = watch(stack.enter_context(running_worker(s, cfg)))
        assert first.compaction_partition == (enriched, 0)
        wait_until(lambda: first.compactor is not None and first.compactor.last is not None)
        second = watch(stack.enter_context(running_worker(s, cfg)))
        wait_until(lambda: consumed(second), timeout=90)  # the group shared its partitions
        for w in (first, second):
            seen[id(w)].clear()
        wait_until(lambda: consumed(first) and consumed(second), timeout=60)
        leader, other = (first, second) if 0 in seen[id(first)] else (second, first)
        assert seen[id(leader)] == {0} and seen[id(other)] == {1}
        wait_until(lambda: leader.compactor is not None and other.compactor is None)

        leader.stop()  # leaves the group: partition 0 moves to the other worker
        wait_until(lambda: consumed(other, 0), timeout=90)
        wait_until(lambda: other.compactor is not None and other.compactor.last is not None)
        assert leader.compactor is None
