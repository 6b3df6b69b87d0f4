"""Dead letters: the original bytes as the Kafka value, the why and where in headers.

This follows the Kafka Connect DLQ convention, so the payload stays byte-for-byte the
original and can be replayed after a fix.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["DeadLetter", "HEADER_PREFIX"]

HEADER_PREFIX = "feedbackloop.dlq."


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
        )
