"""Dead letters: the original bytes as the Kafka value, the why and where in headers.

This follows the Kafka Connect DLQ convention, so the payload stays byte-for-byte the
original and can be replayed after a fix, up to :data:`MAX_DEAD_LETTER_PAYLOAD` bytes. A
larger payload (an oversized event, megabytes of invalid JSON) is cut to its first
:data:`TRUNCATED_PAYLOAD` bytes and its original length and SHA-256 go into the headers
(``payload_bytes``, ``payload_sha256``) and the error text: the dead letter itself must
always fit the broker's message limit, or it would be refused, spooled and retried forever.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DeadLetter", "HEADER_PREFIX", "MAX_DEAD_LETTER_PAYLOAD", "TRUNCATED_PAYLOAD"]

HEADER_PREFIX = "feedbackloop.dlq."
#: Largest payload a dead letter carries whole: with its headers (the error is cut at 4000
#: characters) and key it stays under librdkafka's default ``message.max.bytes`` (1,000,000).
MAX_DEAD_LETTER_PAYLOAD = 900_000
#: What is kept of a larger payload: enough to see what it was.
TRUNCATED_PAYLOAD = 64 * 1024


@dataclass(frozen=True)
class DeadLetter:
    """Why an event was rejected and where it came from."""

    reason: str
    error: str
    payload: bytes
    key: bytes | None = None
    source: str = "unknown"  # "sdk", "collector", "stream", "sink"
    source_topic: str | None = None
    source_partition: int | None = None
    source_offset: int | None = None
    failed_at: dt.datetime | None = None
    #: Set when the payload was truncated: the original length and SHA-256 (hex).
    payload_bytes: int | None = None
    payload_sha256: str | None = None

    def __post_init__(self) -> None:
        if len(self.payload) > MAX_DEAD_LETTER_PAYLOAD and self.payload_bytes is None:
            # frozen: set once, here, so no code path can build an unbounded dead letter
            object.__setattr__(self, "payload_bytes", len(self.payload))
            object.__setattr__(self, "payload_sha256", hashlib.sha256(self.payload).hexdigest())
            object.__setattr__(self, "payload", self.payload[:TRUNCATED_PAYLOAD])
            object.__setattr__(
                self,
                "error",
                f"{self.error[:3000]} [payload truncated to {TRUNCATED_PAYLOAD} of "
                f"{self.payload_bytes} bytes, sha256 {self.payload_sha256}]",
            )

    @property
    def truncated(self) -> bool:
        return self.payload_bytes is not None

    def headers(self) -> list[tuple[str, bytes]]:
        failed_at = self.failed_at or dt.datetime.now(dt.timezone.utc)
        h = {
            "reason": self.reason,
            "error": self.error[:4000],
            "source": self.source,
            "failed_at": failed_at.isoformat(),
        }
        if self.source_topic is not None:
            h["source_topic"] = self.source_topic
        if self.source_partition is not None:
            h["source_partition"] = str(self.source_partition)
        if self.source_offset is not None:
            h["source_offset"] = str(self.source_offset)
        if self.payload_bytes is not None:
            h["payload_bytes"] = str(self.payload_bytes)
            h["payload_sha256"] = self.payload_sha256 or ""
        return [(HEADER_PREFIX + k, v.encode()) for k, v in h.items()]

    @classmethod
    def from_message(
        cls, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes | None]] | None
    ) -> DeadLetter:
        h = {
            k[len(HEADER_PREFIX) :]: (v or b"").decode("utf-8", "replace")
            for k, v in (headers or [])
            if k.startswith(HEADER_PREFIX)
        }
        return cls(
            reason=h.get("reason", "unknown"),
            error=h.get("error", ""),
            payload=value,
            key=key,
            source=h.get("source", "unknown"),
            source_topic=h.get("source_topic"),
            source_partition=int(h["source_partition"]) if "source_partition" in h else None,
            source_offset=int(h["source_offset"]) if "source_offset" in h else None,
            failed_at=dt.datetime.fromisoformat(h["failed_at"]) if "failed_at" in h else None,
            payload_bytes=int(h["payload_bytes"]) if h.get("payload_bytes", "").isdigit() else None,
            payload_sha256=h.get("payload_sha256"),
        )
