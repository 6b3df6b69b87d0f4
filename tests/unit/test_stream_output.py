"""The stream jobs' output (KafkaOutput): several broker connections, one per partition."""

from __future__ import annotations

import zlib
from typing import Any

import pytest

from feedbackloop.errors import BrokerError
from feedbackloop.stream_jobs import app


class FakeTopic:
    def __init__(self, n: int) -> None:
        self.partitions = dict.fromkeys(range(n))
        self.error = None


class FakeProducer:
    """Records what was produced; ``pending`` messages stay unflushed."""

    made: list[FakeProducer] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.conf = conf
        self.sent: list[tuple[str, bytes | None, bytes | None, int]] = []
        self.flushed = 0
        self.pending = 0
        FakeProducer.made.append(self)

    def list_topics(self, topic: str, timeout: float) -> Any:
        return type("Meta", (), {"topics": {topic: FakeTopic(4)}})()

    def produce(self, topic: str, value: Any, key: Any, partition: int, **kw: Any) -> None:
        self.sent.append((topic, key, value, partition))

    def flush(self, timeout: float) -> int:
        self.flushed += 1
        return self.pending

    def poll(self, timeout: float) -> int:
        return 0


@pytest.fixture
def output(monkeypatch: pytest.MonkeyPatch) -> app.KafkaOutput:
    FakeProducer.made = []
    monkeypatch.setattr(app, "Producer", FakeProducer)
    return app.KafkaOutput({"bootstrap.servers": "x"}, {"windows": "w-changelog"}, connections=3)


def test_each_partition_is_written_by_one_connection_and_keys_keep_their_partition(
    output: app.KafkaOutput,
) -> None:
    keys = [f"iid-{i}".encode() for i in range(40)]
    for k in keys:
        output.produce("enriched", k, b"v")
    for p in range(4):
        output.changelog("windows", p, b"k", b"v")
    owners: dict[tuple[str, int], set[int]] = {}
    for i, producer in enumerate(FakeProducer.made):
        for topic, key, _, partition in producer.sent:
            assert partition >= 0  # chosen here, not left to librdkafka
            if topic == "enriched":
                # librdkafka's default partitioner: crc32 of the key
                assert key is not None and partition == zlib.crc32(key) % 4
            owners.setdefault((topic, partition), set()).add(i)
    assert all(len(o) == 1 for o in owners.values())
    assert len({i for o in owners.values() for i in o}) == 3  # all connections are used
    assert len(FakeProducer.made) == 3
    assert FakeProducer.made[0].conf["linger.ms"] >= 1000  # flush() sends, not the linger


def test_flush_waits_for_every_connection_and_reports_what_is_left(
    output: app.KafkaOutput,
) -> None:
    output.flush()
    assert [p.flushed for p in FakeProducer.made] == [1, 1, 1]
    FakeProducer.made[2].pending = 5
    with pytest.raises(BrokerError, match="5 messages not delivered"):
        output.flush(timeout=1)
