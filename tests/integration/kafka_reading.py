"""Reading topics back in integration tests: an independent consumer, and the SDK's tap."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer, TopicPartition


def read_topic(bootstrap: str, topic: str, expect: int, timeout: float = 30.0) -> list[Any]:
    """An independent consumer: every message of ``topic`` from offset 0."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expect and time.monotonic() < deadline:
        out.extend(m for m in consumer.consume(1000, 0.5) if m.error() is None)
    # a little longer: anything beyond ``expect`` is a duplicate we want to see
    out.extend(m for m in consumer.consume(1000, 1.0) if m.error() is None)
    consumer.close()
    return out


class Recorder(dict[uuid.UUID, bytes]):
    """The exact bytes the SDK hands to Kafka, by event_id (the SDK's ``on_event`` tap)."""

    def __call__(self, event: Any, payload: bytes) -> None:
        self[event.event_id] = payload
