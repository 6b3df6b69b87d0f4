"""The event contract: every kind valid and invalid, with the message a user reads."""

from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest
from pydantic import ValidationError

from feedbackloop.errors import SchemaError
from feedbackloop.schemas import (
    MAX_EVENT_BYTES,
    SCHEMA_VERSION,
    Feedback,
    Implicit,
    Interaction,
    Outcome,
    decode,
    encode,
    event_json_schema,
)

IID = uuid.UUID("12345678-1234-5678-1234-567812345678")
BASE = {"app_id": "shop", "session_id": "sess-1"}


def _interaction(**kw: object) -> dict[str, object]:
    return {
        "event_type": "interaction",
        **BASE,
        "interaction_id": str(IID),
        "user_input": "How do I sort a list?",
        "response": "Use sorted().",
        "model": "gpt-4o",
        **kw,
    }


def _decode_error(obj: object) -> SchemaError:
    with pytest.raises(SchemaError) as info:
        decode(json.dumps(obj).encode())
    return info.value


VALID = [
    _interaction(
        experiment="onboarding",
        variant="b",
        prompt_version="v1.2",
        latency_ms=812.5,
        input_tokens=12,
        output_tokens=40,
        cost_usd=0.0012,
        metadata={"lang": "en"},
        shadow=True,
    ),
    {"event_type": "feedback", **BASE, "interaction_id": str(IID), "kind": "thumbs", "thumbs": -1},
    {"event_type": "feedback", **BASE, "interaction_id": str(IID), "kind": "rating", "rating": 5},
    {
        "event_type": "feedback",
        **BASE,
        "interaction_id": str(IID),
        "kind": "correction",
        "text": "Use list.sort() to sort in place.",
    },
    {
        "event_type": "feedback",
        **BASE,
        "interaction_id": str(IID),
        "kind": "comment",
        "text": "too long",
    },
    {
        "event_type": "feedback",
        **BASE,
        "interaction_id": str(IID),
        "kind": "report",
        "category": "harmful",
        "text": "unsafe advice",
    },
    {
        "event_type": "implicit",
        **BASE,
        "interaction_id": str(IID),
        "signal": "copy",
        "copied_chars": 40,
    },
    {
        "event_type": "implicit",
        **BASE,
        "interaction_id": str(IID),
        "signal": "edit",
        "edited_text": "Use sorted(x)",
        "edit_distance": 3,
    },
    {"event_type": "implicit", **BASE, "interaction_id": str(IID), "signal": "follow_up"},
    {"event_type": "implicit", **BASE, "interaction_id": str(IID), "signal": "regenerate"},
    {"event_type": "implicit", **BASE, "interaction_id": str(IID), "signal": "abandon"},
    {
        "event_type": "implicit",
        **BASE,
        "interaction_id": str(IID),
        "signal": "dwell",
        "dwell_ms": 5300,
    },
    {
        "event_type": "outcome",
        **BASE,
        "interaction_id": str(IID),
        "outcome": "code_accepted",
        "time_to_outcome_ms": 42000,
    },
    {"event_type": "outcome", **BASE, "outcome": "ticket_resolved", "value": 1.0},
    {"event_type": "outcome", **BASE, "outcome": "my_custom_outcome", "value": 19.99},
]


@pytest.mark.parametrize("obj", VALID, ids=lambda o: f"{o['event_type']}")
def test_valid_events_roundtrip_byte_for_byte(obj: dict[str, object]) -> None:
    event = decode(json.dumps(obj).encode())
    assert event.event_type == obj["event_type"]
    assert event.schema_version == SCHEMA_VERSION
    assert event.occurred_at.tzinfo is not None
    data = encode(event)
    assert decode(data) == event
    assert encode(decode(data)) == data


