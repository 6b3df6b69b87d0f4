"""The contract between :class:`~feedbackloop.producers.FeedbackClient` and what carries its
events: the facade owns the public API, validation and encoding, event ids, variant
assignment, the session memo, the ``on_event`` tap, strict mode and the stats API; a
transport owns delivery mechanics (queueing, retries, the on-disk spool and its replay,
background threads) and counts what became of each event it was handed.

Two transports implement it: :class:`~feedbackloop.producers.kafka_transport.KafkaTransport`
(librdkafka, spool and replay; the default) and
:class:`~feedbackloop.producers.http_transport.HttpTransport` (batches posted to the HTTP
collector). ``send_event`` and ``send_dead_letter`` run on the host app's threads for every
event, so they must return at once (no network I/O on the caller's thread); no method may
raise because of the destination, and only ``flush`` and ``close`` wait, for at most their
timeout.

A started transport registers with :func:`close_at_exit`, so events still queued when the
interpreter exits are delivered or spooled within the transport's close timeout.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from feedbackloop.producers.delivery import Counters, DeliveryStats

__all__ = ["Headers", "Transport", "close_at_exit", "forget_at_exit"]

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]


@runtime_checkable
class Transport(Protocol):
    """Delivers encoded events; never blocks the caller, never raises because of the network.

    ``counters`` is shared with the facade: the facade counts ``enqueued`` and ``invalid``,
    the transport counts ``delivered``, ``spooled``, ``replayed``, ``failed`` and
    ``dropped``.
    """

    counters: Counters

    def send_event(self, key: bytes | None, value: bytes) -> bool:
        """Take one valid event's bytes (``key``: its partition key). True once it is queued
        or spooled; False if it was dropped (and counted ``dropped``)."""
        ...

    def send_dead_letter(self, key: bytes | None, value: bytes, headers: Headers) -> bool:
        """Take one rejected event (reason and source in ``headers``); True once queued or
        spooled, or when the destination dead-letters on its own side."""
        ...

    def stats(self) -> DeliveryStats:
        """A snapshot of ``counters``, with what only the transport knows (how many events
        wait on disk right now)."""
        ...

    def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` s for queued events; returns how many are still queued."""
        ...

    def close(self, timeout: float | None = None) -> None:
        """Deliver or spool what is queued within ``timeout`` s (None: the transport's
        default), then stop; events sent afterwards are dropped. Idempotent."""
        ...


# Transports still open at interpreter exit flush and spool, so a crashing-out app loses
# nothing. Weak: a transport its app dropped before starting it has nothing to close; a
# started one is kept alive by its own background thread until it is closed.
_open: weakref.WeakSet[Transport] = weakref.WeakSet()


def close_at_exit(transport: Transport) -> None:
    """Close ``transport`` (with its default timeout) when the interpreter exits."""
    _open.add(transport)


def forget_at_exit(transport: Transport) -> None:
    """``transport`` closed itself: nothing left to do at exit."""
    _open.discard(transport)


@atexit.register
def _close_open_transports() -> None:
    for transport in list(_open):
        try:
            transport.close()
        except Exception:
            log.exception("feedbackloop: error while closing a client at exit")
