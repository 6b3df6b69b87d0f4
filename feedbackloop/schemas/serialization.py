"""Events to bytes and back. JSON (UTF-8) on the wire, so any language can produce events.

:func:`decode` never lets a driver or pydantic error escape: every failure is a
:class:`~feedbackloop.errors.SchemaError` whose ``reason`` names what went wrong, ready to be
written to the dead-letter topic.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

from feedbackloop.errors import SchemaError
from feedbackloop.schemas.events import EVENT_TYPES, SCHEMA_VERSION, Envelope, Event

__all__ = ["MAX_EVENT_BYTES", "encode", "decode", "decode_dict", "format_validation_error"]

#: Largest encoded event accepted anywhere in the pipeline (Kafka's default message limit).
MAX_EVENT_BYTES = 1_000_000

_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def encode(event: Envelope) -> bytes:
    """Compact JSON bytes of ``event``, as produced to Kafka."""
    return type(event).__pydantic_serializer__.to_json(event)


def decode(data: bytes | bytearray | str) -> Event:
    """Parse and validate one event; raise :class:`SchemaError` with a reason on failure."""
    if len(data) > MAX_EVENT_BYTES:
        raise SchemaError(
            "oversized", f"event is {len(data)} bytes, more than the limit of {MAX_EVENT_BYTES}"
        )
    try:
        # Fast path: pydantic-core parses and validates in one pass (the hot path of the
        # stream jobs). Only a failure pays for the diagnosis below.
        return _ADAPTER.validate_json(data)
    except ValidationError:
        pass
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError("invalid_json", f"not valid UTF-8 JSON: {e}") from e
    return decode_dict(obj)


def decode_dict(obj: Any) -> Event:
    """Validate an already parsed JSON object (e.g. from the HTTP collector)."""
    if not isinstance(obj, dict):
        raise SchemaError(
            "validation_error", f"an event is a JSON object, got {type(obj).__name__}"
        )
    event_type = obj.get("event_type")
    if not isinstance(event_type, str) or event_type not in EVENT_TYPES:
        raise SchemaError(
            "unknown_event_type",
            f"unknown event_type {event_type!r}; expected one of {sorted(EVENT_TYPES)}",
        )
    version = obj.get("schema_version", SCHEMA_VERSION)
    if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
        raise SchemaError(
            "unsupported_schema_version",
            f"schema_version {version} is newer than this reader understands "
            f"({SCHEMA_VERSION}); upgrade the consumer",
        )
    try:
        return _ADAPTER.validate_python(obj)
    except ValidationError as e:
        raise SchemaError("validation_error", format_validation_error(e, event_type)) from e
    except (RecursionError, ValueError, TypeError) as e:  # what pydantic does not wrap
        raise SchemaError("validation_error", f"{event_type}: {type(e).__name__}: {e}") from e


def format_validation_error(err: ValidationError, event_type: str | None = None) -> str:
    """One line per problem, e.g.
    ``feedback.rating: Input should be less than or equal to 5 (got 7)``."""
    lines = []
    for item in err.errors(include_url=False):
        # The discriminated union puts the tag first in loc; it is noise for a reader.
        loc = [str(p) for p in item.get("loc", ())]
        if loc and loc[0] == event_type:
            loc = loc[1:]
        where = ".".join([event_type or "event", *loc]) if loc else (event_type or "event")
        msg = item.get("msg", "invalid")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        got = item.get("input")
        shown = (
            ""
            if item.get("type") in ("missing",) or isinstance(got, dict)
            else f" (got {got!r:.80})"
        )
        lines.append(f"{where}: {msg}{shown}")
    return "; ".join(lines)
