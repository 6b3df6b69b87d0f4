"""What a client remembers about the sessions it has seen, in this process: the session of
each interaction it logged (so feedback on it needs no ``session_id``) and the variant each
session got (sticky, even if the experiment's weights change while the session is active).

Both are bounded: the least recently used of more than ``limit`` entries is forgotten.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections import OrderedDict
from typing import Any

from feedbackloop.producers.assignment import Experiment

__all__ = ["InteractionSessions", "StickyVariants"]

REMEMBERED_SESSIONS = 100_000
_UUID = uuid.UUID


class InteractionSessions:
    """Interaction id -> (session id, the id's canonical string, if the client made it).

    ``table`` is keyed by a UUID's ``.int`` (a str id as given). Ints and strs hash and
    compare without running Python code, so each OrderedDict operation is atomic under the
    GIL: the hot path reads ``table`` directly and nobody takes a lock.
    """

    def __init__(self, limit: int = REMEMBERED_SESSIONS) -> None:
        self.table: OrderedDict[int | str, tuple[Any, str | None]] = OrderedDict()
        self._limit = limit

    def remember(self, interaction_id: Any, session_id: Any, canonical: str | None) -> None:
        if type(interaction_id) is _UUID:
            key: int | str = interaction_id.int
        elif type(interaction_id) is str:
            key = interaction_id
        else:
            return
        table = self.table
        table[key] = (session_id, canonical)
        if len(table) > self._limit:
            # another thread may have evicted the last one first
            with contextlib.suppress(KeyError):
                table.popitem(last=False)

    def recall(self, interaction_id: Any) -> tuple[Any, str | None] | None:
        if type(interaction_id) is _UUID:
            return self.table.get(interaction_id.int)
        if type(interaction_id) is str:
            return self.table.get(interaction_id)
        return None


class StickyVariants:
    """The variant each (experiment, session) was given first in this process."""

    def __init__(self, limit: int = REMEMBERED_SESSIONS) -> None:
        self._assigned: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def variant(self, experiment: Experiment, session_id: str) -> str:
        key = (experiment.name, session_id)
        with self._lock:
            found = self._assigned.get(key)
            if found is not None:
                self._assigned.move_to_end(key)
                return found
        # Hash outside the lock: other threads need not wait for it.
        variant = experiment.assign(session_id)
        with self._lock:
            self._assigned[key] = variant
            if len(self._assigned) > self._limit:
                self._assigned.popitem(last=False)
        return variant
