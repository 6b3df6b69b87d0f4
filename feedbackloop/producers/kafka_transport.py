"""The SDK's default transport: one idempotent librdkafka producer, and the on-disk spool
(:mod:`feedbackloop.producers.spool`) for whatever the broker cannot take right now.

``produce`` does no I/O: it puts the bytes in librdkafka's in-memory queue, and librdkafka's
threads send them. One background thread ("feedbackloop-delivery") serves delivery reports,
replays the spool and replaces the producer when its idempotence state is lost.

Broker down, slow or full queue: the event goes to the spool, and from that moment every
new event does too, so that order is kept, until the delivery thread has replayed the spool
(oldest first, each record removed only after the broker acknowledged it). Every event is
delivered, spooled, or counted and logged as ``failed`` (a permanent refusal) or ``dropped``
(spool full, or sent after close). A permanently refused record (too large, invalid) is
kept in the spool file's quarantine instead of the replay order, so it cannot block the
records behind it (:meth:`Spool.quarantine`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from feedbackloop.config import Settings
from feedbackloop.producers.delivery import Counters, DeliveryStats, permanent_refusal
from feedbackloop.producers.spool import Spool
from feedbackloop.producers.transport import Headers, close_at_exit, forget_at_exit
from feedbackloop.schemas import Topics

__all__ = ["KafkaTransport"]

log = logging.getLogger(__name__)

_REPLAY_CHUNK = 2_000


def _kafka_errors() -> tuple[Any, Any]:
    from confluent_kafka import KafkaError, KafkaException

    return KafkaError, KafkaException


class KafkaTransport:
    """Events to Kafka through librdkafka, spooled to disk while the broker is away.

    ``settings`` give the brokers, topics, spool bound and producer tuning;
    ``spool_path`` defaults to ``settings.spool_path``; ``producer_config`` adds or overrides
    librdkafka properties. Nothing connects before the first event.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        spool_path: Path | str | None = None,
        producer_config: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.counters = Counters()
        self._delivered = self.counters.ticker("delivered")
        self._events_topic = self.topics.events
        self._spool_path = Path(spool_path) if spool_path else settings.spool_path
        self._extra_conf = dict(producer_config or {})

        self._start_lock = threading.Lock()
        # RLock: the delivery callback spools while the poller holds the lock during a switch.
        self._spool_lock = threading.RLock()
        self._producer: Any = None
        self._spool: Spool | None = None
        self._spooling = False
        self._fatal = False
        self._brokers_down = False
        self._closed = False
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self._next_replay = 0.0
        self._replay_backoff = 0.5
        self._last_full_log = 0.0

    # ------------------------------------------------------------------ Transport

    def send_event(self, key: bytes | None, value: bytes) -> bool:
        return self._send(self._events_topic, key, value)

    def send_dead_letter(self, key: bytes | None, value: bytes, headers: Headers) -> bool:
        return self._send(self.topics.dead_letters, key, value, list(headers))

    def stats(self) -> DeliveryStats:
        spool = self._spool
        return self.counters.snapshot(
            spool.count if spool else 0, spool.quarantined if spool else 0
        )

    def flush(self, timeout: float) -> int:
        if self._producer is None:
            return 0
        remaining: int = self._producer.flush(timeout)
        return remaining

    def close(self, timeout: float | None = None) -> None:
        """Flush for up to ``timeout`` s (default ``Settings.close_timeout_s``), spool
        whatever is still queued, and stop."""
        if self._closed:
            return
        self._closed = True
        forget_at_exit(self)
        timeout = self.settings.close_timeout_s if timeout is None else timeout
        producer = self._producer
        if producer is not None:
            deadline = time.monotonic() + timeout
            # Give the replay loop a chance to drain the spool too while the broker is up.
            while self._spool is not None and self._spool.count and time.monotonic() < deadline:
                time.sleep(0.05)
            remaining = producer.flush(max(0.0, deadline - time.monotonic()))
            self._stop.set()
            if self._poller is not None:
                self._poller.join()
            if remaining:
                with self._spool_lock:
                    self._spooling = True
                    producer.purge(in_queue=True, in_flight=True, blocking=True)
                    producer.poll(0)  # serves the purge reports, which spool the events
                    producer.flush(0)
        if self._spool is not None:
            if self._spool.count:
                log.warning(
                    "feedbackloop: %d events remain in the spool %s; they are replayed by the "
                    "next client that opens it",
                    self._spool.count,
                    self._spool.path,
                )
            self._spool.close()

    # ------------------------------------------------------------------ producing

    def _ensure_started(self) -> None:
        if self._producer is not None:
            return
        with self._start_lock:
            if self._producer is not None:
                return
            self._spool = Spool(self._spool_path, self.settings.spool_max_bytes)
            if self._spool.count:
                log.info(
                    "feedbackloop: %d spooled events from an earlier run will be replayed",
                    self._spool.count,
                )
                self._spooling = True
            self._producer = self._new_producer()
            self._poller = threading.Thread(
                target=self._poll_loop, name="feedbackloop-delivery", daemon=True
            )
            self._poller.start()
            close_at_exit(self)

    def _producer_conf(self) -> dict[str, Any]:
        s = self.settings
        servers = s.bootstrap_servers or f"{s.broker_host}:{s.broker_port}"
        conf = {
            **s.model_copy(update={"bootstrap_servers": servers}).kafka_client_config(),
            "client.id": f"feedbackloop-sdk-{s.app_id}",
            # Idempotence gives ordered, exactly-once writes per partition within a session
            # of the producer; it implies acks=all, retries and in-flight <= 5.
            "enable.idempotence": True,
            "acks": "all",
            # lz4: cheap on the host's CPU; every consumer here reads it (aiokafka via cramjam).
            "compression.type": s.producer_compression,
            "linger.ms": s.producer_linger_ms,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": s.producer_queue_max_messages,
            "message.timeout.ms": s.producer_message_timeout_ms,
            "socket.keepalive.enable": True,
            "reconnect.backoff.max.ms": 2_000,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            "log_level": 2,
            "logger": logging.getLogger("feedbackloop.librdkafka"),
        }
        conf.update(self._extra_conf)
        return conf

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer(self._producer_conf())

    def _send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> bool:
        """True once the event is in librdkafka's queue or the spool; False if dropped."""
        if self._closed:
            self.counters.add("dropped")
            log.error("feedbackloop: event sent after close() was dropped (topic %s)", topic)
            return False
        if self._producer is None:
            self._ensure_started()
        if not self._spooling:
            try:
                if headers:
                    # Delivery reports carry no headers, so a message that comes back (to be
                    # spooled) must bring its own: bind them to its report.
                    self._producer.produce(
                        topic,
                        value,
                        key,
                        headers=headers,
                        on_delivery=functools.partial(self._on_delivery, headers=headers),
                    )
                else:
                    self._producer.produce(topic, value, key)
                return True
            except BufferError:
                # librdkafka's queue is full: the broker is slow or away. Keep order from
                # here on by sending everything through the spool until it has drained.
                pass
            except Exception as e:  # KafkaException: e.g. fatal producer state
                refused = permanent_refusal(e)
                if refused is not None:
                    self._quarantine_new(topic, key, value, headers, refused)
                    return True
                if _is_fatal(e):
                    self._fatal = True
                log.warning("feedbackloop: produce failed (%s); spooling", e)
        with self._spool_lock:
            self._spooling = True
            return self._spool_append(topic, key, value, headers)

    def _spool_append(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> bool:
        assert self._spool is not None
        if self._spool.append(topic, key, value, headers):
            self.counters.add("spooled")
            return True
        self.counters.add("dropped")
        now = time.monotonic()
        if now - self._last_full_log > 5:
            self._last_full_log = now
            log.error(
                "feedbackloop: spool %s is full (%d bytes); events are being DROPPED. "
                "Raise FEEDBACKLOOP_SPOOL_MAX_BYTES or fix the broker connection. "
                "Dropped so far: %d",
                self._spool.path,
                self._spool.max_bytes,
                self.counters.snapshot(0).dropped,
            )
        return False

    # ------------------------------------------------------------------ delivery thread

    def _on_delivery(
        self, err: Any, msg: Any, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        if err is None:
            next(self._delivered)
            return
        KafkaError, _ = _kafka_errors()
        code = err.code()
        if code in _PRODUCER_STATE_ERRORS:
            # The event is fine; our idempotent producer's id/epoch is not (the broker
            # restarted without state, or timed-out batches made librdkafka bump the epoch).
            # Keep the event and start over with a new producer id.
            self._fatal = True
        if (
            code
            in (
                KafkaError._PURGE_QUEUE,
                KafkaError._PURGE_INFLIGHT,
                KafkaError._MSG_TIMED_OUT,
                KafkaError._TRANSPORT,
                KafkaError._ALL_BROKERS_DOWN,
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                # The broker failed, not the event: the embedded broker answers this while
                # its S3 store restarts (test_fault_suite.py, SIGKILL of SeaweedFS). Sending
                # again is safe, since stores deduplicate on event_id.
                KafkaError.UNKNOWN,
            )
            or err.retriable()
            or self._fatal
        ):
            with self._spool_lock:
                self._spooling = True
                self._spool_append(msg.topic(), msg.key(), msg.value(), headers)
            return
        self._quarantine_new(msg.topic(), msg.key(), msg.value(), headers, str(err))

    def _quarantine_new(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: list[tuple[str, bytes]] | None,
        reason: str,
    ) -> None:
        """A record the broker refuses for good: kept aside on disk, counted, logged; never
        spooled, where it would block everything behind it (issue 13)."""
        assert self._spool is not None
        self._spool.add_quarantined(topic, key, value, headers, reason)
        self.counters.add("failed")
        log.error(
            "feedbackloop: broker refused a record permanently (%s) on topic %s, key %r, "
            "%d bytes; quarantined in %s",
            reason,
            topic,
            key,
            len(value),
            self._spool.path,
        )

    def _on_error(self, err: Any) -> None:
        KafkaError, _ = _kafka_errors()
        if err.fatal():
            log.error("feedbackloop: fatal producer error %s; recreating the producer", err)
            self._fatal = True
        elif err.code() == KafkaError._ALL_BROKERS_DOWN:
            log.warning("feedbackloop: all brokers down; spooling events to %s", self._spool_path)
            self._brokers_down = True
        else:
            log.debug("feedbackloop: producer error %s", err)

    def _switch_to_spool(self, producer: Any) -> None:
        # Queued (not yet sent) events move to disk now, ahead of everything that follows,
        # so they survive a crash of the host during the outage and keep their order.
        with self._spool_lock:
            self._spooling = True
            producer.purge(in_queue=True, in_flight=False, blocking=False)
            producer.poll(0)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._producer.poll(0.05)
                if self._fatal:
                    self._recreate_producer()
                if self._brokers_down:
                    # Not inside error_cb: librdkafka must not be re-entered from a callback.
                    self._brokers_down = False
                    self._switch_to_spool(self._producer)
                if (
                    self._spooling
                    and time.monotonic() >= self._next_replay
                    and len(self._producer) == 0
                ):
                    self._replay()
            except Exception as e:  # the delivery thread must survive anything
                if _is_fatal(e):
                    # librdkafka does not always report a fatal state through error_cb.
                    self._fatal = True
                    continue
                log.exception("feedbackloop: delivery loop error")
                time.sleep(0.5)

    def _recreate_producer(self) -> None:
        old = self._producer
        with self._spool_lock:
            self._spooling = True
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.poll(0)
            old.flush(0)
            self._producer = self._new_producer()
            self._fatal = False

    def _replay(self) -> None:
        """Send the oldest spooled events; forget each once the broker acknowledged it."""
        assert self._spool is not None
        producer = self._producer
        try:
            producer.list_topics(self.topics.events, timeout=1.0)
        except Exception as e:
            log.debug("feedbackloop: broker not reachable yet for replay: %s", e)
            self._backoff()
            return
        records = self._spool.head(_REPLAY_CHUNK)
        if not records:
            with self._spool_lock:
                if self._spool.count == 0:
                    self._spooling = False
            self._replay_backoff = 0.5
            return
        acked: list[int] = []
        failed: list[int] = []
        refused: dict[int, str] = {}
        for rec in records:
            try:
                producer.produce(
                    rec.topic,
                    rec.value,
                    rec.key,
                    headers=rec.headers or None,
                    on_delivery=functools.partial(_replay_report, acked, failed, refused, rec.seq),
                )
            except BufferError:
                break
            except Exception as e:
                reason = permanent_refusal(e)
                if reason is None:
                    raise
                refused[rec.seq] = reason
        producer.flush(self.settings.producer_message_timeout_ms / 1000 + 5)
        self._spool.remove(acked)
        for seq, reason in refused.items():
            # One record the broker will never take must not hold back the rest (issue 13).
            self._spool.quarantine(seq, reason)
            self.counters.add("failed")
            log.error(
                "feedbackloop: broker refused a spooled record permanently (%s); "
                "quarantined in %s (%d so far)",
                reason,
                self._spool.path,
                self._spool.quarantined,
            )
        self.counters.add("replayed", len(acked))
        self.counters.add("delivered", len(acked))
        if failed and not acked and not refused:
            # The broker answers metadata but takes nothing: typically it restarted without
            # its state and rejects our idempotent producer id, and librdkafka's local epoch
            # bump cannot recover that. A new producer gets a new id from the broker.
            log.warning("feedbackloop: broker reachable but refusing replay; new producer")
            self._fatal = True
        if failed or len(acked) < len(records):
            self._backoff()
        else:
            self._replay_backoff = 0.5
            self._next_replay = 0.0

    def _backoff(self) -> None:
        self._next_replay = time.monotonic() + self._replay_backoff
        self._replay_backoff = min(self._replay_backoff * 2, 5.0)


_PRODUCER_STATE_ERRORS = frozenset(
    {
        59,  # UNKNOWN_PRODUCER_ID
        45,  # OUT_OF_ORDER_SEQUENCE_NUMBER
        47,  # INVALID_PRODUCER_EPOCH
        49,  # INVALID_PRODUCER_ID_MAPPING
        90,  # PRODUCER_FENCED
    }
)


def _is_fatal(exc: BaseException | None) -> bool:
    """True if ``exc`` or its cause is librdkafka's fatal producer state (which confluent-kafka
    may surface wrapped in a SystemError raised from a delivery callback)."""
    KafkaError, KafkaException = _kafka_errors()
    while exc is not None:
        if isinstance(exc, KafkaException) and exc.args:
            err = exc.args[0]
            if err.fatal() or err.code() == KafkaError._FATAL:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def _replay_report(
    acked: list[int], failed: list[int], refused: dict[int, str], seq: int, err: Any, _msg: Any
) -> None:
    if err is None:
        acked.append(seq)
        return
    reason = permanent_refusal(err)
    if reason is not None:
        refused[seq] = reason
    else:
        log.debug("feedbackloop: replay of spooled event failed: %s", err)
        failed.append(seq)