@pytest.mark.parametrize(
    ("obj", "reason", "message"),
    [
        ({"event_type": "click", **BASE}, "unknown_event_type", "unknown event_type 'click'"),
        (
            {**_interaction(), "schema_version": SCHEMA_VERSION + 1},
            "unsupported_schema_version",
            "newer than this reader understands",
        ),
        (
            {
                "event_type": "feedback",
                **BASE,
                "interaction_id": str(IID),
                "kind": "rating",
                "rating": 7,
            },
            "validation_error",
            "feedback.rating: Input should be less than or equal to 5 (got 7)",
        ),
        (
            {"event_type": "feedback", **BASE, "interaction_id": str(IID), "kind": "rating"},
            "validation_error",
            "feedback of kind 'rating' needs rating between 1 and 5",
        ),
        (
            {
                "event_type": "feedback",
                **BASE,
                "interaction_id": str(IID),
                "kind": "thumbs",
                "thumbs": 0,
            },
            "validation_error",
            "feedback.thumbs: Input should be -1 or 1",
        ),
        (
            {"event_type": "feedback", **BASE, "interaction_id": str(IID), "kind": "correction"},
            "validation_error",
            "feedback of kind 'correction' needs a non-empty text",
        ),
        (
            {"event_type": "feedback", **BASE, "interaction_id": str(IID), "kind": "report"},
            "validation_error",
            "feedback of kind 'report' needs a category",
        ),
        (
            {"event_type": "feedback", **BASE, "interaction_id": str(IID), "kind": "like"},
            "validation_error",
            "feedback.kind: Input should be 'thumbs', 'rating'",
        ),
        (
            {
                "event_type": "feedback",
                **BASE,
                "interaction_id": "nope",
                "kind": "thumbs",
                "thumbs": 1,
            },
            "validation_error",
            "feedback.interaction_id: expected a UUID in the form",
        ),
        (
            {"event_type": "implicit", **BASE, "interaction_id": str(IID), "signal": "dwell"},
            "validation_error",
            "implicit signal 'dwell' needs dwell_ms",
        ),
        (
            {"event_type": "implicit", **BASE, "interaction_id": str(IID), "signal": "scroll"},
            "validation_error",
            "implicit.signal: Input should be 'copy'",
        ),
        (
            {"event_type": "outcome", **BASE, "outcome": "Code Accepted"},
            "validation_error",
            "outcome.outcome: String should match pattern",
        ),
        (
            _interaction(user_input="x" * 100_001),
            "validation_error",
            "interaction.user_input: String should have at most 100000 characters",
        ),
        (
            _interaction(experiment="exp"),
            "validation_error",
            "experiment and variant must be given together",
        ),
        (
            _interaction(occurred_at="2031-01-01T00:00:00Z"),
            "validation_error",
            "lies more than 300 s in the future",
        ),
        (
            _interaction(occurred_at="2026-01-01T00:00:00"),
            "validation_error",
            "interaction.occurred_at: expected an RFC 3339 date-time with a UTC offset",
        ),
        (
            _interaction(model=""),
            "validation_error",
            "interaction.model: String should have at least 1 character",
        ),
        (
            _interaction(colour="red"),
            "validation_error",
            "interaction.colour: Extra inputs are not permitted",
        ),
        (
            {k: v for k, v in _interaction().items() if k != "session_id"},
            "validation_error",
            "interaction.session_id: Field required",
        ),
        (["not", "an", "object"], "validation_error", "an event is a JSON object"),
    ],
)
def test_invalid_events_name_the_problem(obj: object, reason: str, message: str) -> None:
    err = _decode_error(obj)
    assert err.reason == reason
    assert message in str(err)


def test_infinite_numbers_are_rejected_not_written_as_null() -> None:
    with pytest.raises(ValidationError, match="finite number"):
        Outcome(**BASE, outcome="purchase", time_to_outcome_ms=float("inf"))
    err = _decode_error({**_interaction(), "latency_ms": 1e999})
    assert err.reason == "validation_error" and "latency_ms" in str(err)


