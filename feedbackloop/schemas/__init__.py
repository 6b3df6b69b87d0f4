"""The event contract shared by every part of feedbackloop."""

from feedbackloop.schemas.aggregates import SESSION_SKETCH_K, WindowAggregate, session_hash
from feedbackloop.schemas.alerts import Alert, AlertDimension
from feedbackloop.schemas.deadletter import DeadLetter
from feedbackloop.schemas.enriched import (
    DerivedAttributes,
    EnrichedEvent,
    LengthBucket,
    RequestContext,
)
from feedbackloop.schemas.events import (
    EVENT_TYPES,
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    SHADOW_OF,
    Envelope,
    Event,
    Feedback,
    FeedbackKind,
    Implicit,
    ImplicitSignal,
    Interaction,
    KnownOutcome,
    Outcome,
    ReportCategory,
    utcnow,
)
from feedbackloop.schemas.jsonschema import event_json_schema, event_json_schema_text
from feedbackloop.schemas.serialization import MAX_EVENT_BYTES, decode, decode_dict, encode
from feedbackloop.schemas.topics import Topics

__all__ = [
    "Alert",
    "AlertDimension",
    "DerivedAttributes",
    "EnrichedEvent",
    "LengthBucket",
    "RequestContext",
    "SESSION_SKETCH_K",
    "WindowAggregate",
    "session_hash",
    "DeadLetter",
    "EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "MAX_TEXT_CHARS",
    "SCHEMA_VERSION",
    "SHADOW_OF",
    "Envelope",
    "Event",
    "Feedback",
    "FeedbackKind",
    "Implicit",
    "ImplicitSignal",
    "Interaction",
    "KnownOutcome",
    "Outcome",
    "ReportCategory",
    "Topics",
    "decode",
    "decode_dict",
    "encode",
    "event_json_schema",
    "event_json_schema_text",
    "utcnow",
]
