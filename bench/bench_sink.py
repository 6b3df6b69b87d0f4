"""Sink benchmark: writer throughput beside raw ``client.insert``, and send-to-visible latency.

Run:  .venv/bin/python bench/bench_sink.py [--rows 200000] [--rate 10000] [--seconds 10]

Part 1 (embedded chDB, in-process), for each topic the writer reads: the *enriched* topic
  (the default configuration: what the stream jobs' ``Pipeline`` writes for the messages
  below) and the *raw* events topic (``--raw``: half interactions, half thumbs feedback):
  * baseline: ``client.insert`` of the already-built rows, columnar, one insert context per
    table, in batches of the same size;
  * ours: ``ClickHouseSink.add`` + ``flush`` from the encoded Kafka values. On the enriched
    topic: routing by bytes, one ``INSERT … SELECT FROM file(…, JSONEachRow)`` per batch and
    table in which chDB parses and checks the messages (feedbackloop/sinks/ingest.py); also
    timed with that path off (``json_path=False``: decode, rows, Native insert) for reference.
    On the raw topic: validation, row building, dedup tokens and the Native insert.
Identity lookup: the sink's one query per batch (feedbackloop/sinks/event_keys.py) for 500
  and ``--batch`` new ids, timed with 0, 1M and 4M ids already in ``event_keys`` (its cost grows
  with the table: random ids hit most granules), beside an ``INSERT … SELECT`` of a batch of
  300-byte rows in the same run.
Part 2 (embedded Tansu broker, services as child processes with their own chDB), twice: the
  default pipeline (``feedbackloop worker`` + ``feedbackloop sink run``: SDK -> stream jobs ->
  enriched topic -> sink) and ``sink run --raw`` alone. After one warm-up event has crossed
  the whole path, the SDK (``FeedbackClient``) offers ``--rate`` interactions/s for
  ``--seconds``; latency is ``inserted_at - occurred_at`` of each stored row (ClickHouse
  stamps ``inserted_at`` when the insert runs, so the row is visible within the insert's
  duration after it).
  Baseline: the same events read straight from Kafka by a plain consumer, in the same run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from feedbackloop.infra import EmbeddedBroker, get_client
from feedbackloop.schemas import Feedback, Interaction, Topics, encode
from feedbackloop.sinks import COLUMNS, ClickHouseSink, SinkMessage, TopicRouter, migrate


def _messages(n: int) -> list[bytes]:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)
    out: list[bytes] = []
    for i in range(n // 2):
        it = Interaction(
            app_id="bench",
            session_id=f"s{i % 997}",
            occurred_at=now,
            model="m-large",
            user_input=f"How do I frobnicate widget {i}? " * 3,
            response=f"To frobnicate widget {i}, first ... " * 8,
            prompt_version=f"p{i % 4}",
            experiment="exp1",
            variant="ab"[i % 2],
            latency_ms=float(200 + i % 300),
            input_tokens=40,
            output_tokens=120,
            cost_usd=0.0012,
            metadata={"tier": "free"},
        )
        fb = Feedback(
            app_id="bench",
            session_id=it.session_id,
            interaction_id=it.interaction_id,
            occurred_at=now,
            kind="thumbs",
            thumbs=1 if i % 3 else -1,
        )
        out += [encode(it), encode(fb)]
    return out


def _enriched_messages(raw: list[bytes]) -> list[bytes]:
    """What the stream jobs write to the enriched topic for ``raw`` (interactions first)."""
    from feedbackloop.stream_jobs import Pipeline, StreamConfig

    out: list[bytes] = []

    class Capture:
        def produce(
            self, topic: str, key: Any, value: Any, partition: Any = None, headers: Any = None
        ) -> None:
            if topic == topics.enriched:
                out.append(value)

        def changelog(self, table: str, partition: int, key: bytes, value: Any) -> None:
            pass

    topics = Topics("bench.")
    pipe = Pipeline(topics, StreamConfig(), Capture())
    for i in range(0, len(raw), 10_000):
        pipe.process(0, [(None, v, i + j, 0) for j, v in enumerate(raw[i : i + 10_000])])
    assert len(out) == len(raw), (len(out), len(raw))
    return out


def _settle(client: Any, timeout: float = 30.0) -> None:
    """Wait until chDB runs no merges: one run's background work must not slow the next."""
    deadline = time.monotonic() + timeout
    while client.command("SELECT count() FROM system.merges") and time.monotonic() < deadline:
        time.sleep(0.1)


