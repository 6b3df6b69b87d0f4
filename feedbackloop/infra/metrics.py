"""Prometheus metrics of the pipeline, one scrape target for every process of a machine.

The services run as separate processes (``feedbackloop up`` starts the stream worker, the
sink and the web server as children), so each process writes its metrics to files in one
shared directory (prometheus_client's multiprocess mode, ``Settings.metrics_path``) and
whoever is scraped reads them all: the web server at ``/metrics``, or, without it,
``feedbackloop metrics`` / ``Settings.metrics_port`` (docs/ARCHITECTURE.md, "Operations").

The hot paths never touch a metric: :class:`StreamMetrics` and :class:`SinkMetrics` turn the
counters the stream jobs and the sink keep anyway into metric increments about once a
second (the difference since the last update), and read the consumers' lag at the same time.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "CONTENT_TYPE",
    "MULTIPROC_ENV",
    "SinkMetrics",
    "StreamMetrics",
    "enable_multiprocess",
    "exposition",
    "families",
    "mark_process_dead",
    "multiprocess_dir",
    "prepare_dir",
    "record_collector",
    "record_dead_letter",
    "record_otlp_spans",
    "serve_http",
]

#: The variable prometheus_client reads to choose multiprocess mode (it must be set before
#: the first metric value is created, so commands set it first thing).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds from a batch's first row to the batch stored: what ClickHouse freshness shows.
BATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0)


def multiprocess_dir() -> Path | None:
    """The shared metrics directory of this process, if multiprocess mode is on."""
    path = os.environ.get(MULTIPROC_ENV)
    return Path(path) if path else None


def prepare_dir(path: Path, clean: bool = False) -> Path:
    """Create ``path``; with ``clean``, delete the metric files of earlier runs."""
    path.mkdir(parents=True, exist_ok=True)
    if clean:
        for f in glob.glob(str(path / "*.db")):
            os.remove(f)
    return path


def enable_multiprocess(path: Path, clean: bool = False) -> Path:
    """Make this process write its metrics under ``path`` (call before any metric is used).

    Setting the variable is how prometheus_client is told (it is read by the library, and
    inherited by children); we also re-select its value class in case the module was
    imported before.
    """
    prepare_dir(path, clean)
    os.environ[MULTIPROC_ENV] = str(path)
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    return path


def mark_process_dead(pid: int, path: Path | None = None) -> None:
    """Drop the live gauges (lag, pending rows, up) of a process that exited."""
    path = path or multiprocess_dir()
    if path is None:
        return
    for f in glob.glob(str(path / f"gauge_live*_{pid}.db")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f)


# --------------------------------------------------------------------------- the metrics


@dataclass(frozen=True)
class Families:
    """Every metric of feedbackloop (names and meanings: docs/CONFIGURATION.md, "Metrics")."""

    registry: CollectorRegistry
    service_up: Any
    collector_events: Any
    stream_events: Any
    stream_aggregates: Any
    stream_pending: Any
    alerts: Any
    dead_letters: Any
    sink_messages: Any
    offset_gaps: Any
    sink_rows: Any
    sink_inserts: Any
    sink_insert_errors: Any
    sink_insert_seconds: Any
    sink_batch_seconds: Any
    sink_pending_rows: Any
    consumer_lag: Any
    otlp_spans: Any


_families: Families | None = None
_lock = threading.Lock()


def families() -> Families:
    """The metric families, created on first use in this process's registry."""
    global _families
    with _lock:
        if _families is None:
            _families = _create()
        return _families