def test_not_json_and_oversized() -> None:
    with pytest.raises(SchemaError) as info:
        decode(b"{not json")
    assert info.value.reason == "invalid_json"
    with pytest.raises(SchemaError) as info:
        decode(b"\xff\xfe")
    assert info.value.reason == "invalid_json"
    with pytest.raises(SchemaError) as info:
        decode(b" " * (MAX_EVENT_BYTES + 1))
    assert info.value.reason == "oversized"
    assert str(MAX_EVENT_BYTES) in str(info.value)


def test_occurred_at_is_normalised_to_utc() -> None:
    tz = dt.timezone(dt.timedelta(hours=2))
    e = Outcome(**BASE, outcome="purchase", occurred_at=dt.datetime(2026, 5, 1, 12, tzinfo=tz))
    assert e.occurred_at == dt.datetime(2026, 5, 1, 10, tzinfo=dt.timezone.utc)
    assert e.occurred_at.utcoffset() == dt.timedelta(0)


def test_partition_key_keeps_an_interaction_together() -> None:
    i = Interaction(**BASE, interaction_id=IID, user_input="q", response="a", model="m")
    f = Feedback(**BASE, interaction_id=IID, kind="thumbs", thumbs=1)
    s = Implicit(**BASE, interaction_id=IID, signal="copy")
    o = Outcome(**BASE, interaction_id=IID, outcome="code_accepted")
    assert i.partition_key == f.partition_key == s.partition_key == o.partition_key
    assert i.partition_key == str(IID).encode()
    # without an interaction, the session keeps a session's outcomes together
    assert Outcome(**BASE, outcome="purchase").partition_key == b"sess-1"


def test_json_schema_covers_every_kind_and_accepts_valid_examples() -> None:
    schema = event_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    kinds = set(schema["discriminator"]["mapping"])
    assert kinds == {"interaction", "feedback", "implicit", "outcome"}
    text = json.dumps(schema)
    for field in (
        "system_prompt",
        "prompt_version",
        "shadow",
        "rating",
        "dwell_ms",
        "time_to_outcome_ms",
        "schema_version",
        "event_id",
    ):
        assert field in text


def test_json_schema_validates_with_an_independent_validator() -> None:
    import jsonschema

    schema = event_json_schema()
    for obj in VALID:
        jsonschema.validate({**obj, "event_id": str(uuid.uuid4())}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            {
                "event_type": "feedback",
                **BASE,
                "interaction_id": str(IID),
                "kind": "rating",
                "rating": 9,
            },
            schema,
        )


def test_a_dead_letter_keeps_a_bounded_payload_with_its_length_hash_and_reason() -> None:
    import hashlib

    from feedbackloop.schemas.deadletter import (
        MAX_DEAD_LETTER_PAYLOAD,
        TRUNCATED_PAYLOAD,
        DeadLetter,
    )

    small = DeadLetter(reason="invalid_json", error="bad", payload=b"{" * 1000)
    assert small.payload == b"{" * 1000 and not small.truncated
    big = b"x" * 1_500_000
    dl = DeadLetter(reason="oversized", error="too big", payload=big, source="collector")
    assert len(dl.payload) == TRUNCATED_PAYLOAD < MAX_DEAD_LETTER_PAYLOAD
    assert dl.reason == "oversized" and dl.payload_bytes == len(big)
    assert dl.payload_sha256 == hashlib.sha256(big).hexdigest()
    assert "1500000 bytes" in dl.error
    # Through Kafka headers and back: the same letter, not truncated twice.
    again = DeadLetter.from_message(dl.payload, None, dl.headers())
    assert (again.payload_bytes, again.payload_sha256) == (dl.payload_bytes, dl.payload_sha256)
    assert again.payload == dl.payload and again.reason == "oversized"
    assert sum(len(k) + len(v) for k, v in dl.headers()) + len(dl.payload) < 100_000
