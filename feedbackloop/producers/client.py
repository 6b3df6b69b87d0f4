"""``FeedbackClient``: the SDK an LLM app embeds to stream interactions, feedback and outcomes.

Guarantees to the host app:

* **Never blocks.** Every method validates, serialises and hands the bytes to librdkafka's
  in-memory queue (``produce`` does no I/O), or appends them to the on-disk spool. Network
  I/O happens on librdkafka's threads; delivery reports are served by one background thread.
* **Never raises because of the broker.** Broker down, slow or full queue: the event goes to
  the spool (:mod:`feedbackloop.producers.spool`) and is replayed, in spool order, once the
  broker answers again. Invalid input is a programming error, but in production it is not
  worth a crash either: by default it goes to the dead-letter topic with the reason (and is
  counted and logged); ``strict=True`` raises :class:`~feedbackloop.errors.SchemaError`.
* **Never loses an event silently.** Every event is delivered, spooled, or counted and logged
  as ``failed`` / ``dropped`` (spool full). Delivery is at-least-once; every store
  deduplicates on the client-made ``event_id``.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import functools
import json
import logging
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from feedbackloop.config import Settings
from feedbackloop.errors import SchemaError
from feedbackloop.producers.assignment import Experiment
from feedbackloop.producers.delivery import Counters, DeliveryStats
from feedbackloop.producers.fastpath import EVENT_IDS, FastEncoder, utc_timestamp, uuid_from_str
from feedbackloop.producers.spool import Spool
from feedbackloop.schemas import (
    DeadLetter,
    Envelope,
    Feedback,
    FeedbackKind,
    Implicit,
    ImplicitSignal,
    Interaction,
    Outcome,
    ReportCategory,
    Topics,
    encode,
)
from feedbackloop.schemas.serialization import MAX_EVENT_BYTES, format_validation_error

__all__ = ["FeedbackClient"]

log = logging.getLogger(__name__)

_REMEMBERED_SESSIONS = 100_000
_REPLAY_CHUNK = 2_000
# Context keywords the fast path handles itself; any other (occurred_at, a typo) takes the
# model path, which accepts or reports it.
_FAST_CONTEXT = frozenset({"session_id", "user_id"})
_new_id = EVENT_IDS.next
_UUID = uuid.UUID


def _kafka_errors() -> tuple[Any, Any]:
    from confluent_kafka import KafkaError, KafkaException

    return KafkaError, KafkaException


class FeedbackClient:
    """Emit interaction, feedback, implicit-signal and outcome events to Kafka.

    Thread-safe: one client per process is the intended use. ``settings`` default to
    :class:`~feedbackloop.config.Settings` (``FEEDBACKLOOP_*`` env vars); keyword arguments
    override single settings. ``producer_config`` adds or overrides librdkafka properties.
    ``on_event(event, payload)`` sees every accepted event and its exact bytes before they are
    sent (an audit tap; its exceptions are logged, never raised).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bootstrap_servers: str | None = None,
        app_id: str | None = None,
        spool_path: Path | str | None = None,
        experiments: Iterable[Experiment] = (),
        strict: bool = False,
        producer_config: Mapping[str, Any] | None = None,
        on_event: Callable[[Envelope, bytes], None] | None = None,
    ) -> None:
        base = settings or Settings()
        updates = {"bootstrap_servers": bootstrap_servers, "app_id": app_id}
        self.settings = base.model_copy(update={k: v for k, v in updates.items() if v})
        self.app_id = self.settings.app_id
        self.topics = Topics(self.settings.topic_prefix)
        self.strict = strict
        self._spool_path = Path(spool_path) if spool_path else self.settings.spool_path
        self._extra_conf = dict(producer_config or {})
        self._on_event = on_event
        self._experiments: dict[str, Experiment] = {e.name: e for e in experiments}
        self._assigned: OrderedDict[tuple[str, str], str] = OrderedDict()
        # interaction id (its .int for a UUID; a str as given) -> (session id, canonical id).
        # Keys are ints or strs, whose hashing and comparison run no Python code, so each
        # OrderedDict operation is atomic under the GIL and the hot path needs no lock.
        self._sessions: OrderedDict[int | str, tuple[Any, str | None]] = OrderedDict()
        self._memo_lock = threading.Lock()
        self._counters = Counters()
        self._enqueued = self._counters.ticker("enqueued")
        self._delivered = self._counters.ticker("delivered")
        self._fast = FastEncoder(self.app_id)
        self._events_topic = self.topics.events

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

    # ------------------------------------------------------------------ public API: events

    def log_interaction(
        self,
        *,
        session_id: str,
        user_input: str,
        response: str,
        model: str,
        system_prompt: str = "",
        prompt_version: str | None = None,
        experiment: str | None = None,
        variant: str | None = None,
        latency_ms: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        shadow: bool = False,
        user_id: str | None = None,
        interaction_id: uuid.UUID | None = None,
        occurred_at: dt.datetime | None = None,
    ) -> uuid.UUID:
        """Record one LLM request/response; returns its ``interaction_id`` for later feedback.

        With ``experiment`` set and ``variant`` omitted, the variant is assigned from the
        registered :class:`Experiment` (see :meth:`assign_variant`).
        """
        iid_s: str | None
        if interaction_id is None:
            iid_s = _new_id()
            iid: Any = uuid_from_str(iid_s)
        else:
            iid = interaction_id
            iid_s = str(iid) if type(iid) is _UUID else None
        if (
            variant is None
            and isinstance(experiment, str)  # anything else is the model's to reject
            and experiment in self._experiments
        ):
            variant = self.assign_variant(experiment, session_id)
        self._remember(iid, session_id, iid_s)
        if iid_s is not None and occurred_at is None and self._fast.enabled:
            value = self._fast.interaction(
                _new_id(),
                utc_timestamp(),
                iid_s,
                session_id,
                user_id,
                system_prompt,
                user_input,
                response,
                model,
                prompt_version,
                experiment,
                variant,
                latency_ms,
                input_tokens,
                output_tokens,
                cost_usd,
                metadata,
                shadow,
            )
            if value is not None and self._accept(Interaction, value, iid_s.encode()):
                return iid  # type: ignore[no-any-return]
        fields: dict[str, Any] = {
            "app_id": self.app_id,
            "session_id": session_id,
            "user_id": user_id,
            "interaction_id": iid,
            "system_prompt": system_prompt,
            "user_input": user_input,
            "response": response,
            "model": model,
            "prompt_version": prompt_version,
            "experiment": experiment,
            "variant": variant,
            "latency_ms": latency_ms,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost_usd,
            "metadata": dict(metadata) if metadata else {},
            "shadow": shadow,
        }
        if occurred_at is not None:
            fields["occurred_at"] = occurred_at
        self._emit(Interaction, fields)
        return iid  # type: ignore[no-any-return]

    def thumbs(self, interaction_id: uuid.UUID, up: bool | int, **context: Any) -> uuid.UUID | None:
        """Thumbs up (``True`` / ``1``) or down (``False`` / ``-1``) on an interaction."""
        value = up if isinstance(up, int) and not isinstance(up, bool) else (1 if up else -1)
        return self._feedback(interaction_id, FeedbackKind.thumbs, context, thumbs=value)

    def rate(self, interaction_id: uuid.UUID, rating: int, **context: Any) -> uuid.UUID | None:
        """A 1-5 rating of an interaction."""
        return self._feedback(interaction_id, FeedbackKind.rating, context, rating=rating)

    def correct(self, interaction_id: uuid.UUID, text: str, **context: Any) -> uuid.UUID | None:
        """The answer the user says the model should have given."""
        return self._feedback(interaction_id, FeedbackKind.correction, context, text=text)

    def comment(self, interaction_id: uuid.UUID, text: str, **context: Any) -> uuid.UUID | None:
        """Free-text comment on an interaction."""
        return self._feedback(interaction_id, FeedbackKind.comment, context, text=text)

    def report(
        self,
        interaction_id: uuid.UUID,
        category: ReportCategory | str,
        text: str | None = None,
        **context: Any,
    ) -> uuid.UUID | None:
        """Report a response (harmful, incorrect, ...), with an optional explanation."""
        return self._feedback(
            interaction_id, FeedbackKind.report, context, category=category, text=text
        )

    def implicit(
        self,
        interaction_id: uuid.UUID,
        signal: ImplicitSignal | str,
        *,
        edited_text: str | None = None,
        edit_distance: int | None = None,
        dwell_ms: float | None = None,
        copied_chars: int | None = None,
        **context: Any,
    ) -> uuid.UUID | None:
        """A behavioural signal: copy, edit, follow_up, regenerate, abandon or dwell."""
        env = self._fast_envelope(interaction_id, None, context)
        if env is not None and env[2] is not None:
            eid = _new_id()
            value = self._fast.implicit(
                eid,
                utc_timestamp(),
                env[2],
                env[0],
                env[1],
                signal,
                edited_text,
                edit_distance,
                dwell_ms,
                copied_chars,
            )
            if value is not None and self._accept(Implicit, value, env[2].encode()):
                return uuid_from_str(eid)
        fields = {
            "interaction_id": interaction_id,
            "signal": signal,
            "edited_text": edited_text,
            "edit_distance": edit_distance,
            "dwell_ms": dwell_ms,
            "copied_chars": copied_chars,
        }
        return self._emit(Implicit, self._envelope(interaction_id, context, fields))

    def outcome(
        self,
        outcome: str,
        *,
        session_id: str | None = None,
        interaction_id: uuid.UUID | None = None,
        value: float | None = None,
        time_to_outcome_ms: float | None = None,
        **context: Any,
    ) -> uuid.UUID | None:
        """A business outcome (``code_accepted``, ``ticket_resolved``, ...) of an interaction
        or, without ``interaction_id``, of a session."""
        env = self._fast_envelope(interaction_id, session_id, context)
        if env is not None:
            eid = _new_id()
            encoded = self._fast.outcome(
                eid, utc_timestamp(), env[2], env[0], env[1], outcome, value, time_to_outcome_ms
            )
            # Envelope.partition_key: the interaction, else the (now checked, str) session
            if encoded is not None:
                key = (env[2] if env[2] is not None else env[0]).encode()
                if self._accept(Outcome, encoded, key):
                    return uuid_from_str(eid)
        fields = {
            "interaction_id": interaction_id,
            "outcome": outcome,
            "value": value,
            "time_to_outcome_ms": time_to_outcome_ms,
        }
        if session_id is not None:
            context["session_id"] = session_id
        return self._emit(Outcome, self._envelope(interaction_id, context, fields))

    def send(self, event: Envelope) -> bool:
        """Hand one already validated event (e.g. from the HTTP collector) to Kafka.

        Returns True once it is in librdkafka's queue or the on-disk spool, False if it was
        dropped (spool full, or the client is closed). Raises :class:`SchemaError` with
        reason ``oversized`` if its encoding exceeds the message limit.
        """
        value = encode(event)
        if len(value) > MAX_EVENT_BYTES:
            raise SchemaError("oversized", f"event is {len(value)} bytes (> {MAX_EVENT_BYTES})")
        next(self._enqueued)
        return self._send(self._events_topic, event.partition_key, value)

    def send_dead_letter(self, letter: DeadLetter) -> bool:
        """Send a rejected event to the dead-letter topic (reason and source in headers);
        True once queued or spooled."""
        self._counters.add("invalid")
        return self._send(self.topics.dead_letters, letter.key, letter.payload, letter.headers())

    # ------------------------------------------------------------------ experiments

    def register_experiment(self, experiment: Experiment) -> None:
        self._experiments[experiment.name] = experiment

    def assign_variant(self, experiment: str | Experiment, session_id: str) -> str:
        """The session's variant: deterministic by hashing, and sticky for this session in
        this process even if the experiment's weights change while it is active."""
        exp = experiment if isinstance(experiment, Experiment) else self._experiments[experiment]
        key = (exp.name, session_id)
        with self._memo_lock:
            found = self._assigned.get(key)
            if found is not None:
                self._assigned.move_to_end(key)
                return found
        variant = exp.assign(session_id)
        with self._memo_lock:
            self._assigned[key] = variant
            if len(self._assigned) > _REMEMBERED_SESSIONS:
                self._assigned.popitem(last=False)
        return variant

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> DeliveryStats:
        """Counters the app can read (and export to its own metrics)."""
        return self._counters.snapshot(self._spool.count if self._spool else 0)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` s for queued events; returns how many are still queued."""
        if self._producer is None:
            return 0
        remaining: int = self._producer.flush(timeout)
        return remaining

    def close(self, timeout: float | None = None) -> DeliveryStats:
        """Flush for up to ``timeout`` s (default ``Settings.close_timeout_s``), spool whatever
        is still queued, and stop. Idempotent; also runs at interpreter exit."""
        if self._closed:
            return self.stats()
        self._closed = True
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
            stats = self.stats()
            self._spool.close()
            return stats
        return self.stats()

    def __enter__(self) -> FeedbackClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals: events

    def _envelope(
        self, interaction_id: uuid.UUID | None, context: dict[str, Any], fields: dict[str, Any]
    ) -> dict[str, Any]:
        session_id = context.pop("session_id", None)
        if session_id is None and interaction_id is not None:
            memo = self._recall(interaction_id)
            if memo is not None:
                session_id = memo[0]
        out = {"app_id": self.app_id, "session_id": session_id, **fields}
        user_id = context.pop("user_id", None)
        if user_id is not None:
            out["user_id"] = user_id
        occurred_at = context.pop("occurred_at", None)
        if occurred_at is not None:
            out["occurred_at"] = occurred_at
        if context:
            out["_unexpected"] = sorted(context)
        return out

    def _remember(self, interaction_id: Any, session_id: Any, canonical: str | None) -> None:
        """Note the session of an interaction, so feedback on it needs no session_id."""
        if type(interaction_id) is _UUID:
            key: int | str = interaction_id.int
        elif type(interaction_id) is str:
            key = interaction_id
        else:
            return
        sessions = self._sessions
        sessions[key] = (session_id, canonical)
        if len(sessions) > _REMEMBERED_SESSIONS:
            # another thread may have evicted the last one first
            with contextlib.suppress(KeyError):
                sessions.popitem(last=False)

    def _recall(self, interaction_id: Any) -> tuple[Any, str | None] | None:
        if type(interaction_id) is _UUID:
            return self._sessions.get(interaction_id.int)
        if type(interaction_id) is str:
            return self._sessions.get(interaction_id)
        return None

    def _fast_envelope(
        self, interaction_id: Any, session_id: Any, context: dict[str, Any]
    ) -> tuple[Any, Any, str | None] | None:
        """(session id, user id, canonical interaction id) for the fast path, or None when
        the arguments need the model (unexpected keywords, an id that is not a UUID)."""
        if not self._fast.enabled or (context and not context.keys() <= _FAST_CONTEXT):
            return None
        if session_id is None and context:
            session_id = context.get("session_id")
        iid_s = None
        if interaction_id is not None:
            if type(interaction_id) is not _UUID:
                return None
            memo = self._sessions.get(interaction_id.int)
            if memo is not None:
                iid_s = memo[1]
                if session_id is None:
                    session_id = memo[0]
            if iid_s is None:
                iid_s = str(interaction_id)
        return session_id, (context.get("user_id") if context else None), iid_s

    def _feedback(
        self,
        interaction_id: uuid.UUID,
        kind: FeedbackKind,
        context: dict[str, Any],
        thumbs: Any = None,
        rating: Any = None,
        text: Any = None,
        category: Any = None,
    ) -> uuid.UUID | None:
        env = self._fast_envelope(interaction_id, None, context)
        if env is not None and env[2] is not None:
            eid = _new_id()
            value = self._fast.feedback(
                eid, utc_timestamp(), env[2], env[0], env[1], kind, thumbs, rating, text, category
            )
            if value is not None and self._accept(Feedback, value, env[2].encode()):
                return uuid_from_str(eid)
        fields: dict[str, Any] = {"interaction_id": interaction_id, "kind": kind}
        if kind is FeedbackKind.thumbs:
            fields["thumbs"] = thumbs
        elif kind is FeedbackKind.rating:
            fields["rating"] = rating
        elif kind is FeedbackKind.report:
            fields["category"] = category
            fields["text"] = text
        else:
            fields["text"] = text
        return self._emit(Feedback, self._envelope(interaction_id, context, fields))

    def _accept(self, model: type[Envelope], value: bytes, key: bytes) -> bool:
        """Send fast-path bytes; False (nothing sent) if too large, for the model path to
        report."""
        if len(value) > MAX_EVENT_BYTES:
            return False
        next(self._enqueued)
        if self._on_event is not None:
            try:
                # The tap sees the event exactly as a consumer will decode it.
                self._on_event(model.model_validate_json(value), value)
            except Exception:
                log.exception("feedbackloop: on_event callback failed")
        self._send(self._events_topic, key, value)
        return True

    def _emit(self, model: type[Envelope], fields: dict[str, Any]) -> uuid.UUID | None:
        unexpected = fields.pop("_unexpected", None)
        try:
            if unexpected:
                raise SchemaError(
                    "validation_error", f"unexpected keyword argument(s): {', '.join(unexpected)}"
                )
            if fields.get("session_id") is None:
                raise SchemaError(
                    "validation_error",
                    f"{model.__name__.lower()}: session_id is required (this client did not "
                    "log the interaction, so it cannot look the session up)",
                )
            event = model(**fields)
            value = encode(event)
        except (ValidationError, SchemaError) as e:
            self._invalid(model, fields, e)
            return None
        except PydanticSerializationError as e:  # e.g. a lone surrogate in a text
            reason = f"{model.__name__.lower()}: not encodable as UTF-8 JSON: {e}"
            self._invalid(model, fields, SchemaError("validation_error", reason))
            return None
        if len(value) > MAX_EVENT_BYTES:
            self._invalid(
                model,
                fields,
                SchemaError("oversized", f"event is {len(value)} bytes (> {MAX_EVENT_BYTES})"),
            )
            return None
        next(self._enqueued)
        if self._on_event is not None:
            try:
                self._on_event(event, value)
            except Exception:
                log.exception("feedbackloop: on_event callback failed")
        self._send(self._events_topic, event.partition_key, value)
        return event.event_id

    def _invalid(self, model: type[Envelope], fields: dict[str, Any], err: Exception) -> None:
        event_type = model.model_fields["event_type"].default
        if isinstance(err, ValidationError):
            error = SchemaError("validation_error", format_validation_error(err, event_type))
        else:
            assert isinstance(err, SchemaError)
            error = err
        if self.strict:
            raise error from err
        self._counters.add("invalid")
        log.warning(
            "feedbackloop: invalid %s event sent to the dead-letter topic: %s", event_type, error
        )
        payload = json.dumps({"event_type": event_type, **fields}, default=str).encode()
        dl = DeadLetter(reason=error.reason, error=str(error), payload=payload, source="sdk")
        self._send(self.topics.dead_letters, None, payload, dl.headers())

    # ------------------------------------------------------------------ internals: transport

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
            _open_clients.add(self)

    def _producer_conf(self) -> dict[str, Any]:
        s = self.settings
        servers = s.bootstrap_servers or f"{s.broker_host}:{s.broker_port}"
        conf = {
            **s.model_copy(update={"bootstrap_servers": servers}).kafka_client_config(),
            "client.id": f"feedbackloop-sdk-{self.app_id}",
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
            self._counters.add("dropped")
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
            self._counters.add("spooled")
            return True
        self._counters.add("dropped")
        now = time.monotonic()
        if now - self._last_full_log > 5:
            self._last_full_log = now
            log.error(
                "feedbackloop: spool %s is full (%d bytes); events are being DROPPED. "
                "Raise FEEDBACKLOOP_SPOOL_MAX_BYTES or fix the broker connection. "
                "Dropped so far: %d",
                self._spool.path,
                self._spool.max_bytes,
                self.stats().dropped,
            )
        return False

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
        self._counters.add("failed")
        log.error(
            "feedbackloop: broker refused an event permanently (%s) on topic %s, key %r",
            err,
            msg.topic(),
            msg.key(),
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
        for rec in records:
            try:
                producer.produce(
                    rec.topic,
                    rec.value,
                    rec.key,
                    headers=rec.headers or None,
                    on_delivery=functools.partial(_replay_report, acked, failed, rec.seq),
                )
            except BufferError:
                break
        producer.flush(self.settings.producer_message_timeout_ms / 1000 + 5)
        self._spool.remove(acked)
        self._counters.add("replayed", len(acked))
        self._counters.add("delivered", len(acked))
        if failed and not acked:
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


def _replay_report(acked: list[int], failed: list[int], seq: int, err: Any, _msg: Any) -> None:
    if err is not None:
        log.debug("feedbackloop: replay of spooled event failed: %s", err)
        failed.append(seq)
    else:
        acked.append(seq)


# Clients still open at interpreter exit flush and spool, so a crashing-out app loses nothing.
_open_clients: weakref.WeakSet[FeedbackClient] = weakref.WeakSet()


@atexit.register
def _close_open_clients() -> None:
    for client in list(_open_clients):
        try:
            client.close()
        except Exception:
            log.exception("feedbackloop: error while closing a client at exit")