def _create() -> Families:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

    reg = CollectorRegistry(auto_describe=True)
    p = "feedbackloop_"
    return Families(
        registry=reg,
        service_up=Gauge(
            p + "service_up",
            "1 per running process of a service.",
            ["service"],
            registry=reg,
            multiprocess_mode="livesum",
        ),
        collector_events=Counter(
            p + "collector_events",
            "Events posted to the HTTP collector, by outcome "
            "(accepted, rejected, forbidden, unavailable).",
            ["outcome"],
            registry=reg,
        ),
        stream_events=Counter(
            p + "stream_events",
            "Raw events through the stream jobs: in = valid + "
            "dead_lettered; enriched includes orphaned; late counts window-late events.",
            ["kind"],
            registry=reg,
        ),
        stream_aggregates=Counter(
            p + "stream_aggregates", "Window aggregates emitted.", registry=reg
        ),
        stream_pending=Gauge(
            p + "stream_pending_feedback",
            "Feedback waiting for its interaction (grace period).",
            registry=reg,
            multiprocess_mode="livesum",
        ),
        alerts=Counter(
            p + "alerts",
            "Satisfaction-drop alerts raised, by dimension.",
            ["dimension"],
            registry=reg,
        ),
        dead_letters=Counter(
            p + "dead_letters",
            "Events sent to dead letters, by the stage that refused them and why.",
            ["source", "reason"],
            registry=reg,
        ),
        sink_messages=Counter(
            p + "sink_messages", "Kafka messages stored by the sink.", registry=reg
        ),
        offset_gaps=Counter(
            p + "offset_gaps",
            "Holes in a partition's offsets seen by a consumer: 'waited' (filled on a "
            "re-fetch), 'skipped' (offsets passed over after the wait; never read).",
            ["service", "outcome"],
            registry=reg,
        ),
        sink_rows=Counter(
            p + "sink_rows", "Rows inserted into ClickHouse, by table.", ["table"], registry=reg
        ),
        sink_inserts=Counter(p + "sink_inserts", "ClickHouse insert calls.", registry=reg),
        sink_insert_errors=Counter(
            p + "sink_insert_errors", "Transient insert failures (retried).", registry=reg
        ),
        sink_insert_seconds=Counter(
            p + "sink_insert_seconds", "Time spent in ClickHouse insert calls.", registry=reg
        ),
        sink_batch_seconds=Histogram(
            p + "sink_batch_latency_seconds",
            "From a batch's first message to the batch stored in ClickHouse.",
            buckets=BATCH_BUCKETS,
            registry=reg,
        ),
        sink_pending_rows=Gauge(
            p + "sink_pending_messages",
            "Messages consumed, not yet stored.",
            registry=reg,
            multiprocess_mode="livesum",
        ),
        consumer_lag=Gauge(
            p + "consumer_lag",
            "Messages in a partition not yet read by the consumer group.",
            ["group", "topic", "partition"],
            registry=reg,
            multiprocess_mode="livemostrecent",
        ),
        otlp_spans=Counter(
            p + "otlp_spans",
            "Spans posted to the collector's /v1/traces, by outcome (interaction: a GenAI "
            "model call, handed on as an interaction; ignored: any other span).",
            ["outcome"],
            registry=reg,
        ),
    )


def exposition(path: Path | None = None) -> bytes:
    """The text exposition: every process of the metrics directory, else this process."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    path = path or multiprocess_dir()
    if path is None:
        return generate_latest(families().registry)
    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(path))
    return generate_latest(reg)


def serve_http(port: int, host: str = "127.0.0.1", path: Path | None = None) -> Any:
    """Serve :func:`exposition` at ``http://host:port/metrics`` on a daemon thread."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    path = path or multiprocess_dir()
    if path is None:
        reg = families().registry
    else:
        reg = CollectorRegistry()
        MultiProcessCollector(reg, path=str(path))
    server, _thread = start_http_server(port, addr=host, registry=reg)
    return server


# --------------------------------------------------------------------------- recording


def record_collector(outcomes: Iterable[tuple[str, str | None]]) -> None:
    """Count the collector's answers: ``(status, reason)`` per event."""
    f = families()
    counts: dict[tuple[str, str | None], int] = {}
    for status, reason in outcomes:
        counts[(status, reason)] = counts.get((status, reason), 0) + 1
    for (status, reason), n in counts.items():
        f.collector_events.labels(status).inc(n)
        if status == "rejected":  # the collector sends every rejected event to dead letters
            f.dead_letters.labels("collector", reason or "unknown").inc(n)


def record_otlp_spans(interactions: int, ignored: int) -> None:
    """Count the spans of one OTLP request (what became of the interactions is counted by
    :func:`record_collector`)."""
    f = families()
    if interactions:
        f.otlp_spans.labels("interaction").inc(interactions)
    if ignored:
        f.otlp_spans.labels("ignored").inc(ignored)


def record_dead_letter(source: str, reason: str) -> None:
    families().dead_letters.labels(source, reason).inc()


class _Deltas:
    """Increments counters by what a monotonic source counter grew since the last call."""

    def __init__(self) -> None:
        self._seen: dict[Any, float] = {}

    def inc(self, key: Any, counter: Any, value: float) -> None:
        grown = value - self._seen.get(key, 0)
        if grown > 0:
            counter.inc(grown)
        self._seen[key] = max(value, self._seen.get(key, 0))


