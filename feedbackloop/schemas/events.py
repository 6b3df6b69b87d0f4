"""The event contract: pydantic v2 models of every event feedbackloop carries.

Every event shares the :class:`Envelope`; ``event_type`` discriminates the four kinds.

Compatibility rule (see docs/ARCHITECTURE.md, "Event contract"): ``schema_version`` is an
integer. A new version may only *add optional fields* (with defaults) or *widen* a limit; it
never removes, renames or retypes a field. Readers accept every version up to their own
:data:`SCHEMA_VERSION` ("backward compatible", as Confluent's schema registry calls it), and
reject newer ones with reason ``unsupported_schema_version`` so they land in the dead-letter
topic instead of being half-understood. Upgrade consumers before producers.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

__all__ = [
    "SCHEMA_VERSION",
    "MAX_TEXT_CHARS",
    "MAX_CLOCK_SKEW",
    "Envelope",
    "Interaction",
    "Feedback",
    "FeedbackKind",
    "ReportCategory",
    "Implicit",
    "ImplicitSignal",
    "Outcome",
    "KnownOutcome",
    "Event",
    "EVENT_TYPES",
    "SHADOW_OF",
    "utcnow",
]

SCHEMA_VERSION = 1
#: Longest accepted prompt, input, response or free text, in characters.
MAX_TEXT_CHARS = 100_000
#: How far in the future an ``occurred_at`` may lie (client clocks drift).
MAX_CLOCK_SKEW = dt.timedelta(minutes=5)
#: Nothing feedbackloop stores predates this; older timestamps are a client bug.
EARLIEST = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
MAX_METADATA_KEYS = 64
#: Metadata key of a shadow interaction naming the live interaction it was computed for.
SHADOW_OF = "shadow_of"
#: Counts (tokens, characters, edit distances) are stored as ClickHouse UInt32.
MAX_COUNT = 2**32 - 1
_MAX_CLOCK_SKEW_S = MAX_CLOCK_SKEW.total_seconds()
_EARLIEST_TS = EARLIEST.timestamp()

# What the server accepts is what the JSON Schema (and so the OpenAPI document) says: ids in
# the canonical 8-4-4-4-12 form only (pydantic alone also takes 32 bare hex digits, braces
# and "urn:uuid:"), times as RFC 3339 strings from 2020 on (pydantic alone also takes Unix
# seconds), thumbs as the integers 1 / -1 (not true, not 1.0).
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_TIME_REST = (
    r"-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
#: The documented form, years 2020-9999 (the validator below checks the form, and
#: ``_plausible_time`` the range, with a message that says which bound was crossed).
TIME_PATTERN = r"^(20[2-9][0-9]|2[1-9][0-9]{2}|[3-9][0-9]{3})" + _TIME_REST
_UUID_RE = re.compile(UUID_PATTERN)
_TIME_RE = re.compile(r"^[0-9]{4}" + _TIME_REST)
_ID_SCHEMA: JsonDict = {"pattern": UUID_PATTERN}


def _canonical_uuid(v: object) -> object:
    if type(v) is str and not _UUID_RE.match(v):
        raise ValueError("expected a UUID in the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx")
    return v


def _rfc3339(v: object) -> object:
    if type(v) is str:
        if not _TIME_RE.match(v):
            raise ValueError("expected an RFC 3339 date-time with a UTC offset")
    elif not isinstance(v, dt.datetime):
        raise ValueError("expected an RFC 3339 date-time string")
    return v


Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
# Numbers and flags are strict (a JSON true is not a rating, "yes" not a flag, "12" not a
# count), as the JSON Schema says, and bounded by the column types they are stored in.
Count = Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
Flag = Annotated[bool, Field(strict=True)]
MetadataValue = Union[str, int, float, bool, None]  # noqa: UP007 - pydantic needs a runtime alias


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Envelope(BaseModel):
    """Fields every event carries.

    ``event_id`` is made by the client and is the idempotency key for the whole pipeline:
    a retried send carries the same ``event_id``, and every store deduplicates on it.
    """

    # allow_inf_nan=False: JSON has no infinity; pydantic would silently write it as null.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, json_schema_extra=_ID_SCHEMA)
    event_type: str
    schema_version: int = Field(default=SCHEMA_VERSION, ge=1, le=255, strict=True)
    occurred_at: AwareDatetime = Field(
        default_factory=utcnow,
        json_schema_extra={"pattern": TIME_PATTERN},
        description="RFC 3339, from 2020 on, at most 5 minutes in the future.",
    )
    app_id: Identifier
    session_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    user_id: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None

    @field_validator("event_id", "interaction_id", mode="before", check_fields=False)
    @classmethod
    def _id_form(cls, v: object) -> object:
        return _canonical_uuid(v)

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _time_form(cls, v: object) -> object:
        return _rfc3339(v)

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if v > SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {v} is newer than this reader understands ({SCHEMA_VERSION}); "
                "upgrade the consumer"
            )
        return v

    @field_validator("occurred_at")
    @classmethod
    def _plausible_time(cls, v: dt.datetime) -> dt.datetime:
        # Runs for every event on the hot paths (stream jobs, sink): compare epoch floats
        # rather than building "now + skew" datetimes (the same test, at float precision).
        ts = v.timestamp()
        v = v.astimezone(dt.timezone.utc)
        if ts > time.time() + _MAX_CLOCK_SKEW_S:
            raise ValueError(
                f"occurred_at {v.isoformat()} lies more than "
                f"{int(MAX_CLOCK_SKEW.total_seconds())} s in the future (client clock?)"
            )
        if ts < _EARLIEST_TS:
            raise ValueError(f"occurred_at {v.isoformat()} is before {EARLIEST.date()}")
        return v

    @property
    def partition_key(self) -> bytes:
        """Kafka key: every event of one interaction shares a partition (the join needs it)."""
        iid = getattr(self, "interaction_id", None)
        return (str(iid) if iid is not None else self.session_id).encode()


class Interaction(Envelope):
    """One LLM request and its response, with everything needed to judge it later."""

    event_type: Literal["interaction"] = "interaction"
    interaction_id: uuid.UUID = Field(default_factory=uuid.uuid4, json_schema_extra=_ID_SCHEMA)
    system_prompt: Text = ""
    user_input: Text
    response: Text
    model: Name
    prompt_version: Name | None = None
    experiment: Identifier | None = None
    variant: Identifier | None = None
    latency_ms: NonNegative | None = None
    input_tokens: Count | None = None
    output_tokens: Count | None = None
    cost_usd: NonNegative | None = None
    metadata: dict[Annotated[str, StringConstraints(max_length=64)], MetadataValue] = Field(
        default_factory=dict, max_length=MAX_METADATA_KEYS
    )
    #: Produced in shadow mode: computed for comparison, never shown to the user. A shadow
    #: answer names its live interaction in ``metadata["shadow_of"]`` (:data:`SHADOW_OF`).
    shadow: Flag = False

    @model_validator(mode="after")
    def _experiment_and_variant(self) -> Interaction:
        if (self.experiment is None) != (self.variant is None):
            raise ValueError("experiment and variant must be given together")
        return self

    @property
    def shadow_of(self) -> uuid.UUID | None:
        """The live interaction this shadow answer was computed for, if it names one."""
        if not self.shadow:
            return None
        live = self.metadata.get(SHADOW_OF)
        if not isinstance(live, str):
            return None
        try:
            return uuid.UUID(live)
        except ValueError:
            return None

    @property
    def partition_key(self) -> bytes:
        """A shadow answer goes to its live interaction's partition: the stream jobs join the
        two there, with the feedback on the live answer."""
        live = self.shadow_of
        return str(live if live is not None else self.interaction_id).encode()


class FeedbackKind(str, Enum):
    thumbs = "thumbs"
    rating = "rating"
    correction = "correction"
    comment = "comment"
    report = "report"


class ReportCategory(str, Enum):
    incorrect = "incorrect"
    harmful = "harmful"
    offensive = "offensive"
    unhelpful = "unhelpful"
    privacy = "privacy"
    spam = "spam"
    other = "other"


class Feedback(Envelope):
    """Explicit feedback on one interaction: thumbs, rating, correction, comment or report."""

    event_type: Literal["feedback"] = "feedback"
    interaction_id: uuid.UUID = Field(json_schema_extra=_ID_SCHEMA)
    kind: FeedbackKind
    thumbs: Literal[-1, 1] | None = None
    rating: int | None = Field(default=None, ge=1, le=5, strict=True)
    text: Text | None = None
    category: ReportCategory | None = None

    @field_validator("thumbs", mode="before")
    @classmethod
    def _thumbs_is_an_int(cls, v: object) -> object:
        if v is not None and type(v) is not int:
            raise ValueError("thumbs is the integer 1 or -1")
        return v

    @model_validator(mode="after")
    def _fields_match_kind(self) -> Feedback:
        k = self.kind
        if k is FeedbackKind.thumbs and self.thumbs is None:
            raise ValueError("feedback of kind 'thumbs' needs thumbs = 1 or -1")
        if k is FeedbackKind.rating and self.rating is None:
            raise ValueError("feedback of kind 'rating' needs rating between 1 and 5")
        if k in (FeedbackKind.correction, FeedbackKind.comment) and not self.text:
            raise ValueError(f"feedback of kind '{k.value}' needs a non-empty text")
        if k is FeedbackKind.report and self.category is None:
            raise ValueError("feedback of kind 'report' needs a category")
        if k is not FeedbackKind.thumbs and self.thumbs is not None:
            raise ValueError(f"thumbs is only allowed on kind 'thumbs', not '{k.value}'")
        if k is not FeedbackKind.rating and self.rating is not None:
            raise ValueError(f"rating is only allowed on kind 'rating', not '{k.value}'")
        return self


class ImplicitSignal(str, Enum):
    copy = "copy"
    edit = "edit"
    follow_up = "follow_up"
    regenerate = "regenerate"
    abandon = "abandon"
    dwell = "dwell"


class Implicit(Envelope):
    """A behavioural signal about one interaction, observed rather than asked for."""

    event_type: Literal["implicit"] = "implicit"
    interaction_id: uuid.UUID = Field(json_schema_extra=_ID_SCHEMA)
    signal: ImplicitSignal
    #: For ``edit``: the text after the user's edit, and/or its edit distance to the response.
    edited_text: Text | None = None
    edit_distance: Count | None = None
    #: For ``dwell``: how long the response was on screen.
    dwell_ms: NonNegative | None = None
    #: For ``copy``: how many characters were copied.
    copied_chars: Count | None = None

    @model_validator(mode="after")
    def _fields_match_signal(self) -> Implicit:
        s = self.signal
        if s is ImplicitSignal.dwell and self.dwell_ms is None:
            raise ValueError("implicit signal 'dwell' needs dwell_ms")
        if s is not ImplicitSignal.edit and (
            self.edited_text is not None or self.edit_distance is not None
        ):
            raise ValueError(f"edited_text / edit_distance only apply to 'edit', not '{s.value}'")
        return self


class KnownOutcome(str, Enum):
    """Outcome names the analysis layer understands out of the box; others are allowed."""

    code_accepted = "code_accepted"
    code_rejected = "code_rejected"
    ticket_resolved = "ticket_resolved"
    ticket_escalated = "ticket_escalated"
    original_opened = "original_opened"
    task_completed = "task_completed"
    task_failed = "task_failed"
    purchase = "purchase"


class Outcome(Envelope):
    """A business outcome, tied to an interaction where known, else to the session."""

    event_type: Literal["outcome"] = "outcome"
    interaction_id: uuid.UUID | None = Field(default=None, json_schema_extra=_ID_SCHEMA)
    outcome: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
    value: Annotated[float, Field(strict=True)] | None = None
    time_to_outcome_ms: NonNegative | None = None


Event = Annotated[Interaction | Feedback | Implicit | Outcome, Field(discriminator="event_type")]
EVENT_TYPES: dict[str, type[Envelope]] = {
    "interaction": Interaction,
    "feedback": Feedback,
    "implicit": Implicit,
    "outcome": Outcome,
}
