"""``FeedbackClient``: the SDK an LLM app embeds to stream interactions, feedback and outcomes.

The client is a facade over a :class:`~feedbackloop.producers.transport.Transport`: it
validates, encodes, assigns variants and counts; the transport delivers. The default
transport is Kafka (:mod:`feedbackloop.producers.kafka_transport`);
:class:`~feedbackloop.producers.collector_client.CollectorClient` is the same client over the
HTTP collector (:mod:`feedbackloop.producers.http_transport`).

Guarantees to the host app:

* **Never blocks.** Every method validates, serialises and hands the bytes to the transport,
  which queues them in memory (librdkafka's queue: ``produce`` does no I/O) or appends them
  to the on-disk spool. Network I/O happens on the transport's background threads.
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

import datetime as dt
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from feedbackloop.config import Settings
from feedbackloop.errors import ConfigError, SchemaError
from feedbackloop.producers.assignment import Experiment
from feedbackloop.producers.context import CallContext, context
from feedbackloop.producers.delivery import DeliveryStats
from feedbackloop.producers.fastpath import EVENT_IDS, FastEncoder, utc_timestamp, uuid_from_str
from feedbackloop.producers.kafka_transport import KafkaTransport
from feedbackloop.producers.modelpath import dead_letter, encode_fields
from feedbackloop.producers.sessions import InteractionSessions, StickyVariants
from feedbackloop.producers.shadow import shadow_fields, shadow_sampled
from feedbackloop.producers.transport import Transport
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
from feedbackloop.schemas.serialization import MAX_EVENT_BYTES

if TYPE_CHECKING:  # the control plane imports the producers: no cycle at run time
    from feedbackloop.control.live import LiveConfig

__all__ = ["FeedbackClient"]

log = logging.getLogger(__name__)

# Context keywords the fast path handles itself; any other (occurred_at, a typo) takes the
# model path, which accepts or reports it.
_FAST_CONTEXT = frozenset({"session_id", "user_id"})
_new_id = EVENT_IDS.next
_UUID = uuid.UUID


class FeedbackClient:
    """Emit interaction, feedback, implicit-signal and outcome events through a transport.

    Thread-safe: one client per process is the intended use. ``settings`` default to
    :class:`~feedbackloop.config.Settings` (``FEEDBACKLOOP_*`` env vars); keyword arguments
    override single settings. ``on_event(event, payload)`` sees every accepted event and its
    exact bytes before they are sent (an audit tap; its exceptions are logged, never raised).

    ``live_experiments`` follows the live experiment configuration of the app (see
    :mod:`feedbackloop.control.live`), so an experiment created, ramped or rolled back from
    the CLI, the HTTP API or the dashboard reaches the app without a redeploy. By default
    (``None``) a client on its default Kafka transport follows the control topic of its
    broker whenever ``Settings.live_experiments`` is on (the default; a
    :class:`~feedbackloop.producers.collector_client.CollectorClient` polls its collector); a
    client given its own ``transport`` follows nothing unless told. ``True`` follows the
    control topic of ``settings`` in any case, ``False`` never; or pass a
    :class:`~feedbackloop.control.live.LiveConfig`. Following runs on a background thread:
    no control topic, no broker, or a broken message never blocks or raises into the app.
    A live experiment is assigned by its current version's weights (by bucket alone, so
    every process agrees the moment it has the version). Experiments defined in code
    (``experiments``) keep working; a name that is also live is served from the live version
    unless ``local_experiments_win``.

    ``transport`` carries the events; by default a
    :class:`~feedbackloop.producers.kafka_transport.KafkaTransport` built from the settings,
    ``spool_path`` and ``producer_config`` (librdkafka properties to add or override), which
    only that default uses.
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
        transport: Transport | None = None,
        live_experiments: bool | LiveConfig | None = None,
        local_experiments_win: bool = False,
    ) -> None:
        if transport is not None and (spool_path or producer_config):
            raise TypeError(
                "spool_path and producer_config configure the default Kafka transport; "
                "give them to KafkaTransport(...) instead"
            )
        base = settings or Settings()
        updates = {"bootstrap_servers": bootstrap_servers, "app_id": app_id}
        self.settings = base.model_copy(update={k: v for k, v in updates.items() if v})
        self.app_id = self.settings.app_id
        self.topics = Topics(self.settings.topic_prefix)
        self.strict = strict
        self._on_event = on_event
        self._experiments: dict[str, Experiment] = {e.name: e for e in experiments}
        self._variants = StickyVariants()
        self._interactions = InteractionSessions()
        self._session_of = self._interactions.table.get  # lock-free: see InteractionSessions
        self._fast = FastEncoder(self.app_id)
        self._transport: Transport = transport or KafkaTransport(
            self.settings, spool_path=spool_path, producer_config=producer_config
        )
        self._local_wins = local_experiments_win
        self._live: LiveConfig | None = None
        if live_experiments is None:  # the default: follow if there is a broker to follow
            live_experiments = transport is None and self.settings.live_experiments
        if live_experiments is True:
            from feedbackloop.control.live import LiveConfig

            s = self.settings
            servers = s.bootstrap_servers or f"{s.broker_host}:{s.broker_port}"
            self._live = LiveConfig.for_kafka(s.model_copy(update={"bootstrap_servers": servers}))
        elif live_experiments is not False:
            self._live = live_experiments
        if self._live is not None:
            self._live.start()
        # Bound once: the hot path hands each event over with a single call.
        self._send_event = self._transport.send_event
        self._counters = self._transport.counters
        self._enqueued = self._counters.ticker("enqueued")

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
            and (self._live is not None or experiment in self._experiments)
        ):
            variant = self._variant_of(experiment, session_id)
        self._interactions.remember(iid, session_id, iid_s)
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

    def shadow(
        self,
        interaction_id: uuid.UUID,
        *,
        response: str,
        model: str,
        prompt_version: str | None = None,
        rate: float = 1.0,
        user_input: str = "",
        system_prompt: str = "",
        latency_ms: float | None = None,
        input_tokens: int | None = None,
        output_tokens: int | None = None,
        cost_usd: float | None = None,
        metadata: Mapping[str, Any] | None = None,
        **context: Any,
    ) -> uuid.UUID | None:
        """Log a candidate's answer to live interaction ``interaction_id`` (never shown).

        The candidate is ``prompt_version`` (else ``model``); its session is sampled at
        ``rate`` (:func:`~feedbackloop.producers.shadow.shadow_sampled`). Returns the shadow
        answer's own interaction id, or ``None`` when the session is not sampled (or the
        event was invalid). The session comes from the live interaction if this client
        logged it, else pass ``session_id=``.
        """
        session = context.get("session_id")
        if session is None:
            memo = self._interactions.recall(interaction_id)
            session = memo[0] if memo is not None else None
        candidate = prompt_version or model
        if isinstance(session, str) and isinstance(candidate, str):
            try:
                sampled = shadow_sampled(candidate, session, rate)
            except ConfigError:
                if self.strict:
                    raise
                log.error("feedbackloop: shadow answer not logged: rate %r is not in [0, 1]", rate)
                return None
            if not sampled:
                return None
        fields = shadow_fields(
            interaction_id,
            response=response,
            model=model,
            prompt_version=prompt_version,
            user_input=user_input,
            system_prompt=system_prompt,
            latency_ms=latency_ms,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost_usd,
            metadata=metadata,
        )
        if self._emit(Interaction, self._envelope(interaction_id, context, fields)) is None:
            return None
        return fields["interaction_id"]  # type: ignore[no-any-return]

    def send(self, event: Envelope) -> bool:
        """Hand one already validated event (e.g. from the HTTP collector) to the transport.

        Returns True once it is in the transport's queue or the on-disk spool, False if it
        was dropped (spool full, or the client is closed). Raises :class:`SchemaError` with
        reason ``oversized`` if its encoding exceeds the message limit.
        """
        value = encode(event)
        if len(value) > MAX_EVENT_BYTES:
            raise SchemaError("oversized", f"event is {len(value)} bytes (> {MAX_EVENT_BYTES})")
        next(self._enqueued)
        return self._send_event(event.partition_key, value)

    def send_dead_letter(self, letter: DeadLetter) -> bool:
        """Send a rejected event to the dead-letter topic (reason and source in headers);
        True once queued or spooled."""
        self._counters.add("invalid")
        return self._transport.send_dead_letter(letter.key, letter.payload, letter.headers())

    def context(self, **fields: Any) -> AbstractContextManager[CallContext]:
        """A block whose interactions, as logged by the provider wrappers
        (:mod:`feedbackloop.integrations`), carry these fields: ``session_id``, ``user_id``,
        ``prompt_version``, ``experiment``, ``variant``, ``metadata``. See
        :mod:`feedbackloop.producers.context`."""
        return context(**fields)

    # ------------------------------------------------------------------ experiments

    def register_experiment(self, experiment: Experiment) -> None:
        self._experiments[experiment.name] = experiment

    def assign_variant(self, experiment: str | Experiment, session_id: str) -> str:
        """The session's variant: deterministic by hashing. A code-defined experiment's is
        sticky for this session in this process even if its weights change while it is
        active; a live experiment's follows its current version (``KeyError`` if the name
        is neither)."""
        if isinstance(experiment, Experiment):
            return self._variants.variant(experiment, session_id)
        variant = self._variant_of(experiment, session_id)
        if variant is None:
            raise KeyError(experiment)
        return variant

    @property
    def live_config(self) -> LiveConfig | None:
        """The live configuration this client follows, if any."""
        return self._live

    def _variant_of(self, name: str, session_id: str) -> str | None:
        live = self._live
        if live is not None and not (self._local_wins and name in self._experiments):
            exp = live.experiments.get(name)
            if exp is not None:
                return exp.assign(session_id)
        local = self._experiments.get(name)
        return None if local is None else self._variants.variant(local, session_id)

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> DeliveryStats:
        """Counters the app can read (and export to its own metrics)."""
        return self._transport.stats()

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to ``timeout`` s for queued events; returns how many are still queued."""
        return self._transport.flush(timeout)

    def close(self, timeout: float | None = None) -> DeliveryStats:
        """Flush for up to ``timeout`` s (default ``Settings.close_timeout_s``), spool whatever
        is still queued, and stop. Idempotent; also runs at interpreter exit."""
        if self._live is not None:
            self._live.close()
        self._transport.close(self.settings.close_timeout_s if timeout is None else timeout)
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
            memo = self._interactions.recall(interaction_id)
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
            memo = self._session_of(interaction_id.int)
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
        self._send_event(key, value)
        return True

    def _emit(self, model: type[Envelope], fields: dict[str, Any]) -> uuid.UUID | None:
        try:
            event, value = encode_fields(model, fields)
        except SchemaError as e:
            if self.strict:
                raise
            log.warning(
                "feedbackloop: invalid %s event sent to the dead-letter topic: %s",
                model.model_fields["event_type"].default,
                e,
            )
            self.send_dead_letter(dead_letter(model, fields, e))
            return None
        next(self._enqueued)
        if self._on_event is not None:
            try:
                self._on_event(event, value)
            except Exception:
                log.exception("feedbackloop: on_event callback failed")
        self._send_event(event.partition_key, value)
        return event.event_id