def bench_writer(
    dsn: str, values: list[bytes], topic: str, batch: int, python_path: bool = False
) -> tuple[float, float, float | None, float, float]:
    """Rows/s of our writer and of raw ``client.insert`` of the same rows, same minutes.

    The third figure (with ``python_path``) is our writer with the ClickHouse-parsed path off;
    the last two, the CPU seconds (every thread of this process, chDB's included) of ours
    and of raw: on a shared machine they move much less with the others' load than rows/s.
    """
    topics = Topics("bench.")
    n = len(values)
    client = get_client(dsn)
    for db in ("bench_raw", "bench_sink", "bench_py"):
        client.command(f"DROP DATABASE IF EXISTS {db}")
        migrate(client, db)

    # Baseline rows: exactly what the sink would insert, built outside the clock.
    router = TopicRouter(topics)
    per_table: dict[str, list[tuple[Any, ...]]] = {}
    for off, v in enumerate(values):
        for table, row in router.route(topic, 0, off, v).rows:
            per_table.setdefault(table, []).append(row)
    contexts = {
        t: client.create_insert_context(
            table=t, database="bench_raw", column_names=list(COLUMNS[t]), column_oriented=True
        )
        for t in per_table
    }
    _settle(client)
    t0, c0 = time.perf_counter(), time.process_time()
    for table, rows in per_table.items():
        for i in range(0, len(rows), batch):
            ctx = contexts[table]
            ctx.data = list(zip(*rows[i : i + batch], strict=True))
            client.insert(context=ctx)
    raw_rate = len(values) / (time.perf_counter() - t0)
    raw_cpu = time.process_time() - c0
    # The prebuilt rows are the baseline's input only: a sink worker never holds them, and
    # while they live every pass of the cyclic GC during our run would scan them again.
    del per_table, contexts, ctx
    gc.collect()
    _settle(client)

    cpu: list[float] = []

    def run(db: str, json_path: bool) -> float:
        sink = ClickHouseSink(
            "",
            db,
            topics,
            max_rows=batch,
            max_age_s=60,
            client_factory=lambda: get_client(dsn),
            json_path=json_path,
        )
        sink.setup()  # connecting is not part of the writer's throughput
        t0, c0 = time.perf_counter(), time.process_time()
        for off, v in enumerate(values):
            sink.add(topic, 0, off, SinkMessage(v, None, None, 0, off))
        sink.flush()
        rate = len(values) / (time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert sink.stats.json_fallbacks == 0, sink.stats
        sink.close()  # stops its insert thread and closes its client
        return rate

    ours = run("bench_sink", True)
    py_rate = None
    if python_path:
        _settle(client)
        py_rate = run("bench_py", False)
    dbs = ("bench_raw", "bench_sink") + (("bench_py",) if python_path else ())
    counts = [client.command(f"SELECT count() FROM {db}.interactions") for db in dbs]
    assert set(counts) == {n // 2}, counts  # half of the messages are interactions
    client.close()
    return ours, raw_rate, py_rate, cpu[0], raw_cpu


def bench_identity_lookup(
    dsn: str, batch: int, sizes: list[int]
) -> list[tuple[int, int, float, float]]:
    """Seconds of the sink's identity lookup (sinks/event_keys.py) for 500 and ``batch`` new
    ids, by the number of ids already stored, beside an insert of as many rows into the same
    database (the baseline: what the lookup is added to)."""
    import uuid as _uuid

    from feedbackloop.sinks.event_keys import lookup

    client = get_client(dsn)
    client.command("DROP DATABASE IF EXISTS bench_keys")
    migrate(client, "bench_keys")
    out = []
    have = 0
    for size in sizes:
        if size > have:
            client.command(
                "INSERT INTO bench_keys.event_keys (event_id, event_table, app_id, slice, hour) "
                "SELECT generateUUIDv4(), 'interactions', 'bench', ['p1', 'exp1', 'a'], "
                f"toStartOfHour(now()) FROM numbers({size - have})"
            )
            client.command("OPTIMIZE TABLE bench_keys.event_keys FINAL")
            have = size
        _settle(client)
        for n in sorted({500, batch}):
            ids = [_uuid.uuid4().int for _ in range(n)]
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                lookup(client, "bench_keys", True, ids=ids)
                times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            client.command(
                "INSERT INTO bench_keys.dead_letters (failed_at, reason, error, source, "
                "source_topic, source_partition, source_offset, key, payload) SELECT now64(3), "
                f"'x', '', 'bench', 't', 0, number, '', repeat('x', 300) FROM numbers({n})"
            )
            insert = time.perf_counter() - t0
            out.append((size, n, sorted(times)[1], insert))
    client.command("DROP DATABASE IF EXISTS bench_keys")
    client.close()
    return out


def _endpoint_query(data_dir: Path, sql: str) -> list[list[Any]]:
    from feedbackloop.config import Settings
    from feedbackloop.sinks.query import _live_endpoint, _via_endpoint

    info = _live_endpoint(Settings(data_dir=data_dir))
    if info is None:
        raise RuntimeError("no live endpoint")
    return _via_endpoint(info, sql, 100).rows


def _wait_for_line(path: Path, marker: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while marker not in path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.name}: no {marker!r}:\n{path.read_text(errors='replace')}")
        time.sleep(0.2)


def bench_latency(
    rate: int,
    seconds: float,
    workdir: Path,
    stream_jobs: bool = False,
    storage: str = "memory://tansu/",
    drain_s: float = 60.0,
    hops: bool = False,
    compact_every: float | None = None,
) -> dict[str, float]:
    """Send -> visible. ``stream_jobs``: the default pipeline (SDK -> raw topic -> stream jobs
    -> enriched topic -> sink), else the sink reading the raw topic (``sink run --raw``).
    ``storage``: the embedded broker's (``durable``: its log on the embedded S3 store).
    ``hops`` (with ``stream_jobs``): also time each hop through the enriched topic, with one
    more consumer on the broker (on the durable broker its fetches cost S3 requests too).
    ``compact_every``: the sink's ``sink_compact_every`` (0: no compactor), else its default."""
    from confluent_kafka import Consumer

    from feedbackloop.config import Settings
    from feedbackloop.infra import ensure_topics
    from feedbackloop.producers import FeedbackClient

    prefix = f"lat{uuid.uuid4().hex[:6]}."
    topics = Topics(prefix)
    data_dir = workdir / ("pipeline" if stream_jobs else "worker")
    with EmbeddedBroker(
        port=0, storage=storage, data_dir=workdir / "broker", log_path=workdir / "tansu.log"
    ) as broker:
        bootstrap = broker.bootstrap_servers
        ensure_topics({"bootstrap.servers": bootstrap}, topics.all(), 4)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACKLOOP_")}
        env.update(
            FEEDBACKLOOP_BOOTSTRAP_SERVERS=bootstrap,
            FEEDBACKLOOP_TOPIC_PREFIX=prefix,
            FEEDBACKLOOP_DATA_DIR=str(data_dir),
            FEEDBACKLOOP_CLICKHOUSE_DATABASE="lat",
        )
        if compact_every is not None:
            env["FEEDBACKLOOP_SINK_COMPACT_EVERY"] = str(compact_every)
        procs: list[subprocess.Popen[bytes]] = []
        sink_cmd = ["sink", "run"] if stream_jobs else ["sink", "run", "--raw"]
        with open(data_dir.parent / f"{data_dir.name}-sink.log", "wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "feedbackloop", *sink_cmd],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(worker)
        if stream_jobs:
            stream_log = data_dir.parent / f"{data_dir.name}-stream.log"
            with open(stream_log, "wb") as log:
                stream = subprocess.Popen(
                    [sys.executable, "-m", "feedbackloop", "worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            procs.append(stream)
        try:
            if stream_jobs:
                _wait_for_line(stream_log, "worker running", stream, 90)
            # Baseline: a plain consumer of the same topic, measuring Kafka's own latency.
            kafka_lat: list[float] = []
            stop = threading.Event()
            consumer = Consumer(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": "bench-raw",
                    "auto.offset.reset": "latest",
                    "session.timeout.ms": 6000,
                    "fetch.wait.max.ms": 50,
                }
            )
            consumer.subscribe([topics.events])
            # Per hop (stream jobs only): a second plain consumer reads the enriched topic as
            # the sink does; each enriched record carries the event's occurred_at, the
            # worker's enriched_at (stamped when it took the batch) and, as its Kafka
            # timestamp, the moment the worker produced it.
            hop_ms: dict[str, list[float]] = {"picked": [], "produced": [], "enriched": []}
            observer = None
            if stream_jobs and hops:
                observer = Consumer(
                    {
                        "bootstrap.servers": bootstrap,
                        "group.id": "bench-enriched",
                        "auto.offset.reset": "latest",
                        "session.timeout.ms": 6000,
                        "fetch.wait.max.ms": 50,
                    }
                )
                observer.subscribe([topics.enriched])

            def consume() -> None:
                while not stop.is_set():
                    for m in consumer.consume(10_000, 0.1):
                        if m.error() is None:
                            ts = m.timestamp()[1]
                            kafka_lat.append(time.time() * 1000 - ts)

            def observe() -> None:
                assert observer is not None
                while not stop.is_set():
                    for m in observer.consume(10_000, 0.1):
                        if m.error() is None:
                            seen = time.time() * 1000
                            _enriched_hops(m.value(), m.timestamp()[1], seen, hop_ms)

            # Wait for the worker's endpoint (group join, migrations) and the baseline join.
            deadline = time.monotonic() + 60
            while True:
                try:
                    _endpoint_query(data_dir, "SELECT 1")
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    consumer.poll(0.2)
            while not consumer.assignment() and time.monotonic() < deadline:
                consumer.poll(0.2)
            while observer is not None and not observer.assignment():
                if time.monotonic() > deadline:
                    raise RuntimeError("the enriched-topic observer did not join")
                observer.poll(0.2)
            threads = [threading.Thread(target=consume, daemon=True)]
            if observer is not None:
                threads.append(threading.Thread(target=observe, daemon=True))
            for th in threads:
                th.start()
            time.sleep(3)  # the worker's own group join

            client = FeedbackClient(
                Settings(
                    bootstrap_servers=bootstrap,
                    topic_prefix=prefix,
                    app_id="bench",
                    data_dir=workdir / f"sdk-{data_dir.name}",
                )
            )
            # One event through the whole path first: every consumer has joined and every
            # table exists before the clock starts.
            client.log_interaction(session_id="warmup", user_input="q", response="a", model="m")
            client.flush(30)
            deadline = time.monotonic() + 120
            while not _endpoint_query(data_dir, "SELECT count() FROM interactions")[0][0]:
                if time.monotonic() > deadline:
                    raise RuntimeError("the warm-up event did not arrive")
                time.sleep(0.2)
            n = int(rate * seconds)
            start = time.perf_counter()
            for i in range(n):
                due = start + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                client.log_interaction(
                    session_id=f"s{i % 500}",
                    user_input="q" * 80,
                    response="a" * 300,
                    model="m",
                    prompt_version="p1",
                    latency_ms=250.0,
                )
            achieved = n / (time.perf_counter() - start)
            client.flush(30)
            client.close()
            deadline = time.monotonic() + drain_s
            while _endpoint_query(data_dir, "SELECT count() FROM interactions")[0][0] < n + 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("not all events arrived")
                time.sleep(0.2)
            stop.set()
            for th in threads:
                th.join(5)
            consumer.close()
            if observer is not None:
                observer.close()
            q = _endpoint_query(
                data_dir,
                "SELECT quantiles(0.5, 0.99)(dateDiff('millisecond', occurred_at, inserted_at)), "
                "count() FROM interactions FINAL WHERE session_id != 'warmup'",
            )[0]
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        out = {
            "offered": rate,
            "achieved": achieved,
            "p50_ms": q[0][0],
            "p99_ms": q[0][1],
            "rows": q[1],
        }
        for name, values in {"kafka": kafka_lat, **hop_ms}.items():
            if values or name == "kafka":
                out[f"{name}_p50_ms"] = _quantile(values, 0.5)
                out[f"{name}_p99_ms"] = _quantile(values, 0.99)
        return out


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values.sort()
    return values[min(len(values) - 1, int(len(values) * q))]


_OCCURRED = re.compile(rb'"occurred_at":"([^"]+)"')
_ENRICHED_AT = re.compile(rb'"enriched_at":"([^"]+)"}$')


def _enriched_hops(value: bytes | None, produced_ms: float, seen_ms: float, hops: Any) -> None:
    """Add one enriched record's hop times, in ms after its event's occurred_at: the worker
    took it (enriched_at), produced it (the record's timestamp), a consumer saw it."""
    occurred = _OCCURRED.search(value or b"")
    enriched = _ENRICHED_AT.search(value or b"")
    if occurred is None or enriched is None or b'"session_id":"warmup"' in (value or b""):
        return
    t0 = dt.datetime.fromisoformat(occurred.group(1).decode()).timestamp() * 1000
    picked = dt.datetime.fromisoformat(enriched.group(1).decode()).timestamp() * 1000
    hops["picked"].append(picked - t0)
    hops["produced"].append(produced_ms - t0)
    hops["enriched"].append(seen_ms - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000, help="Messages for the writer part.")
    ap.add_argument("--batch", type=int, default=50_000, help="Rows per insert.")
    ap.add_argument("--rate", type=int, default=10_000, help="Offered events/s (latency part).")
    ap.add_argument("--seconds", type=float, default=10.0, help="Duration of the latency part.")
    ap.add_argument(
        "--modes",
        default="enriched,raw",
        help="Topics for the writer part: enriched (the default sink), raw, or both.",
    )
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument(
        "--compact-every",
        type=float,
        default=None,
        help="The sinks' sink_compact_every in the latency part (0: no compactor, to see "
        "what the report rows' compaction costs); default: the setting's default.",
    )
    ap.add_argument(
        "--lookup-sizes",
        default="0,1000000,4000000",
        help="Stored event ids at which the identity lookup is timed ('' to skip).",
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sink-") as tmp:
        work = Path(tmp)
        topics = Topics("bench.")
        raw_values = _messages(args.rows)
        modes = {
            "enriched": (topics.enriched, _enriched_messages(raw_values)),
            "raw": (topics.events, raw_values),
        }
        for mode in args.modes.split(","):
            topic, values = modes[mode]
            ours, raw, py, ours_cpu, raw_cpu = bench_writer(
                f"chdb:///{work / 'chdb'}",
                values,
                topic,
                args.batch,
                python_path=mode == "enriched",
            )
            what = (
                "route+ClickHouse-parsed insert"
                if mode == "enriched"
                else "decode+validate+rows+insert"
            )
            print(f"[{mode}] writer into embedded chDB: {ours:,.0f} rows/s ({what})")
            print(f"[{mode}] raw client.insert, same rows: {raw:,.0f} rows/s")
            print(f"[{mode}] ratio: {ours / raw:.2f}  (target: >= 100,000 rows/s)")
            print(
                f"[{mode}] CPU seconds, all threads (less load-sensitive than rows/s): ours "
                f"{ours_cpu:.2f} s ({len(values) / ours_cpu:,.0f} rows per CPU-second), raw "
                f"client.insert {raw_cpu:.2f} s ({len(values) / raw_cpu:,.0f})"
            )
            if py is not None:
                print(
                    f"[{mode}] for reference, the writer's Python path (json_path=False: "
                    f"decode+rows+insert): {py:,.0f} rows/s"
                )
            print(f"[{mode}] load average (1 min) after this part: {os.getloadavg()[0]:.2f}")
        del modes, raw_values
        sizes = [int(x) for x in args.lookup_sizes.split(",") if x]
        for size, n, seconds, insert in bench_identity_lookup(
            f"chdb:///{work / 'chdb'}", args.batch, sizes
        ):
            print(
                f"[identity] lookup of {n:,} new ids among {size:,} stored: "
                f"{seconds * 1000:.0f} ms (median of 3); baseline, an INSERT … SELECT of "
                f"{n:,} 300-byte rows, same run: {insert * 1000:.0f} ms"
            )
        print(f"[identity] load average (1 min): {os.getloadavg()[0]:.2f}")
        for path in () if args.skip_latency else ("pipeline", "raw"):
            r = bench_latency(
                args.rate,
                args.seconds,
                work,
                stream_jobs=path == "pipeline",
                compact_every=args.compact_every,
            )
            what = (
                "SDK -> stream jobs -> enriched topic -> sink (the default pipeline)"
                if path == "pipeline"
                else "SDK -> raw topic -> sink run --raw"
            )
            print(f"[latency, {what}]")
            print(
                f"latency SDK send -> in ClickHouse at {r['offered']:,} ev/s offered "
                f"({r['achieved']:,.0f} achieved, {r['rows']:,} rows): "
                f"p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms (target p99 < 2000 ms)"
            )
            print(
                f"baseline, same events read raw from Kafka: p50 {r['kafka_p50_ms']:.0f} ms, "
                f"p99 {r['kafka_p99_ms']:.0f} ms; ratio p99 "
                f"{r['p99_ms'] / max(r['kafka_p99_ms'], 1):.1f}x"
            )


if __name__ == "__main__":
    main()
