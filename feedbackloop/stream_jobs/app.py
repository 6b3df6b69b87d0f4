"""The faust application: tables, the batch handler of the raw topic, timers, alert agents.

faust owns group membership, partition assignment (co-partitioning the raw topic with the
tables' changelogs), table recovery, offset commits and timers. The hot path is the
:class:`~.pipeline.Pipeline` run per fetched batch (see :mod:`.consumer` for why), writing
through a librdkafka producer that is flushed before the batch's offsets are acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import operator
import os
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import aiokafka
import faust
from confluent_kafka import KafkaError, Producer
from faust.stores.memory import Store as MemoryStore
from faust.tables.manager import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from feedbackloop.config import Settings
from feedbackloop.errors import BrokerError, ConfigError
from feedbackloop.schemas import Alert, Topics, WindowAggregate
from feedbackloop.stream_jobs.config import StreamConfig
from feedbackloop.stream_jobs.consumer import FetchTuning, Transport
from feedbackloop.stream_jobs.detector import (
    SatisfactionDetector,
    VerdictWatch,
    check_verdicts,
    detector_keys,
)
from feedbackloop.stream_jobs.enrich import InteractionRecord
from feedbackloop.stream_jobs.pipeline import (
    ORIGIN_HEADER,
    TABLES,
    Pipeline,
    PipelineStats,
    decode_pending,
)
from feedbackloop.stream_jobs.windows import WindowState

__all__ = ["StreamJobs", "KafkaOutput", "post_webhook", "run_worker"]

log = logging.getLogger(__name__)

#: ConsumerRecord -> (key, value, offset, timestamp) in C: a list comprehension cost ~0.5 us
#: per record.
_RECORD = operator.attrgetter("key", "value", "offset", "timestamp")


class StreamApp(faust.App):
    """faust.App whose transport is our :class:`~.consumer.Transport`."""

    batch_handlers: dict[str, Any]
    fetch_tuning: FetchTuning | None = None

    def _new_transport(self) -> Any:
        return Transport(self.conf.broker_consumer, self)


class _StateTable(faust.Table):
    """A table whose changelog holds our own bytes; recovery decodes them into objects."""

    #: Set per table after construction; None keeps the changelog's bytes as they are.
    decode_value: Callable[[bytes], Any] | None = None

    def _to_value(self, v: Any) -> Any:
        decode = self.decode_value
        if decode is None or not isinstance(v, bytes | bytearray):
            return v
        return decode(bytes(v) if isinstance(v, bytearray) else v)


class KafkaOutput:
    """The pipeline's :class:`~.pipeline.Output` on a librdkafka producer."""

    def __init__(self, client_config: dict[str, Any], changelog_topics: dict[str, str]) -> None:
        self._producer = Producer(
            {
                **client_config,
                # Every batch ends in flush(), which sends at once whatever linger says; a
                # short linger only splits a batch's outputs into more, smaller produce
                # requests while it is processed. On the durable broker each partition's
                # batch costs two sequential S3 PUTs, and Tansu serves one connection's
                # requests one at a time (docs/PERFORMANCE.md, "Durable embedded broker").
                "linger.ms": 1000,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
                "queue.buffering.max.kbytes": 1_048_576,
                "enable.idempotence": False,
                # Python callbacks only for failures: one per message would cost ~1 us each.
                "delivery.report.only.error": True,
                # Set once here rather than per message: a kwargs dict per produce() call
                # was ~0.5 us of the hot path.
                "on_delivery": self._on_delivery,
                # Dead letters carry oversized events byte for byte; the broker still
                # applies its own limit (to the compressed batch).
                "message.max.bytes": 16 * 1024 * 1024,
                "log_level": 3,
                # Through Python logging (served by flush/poll), not librdkafka's own stderr
                # writer, which also fires from a producer left alive at interpreter exit.
                "logger": logging.getLogger("feedbackloop.stream_jobs.librdkafka"),
            }
        )
        self._produce = self._producer.produce
        self._changelog_topics = changelog_topics
        self.errors: list[str] = []
        self._flushing = threading.Lock()

    def _on_delivery(self, err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        # Positional arguments: (topic, value, key, partition); -1 is librdkafka's "let the
        # partitioner choose".
        p = -1 if partition is None else partition
        while True:
            try:
                if headers:
                    self._produce(topic, value, key, p, headers=headers)  # type: ignore[arg-type]
                else:
                    self._produce(topic, value, key, p)
                return
            except BufferError:
                self._producer.poll(0.01)  # queue full: let deliveries drain

    def changelog(self, table: str, partition: int, key: bytes, value: bytes | None) -> None:
        self.produce(self._changelog_topics[table], key, value, partition=partition)

    def flush(self, timeout: float = 30.0) -> None:
        """Block until everything produced so far is acknowledged; raise on any failure, and
        on every flush after one: a message was lost, so nothing flushed since may be
        acknowledged either (the worker exits and replays from its last commit).

        The batch handler and the timers flush from executor threads; one at a time, so a
        flush never returns while another holds a failure it has not recorded yet. Without
        both, the timer's flush took a failed delivery of a batch's enriched output, the
        batch's own flush succeeded, its offsets were committed, and the event was never in
        ClickHouse (the SeaweedFS case of the fault suite, 1 interaction of 3,943).
        """
        with self._flushing:
            remaining = self._producer.flush(timeout)
            if self.errors:
                raise BrokerError(f"delivery failed: {self.errors[0]} ({len(self.errors)} errors)")
            if remaining:
                raise BrokerError(f"{remaining} messages not delivered within {timeout:.0f} s")


def post_webhook(url: str, alert: Alert, timeout: float = 5.0) -> None:
    """POST a Slack-compatible JSON message ({"text": ..., "alert": {...}})."""
    body = json.dumps({"text": alert.message, "alert": alert.model_dump(mode="json")}).encode()
    req = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - configured URL
        resp.read()


def _broker_urls(bootstrap: str) -> list[str]:
    return [f"kafka://{h.strip()}" for h in bootstrap.split(",") if h.strip()]


def _credentials(settings: Settings) -> Any:
    proto = (settings.kafka_security_protocol or "PLAINTEXT").upper()
    if proto == "PLAINTEXT":
        return None
    if proto in ("SASL_SSL", "SASL_PLAINTEXT") and settings.kafka_sasl_username:
        import ssl

        secret = settings.kafka_sasl_password
        password = secret.get_secret_value() if secret else ""
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=ssl.create_default_context() if proto == "SASL_SSL" else None,
        )
    if proto == "SSL":
        import ssl

        return faust.SSLCredentials(ssl.create_default_context())
    raise ConfigError(f"unsupported kafka_security_protocol {proto!r} for the stream worker")


