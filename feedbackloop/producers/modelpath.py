"""The SDK's model path, the slow twin of :mod:`feedbackloop.producers.fastpath`: an event
built by its pydantic model from a call's fields, and the dead letter for fields the model
rejects.

Every call the fast path cannot prove valid comes here, so acceptance, coercion and error
messages are the model's own; ``tests/unit/test_fastpath.py`` holds the two paths to the
same bytes and the same errors.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from feedbackloop.errors import SchemaError
from feedbackloop.schemas import DeadLetter, Envelope, encode
from feedbackloop.schemas.serialization import MAX_EVENT_BYTES, format_validation_error

__all__ = ["dead_letter", "encode_fields"]


def encode_fields(model: type[Envelope], fields: dict[str, Any]) -> tuple[Envelope, bytes]:
    """The event ``model(**fields)`` and its bytes; raises :class:`SchemaError`
    (``validation_error`` or ``oversized``) with a message naming the field.

    ``fields["_unexpected"]`` (popped) lists keyword arguments the SDK method did not know.
    """
    unexpected = fields.pop("_unexpected", None)
    name = model.__name__.lower()
    if unexpected:
        raise SchemaError(
            "validation_error", f"unexpected keyword argument(s): {', '.join(unexpected)}"
        )
    if fields.get("session_id") is None:
        raise SchemaError(
            "validation_error",
            f"{name}: session_id is required (this client did not log the interaction, so it "
            "cannot look the session up)",
        )
    try:
        event = model(**fields)
        value = encode(event)
    except ValidationError as e:
        raise SchemaError("validation_error", format_validation_error(e, _type(model))) from e
    except PydanticSerializationError as e:  # e.g. a lone surrogate in a text
        raise SchemaError("validation_error", f"{name}: not encodable as UTF-8 JSON: {e}") from e
    if len(value) > MAX_EVENT_BYTES:
        raise SchemaError("oversized", f"event is {len(value)} bytes (> {MAX_EVENT_BYTES})")
    return event, value


def dead_letter(model: type[Envelope], fields: dict[str, Any], error: SchemaError) -> DeadLetter:
    """The dead letter for a call the model rejected: its fields as JSON, and the reason."""
    payload = json.dumps({"event_type": _type(model), **fields}, default=str).encode()
    return DeadLetter(reason=error.reason, error=str(error), payload=payload, source="sdk")


def _type(model: type[Envelope]) -> str:
    event_type: str = model.model_fields["event_type"].default
    return event_type
