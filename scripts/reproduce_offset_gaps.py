"""Reproduce records skipped by a live consumer while several producers write one partition.

Why (docs/RELIABILITY.md, "A fetch can run ahead of a produce"): Tansu 0.6's S3 engine
(``tansu-storage/src/dynostore.rs``) gives a produce its offset by a conditional write of the
partition's watermark and only then PUTs the batch object. A fetch that runs in between, while
another connection's produce to the same partition has already written a later batch, lists
the later batch object but not the earlier one and returns it: a plain consumer moves its
position past the offsets still being written and never reads them.

Each run: a fresh topic with one partition on the given broker, ``--producers`` confluent-kafka
producers (each its own connection, idempotent like the SDK) writing small batches at once, and
one plain confluent-kafka consumer reading from offset 0 meanwhile. Then a second consumer
reads the whole partition. Skipped = offsets the full read has and the live consumer never saw.

    python scripts/reproduce_offset_gaps.py --runs 5                # durable embedded broker
    python scripts/reproduce_offset_gaps.py --runs 5 --storage memory://tansu/
    python scripts/reproduce_offset_gaps.py --bootstrap HOST:PORT   # any running broker
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition


def _produce(bootstrap: str, topic: str, name: str, n: int, batch: int, idempotent: bool) -> None:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": idempotent, "linger.ms": 0}
    )
    for i in range(n):
        producer.produce(topic, f"{name}-{i}".encode(), partition=0)
        if (i + 1) % batch == 0:
            producer.flush(30)  # one small produce request per batch
    assert producer.flush(60) == 0


def _consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"gaps-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 100,
            "log_level": 0,
        }
    )


def one_run(
    bootstrap: str, producers: int, per_producer: int, batch: int, idempotent: bool = True
) -> dict[str, int]:
    """Skipped offsets and the live consumer's gaps in one run."""
    from feedbackloop.infra import ensure_topics

    topic = f"gaps-{uuid.uuid4().hex[:8]}"
    ensure_topics({"bootstrap.servers": bootstrap}, [topic], 1)
    total = producers * per_producer
    live = _consumer(bootstrap)
    live.assign([TopicPartition(topic, 0, 0)])
    seen: set[int] = set()
    gaps = 0
    nxt = 0
    threads = [
        threading.Thread(
            target=_produce,
            args=(bootstrap, topic, f"p{k}", per_producer, batch, idempotent),
        )
        for k in range(producers)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for m in live.consume(1000, 0.05):
            if m.error() is not None:
                continue
            if m.offset() > nxt:
                gaps += 1
            seen.add(m.offset())
            nxt = m.offset() + 1
        if not any(t.is_alive() for t in threads) and (len(seen) >= total or nxt >= total):
            break
    for t in threads:
        t.join()
    # what the partition holds, read after every produce was acknowledged
    full = _consumer(bootstrap)
    full.assign([TopicPartition(topic, 0, 0)])
    stored: set[int] = set()
    deadline = time.monotonic() + 60
    while len(stored) < total and time.monotonic() < deadline:
        stored.update(m.offset() for m in full.consume(1000, 0.5) if m.error() is None)
    live.close()
    full.close()
    return {
        "stored": len(stored),
        "seen_live": len(seen & stored),
        "skipped": len(stored - seen),
        "gaps": gaps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--producers", type=int, default=3)
    ap.add_argument("--per-producer", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=1, help="records per produce request")
    ap.add_argument("--storage", default="durable")
    ap.add_argument("--no-idempotence", action="store_true")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    a = ap.parse_args()

    def runs(bootstrap: str) -> None:
        hit = 0
        for i in range(a.runs):
            t0 = time.monotonic()
            r = one_run(bootstrap, a.producers, a.per_producer, a.batch, not a.no_idempotence)
            hit += r["skipped"] > 0
            print(f"run {i + 1}: {r} in {time.monotonic() - t0:.1f} s", flush=True)
        print(f"runs with skipped records: {hit} of {a.runs}")

    if a.bootstrap:
        runs(a.bootstrap)
        return
    from feedbackloop.infra.broker import EmbeddedBroker

    data = a.data_dir or Path(tempfile.mkdtemp(prefix="gaps-"))
    with EmbeddedBroker(
        port=a.port, storage=a.storage, data_dir=data / "broker", log_path=data / "broker.log"
    ) as broker:
        runs(broker.bootstrap_servers)


if __name__ == "__main__":
    main()
