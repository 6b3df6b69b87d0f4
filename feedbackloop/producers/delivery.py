"""Delivery counters an app can read: what the SDK accepted, delivered, spooled or lost."""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, fields

__all__ = ["DeliveryStats", "Counters", "permanent_refusal"]


@dataclass(frozen=True)
class DeliveryStats:
    """A snapshot of the client's counters.

    ``enqueued`` counts events the app handed over and that passed validation. Each ends up
    ``delivered`` (acknowledged by all in-sync replicas) or, while the broker is away,
    ``spooled`` to disk and later ``replayed``. ``failed`` are permanent broker refusals
    (logged with their event id); ``dropped`` are events lost because the spool was full or
    the client already closed (logged loudly); ``invalid`` failed validation and went to the
    dead-letter topic instead. ``spool_pending`` is how many wait on disk right now;
    ``spool_quarantined`` how many records the broker refused permanently are kept aside in
    the spool file (never replayed, so they cannot block the rest).
    """

    enqueued: int = 0
    delivered: int = 0
    failed: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    invalid: int = 0
    spool_pending: int = 0
    spool_quarantined: int = 0


class Counters:
    """Thread-safe counters behind :class:`DeliveryStats`.

    A single increment (the hot path: one per event, from the app's threads and from the
    delivery thread) is ``next()`` on an :class:`itertools.count`: one C call that runs no
    Python code, so under the GIL it cannot interleave with another thread's, and nobody
    waits for a lock. Bulk additions (replayed batches) are rare and take a lock.
    """

    def __init__(self) -> None:
        names = [f.name for f in fields(DeliveryStats)]
        self._ticks = {name: itertools.count() for name in names}
        self._bulk = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def ticker(self, name: str) -> itertools.count[int]:
        """The counter itself, for a hot path to call ``next()`` on directly."""
        return self._ticks[name]

    def add(self, name: str, n: int = 1) -> None:
        if n == 1:
            next(self._ticks[name])
        elif n:
            with self._lock:
                self._bulk[name] += n

    def snapshot(self, spool_pending: int, spool_quarantined: int = 0) -> DeliveryStats:
        with self._lock:
            values = {name: _peek(tick) + self._bulk[name] for name, tick in self._ticks.items()}
        values.update(spool_pending=spool_pending, spool_quarantined=spool_quarantined)
        return DeliveryStats(**values)


def _peek(tick: itertools.count[int]) -> int:
    """How many times ``next()`` was called: the value ``repr`` shows, ``count(5)``."""
    return int(repr(tick)[6:-1])


# Broker or librdkafka refusals of one record that no retry can cure: this record is too
# large or malformed. Retrying it forever would block every record behind it in the spool.
_PERMANENT = frozenset(
    {
        2,  # INVALID_MSG (corrupt)
        4,  # INVALID_MSG_SIZE
        10,  # MSG_SIZE_TOO_LARGE (librdkafka's message.max.bytes, or the broker's)
        18,  # RECORD_LIST_TOO_LARGE
        44,  # POLICY_VIOLATION
        87,  # INVALID_RECORD
        -186,  # _INVALID_ARG
    }
)


def permanent_refusal(err: object) -> str | None:
    """The reason if the Kafka error ``err`` (a ``KafkaError``, or a ``KafkaException``
    carrying one) refuses this record for good; ``None`` if a retry may succeed."""
    if isinstance(err, BaseException):
        err = err.args[0] if err.args else None
    code = getattr(err, "code", None)
    if code is None or not callable(code):
        return None
    if code() in _PERMANENT and not getattr(err, "fatal", lambda: False)():
        return f"{getattr(err, 'name', lambda: code())()}: {getattr(err, 'str', lambda: '')()}"
    return None
