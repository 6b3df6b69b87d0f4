"""Sinks in two layers: :class:`BaseSink` (``add`` / ``flush``) and :class:`BatchingSink`.

:class:`BatchingSink` keeps one :class:`SinkBatch` per (topic, partition) and bounds it by
size and age; a concrete sink implements only :meth:`BatchingSink.write`. ``flush()`` returns
the Kafka offsets that are now safe to commit: a batch's offsets become committable only
after its ``write`` returned, so a crash between insert and commit replays the batch (at
least once) and never skips it. Idempotency on replay is the concrete sink's business
(ClickHouse: ReplacingMergeTree by event_id plus insert deduplication tokens).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.config import default_of

__all__ = ["BaseSink", "BatchingSink", "SinkBatch", "TopicPartition", "retry_delay"]

TopicPartition = tuple[str, int]


@dataclass
class SinkBatch:
    """Items read from one (topic, partition), in offset order."""

    topic: str
    partition: int
    items: list[Any] = field(default_factory=list)
    first_offset: int = -1
    last_offset: int = -1
    #: ``time.monotonic()`` when the first item arrived; the age bound counts from here.
    started: float = 0.0
    #: Free for the concrete sink: e.g. rows prepared once and reused when a write is retried.
    state: Any = None

    def append(self, offset: int, item: Any) -> None:
        if not self.items:
            self.first_offset = offset
            self.started = time.monotonic()
        self.items.append(item)
        self.last_offset = offset

    def __len__(self) -> int:
        return len(self.items)

    @property
    def key(self) -> str:
        """A stable name of exactly this batch: the same offsets give the same key on replay."""
        return f"{self.topic}/{self.partition}/{self.first_offset}-{self.last_offset}"


class BaseSink(abc.ABC):
    """Anything that accepts items read from Kafka and makes them durable on ``flush``."""

    @abc.abstractmethod
    def add(self, topic: str, partition: int, offset: int, item: Any) -> None:
        """Accept one item read at ``offset``; it is durable only after :meth:`flush`."""

    @abc.abstractmethod
    def flush(self) -> dict[TopicPartition, int]:
        """Make everything added so far durable; return the next offsets to commit.

        Raises :class:`~feedbackloop.errors.BackPressure` when the destination cannot take the
        data now; call again after ``retry_after`` seconds (nothing added is lost).
        """

    def setup(self) -> None:  # noqa: B027 - optional hook, not abstract on purpose
        """Connect and prepare (called once before the first item; never from __init__)."""

    def close(self) -> None:  # noqa: B027
        """Release connections."""


class BatchingSink(BaseSink):
    """Batches per (topic, partition) with a row bound and an age bound.

    ``max_rows`` closes a batch when it holds that many items; ``max_age_s`` makes
    :meth:`due` true once the oldest pending item waited that long. Subclasses implement
    :meth:`write`.
    """

    def __init__(
        self,
        max_rows: int = default_of("sink_max_rows"),
        max_age_s: float = default_of("sink_max_age"),
    ) -> None:
        if max_rows < 1 or max_age_s <= 0:
            raise ValueError("max_rows must be >= 1 and max_age_s > 0")
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._open: dict[TopicPartition, SinkBatch] = {}
        # Full batches wait here (in arrival order) until flush writes them.
        self._closed: list[SinkBatch] = []
        # Offsets of batches written but not yet handed to the caller (a later batch
        # raised BackPressure in the same flush).
        self._written: dict[TopicPartition, int] = {}

    @abc.abstractmethod
    def write(self, batch: SinkBatch) -> None:
        """Make ``batch`` durable, all of it, or raise.

        Raise :class:`BackPressure` for a transient failure (the same batch is retried later);
        any other exception is a bug and propagates.
        """

    # --- BaseSink ----------------------------------------------------------------------------
    def add(self, topic: str, partition: int, offset: int, item: Any) -> None:
        tp = (topic, partition)
        batch = self._open.get(tp)
        if batch is None:
            batch = self._open[tp] = SinkBatch(topic, partition)
        batch.append(offset, item)
        if len(batch) >= self.max_rows:
            self._closed.append(self._open.pop(tp))

    def flush(self) -> dict[TopicPartition, int]:
        self._closed.extend(self._open.values())
        self._open.clear()
        while self._closed:
            self.write(self._closed[0])  # BackPressure propagates; it stays first in line
            self._first_written()
        done, self._written = self._written, {}
        return done

    def _first_written(self) -> None:
        """The first full batch is durable: its offsets go out with the next flush."""
        batch = self._closed.pop(0)
        self._written[(batch.topic, batch.partition)] = batch.last_offset + 1

    # --- bounds ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Items added but not yet written."""
        return sum(len(b) for b in self._open.values()) + sum(len(b) for b in self._closed)

    def due(self, now: float | None = None) -> bool:
        """True when a batch is full or the oldest pending item is older than ``max_age_s``."""
        if self._closed:
            return True
        now = time.monotonic() if now is None else now
        return any(now - b.started >= self.max_age_s for b in self._open.values())

    def time_to_due(self, now: float | None = None) -> float | None:
        """Seconds until :meth:`due` turns true by age (0 if it is), ``None`` if nothing pends."""
        if self._closed:
            return 0.0
        if not self._open:
            return None
        now = time.monotonic() if now is None else now
        oldest = min(b.started for b in self._open.values())
        return max(0.0, self.max_age_s - (now - oldest))

    def discard(self, partitions: Iterable[TopicPartition]) -> int:
        """Drop pending items of ``partitions`` (revoked in a rebalance); return how many.

        Their offsets were never committed, so the partition's next owner reads them again.
        """
        gone = set(partitions)
        n = 0
        for tp in list(self._open):
            if tp in gone:
                n += len(self._open.pop(tp))
        kept = []
        for b in self._closed:
            if (b.topic, b.partition) in gone:
                n += len(b)
            else:
                kept.append(b)
        self._closed = kept
        for tp in gone:
            self._written.pop(tp, None)
        return n


def retry_delay(attempt: int, base: float = 0.1, cap: float = 10.0) -> float:
    """Exponential back-off without jitter: 0.1, 0.2, 0.4, ... capped at ``cap`` seconds."""
    return float(min(cap, base * (2 ** max(0, attempt))))
