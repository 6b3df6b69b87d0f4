"""The enriched event: a validated event joined with its interaction's request context.

Written by the stream jobs to ``Topics.enriched`` (JSON, keyed by interaction id, or by session
id for session-level outcomes). Every valid raw event appears there exactly once per
processing (at-least-once delivery: dedupe on ``event.event_id``):

* an **interaction** carries itself as ``event``; ``context`` is ``None`` (the event *is* the
  context) and ``derived`` holds the attributes computed from its input and response;
* a **feedback / implicit / outcome** whose interaction is known carries ``context`` and
  ``derived`` of that interaction; ``waited_ms`` says how long it was held back because it
  arrived before its interaction;
* one whose interaction did not arrive within the grace period is emitted with
  ``orphaned = True`` and no context: it is never dropped;
* an outcome without ``interaction_id`` (session-level) has no context and is not orphaned.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from feedbackloop.schemas.events import Event, MetadataValue

__all__ = [
    "ENRICHED_SCHEMA_VERSION",
    "LENGTH_BUCKETS",
    "DerivedAttributes",
    "EnrichedEvent",
    "LengthBucket",
    "RequestContext",
]

ENRICHED_SCHEMA_VERSION = 1

LengthBucket = Literal["empty", "xs", "s", "m", "l", "xl"]
#: Upper bounds (inclusive, in characters) of each length bucket; "xl" is everything above.
LENGTH_BUCKETS: tuple[tuple[LengthBucket, int], ...] = (
    ("empty", 0),
    ("xs", 50),
    ("s", 200),
    ("m", 1_000),
    ("l", 5_000),
)


class RequestContext(BaseModel):
    """What produced the response that a feedback, signal or outcome is about."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    interaction_id: uuid.UUID
    interaction_occurred_at: AwareDatetime
    model: str
    prompt_version: str | None = None
    experiment: str | None = None
    variant: str | None = None
    system_prompt: str = ""
    user_input: str
    response: str
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    shadow: bool = False
    metadata: dict[str, MetadataValue] = Field(default_factory=dict)


class DerivedAttributes(BaseModel):
    """Attributes computed from an interaction's input and response, for slicing feedback."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ISO 639-1 code of the user input's language from a cheap heuristic, "und" if unsure.
    input_language: str = "und"
    #: The user input contains code (a fenced block or several code-like lines).
    input_has_code: bool = False
    #: The response contains code.
    response_has_code: bool = False
    input_chars: int = 0
    response_chars: int = 0
    #: Bucket of ``input_chars``; bounds in :data:`LENGTH_BUCKETS`.
    input_length_bucket: LengthBucket = "empty"


class EnrichedEvent(BaseModel):
    """One validated event with its request context; the value on ``Topics.enriched``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enriched_schema_version: int = ENRICHED_SCHEMA_VERSION
    #: The original event, as validated (``event.event_id`` is the idempotency key).
    event: Event
    #: The interaction's request context; ``None`` for interactions, orphans, session outcomes.
    context: RequestContext | None = None
    #: Derived attributes of the interaction (also set on interactions themselves).
    derived: DerivedAttributes | None = None
    #: The interaction never arrived within the grace period.
    orphaned: bool = False
    #: How long the event waited for its interaction (0 when it was already known).
    waited_ms: float = 0.0
    #: Where the raw event was read, for tracing and replay.
    source_partition: int
    source_offset: int
    enriched_at: AwareDatetime = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))
