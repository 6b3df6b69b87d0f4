"""JSON Schema of the event contract, for clients in other languages."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from feedbackloop.schemas.events import SCHEMA_VERSION, Event

__all__ = ["event_json_schema", "event_json_schema_text"]


def event_json_schema() -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) accepting any one event."""
    schema = TypeAdapter(Event).json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"feedbackloop event (schema_version {SCHEMA_VERSION})"
    schema["description"] = (
        "One feedbackloop event, discriminated by event_type. Send it as UTF-8 JSON. "
        "Readers accept schema_version <= their own; new versions only add optional fields."
    )
    return schema


def event_json_schema_text() -> str:
    return json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