class StreamJobs:
    """One stream-jobs worker: the faust app, its tables and the pipeline.

    Construct it inside a running event loop, then ``async with jobs.running():`` (tests,
    benchmark), or call :func:`run_worker` (the CLI). Topics are created on start if missing.
    """

    def __init__(
        self, settings: Settings, config: StreamConfig | None = None, *, data_dir: Any = None
    ) -> None:
        if settings.bootstrap_servers is None:
            raise ConfigError("the stream worker needs bootstrap_servers (or the embedded broker)")
        self.settings = settings
        self.config = config or StreamConfig.from_settings(settings)
        self.topics = Topics(settings.topic_prefix)
        cfg = self.config
        app_id = f"{settings.topic_prefix}{cfg.app_id}"
        datadir = Path(data_dir or (settings.data_dir / "stream"))
        datadir.mkdir(parents=True, exist_ok=True)
        self.app = StreamApp(
            app_id,
            broker=_broker_urls(settings.bootstrap_servers),
            broker_credentials=_credentials(settings),
            store="memory://",
            datadir=str(datadir),
            topic_partitions=settings.topic_partitions,
            topic_allow_declare=True,
            web_enabled=False,
            consumer_auto_offset_reset="earliest",
            broker_max_poll_records=cfg.max_poll_records,
            broker_session_timeout=cfg.session_timeout_s,
            broker_heartbeat_interval=cfg.heartbeat_interval_s,
            broker_rebalance_timeout=cfg.rebalance_timeout_s,
            broker_commit_interval=1.0,
            table_standby_replicas=0,
            producer_linger=0.005,
        )
        self.app.fetch_tuning = FetchTuning(cfg.fetch_max_wait_ms, cfg.max_partition_fetch_bytes)
        self._tables = {name: self._state_table(name) for name in TABLES}
        self._tables["interactions"].decode_value = InteractionRecord.from_bytes
        self._tables["pending"].decode_value = decode_pending
        self._tables["windows"].decode_value = WindowState.from_bytes
        self._tables["watermarks"].decode_value = json.loads
        self.output = KafkaOutput(
            settings.kafka_client_config(),
            {n: t.changelog_topic.get_topic_name() for n, t in self._tables.items()},
        )
        self.pipeline = Pipeline(
            self.topics,
            cfg,
            self.output,
            interactions=self._store("interactions"),
            pending=self._store("pending"),
            windows=self._store("windows"),
            window_ids=self._store("window_ids"),
            watermarks=self._store("watermarks"),
            partitions=settings.topic_partitions,
        )
        self.alerts_sent: list[Alert] = []
        #: Why the worker must stop (an output the broker did not store), else None.
        self.failure: BrokerError | None = None
        self.failed = asyncio.Event()
        self.verdict_watch = VerdictWatch()
        #: Where the hot path spends its time (the benchmark prints it).
        self.timing: dict[str, float] = {"batches": 0, "process_s": 0.0, "flush_s": 0.0}
        from feedbackloop.infra.metrics import StreamMetrics

        #: Prometheus metrics, published from the tick timer (never on the hot path).
        self.metrics = StreamMetrics()
        self._wire()

    # --- construction ---------------------------------------------------------------------
    def _state_table(self, name: str) -> _StateTable:
        table = _StateTable(
            self.app,
            name=name,
            default=None,
            beacon=self.app.tables.beacon,
            partitions=self.settings.topic_partitions,
            # bytes types make faust use the "raw" codec for the changelog (it derives the
            # changelog serializers from the types, not from a schema).
            key_type=bytes,
            value_type=bytes,
            help=f"stream jobs state: {name}",
        )
        self.app.tables.add(table)
        return table

    def _store(self, name: str) -> MutableMapping[Any, Any]:
        # The memory store's dict: recovery writes decoded values into it, the pipeline
        # reads and writes it directly (changelog records go through KafkaOutput).
        store = self._tables[name].data
        if not isinstance(store, MemoryStore):  # store="memory://" above
            raise ConfigError(f"table {name} needs the memory store, not {type(store)}")
        return store.data

    def _wire(self) -> None:
        app, cfg, topics = self.app, self.config, self.topics
        events = app.topic(topics.events, key_serializer="raw", value_serializer="raw")
        # Same partition count as the raw topic and the tables: faust assigns partition p of
        # all of them to one worker, which joins the interactions that partition owns.
        repartition = app.topic(
            topics.repartition,
            key_serializer="raw",
            value_serializer="raw",
            partitions=self.settings.topic_partitions,
        )
        # Subscribing the topics is enough: BatchConsumer hands their records to the handlers.
        app.topics.add(events)
        app.topics.add(repartition)
        app.batch_handlers = {
            topics.events: self._on_batch,
            topics.repartition: self._on_forwarded_batch,
        }

        aggregates = app.topic(topics.aggregates, key_serializer="raw", value_serializer="raw")
        self.satisfaction_topic = app.topic(
            f"{topics.prefix}stream.satisfaction",
            key_serializer="raw",
            value_serializer="json",
            partitions=self.settings.topic_partitions,
        )
        detectors = app.Table(
            "alert_detectors",
            default=None,
            partitions=self.settings.topic_partitions,
            key_type=bytes,
        )

        @app.agent(aggregates, name="satisfaction_votes")
        async def satisfaction_votes(stream: Any) -> None:
            # Re-key each partial aggregate by detector, so one detector sees all its votes.
            async for value in stream:
                agg = WindowAggregate.model_validate_json(value)
                n = agg.thumbs_up + agg.thumbs_down
                if n == 0:
                    continue
                for key, dim in detector_keys(
                    agg.app_id, agg.experiment, agg.variant, agg.prompt_version
                ):
                    await self.satisfaction_topic.send(
                        key=key.encode(),
                        value={
                            "dim": dim,
                            "app": agg.app_id,
                            "exp": agg.experiment,
                            "var": agg.variant,
                            "pv": agg.prompt_version,
                            "start": agg.window_start.timestamp(),
                            "n": n,
                            "s": agg.thumbs_up,
                        },
                    )

        alerts_topic = app.topic(topics.alerts, key_serializer="raw", value_serializer="raw")

        @app.agent(self.satisfaction_topic, name="satisfaction_detector")
        async def satisfaction_detector(stream: Any) -> None:
            async for event in stream.events():
                key = event.key.decode() if isinstance(event.key, bytes) else str(event.key)
                v = event.value
                det = self._detector(key, v, detectors.get(key.encode()))
                alert = det.observe(v["start"], v["n"], v["s"])
                detectors[key.encode()] = _detector_state(det)
                if alert is not None:
                    log.warning("ALERT %s", alert.message)
                    self.alerts_sent.append(alert)
                    await alerts_topic.send(
                        key=key.encode(), value=alert.model_dump_json().encode()
                    )
                    if cfg.alert_webhook_url:
                        try:
                            await asyncio.get_running_loop().run_in_executor(
                                None, post_webhook, cfg.alert_webhook_url, alert
                            )
                        except Exception as e:  # a webhook outage must not stop the stream
                            log.error("alert webhook POST failed: %s", e)

        # faust starts timers after the first table recovery, but keeps them running through
        # later rebalances: a tick during a recovery would build a partition's window view
        # from a half-recovered store (and keep it), so the timers wait for the rebalance.
        @app.timer(interval=cfg.tick_s)
        async def tick() -> None:
            self._fail_if_consumer_crashed()
            if not app.rebalancing:
                assigned = self._assigned_partitions()
                self.pipeline.tick(partitions=assigned, closable=self._caught_up(assigned))
                await self._flush()
            self.metrics.update(self)

        if cfg.verdict_check_s > 0:

            @app.timer(interval=cfg.verdict_check_s)
            async def verdicts() -> None:
                loop = asyncio.get_running_loop()
                try:
                    found = await loop.run_in_executor(
                        None, check_verdicts, self.settings, self.verdict_watch
                    )
                except Exception as e:  # ClickHouse away or no analysis extra: keep streaming
                    log.warning("experiment verdict check skipped: %s", e)
                    return
                for alert in found:
                    log.warning("ALERT %s", alert.message)
                    self.alerts_sent.append(alert)
                    await alerts_topic.send(
                        key=alert.detector_key.encode(), value=alert.model_dump_json().encode()
                    )
                    if cfg.alert_webhook_url:
                        try:
                            await loop.run_in_executor(
                                None, post_webhook, cfg.alert_webhook_url, alert
                            )
                        except Exception as e:
                            log.error("alert webhook POST failed: %s", e)

        @app.timer(interval=cfg.retention_sweep_s)
        async def sweep() -> None:
            if not app.rebalancing and self.pipeline.sweep():
                await self._flush()

        @app.on_partitions_revoked.connect
        async def on_revoked(*args: Any, **kwargs: Any) -> None:
            # faust sends (app, revoked, signal=...); mypy matches mode's handler type only
            # with this catch-all signature.
            revoked: Iterable[TP] = args[1]
            self.pipeline.forget_partitions(
                [tp.partition for tp in revoked if tp.topic == topics.events]
            )

        @app.on_partitions_assigned.connect
        async def on_assigned(*args: Any, **kwargs: Any) -> None:
            assigned: Iterable[TP] = args[1]
            self.pipeline.keep_only([tp.partition for tp in assigned if tp.topic == topics.events])

    def _detector(self, key: str, v: dict[str, Any], state: Any) -> SatisfactionDetector:
        cfg = self.config
        det = SatisfactionDetector(
            key=key,
            dimension=v["dim"],
            app_id=v["app"],
            window_s=cfg.window_s,
            design_drop=cfg.alert_design_drop,
            threshold=cfg.alert_threshold,
            baseline_windows=cfg.alert_baseline_windows,
            baseline_lag_windows=cfg.alert_baseline_lag_windows,
            min_baseline_samples=cfg.alert_min_baseline_samples,
            min_samples=cfg.alert_min_samples,
            cooldown_s=cfg.alert_cooldown_s,
            experiment=v["exp"] or None if v["dim"] == "variant" else None,
            variant=v["var"] or None if v["dim"] == "variant" else None,
            prompt_version=v["pv"] or None if v["dim"] == "prompt_version" else None,
        )
        if state:
            det.history = {float(k): list(nv) for k, nv in state["h"].items()}
            c = det.cusum
            assert c is not None
            c.statistic, c.run_n, c.run_successes, c.run_start = state["c"]
            det.quiet_until = state["q"] if state["q"] is not None else -math.inf
        return det

    def _fail_if_consumer_crashed(self) -> None:
        """Fail the worker when faust's consumer crashed: faust logs it and lives on, reading
        nothing, so `up` would have nothing to restart. Seen when Tansu answered an offset
        commit with an unknown error while SeaweedFS was away ("TunedConsumerThread:
        Crashed reason=UnknownError()", then nothing for minutes)."""
        if self.failure is not None or self.app.should_stop:
            return
        consumer = self.app.consumer
        parts = (consumer, getattr(consumer, "_thread", None), getattr(self.app, "_fetcher", None))
        tables = getattr(self.app, "tables", None)
        crash = first_crash(parts) or recovery_ended(getattr(tables, "recovery", None))
        if crash is not None:
            log.error("stream jobs stopping: %s", crash)
            self.failure = BrokerError(crash)
            self.failed.set()

    def _assigned_partitions(self) -> list[int]:
        try:
            assigned = self.app.consumer.assignment()
        except Exception:  # not started yet / rebalancing
            return []
        return [tp.partition for tp in assigned if tp.topic == self.topics.events]

    def _caught_up(self, partitions: Iterable[int]) -> list[int]:
        """Partitions whose raw and repartition records are all processed, as a fetch
        answered in the last few seconds says: only these may close windows by the wall
        clock. A partition whose broker does not answer (its storage restarting) is not
        idle, it is cut off, and its backlog must not arrive late."""
        try:
            aio = self.app.consumer._thread._ensure_consumer()  # type: ignore[attr-defined]
            read = self.app.consumer._read_offset  # type: ignore[attr-defined]
        except Exception:  # not started, or stopping
            return []
        now_ms = time.time() * 1000.0
        out = []
        for p in partitions:
            ok = True
            for topic in (self.topics.events, self.topics.repartition):
                atp = aiokafka.TopicPartition(topic, p)
                try:
                    hw, polled = aio.highwater(atp), aio.last_poll_timestamp(atp)
                except AssertionError:  # not assigned (rebalancing)
                    ok = False
                    break
                last = read.get(TP(topic, p))
                done = 0 if last is None else last + 1
                if hw is None or polled is None or now_ms - polled > 3000 or done < hw:
                    ok = False
                    break
            if ok:
                out.append(p)
        return out

    # --- hot path -------------------------------------------------------------------------
    async def _on_batch(self, tp: Any, records: Sequence[Any]) -> None:
        t0 = time.perf_counter()
        self.pipeline.process(tp.partition, list(map(_RECORD, records)))
        t1 = time.perf_counter()
        await self._flush()
        t = self.timing
        t["batches"] += 1
        t["process_s"] += t1 - t0
        t["flush_s"] += time.perf_counter() - t1

    async def _on_forwarded_batch(self, tp: Any, records: Sequence[Any]) -> None:
        """Events other partitions sent on to this one (see :mod:`.pipeline`)."""
        seen: set[tuple[int, int]] = set()
        kept: list[Any] = []
        origins: list[tuple[int, int, int]] = []
        for r in records:
            origin = _origin(r)
            if origin is None:
                log.warning("repartition record %s:%d has no origin header", tp, r.offset)
                continue
            # A forwarder that crashed before committing sends the same events again; the
            # windows skip what they hold, this skips repeats within one batch.
            if origin[:2] in seen:
                continue
            seen.add(origin[:2])
            kept.append(r)
            origins.append(origin)
        self.pipeline.process(tp.partition, list(map(_RECORD, kept)), origins=origins)
        await self._flush()

    async def _flush(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.output.flush)
        except BrokerError as e:
            # Outputs or changelog records of the batch were not stored: the batch stays
            # unacknowledged, and the worker must not carry on with state the changelog does
            # not hold. It exits (run_worker raises); a restart recovers the state from the
            # changelogs and replays from the committed offsets, counting nothing twice.
            if self.failure is None:
                log.error("stream jobs stopping: %s", e)
                self.failure = e
                self.failed.set()
            raise

    # --- lifecycle ------------------------------------------------------------------------
    def ensure_topics(self) -> None:
        from feedbackloop.infra import ensure_topics

        ensure_topics(
            self.settings.kafka_client_config(),
            [*self.topics.all(), self.satisfaction_topic.get_topic_name()],
            self.settings.topic_partitions,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[StreamJobs]:
        """Run the worker in this event loop for the duration of the block."""
        self.ensure_topics()
        await self.app.start()
        try:
            yield self
        finally:
            await self.app.stop()
            if self.failure is None:
                await self._flush()
            self.metrics.update(self)

    @property
    def _recovery(self) -> Recovery:
        tables = self.app.tables
        assert isinstance(tables, TableManager)  # faust.App's own table manager
        return tables.recovery

    async def wait_assigned(self, timeout: float = 60.0) -> None:
        """Wait until the raw topic's partitions are assigned and their tables recovered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if (
                self._assigned_partitions()
                and not self.app.rebalancing
                and self._recovery.completed.is_set()
            ):
                return
            await asyncio.sleep(0.1)
        raise BrokerError(f"no partitions assigned to the stream worker within {timeout:.0f} s")


#: How long a worker may take to stop once it failed (nothing to flush) or was asked to stop.
FAILED_EXIT_S = 15.0
STOP_EXIT_S = 60.0


def run_worker(
    settings: Settings,
    config: StreamConfig | None = None,
    ready: Callable[[StreamJobs], None] | None = None,
) -> PipelineStats:
    """Run the stream worker until SIGINT / SIGTERM; return its final counters.

    The worker is built inside the event loop that runs it: faust binds its services to the
    loop they are created in. Once it failed or was asked to stop, the process exits within
    :data:`FAILED_EXIT_S` / :data:`STOP_EXIT_S` whatever its shutdown does (see
    :func:`exit_unless_done`).
    """
    import signal

    deadline: list[threading.Timer] = []

    async def serve() -> PipelineStats:
        jobs = StreamJobs(settings, config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with jobs.running():
            try:
                await jobs.wait_assigned()
                if ready is not None:
                    ready(jobs)
                waits = [asyncio.ensure_future(e.wait()) for e in (stop, jobs.failed)]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
            finally:
                failed = jobs.failure is not None or not stop.is_set()
                deadline.append(exit_unless_done(FAILED_EXIT_S if failed else STOP_EXIT_S))
        if jobs.failure is not None:
            raise jobs.failure  # exit non-zero: `up` restarts the worker
        return jobs.pipeline.stats

    try:
        return asyncio.run(serve())
    finally:
        for timer in deadline:
            timer.cancel()


def exit_unless_done(seconds: float, code: int = 1) -> threading.Timer:
    """Exit the process with ``code`` in ``seconds`` unless the returned timer is cancelled.

    A worker stops by running faust's and aiokafka's stop coroutines, then asyncio cancels
    every task left and waits for each. After SeaweedFS died under the broker, that wait
    never ended (a task left behind by the failed flush did not finish when cancelled): the
    worker had failed, processed nothing, and lived on, so `up` had nothing to restart.
    Exiting is safe at any point: the state is in the changelogs and nothing unflushed was
    acknowledged, exactly as after a SIGKILL.
    """

    def expire() -> None:
        log.error("stream worker did not stop within %.0f s; exiting now", seconds)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer


def first_crash(services: Iterable[Any]) -> str | None:
    """``"<service> crashed: <reason>"`` of the first of ``services`` (mode services, or
    None) that crashed; None if none did."""
    for service in services:
        if service is not None and service.crashed:
            return f"{type(service).__name__} crashed: {service.crash_reason!r}"
    return None


def recovery_ended(recovery: Any) -> str | None:
    """Why faust's table recovery (a running mode service, or None) will never run again,
    if it will not: its loop, ``_restart_recovery``, ended while the service runs. mode ends
    a task quietly on a ``CancelledError`` it did not ask for ("Terminating cancelled
    task"), and the worker then lives on reading nothing after the next rebalance (seen
    when aiokafka's own cancellation escaped the end-offset probe: stream_jobs/consumer.py)."""
    if recovery is None or not recovery.started or recovery.should_stop:
        return None
    for fut in list(recovery._futures):
        task = getattr(fut, "__wrapped__", None)
        if getattr(task, "__name__", None) == "_restart_recovery" and not fut.done():
            return None
    return f"{type(recovery).__name__}: its table recovery loop ended; nothing would be read"


def _origin(record: Any) -> tuple[int, int, int] | None:
    for name, value in record.headers or ():
        if name == ORIGIN_HEADER:
            try:
                p, o, t = value.split(b":")
                return int(p), int(o), int(t)
            except ValueError:
                return None
    return None


def _detector_state(det: SatisfactionDetector) -> dict[str, Any]:
    c = det.cusum
    assert c is not None
    return {
        "h": {str(k): v for k, v in det.history.items()},
        "c": [c.statistic, c.run_n, c.run_successes, c.run_start],
        "q": det.quiet_until if math.isfinite(det.quiet_until) else None,
    }