class StreamMetrics:
    """Publishes a stream worker's ``PipelineStats``, alerts and consumer lag."""

    def __init__(self) -> None:
        self.f = families()
        self._d = _Deltas()

    def update(self, jobs: Any) -> None:
        """Call from the worker's event loop (reads the faust consumer)."""
        f, st, d = self.f, jobs.pipeline.stats, self._d
        for kind, value in (
            ("in", st.records_in),
            ("valid", st.valid),
            ("dead_lettered", st.dead_letters),
            ("enriched", st.enriched),
            ("orphaned", st.orphaned),
            ("late", st.late_events),
        ):
            d.inc(kind, f.stream_events.labels(kind), value)
        for reason, n in list(st.by_reason.items()):
            d.inc(("dl", reason), f.dead_letters.labels("stream", reason), n)
        d.inc("aggregates", f.stream_aggregates, st.aggregates)
        try:
            gaps = jobs.app.consumer.gaps
        except Exception:  # not started yet
            gaps = None
        if gaps is not None:
            d.inc("gaps_waited", f.offset_gaps.labels("stream", "waited"), gaps.waited)
            d.inc("gaps_skipped", f.offset_gaps.labels("stream", "skipped"), gaps.skipped)
        f.stream_pending.set(st.pending)
        alerts = jobs.alerts_sent
        seen = int(self._d._seen.get("alerts", 0))
        for alert in alerts[seen:]:
            f.alerts.labels(str(getattr(alert, "dimension", "") or "unknown")).inc()
        self._d._seen["alerts"] = len(alerts)
        self._lag(jobs)

    def _lag(self, jobs: Any) -> None:
        try:
            consumer = jobs.app.consumer
            assigned = consumer.assignment()
            read = consumer._read_offset
        except Exception:  # not started, or rebalancing
            return
        group = jobs.app.conf.id
        for tp in assigned:
            if tp.topic != jobs.topics.events:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:
                continue
            last = read.get(tp)
            if high is None:
                continue
            # faust's read offset is the last processed record (or, right after a seek,
            # the next one): the lag is exact to within one message.
            lag = high - (last + 1) if last is not None else high
            self.f.consumer_lag.labels(group, tp.topic, str(tp.partition)).set(max(0, lag))


class SinkMetrics:
    """Publishes a sink worker's ``SinkStats``, batch latency and consumer lag."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.f = families()
        self._d = _Deltas()
        self.interval_s = interval_s
        self._next = 0.0

    def observe_batch(self, seconds: float) -> None:
        self.f.sink_batch_seconds.observe(seconds)

    def maybe_update(self, worker: Any) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self.interval_s
            self.update(worker)

    def update(self, worker: Any) -> None:
        f, st, d = self.f, worker.sink.stats, self._d
        d.inc("messages", f.sink_messages, st.messages)
        for table, n in list(st.rows.items()):
            d.inc(("rows", table), f.sink_rows.labels(table), n)
        for reason, n in list(getattr(st, "by_reason", {}).items()):
            d.inc(("dl", reason), f.dead_letters.labels("sink", reason), n)
        d.inc("inserts", f.sink_inserts, st.inserts)
        d.inc("errors", f.sink_insert_errors, st.transient_errors)
        d.inc("seconds", f.sink_insert_seconds, st.insert_seconds)
        gaps = getattr(worker, "gaps", None)
        if gaps is not None:
            d.inc("gaps_waited", f.offset_gaps.labels("sink", "waited"), gaps.waited)
            d.inc("gaps_skipped", f.offset_gaps.labels("sink", "skipped"), gaps.skipped)
        f.sink_pending_rows.set(worker.sink.pending)
        consumer = getattr(worker, "_consumer", None)
        if consumer is not None:
            self._lag(consumer, worker.config.group_id)

    def _lag(self, consumer: Any, group: str) -> None:
        try:
            positions = consumer.position(consumer.assignment())
        except Exception:
            return
        for tp in positions:
            try:
                # cached: librdkafka updates the high watermark from every fetch response
                _low, high = consumer.get_watermark_offsets(tp, cached=True)
            except Exception:
                continue
            if high < 0:
                continue
            pos = tp.offset if tp.offset >= 0 else None
            lag = high - pos if pos is not None else high
            self.f.consumer_lag.labels(group, tp.topic, str(tp.partition)).set(max(0, lag))
