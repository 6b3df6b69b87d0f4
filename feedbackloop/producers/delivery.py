"""Delivery counters an app can read: what the SDK accepted, delivered, spooled or lost."""

from __future__ import annotations

import threading
from dataclasses import dataclass, fields

__all__ = ["DeliveryStats", "Counters"]


@dataclass(frozen=True)
class DeliveryStats:
    """A snapshot of the client's counters.

    ``enqueued`` counts events the app handed over and that passed validation. Each ends up
    ``delivered`` (acknowledged by all in-sync replicas) or, while the broker is away,
    ``spooled`` to disk and later ``replayed``. ``failed`` are permanent broker refusals
    (logged with their event id); ``dropped`` are events lost because the spool was full or
    the client already closed (logged loudly); ``invalid`` failed validation and went to the
    dead-letter topic instead. ``spool_pending`` is how many wait on disk right now.
    """

    enqueued: int = 0
    delivered: int = 0
    failed: int = 0
    spooled: int = 0
    replayed: int = 0
    dropped: int = 0
    invalid: int = 0
    spool_pending: int = 0


class Counters:
    """Thread-safe counters behind :class:`DeliveryStats`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys((f.name for f in fields(DeliveryStats)), 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def snapshot(self, spool_pending: int) -> DeliveryStats:
        with self._lock:
            return DeliveryStats(**{**self._values, "spool_pending": spool_pending})
