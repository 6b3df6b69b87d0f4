"""From Kafka messages to ClickHouse rows: which table, which columns, in which order.

Pure functions, no I/O: :class:`TopicRouter` turns one message value into ``(table, row)``
pairs (or a dead letter). Rows hold the columns :mod:`feedbackloop.sinks.tables` declares
(``COLUMNS``), in that order.

Values are in the form clickhouse-connect serializes without converting them first where
that is cheap to get: UUID columns hold the UUID's 128-bit ``int`` (every path, so a column
never mixes types within one insert), times are aware ``datetime`` objects.

Raw events come from outside and are fully validated (:func:`~feedbackloop.schemas.decode`).
Enriched events are written by our own stream jobs, which validated every event before
enriching it: they are read by a *trusted* decoder (:func:`enriched_row`, ``orjson`` plus
type checks, no models) that falls back to the full pydantic validation for anything not in
the exact form the stream jobs write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from feedbackloop.errors import SchemaError
from feedbackloop.schemas import (
    Alert,
    DeadLetter,
    EnrichedEvent,
    Feedback,
    Implicit,
    Interaction,
    Outcome,
    Topics,
    WindowAggregate,
    decode,
)
from feedbackloop.schemas.enriched import ENRICHED_SCHEMA_VERSION
from feedbackloop.schemas.events import (
    SCHEMA_VERSION,
    FeedbackKind,
    ImplicitSignal,
    ReportCategory,
)
from feedbackloop.schemas.identity import needs_identity, with_identity
from feedbackloop.schemas.serialization import format_validation_error
from feedbackloop.sinks.tables import (
    CONTEXT,
    RANK_ENRICHED,
    RANK_NO_CONTEXT,
    RANK_RAW,
    RANK_STEP,
    TABLES,
    Source,
    epoch_ms,
    metadata_text,
)

__all__ = [
    "DEAD_LETTERS",
    "Row",
    "Routed",
    "TopicRouter",
    "dead_letter_row",
    "declared_row",
    "enriched_row",
]

Row = tuple[Any, ...]

DEAD_LETTERS = "dead_letters"
_AGGREGATES, _ALERTS, _DEAD_LETTERS = (
    TABLES["window_aggregates"],
    TABLES["alerts"],
    TABLES[DEAD_LETTERS],
)
_CHANGES = TABLES["experiment_changes"]

#: The context columns of a row without context (read from the raw topic).
_NO_CONTEXT: Row = tuple(c.read(Source(None)) for c in CONTEXT)  # type: ignore[misc]


@dataclass(frozen=True)
class Routed:
    """The rows one Kafka message becomes: ``(table, row)`` pairs, all or nothing."""

    rows: tuple[tuple[str, Row], ...]


_ms = epoch_ms


# The row builders below run once per message on the writer's hot path (bench/bench_sink.py):
# rows are spelled out as flat tuples (no helper per envelope, no trace tuple to splat, no
# wrapper object per message), since per-call overhead is most of what row building costs.
# Their slow twin is the declaration itself, read column by column (declared_row, ~3x the
# time per row); tests/unit/test_sinks.py holds every path equal to it.

_EVENT_TABLES = {
    "interaction": TABLES["interactions"],
    "feedback": TABLES["feedback"],
    "implicit": TABLES["implicit"],
    "outcome": TABLES["outcomes"],
}


def declared_row(
    e: Interaction | Feedback | Implicit | Outcome,
    enriched: EnrichedEvent | None,
    topic: str,
    partition: int,
    offset: int,
) -> tuple[str, Row]:
    """The row of event ``e`` read column by column from the declaration (the reference)."""
    table = _EVENT_TABLES[e.event_type]
    return table.name, table.row(Source(e, enriched, topic, partition, offset))


def _interaction(
    e: Interaction, derived: Any, topic: str, partition: int, offset: int, version: int
) -> tuple[str, Row]:
    meta = {k: metadata_text(v) for k, v in e.metadata.items()} if e.metadata else {}
    if derived is not None:
        language, input_code, response_code = (
            derived.input_language,
            derived.input_has_code,
            derived.response_has_code,
        )
        input_chars, response_chars, bucket = (
            derived.input_chars,
            derived.response_chars,
            derived.input_length_bucket,
        )
    else:
        language, input_code, response_code = "und", False, False
        input_chars, response_chars, bucket = len(e.user_input), len(e.response), ""
    return "interactions", (
        e.event_id.int,
        e.occurred_at,
        e.app_id,
        e.session_id,
        e.user_id or "",
        e.schema_version,
        e.interaction_id.int,
        e.model,
        e.prompt_version or "",
        e.experiment or "",
        e.variant or "",
        e.system_prompt,
        e.user_input,
        e.response,
        e.latency_ms,
        e.input_tokens,
        e.output_tokens,
        e.cost_usd,
        meta,
        e.shadow,
        language,
        input_code,
        response_code,
        input_chars,
        response_chars,
        bucket,
        topic,
        partition,
        offset,
        version,
    )


def _context(enriched: EnrichedEvent | None) -> Row:
    if enriched is None:
        return _NO_CONTEXT
    c, d = enriched.context, enriched.derived
    if c is None:
        label = "orphaned" if enriched.orphaned else "none"
        return (label, enriched.orphaned, enriched.waited_ms, *_NO_CONTEXT[3:])
    return (
        "enriched",
        enriched.orphaned,
        enriched.waited_ms,
        c.interaction_occurred_at,
        c.model,
        c.prompt_version or "",
        c.experiment or "",
        c.variant or "",
        c.shadow,
        c.latency_ms,
        d.input_language if d else "und",
        d.input_has_code if d else False,
        d.response_has_code if d else False,
        d.input_length_bucket if d else "",
    )


def _event_row(
    e: Interaction | Feedback | Implicit | Outcome,
    enriched: EnrichedEvent | None,
    topic: str,
    partition: int,
    offset: int,
) -> tuple[str, Row]:
    if enriched is None:
        version = RANK_RAW * RANK_STEP
    else:
        has_context = enriched.context is not None or isinstance(e, Interaction)
        rank = RANK_ENRICHED if has_context else RANK_NO_CONTEXT
        version = rank * RANK_STEP + _ms(enriched.enriched_at)
    if isinstance(e, Interaction):
        derived = enriched.derived if enriched is not None else None
        return _interaction(e, derived, topic, partition, offset, version)
    envelope = (e.event_id.int, e.occurred_at, e.app_id, e.session_id, e.user_id or "")
    context = _context(enriched)
    if isinstance(e, Feedback):
        return "feedback", (
            *envelope,
            e.schema_version,
            e.interaction_id.int,
            e.kind.value,
            e.thumbs or 0,
            e.rating,
            e.text or "",
            e.category.value if e.category else "",
            *context,
            topic,
            partition,
            offset,
            version,
        )
    if isinstance(e, Implicit):
        return "implicit", (
            *envelope,
            e.schema_version,
            e.interaction_id.int,
            e.signal.value,
            e.edited_text or "",
            e.edit_distance,
            e.dwell_ms,
            e.copied_chars,
            *context,
            topic,
            partition,
            offset,
            version,
        )
    return "outcomes", (
        *envelope,
        e.schema_version,
        None if e.interaction_id is None else e.interaction_id.int,
        e.outcome,
        e.value,
        e.time_to_outcome_ms,
        *context,
        topic,
        partition,
        offset,
        version,
    )


# --- the trusted decoder of the enriched topic -----------------------------------------------
# The stream jobs validated every event (schemas.decode) before they spliced it into an
# enriched event (stream_jobs.enrich.enriched_json), so the sink need not validate it again:
# it only maps JSON values to columns. What it still checks is the *form* of each value (JSON
# type, canonical UUID and ISO time), because pydantic's lax mode accepts other forms
# ("5" for 5, a Unix time for a datetime) and converts them: anything not already in the
# canonical form, or any message that is not what the stream jobs write, makes it return
# None, and the caller takes the full pydantic path, which converts it exactly as before or
# rejects it with the usual reason. The two paths give identical rows (tests/unit/test_sinks.py).

_FEEDBACK_KINDS = frozenset(k.value for k in FeedbackKind)
_CATEGORIES = frozenset(c.value for c in ReportCategory)
_SIGNALS = frozenset(s.value for s in ImplicitSignal)
_fromiso = dt.datetime.fromisoformat
_loads = orjson.loads
_NO_METADATA: dict[str, Any] = {}
#: The last ``enriched_at`` seen and its epoch milliseconds.
_STAMP: tuple[str, int] = ("", 0)


class _NotCanonical(Exception):
    """A value is not in the form the stream jobs write; take the validating path."""


def _uuid(s: Any) -> int:
    if type(s) is not str or len(s) != 36 or not s[8] == s[13] == s[18] == s[23] == "-":
        raise _NotCanonical
    return int(s.replace("-", ""), 16)


def _time(s: Any) -> dt.datetime:
    if type(s) is not str:
        raise _NotCanonical
    t = _fromiso(s)
    if t.tzinfo is None:
        raise _NotCanonical
    return t


def _str(v: Any) -> str:
    if type(v) is not str:
        raise _NotCanonical
    return v


def _opt_str(v: Any) -> str:
    """An optional text as its column keeps it ('' for None)."""
    if v is None:
        return ""
    if type(v) is not str:
        raise _NotCanonical
    return v


def _float(v: Any) -> float:
    if type(v) is int:
        return float(v)
    if type(v) is not float:
        raise _NotCanonical
    return v


def _opt_float(v: Any) -> float | None:
    if v is None or type(v) is float:
        return v
    if type(v) is int:
        return float(v)
    raise _NotCanonical


def _opt_int(v: Any) -> int | None:
    if v is None or type(v) is int:
        return v
    raise _NotCanonical


def _int(v: Any) -> int:
    if type(v) is not int:
        raise _NotCanonical
    return v


def _bool(v: Any) -> bool:
    if type(v) is not bool:
        raise _NotCanonical
    return v


def _derived(d: Any) -> tuple[str, bool, bool, int, int, str]:
    # Defaults as in DerivedAttributes.
    if type(d) is not dict:
        raise _NotCanonical
    get = d.get
    return (
        _str(get("input_language", "und")),
        _bool(get("input_has_code", False)),
        _bool(get("response_has_code", False)),
        _int(get("input_chars", 0)),
        _int(get("response_chars", 0)),
        _str(get("input_length_bucket", "empty")),
    )


def enriched_row(value: bytes, topic: str, partition: int, offset: int) -> tuple[str, Row] | None:
    """The row of an enriched event in the form our stream jobs write it, else ``None``.

    No validation beyond the form of each value (see above): only for the enriched topic.
    """
    try:
        return _enriched_row(_loads(value), topic, partition, offset)
    except (_NotCanonical, KeyError, TypeError, ValueError, AttributeError, IndexError):
        return None


def _enriched_row(d: Any, topic: str, partition: int, offset: int) -> tuple[str, Row]:
    # Checks are spelled out inline on the fields every message has: a helper call per field
    # cost as much as the rest of the row.
    global _STAMP
    get = d.get
    if get("enriched_schema_version", ENRICHED_SCHEMA_VERSION) != ENRICHED_SCHEMA_VERSION:
        raise _NotCanonical
    e = d["event"]
    et = e["event_type"]
    ctx = get("context")
    der = get("derived")
    orphaned = get("orphaned", False)
    waited = get("waited_ms", 0.0)
    if type(orphaned) is not bool:
        raise _NotCanonical
    if type(waited) is not float:
        waited = _float(waited)
    eget = e.get
    version = eget("schema_version", SCHEMA_VERSION)
    event_id, app_id, session_id = e["event_id"], e["app_id"], e["session_id"]
    user_id = eget("user_id")
    occurred_at = _fromiso(e["occurred_at"])  # TypeError unless a str
    if (
        type(version) is not int
        or not 1 <= version <= SCHEMA_VERSION
        or type(app_id) is not str
        or type(session_id) is not str
        or (user_id is not None and (type(user_id) is not str or not user_id))
        or occurred_at.tzinfo is None
        or len(event_id) != 36
        or event_id[8:24:5] != "----"
    ):
        raise _NotCanonical
    envelope = (
        int(event_id.replace("-", ""), 16),
        occurred_at,
        app_id,
        session_id,
        user_id or "",
        version,
    )
    # The stream jobs stamp a whole batch with one enrichment time: convert it once.
    stamp = d["enriched_at"]
    last, stamp_ms = _STAMP
    if stamp != last:
        stamp_ms = _ms(_time(stamp))
        _STAMP = (stamp, stamp_ms)
    rank = RANK_ENRICHED if ctx is not None or et == "interaction" else RANK_NO_CONTEXT
    row_version = rank * RANK_STEP + stamp_ms
    if et == "interaction":
        return "interactions", _enriched_interaction(
            e, der, envelope, row_version, topic, partition, offset
        )
    if ctx is None:
        context: Row = ("orphaned" if orphaned else "none", orphaned, waited, *_NO_CONTEXT[3:])
    else:
        cget = ctx.get
        if der is None:
            language, input_code, response_code, bucket = "und", False, False, ""
        else:
            dget = der.get
            language = dget("input_language", "und")
            input_code = dget("input_has_code", False)
            response_code = dget("response_has_code", False)
            bucket = dget("input_length_bucket", "empty")
            if (
                type(language) is not str
                or type(input_code) is not bool
                or type(response_code) is not bool
                or type(bucket) is not str
                or type(dget("input_chars", 0)) is not int
                or type(dget("response_chars", 0)) is not int
            ):
                raise _NotCanonical
        model, shadow = ctx["model"], cget("shadow", False)
        latency = cget("latency_ms")
        if type(model) is not str or type(shadow) is not bool:
            raise _NotCanonical
        if latency is not None and type(latency) is not float:
            latency = _float(latency)
        context = (
            "enriched",
            orphaned,
            waited,
            _time(ctx["interaction_occurred_at"]),
            model,
            _opt_str(cget("prompt_version")),
            _opt_str(cget("experiment")),
            _opt_str(cget("variant")),
            shadow,
            latency,
            language,
            input_code,
            response_code,
            bucket,
        )
    if et == "feedback":
        kind = e["kind"]
        thumbs = eget("thumbs")
        category = eget("category")
        if (
            kind not in _FEEDBACK_KINDS
            or (thumbs is not None and (type(thumbs) is not int or thumbs not in (1, -1)))
            or (category is not None and category not in _CATEGORIES)
        ):
            raise _NotCanonical
        return "feedback", (
            *envelope,
            _uuid(e["interaction_id"]),
            kind,
            thumbs or 0,
            _opt_int(eget("rating")),
            _opt_str(eget("text")),
            category or "",
            *context,
            topic,
            partition,
            offset,
            row_version,
        )
    if et == "implicit":
        signal = e["signal"]
        if signal not in _SIGNALS:
            raise _NotCanonical
        return "implicit", (
            *envelope,
            _uuid(e["interaction_id"]),
            signal,
            _opt_str(eget("edited_text")),
            _opt_int(eget("edit_distance")),
            _opt_float(eget("dwell_ms")),
            _opt_int(eget("copied_chars")),
            *context,
            topic,
            partition,
            offset,
            row_version,
        )
    if et == "outcome":
        iid = eget("interaction_id")
        return "outcomes", (
            *envelope,
            None if iid is None else _uuid(iid),
            _str(e["outcome"]),
            _opt_float(eget("value")),
            _opt_float(eget("time_to_outcome_ms")),
            *context,
            topic,
            partition,
            offset,
            row_version,
        )
    raise _NotCanonical


def _enriched_interaction(
    e: dict[str, Any],
    der: Any,
    envelope: Row,
    version: int,
    topic: str,
    partition: int,
    offset: int,
) -> Row:
    eget = e.get
    iid, model = e["interaction_id"], e["model"]
    user_input, response, system_prompt = e["user_input"], e["response"], eget("system_prompt", "")
    prompt_version, experiment, variant = (
        eget("prompt_version"),
        eget("experiment"),
        eget("variant"),
    )
    latency, cost = eget("latency_ms"), eget("cost_usd")
    input_tokens, output_tokens = eget("input_tokens"), eget("output_tokens")
    shadow = eget("shadow", False)
    if (
        type(model) is not str
        or type(user_input) is not str
        or type(response) is not str
        or type(system_prompt) is not str
        or (prompt_version is not None and type(prompt_version) is not str)
        or (experiment is None) != (variant is None)
        or (experiment is not None and (type(experiment) is not str or type(variant) is not str))
        or (input_tokens is not None and type(input_tokens) is not int)
        or (output_tokens is not None and type(output_tokens) is not int)
        or type(shadow) is not bool
        or len(iid) != 36
        or iid[8:24:5] != "----"
    ):
        raise _NotCanonical
    if latency is not None and type(latency) is not float:
        latency = _float(latency)
    if cost is not None and type(cost) is not float:
        cost = _float(cost)
    meta = eget("metadata", _NO_METADATA)
    if type(meta) is not dict:
        raise _NotCanonical
    if meta:
        # Stored as tables.metadata_text does; the parsed dict is ours: reuse it when every
        # value is text that would not read as JSON (the common case).
        for v in meta.values():
            if type(v) is not str or metadata_text(v) is not v:
                meta = {k: _meta_text(v) for k, v in meta.items()}
                break
    else:
        meta = {}
    if der is None:
        language, input_code, response_code = "und", False, False
        input_chars, response_chars, bucket = len(user_input), len(response), ""
    else:
        language, input_code, response_code, input_chars, response_chars, bucket = _derived(der)
    return (
        *envelope,
        int(iid.replace("-", ""), 16),
        model,
        prompt_version or "",
        experiment or "",
        variant or "",
        system_prompt,
        user_input,
        response,
        latency,
        input_tokens,
        output_tokens,
        cost,
        meta,
        shadow,
        language,
        input_code,
        response_code,
        input_chars,
        response_chars,
        bucket,
        topic,
        partition,
        offset,
        version,
    )


def _meta_text(v: Any) -> str:
    # Same text as the validating path's metadata_text of the validated value.
    if v is None or type(v) in (str, bool, int, float):
        return metadata_text(v)
    raise _NotCanonical


def dead_letter_row(dl: DeadLetter, trace: Row) -> Row:
    """The ``dead_letters`` row of ``dl``; ``trace`` is where the dead letter itself was read."""
    return _DEAD_LETTERS.row(Source(dl, None, *trace))


class TopicRouter:
    """Knows, per topic, how a message value becomes rows.

    An undecodable message raises :class:`SchemaError` (with ``reason``); the sink turns it
    into a dead-letter row.
    """

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._decoders: dict[
            str, Callable[[bytes, bytes | None, Any, str, int, int], tuple[tuple[str, Row], ...]]
        ] = {
            topics.enriched: self._enriched,
            topics.aggregates: self._aggregate,
            topics.alerts: self._alert,
            topics.dead_letters: self._dead_letter,
            topics.control: self._experiment_change,
        }

    def knows(self, topic: str) -> bool:
        return topic == self.topics.events or topic in self._decoders

    def route(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: Any = None,
        timestamp_ms: int = 0,
    ) -> Routed:
        """Rows for one message; raises :class:`SchemaError` if it cannot be understood."""
        return Routed(self.rows(topic, partition, offset, value, key, headers, timestamp_ms))

    def rows(
        self,
        topic: str,
        partition: int,
        offset: int,
        value: bytes | None,
        key: bytes | None = None,
        headers: Any = None,
        timestamp_ms: int = 0,
    ) -> tuple[tuple[str, Row], ...]:
        """Like :meth:`route`, without the wrapper (the sink's per-message path).
        ``timestamp_ms``: the message's Kafka timestamp (a raw event's ``occurred_at``
        when it has none, see :mod:`feedbackloop.schemas.identity`)."""
        if value is None:
            raise SchemaError("empty_message", "message has no value (tombstone?)")
        if topic == self.topics.events:
            return self._raw(value, topic, partition, offset, timestamp_ms)
        try:
            decoder = self._decoders[topic]
        except KeyError:
            raise SchemaError("unknown_topic", f"the sink does not know topic {topic!r}") from None
        return decoder(value, key, headers, topic, partition, offset)

    @staticmethod
    def _raw(
        value: bytes, topic: str, partition: int, offset: int, timestamp_ms: int
    ) -> tuple[tuple[str, Row], ...]:
        # Events from outside: fully validated (schemas.decode), never trusted; an event
        # without event_id / occurred_at gets the ones the stream jobs would derive.
        ev = decode(value)
        if needs_identity(ev):
            ev, _ = with_identity(ev, value, topic, partition, offset, timestamp_ms)  # type: ignore[assignment]
        return (_event_row(ev, None, topic, partition, offset),)

    @staticmethod
    def _enriched(
        value: bytes, key: bytes | None, headers: Any, topic: str, partition: int, offset: int
    ) -> tuple[tuple[str, Row], ...]:
        # Written by our own stream jobs: the trusted decoder, validating only as a fallback.
        row = enriched_row(value, topic, partition, offset)
        if row is not None:
            return (row,)
        ev = _validate(EnrichedEvent, value)
        return (_event_row(ev.event, ev, topic, partition, offset),)

    @staticmethod
    def _aggregate(
        value: bytes, key: bytes | None, headers: Any, topic: str, partition: int, offset: int
    ) -> tuple[tuple[str, Row], ...]:
        agg = _validate(WindowAggregate, value)
        return (
            ("window_aggregates", _AGGREGATES.row(Source(agg, None, topic, partition, offset))),
        )

    @staticmethod
    def _alert(
        value: bytes, key: bytes | None, headers: Any, topic: str, partition: int, offset: int
    ) -> tuple[tuple[str, Row], ...]:
        alert = _validate(Alert, value)
        return (("alerts", _ALERTS.row(Source(alert, None, topic, partition, offset))),)

    @staticmethod
    def _experiment_change(
        value: bytes, key: bytes | None, headers: Any, topic: str, partition: int, offset: int
    ) -> tuple[tuple[str, Row], ...]:
        # A malformed version raises SchemaError: the sink dead-letters it, and every reader
        # of the topic refuses it too (the last good version stays).
        from feedbackloop.control.config import decode_config

        cfg = decode_config(value)
        return (("experiment_changes", _CHANGES.row(Source(cfg, None, topic, partition, offset))),)

    @staticmethod
    def _dead_letter(
        value: bytes, key: bytes | None, headers: Any, topic: str, partition: int, offset: int
    ) -> tuple[tuple[str, Row], ...]:
        dl = DeadLetter.from_message(value, key, headers)
        return ((DEAD_LETTERS, dead_letter_row(dl, (topic, partition, offset))),)


def _validate(model: Any, value: bytes) -> Any:
    try:
        return model.model_validate_json(value)
    except ValidationError as e:
        raise SchemaError("validation_error", format_validation_error(e, model.__name__)) from e
    except ValueError as e:  # pragma: no cover - pydantic reports JSON errors as ValidationError
        raise SchemaError("invalid_json", str(e)) from e
