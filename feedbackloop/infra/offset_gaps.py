"""A consumer never moves past an offset that may still be being written.

Why (docs/RELIABILITY.md, "A fetch can run ahead of a produce"): Tansu 0.6's S3 engine gives
a produce its offset (a conditional write of the partition's watermark) before it writes the
batch object. A fetch that runs in between, while another connection's later produce to the
same partition has already written its batch, returns the later batch: the consumer's
position jumps over the earlier one, and a worker that commits what it read would commit
past records it never saw. Measured with ``scripts/reproduce_offset_gaps.py``.

Our topics are written without transactions, so their offsets are contiguous: a hole between
consecutive records a consumer sees means records not visible yet. :class:`GapGuard` says
how many of a partition's fetched records may be processed (those before the first hole);
the caller seeks back to the hole and fetches again. A hole that stays longer than
``max_wait_s`` is real (a produce that failed after taking its offset, transaction markers
of a third-party producer, compaction): it is logged at ERROR, counted, and passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

__all__ = ["Admission", "GapGuard"]

log = logging.getLogger(__name__)

#: How long a hole is waited for before it is taken as real. A produce fills its hole within
#: milliseconds (one S3 PUT); seconds cover a loaded machine.
DEFAULT_MAX_WAIT_S = 5.0


@dataclass(frozen=True)
class Admission:
    """``count`` leading records may be processed; if ``missing`` is set, seek there and
    fetch again (the records after the hole are fetched again with it)."""

    count: int
    missing: int | None = None


class GapGuard:
    """Per partition: the next offset the consumer must see, and how long it waited for it."""

    def __init__(
        self,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        clock: Callable[[], float] = time.monotonic,
        name: str = "consumer",
    ) -> None:
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._name = name
        self._next: dict[Hashable, int] = {}
        self._waiting: dict[Hashable, tuple[int, float]] = {}
        #: Holes that closed while we waited (the race happened and cost nothing).
        self.waited = 0
        #: Offsets passed over after ``max_wait_s`` (never read by this consumer).
        self.skipped = 0

    def expect(self, tp: Hashable, offset: int | None) -> None:
        """The partition's position after an assignment or seek (None: not known)."""
        self._waiting.pop(tp, None)
        if offset is None or offset < 0:
            self._next.pop(tp, None)
        else:
            self._next[tp] = offset

    def forget(self, tp: Hashable) -> None:
        self.expect(tp, None)

    def waiting(self, tp: Hashable) -> int | None:
        """The hole ``tp`` waits for, if any."""
        w = self._waiting.get(tp)
        return w[0] if w else None

    def admit(self, tp: Hashable, offsets: Sequence[int]) -> Admission:
        """How many of ``offsets`` (one partition's fetched records, ascending) to process."""
        expected = self._next.get(tp)
        for i, offset in enumerate(offsets):
            if expected is not None and offset > expected:
                if not self._hole_is_real(tp, expected, offset):
                    if i:
                        self._next[tp] = expected
                    return Admission(i, expected)
            elif self._waiting.get(tp, (None,))[0] == offset:
                self._waiting.pop(tp)
                self.waited += 1
                log.debug(
                    "%s: offset %d of %s became visible on a re-fetch", self._name, offset, tp
                )
            expected = offset + 1 if expected is None else max(expected, offset + 1)
        if expected is not None:
            self._next[tp] = expected
        return Admission(len(offsets))

    def _hole_is_real(self, tp: Hashable, missing: int, seen: int) -> bool:
        now = self._clock()
        waiting = self._waiting.get(tp)
        if waiting is None or waiting[0] != missing:
            waiting = self._waiting[tp] = (missing, now)
        if now - waiting[1] < self.max_wait_s:
            return False
        del self._waiting[tp]
        self.skipped += seen - missing
        log.error(
            "%s: offsets %d..%d of %s did not appear within %.1f s; passing over them "
            "(%d offsets skipped so far). On a topic written without transactions these are "
            "records this consumer never read.",
            self._name,
            missing,
            seen - 1,
            tp,
            self.max_wait_s,
            self.skipped,
        )
        return True
