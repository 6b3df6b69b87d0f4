"""Deterministic identity for events that arrive without ``event_id`` or ``occurred_at``.

Our SDK always sets both; a third-party producer may not. The models' defaults (a random
UUID4, the time of decoding) would give a replayed event a new identity each time it is read,
and stores that deduplicate on ``event_id`` would keep every copy. So whoever first reads an
event from the raw topic (the stream jobs, or the sink with ``--raw``) fills what is missing
from where the event sits in the log, which every replay sees the same:

* ``event_id`` = UUID5(:data:`EVENT_ID_NAMESPACE`, ``"<topic>/<partition>/<offset>"``) of the
  raw record (the raw topic's, also for events the stream jobs repartition);
* ``occurred_at`` = the raw record's Kafka timestamp (the producer's CreateTime, or the
  broker's LogAppendTime on a topic configured so), in UTC, to the millisecond.

A producer that sends the same id-less event twice gets two records, hence two events:
without an id nobody can tell a retry from a second click. Send ``event_id`` to be safe.
"""

from __future__ import annotations

import datetime as dt
import uuid

from feedbackloop.schemas.events import Envelope
from feedbackloop.schemas.serialization import decode

__all__ = ["EVENT_ID_NAMESPACE", "derived_event_id", "needs_identity", "with_identity"]

#: Namespace of derived event ids (a fixed, random UUID: never change it).
EVENT_ID_NAMESPACE = uuid.UUID("5b0c6a56-0f55-4a38-9d83-7f6f0b4e2a1d")


def derived_event_id(topic: str, partition: int, offset: int) -> uuid.UUID:
    return uuid.uuid5(EVENT_ID_NAMESPACE, f"{topic}/{partition}/{offset}")


def needs_identity(event: Envelope) -> bool:
    """True when the producer left out ``event_id`` or ``occurred_at``."""
    fields = event.model_fields_set
    return "event_id" not in fields or "occurred_at" not in fields


def with_identity(
    event: Envelope, value: bytes, topic: str, partition: int, offset: int, timestamp_ms: int
) -> tuple[Envelope, bytes]:
    """The event and its JSON with the missing ``event_id`` / ``occurred_at`` filled in
    (see the module doc). The JSON keeps the producer's bytes after the added fields."""
    fields = event.model_fields_set
    add: list[bytes] = []
    if "event_id" not in fields:
        add.append(b'"event_id":"%s"' % str(derived_event_id(topic, partition, offset)).encode())
    if "occurred_at" not in fields:
        at = dt.datetime.fromtimestamp(max(0, timestamp_ms) / 1000.0, dt.timezone.utc)
        add.append(b'"occurred_at":"%s"' % at.isoformat(timespec="milliseconds").encode())
    if not add:
        return event, value
    body = value.strip()
    # A valid event is a JSON object with at least event_type: "{" then a field.
    filled = b"{" + b",".join(add) + b"," + body[1:]
    return decode(filled), filled
