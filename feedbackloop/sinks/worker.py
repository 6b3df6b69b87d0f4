"""The sink worker: consume topics, batch, insert into ClickHouse, then commit offsets.

Order of effects per flush, the whole reliability story in four lines:

1. every pending batch is inserted (``ClickHouseSink.write``), retried with back-off while
   ClickHouse is unavailable; consumption is paused meanwhile (memory stays bounded, and
   the consumer keeps polling so the group does not evict it);
2. only then are the batches' offsets committed (``enable.auto.commit`` is off);
3. a crash before 2 replays those messages after restart, and ReplacingMergeTree plus the
   insert tokens make the replay harmless;
4. on shutdown (Ctrl-C / SIGTERM) the worker flushes and commits before it exits.

A message is added only when every earlier offset of its partition was (``GapGuard``: on
Tansu's S3 engine a fetch can run ahead of a produce when several producers write a
partition, e.g. two stream workers during a rebalance; docs/RELIABILITY.md), so a commit
never passes a record the sink has not stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.config import Settings, default_of
from feedbackloop.errors import BackPressure, BrokerError
from feedbackloop.infra.offset_gaps import GapGuard
from feedbackloop.schemas import Topics
from feedbackloop.sinks.clickhouse import ClickHouseSink, SinkMessage
from feedbackloop.sinks.migrations import migrate

__all__ = ["SinkConfig", "SinkWorker", "default_topics"]

log = logging.getLogger(__name__)

#: How long a worker that loses the compacting partition waits for its compactor's round
#: to end, within the rebalance (under librdkafka's 300 s ``max.poll.interval.ms``, after
#: which the group would go on without it).
COMPACTOR_HANDOVER_S = 240.0


def default_topics(topics: Topics, raw: bool = False) -> tuple[str, ...]:
    """What the sink consumes: the stream jobs' outputs, plus the raw topic if ``raw``.

    Without the stream jobs running, ``raw=True`` stores validated raw events directly (no
    request context on feedback). Both at once is safe: an enriched copy of an event
    replaces the raw copy (see ``_version`` in the migrations).
    """
    names = [
        topics.enriched,
        topics.aggregates,
        topics.alerts,
        topics.dead_letters,
        topics.control,
    ]
    if raw:
        names.insert(0, topics.events)
    return tuple(names)


@dataclass
class SinkConfig:
    """How the sink worker batches and what it reads."""

    #: Topic names to consume; empty means :func:`default_topics`.
    topics: tuple[str, ...] = ()
    raw: bool = default_of("sink_raw")
    group_id: str = default_of("sink_group_id")
    #: A batch per (topic, partition) is written at this many rows, or ...
    max_rows: int = default_of("sink_max_rows")
    #: ... when its oldest row waited this long. ClickHouse likes about one insert per
    #: second per table; half a second keeps send-to-visible latency well under 2 s.
    max_age_s: float = default_of("sink_max_age")
    #: Messages fetched per consume() call.
    poll_batch: int = 10_000
    #: Apply pending migrations at start.
    migrate: bool = True
    #: Serve read-only analyst queries on 127.0.0.1 (needed with embedded chDB, where no
    #: other process may open the data directory while the worker runs).
    query_endpoint: bool = True
    #: Bring the per-session report rows up to date this often, in a thread of its own
    #: (feedbackloop.sinks.report_rows); 0 leaves it to another worker. One compactor per
    #: database: two at once would both cancel the same rows.
    compact_interval_s: float = default_of("sink_compact_every")
    #: Whether only the worker that owns partition 0 of the enriched topic compacts
    #: (:meth:`SinkWorker.compaction_partition`): the group's one owner of that partition
    #: is the database's one compactor, and it hands over on a rebalance. ``None``: on a
    #: ClickHouse server, where several sink workers may share a database; embedded chDB
    #: opens in one process only, whose worker compacts from its start.
    compact_by_partition: bool | None = None
    #: Extra librdkafka consumer settings.
    consumer_overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> SinkConfig:
        """The config ``settings`` describe; each override that is not None wins (the CLI
        passes its options this way, so an option left out means the setting)."""
        values: dict[str, Any] = {
            "raw": settings.sink_raw,
            "group_id": settings.sink_group_id,
            "max_rows": settings.sink_max_rows,
            "max_age_s": settings.sink_max_age,
            "compact_interval_s": settings.sink_compact_every,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


class SinkWorker:
    """Runs one consumer and one :class:`ClickHouseSink` until :meth:`stop` is called."""

    #: Seconds to wait before fetching a partition with a hole again.
    gap_retry_s = 0.05

    def __init__(
        self,
        settings: Settings,
        config: SinkConfig | None = None,
        *,
        client_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or SinkConfig.from_settings(settings)
        self.topics = Topics(settings.topic_prefix)
        self.sink = ClickHouseSink(
            settings.clickhouse_dsn,
            settings.clickhouse_database,
            self.topics,
            max_rows=self.config.max_rows,
            max_age_s=self.config.max_age_s,
            client_factory=client_factory,
        )
        from feedbackloop.infra.metrics import SinkMetrics

        #: Prometheus metrics, published about once a second from the consume loop.
        self.metrics = SinkMetrics()
        self.sink.on_batch_stored = self.metrics.observe_batch
        self._stop = threading.Event()
        self._consumer: Any = None
        self._paused: list[Any] = []
        #: Holes in a partition's offsets: waited for, or passed over and counted.
        self.gaps = GapGuard(name="sink")
        self.endpoint: Any = None
        self.compactor: Any = None
        self._new_compactor: Callable[[], Any] | None = None
        self._compactor_lock = threading.Lock()
        # Shared with the compactor: a flush's inserts are not split by its statements.
        self._flush_lock = threading.Lock()

    @property
    def topic_names(self) -> tuple[str, ...]:
        return self.config.topics or default_topics(self.topics, self.config.raw)

    @property
    def compaction_partition(self) -> tuple[str, int]:
        """The partition whose owner compacts, when compaction goes by partition: partition
        0 of the enriched topic, which every default subscription holds (raw or not)."""
        names = self.topic_names
        return (self.topics.enriched if self.topics.enriched in names else min(names), 0)

    @property
    def compacts_by_partition(self) -> bool:
        from feedbackloop.infra.clickhouse import is_embedded

        chosen = self.config.compact_by_partition
        return not is_embedded(self.settings.clickhouse_dsn) if chosen is None else chosen

    def stop(self) -> None:
        """Ask :meth:`run` to flush, commit and return (safe from a signal handler)."""
        self._stop.set()

    # --- lifecycle ---------------------------------------------------------------------------
    def run(self, ready: Callable[[], None] | None = None) -> None:
        """Consume until :meth:`stop`; flush and commit on the way out."""
        from confluent_kafka import Consumer, KafkaException

        from feedbackloop.infra import ensure_topics

        kafka = self.settings.kafka_client_config()
        ensure_topics(kafka, self.topic_names, self.settings.topic_partitions)
        self._setup_storage()
        conf = {
            **kafka,
            "group.id": self.config.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Tansu completes a group join in ~3 s with 6 s sessions, ~23 s with the default.
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "fetch.wait.max.ms": 50,
            "log_level": 3,
            **self.config.consumer_overrides,
        }
        try:
            self._consumer = Consumer(conf)
            self._consumer.subscribe(
                list(self.topic_names), on_assign=self._on_assign, on_revoke=self._on_revoke
            )
        except KafkaException as e:
            raise BrokerError(f"cannot start the sink consumer: {e}") from e
        if ready is not None:
            ready()
        try:
            self._loop()
        finally:
            try:
                self._flush(final=True)
                self.metrics.update(self)
            finally:
                self._consumer.close()
                self._consumer = None
                self._stop_compactor()
                if self.endpoint is not None:
                    self.endpoint.stop()
                    self.endpoint = None
                self.sink.close()

    def _setup_storage(self) -> None:
        # Retry the first connection too: a server may still be starting.
        attempt = 0
        while True:
            try:
                self.sink.setup()
                if self.config.migrate:
                    migrate(self.sink.client, self.settings.clickhouse_database)
                break
            except Exception as e:
                attempt += 1
                if attempt >= 5 or self._stop.is_set():
                    raise
                log.warning("ClickHouse not ready (%s); retrying", e)
                self.sink.close()
                time.sleep(min(5.0, 0.2 * 2**attempt))
        if self.config.compact_interval_s > 0:
            from feedbackloop.infra import get_client
            from feedbackloop.sinks.query import reading
            from feedbackloop.sinks.report_rows import Compactor

            dsn = self.settings.clickhouse_dsn
            self._new_compactor = lambda: Compactor(
                lambda: get_client(dsn),
                self.settings.clickhouse_database,
                self.config.compact_interval_s,
                self._flush_lock,
                idle=self._sink_idle,
                reading=reading,
            )
            if not self.compacts_by_partition:
                self._start_compactor()
        if self.config.query_endpoint:
            from feedbackloop.sinks.query import QueryEndpoint

            self.endpoint = QueryEndpoint(self.settings)
            self.endpoint.start()

    def _start_compactor(self) -> None:
        with self._compactor_lock:
            if self.compactor is None and self._new_compactor is not None:
                self.compactor = self._new_compactor()
                self.compactor.start()
                log.info(
                    "compacting the report rows (every %.1f s)", self.config.compact_interval_s
                )

    def _stop_compactor(self) -> None:
        """Stop the compactor once its round is done. Compacting by partition, wait up to
        :data:`COMPACTOR_HANDOVER_S`, on the way out too: the next owner starts after this.
        Else up to the compactor's own bound (a round cut off is repaired at the next start,
        and no other compactor runs meanwhile)."""
        with self._compactor_lock:
            compactor, self.compactor = self.compactor, None
            if compactor is None:
                return
            if not self.compacts_by_partition:
                compactor.stop()
                return
            log.info("handing compaction over once the running round is done")
            if not compactor.stop(timeout=COMPACTOR_HANDOVER_S):
                log.warning(
                    "the compaction round outlasted the handover (%.0f s): the next owner may "
                    "compact while it ends",
                    COMPACTOR_HANDOVER_S,
                )

    def _sink_idle(self) -> bool:
        """Nothing pending in the sink (read from the compactor's thread: the batches may
        change under it, which counts as busy)."""
        try:
            return self.sink.pending == 0
        except RuntimeError:
            return False

    def _loop(self) -> None:
        consumer, sink, cfg = self._consumer, self.sink, self.config
        while not self._stop.is_set():
            wait = sink.time_to_due()
            timeout = 0.2 if wait is None else max(0.0, min(0.2, wait))
            msgs = consumer.consume(num_messages=cfg.poll_batch, timeout=timeout)
            refetch: set[tuple[str, int]] = set()
            for m in msgs:
                err = m.error()
                if err is not None:
                    # Partition EOF and transient broker errors are reported in-band;
                    # librdkafka retries on its own.
                    if not err.retriable() and err.fatal():
                        raise BrokerError(f"fatal consumer error: {err}")
                    log.debug("consumer: %s", err)
                    continue
                tp = (m.topic(), m.partition())
                if tp in refetch:
                    continue  # fetched after a hole: read again once the hole is filled
                admitted = self.gaps.admit(tp, (m.offset(),))
                if admitted.missing is not None:
                    refetch.add(tp)
                    self._seek(tp, admitted.missing)
                    continue
                ts = m.timestamp()[1]
                sink.add(
                    m.topic(),
                    m.partition(),
                    m.offset(),
                    SinkMessage(m.value(), m.key(), m.headers(), ts if ts > 0 else 0, m.offset()),
                )
            if sink.due():
                self._flush()
            self.metrics.maybe_update(self)
            if refetch:
                time.sleep(self.gap_retry_s)

    def _seek(self, tp: tuple[str, int], offset: int) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        try:
            self._consumer.seek(TopicPartition(tp[0], tp[1], offset))
        except KafkaException as e:  # the guard keeps holding the partition; tried again
            log.warning("cannot seek %s[%d] back to %d: %s", tp[0], tp[1], offset, e)

    # --- flushing ----------------------------------------------------------------------------
    def _flush(self, final: bool = False) -> None:
        """Write every pending batch, retrying while ClickHouse is down; then commit."""
        while True:
            try:
                with self._flush_lock:
                    offsets = self.sink.flush()
            except BackPressure as bp:
                if self._stop.is_set():
                    if final:
                        # Shutting down during an outage: leave the offsets uncommitted; the
                        # next run reads those messages again. Nothing is lost or dropped.
                        log.warning(
                            "exiting with %d rows not written (offsets not committed): %s",
                            self.sink.pending,
                            bp,
                        )
                    return
                self._wait(bp.retry_after)
                continue
            self._resume()
            self._commit(offsets)
            return

    def _wait(self, seconds: float) -> None:
        """Back off without leaving the group: pause fetching, keep serving the consumer."""
        consumer = self._consumer
        if consumer is not None and not self._paused:
            self._paused = list(consumer.assignment())
            if self._paused:
                consumer.pause(self._paused)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            if consumer is not None:
                # Paused partitions return nothing; the call keeps max.poll.interval happy
                # and serves rebalance callbacks.
                msg = consumer.poll(min(0.2, max(0.0, deadline - time.monotonic())))
                if msg is not None and msg.error() is None:  # pragma: no cover - paused
                    log.debug("message while paused on %s", msg.topic())
            else:
                time.sleep(min(0.2, seconds))

    def _resume(self) -> None:
        if self._paused and self._consumer is not None:
            self._consumer.resume(self._paused)
        self._paused = []

    def _commit(self, offsets: dict[tuple[str, int], int]) -> None:
        if not offsets or self._consumer is None:
            return
        from confluent_kafka import KafkaException, TopicPartition

        tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        try:
            self._consumer.commit(offsets=tps, asynchronous=False)
        except KafkaException as e:
            # Typically a rebalance in progress. The rows are stored; at worst the next
            # owner re-reads them and deduplication absorbs it.
            log.warning("offset commit failed (rows are stored; replay is harmless): %s", e)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        if self.compacts_by_partition and self.compaction_partition in {
            (tp.topic, tp.partition) for tp in partitions
        }:
            self._start_compactor()

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        try:
            self._give_back(revoked)
        finally:
            # The group waits for this callback: the next owner of the partition starts
            # compacting only after this worker's round is done.
            if self.compacts_by_partition and self.compaction_partition in revoked:
                self._stop_compactor()

    def _give_back(self, revoked: set[tuple[str, int]]) -> None:
        for tp in revoked:
            self.gaps.forget(tp)
        try:
            with self._flush_lock:
                offsets = self.sink.flush()
        except BackPressure:
            dropped = self.sink.discard(revoked)
            log.warning("rebalance during an outage: %d rows left for the next owner", dropped)
            return
        self._commit(offsets)
