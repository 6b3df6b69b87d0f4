"""Benchmark: the durable embedded broker (Tansu on the embedded SeaweedFS) beside the
in-memory one, same run, same machine.

    .venv/bin/python bench/bench_durable.py [--sdk-events 200000] [--stream-events 200000]
        [--rate 3000 --seconds 10 --drain 300 --hops] [--log-events 1000000]

For each storage (``memory://tansu/``, then ``durable``), on a fresh broker:

1. SDK produce rate: ``FeedbackClient`` enqueue and delivered rates (bench_sdk.bench_ours);
2. stream rate: the stream-jobs worker over a backlog (bench_stream.ours), beside a bare
   aiokafka consumer of the same backlog (the raw baseline);
3. send -> visible: p50 / p99 from the SDK to ClickHouse through the default pipeline
   (bench_sink.bench_latency), beside Kafka's own send -> consumer latency; with ``--hops``
   also when the worker took each event, produced it to the enriched topic, and a consumer
   of that topic saw it (ms after the SDK call).

Then, durable only: ``--log-events`` events in the broker's log (the raw topic), the broker
and its S3 store stopped, and the time until (a) the broker answers again and (b) the whole
stack (broker, stream jobs, sink) says it is ready; (c) the time until a fresh consumer group
has read every event back (the log is really there).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_sdk  # noqa: E402
import bench_sink  # noqa: E402
import bench_stream  # noqa: E402

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.infra import EmbeddedBroker, ensure_topics  # noqa: E402
from feedbackloop.schemas import Topics  # noqa: E402

STORAGES = ("memory://tansu/", "durable")


def _sdk(storage: str, work: Path, n: int) -> dict[str, float]:
    with EmbeddedBroker(port=0, storage=storage, data_dir=work / "broker") as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers, topic_prefix="bench.", data_dir=work
        )
        ensure_topics(settings.kafka_client_config(), [Topics("bench.").events], 4)
        return bench_sdk.bench_ours(settings, n)


def _stream(storage: str, work: Path, n: int) -> tuple[float, float]:
    with EmbeddedBroker(port=0, storage=storage, data_dir=work / "broker") as broker:
        bootstrap = broker.bootstrap_servers
        prefix = f"bench{uuid.uuid4().hex[:6]}."
        bench_stream.produce(bootstrap, Topics(prefix).events, n, 4)
        base = asyncio.run(bench_stream.raw_baseline(bootstrap, Topics(prefix).events, n))
        rate, _ = asyncio.run(bench_stream.ours(bootstrap, prefix, n, 4))
        return rate, base


def _restart(work: Path, n: int) -> dict[str, float]:
    from confluent_kafka import Consumer

    from feedbackloop.infra.stack import Stack, default_services

    settings = Settings(
        data_dir=work / "stack", broker_port=0, topic_partitions=4, clickhouse_database="bench"
    )
    topic = Topics(settings.topic_prefix).events
    broker = EmbeddedBroker.from_settings(settings).start()
    try:
        ensure_topics({"bootstrap.servers": broker.bootstrap_servers}, [topic], 4)
        t = time.perf_counter()
        bench_stream.produce(broker.bootstrap_servers, topic, n, 4)
        produce_s = time.perf_counter() - t
        port = broker.port
    finally:
        broker.stop()
    t = time.perf_counter()
    broker = EmbeddedBroker.from_settings(settings, port=port).start()
    broker_s = time.perf_counter() - t
    try:
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap_servers,
                "group.id": f"readback-{uuid.uuid4().hex}",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                "log_level": 0,
            }
        )
        consumer.subscribe([topic])
        t = time.perf_counter()
        got = 0
        while got < n and time.perf_counter() - t < 600:
            got += sum(1 for m in consumer.consume(10_000, 1.0) if m.error() is None)
        readback_s = time.perf_counter() - t
        consumer.close()
    finally:
        broker.stop()
    stack = Stack(
        settings.model_copy(update={"broker_port": port}), default_services(with_web=False)
    )
    t = time.perf_counter()
    stack.start()
    stack_s = time.perf_counter() - t
    stack.stop()
    return {
        "events": n,
        "produce_s": produce_s,
        "broker_restart_s": broker_s,
        "readback_s": readback_s,
        "read_back": got,
        "stack_ready_s": stack_s,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sdk-events", type=int, default=200_000)
    ap.add_argument("--stream-events", type=int, default=200_000)
    ap.add_argument("--rate", type=int, default=3000, help="Offered events/s (latency part).")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument(
        "--drain", type=float, default=300.0, help="Seconds the last event may take to arrive."
    )
    ap.add_argument(
        "--hops",
        action="store_true",
        help="Also time each hop through the enriched topic (one more consumer on the broker).",
    )
    ap.add_argument("--log-events", type=int, default=1_000_000)
    ap.add_argument("--skip", default="", help="comma-separated: sdk,stream,latency,restart")
    args = ap.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    results: dict[str, dict[str, float]] = {s: {} for s in STORAGES}
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as tmp:
        work = Path(tmp)
        for storage in STORAGES:
            r = results[storage]
            sub = work / storage.split(":")[0]
            if "sdk" not in skip:
                sdk = _sdk(storage, sub / "sdk", args.sdk_events)
                r["sdk_enqueue"], r["sdk_delivered"] = sdk["enqueue_rate"], sdk["total_rate"]
            if "stream" not in skip:
                r["stream"], r["stream_raw"] = _stream(storage, sub / "stream", args.stream_events)
            if "latency" not in skip:
                lat = bench_sink.bench_latency(
                    args.rate,
                    args.seconds,
                    sub / "lat",
                    stream_jobs=True,
                    storage=storage,
                    drain_s=args.drain,
                    hops=args.hops,
                )
                r.update({k: v for k, v in lat.items() if k.endswith("_ms")})
            print(f"[{storage}] {r}", flush=True)
        rows = [
            ("sdk_enqueue", "SDK enqueue, events/s", "{:,.0f}"),
            ("sdk_delivered", "SDK delivered (incl. flush), events/s", "{:,.0f}"),
            ("stream", "stream jobs, events/s", "{:,.0f}"),
            ("stream_raw", "  raw aiokafka consume, events/s", "{:,.0f}"),
            ("p50_ms", f"send -> visible p50 at {args.rate}/s, ms", "{:,.0f}"),
            ("p99_ms", f"send -> visible p99 at {args.rate}/s, ms", "{:,.0f}"),
            ("kafka_p50_ms", "  Kafka send -> consumer p50, ms", "{:,.0f}"),
            ("kafka_p99_ms", "  Kafka send -> consumer p99, ms", "{:,.0f}"),
            # The hops of the same events, each in ms after the SDK call (see bench_sink).
            ("picked_p50_ms", "  hop: worker took it, p50", "{:,.0f}"),
            ("picked_p99_ms", "  hop: worker took it, p99", "{:,.0f}"),
            ("produced_p50_ms", "  hop: worker produced enriched, p50", "{:,.0f}"),
            ("produced_p99_ms", "  hop: worker produced enriched, p99", "{:,.0f}"),
            ("enriched_p50_ms", "  hop: enriched seen by a consumer, p50", "{:,.0f}"),
            ("enriched_p99_ms", "  hop: enriched seen by a consumer, p99", "{:,.0f}"),
        ]
        print(f"\n{'':42}{'memory':>12}{'durable':>12}{'durable/memory':>16}")
        for key, label, fmt in rows:
            m, d = results[STORAGES[0]].get(key), results[STORAGES[1]].get(key)
            if m is None or d is None:
                continue
            print(f"{label:42}{fmt.format(m):>12}{fmt.format(d):>12}{d / m:>16.2f}")
        if "restart" not in skip:
            rs = _restart(work / "restart", args.log_events)
            print(
                f"\ndurable restart with {rs['events']:,} events in the log "
                f"(written in {rs['produce_s']:.1f} s): broker answers after "
                f"{rs['broker_restart_s']:.2f} s; a new consumer group read "
                f"{rs['read_back']:,} back in {rs['readback_s']:.1f} s; the stack "
                f"(broker, stream jobs, sink) was ready after {rs['stack_ready_s']:.1f} s"
            )
        print(f"load average (1 min): {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
