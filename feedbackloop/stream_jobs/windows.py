"""Tumbling event-time windows of sufficient statistics, one set per source partition.

Each partition of the raw topic is aggregated where it is read (no repartition hop); the
rows it emits are partials that sum exactly (see :mod:`feedbackloop.schemas.aggregates`).
A window closes when the partition's watermark (the largest event time seen there) passes
``window_end + allowed_lateness``; later events are counted in ``late_events`` and left out.

Counting is idempotent across a crash and across resends: a window counts each event once,
by its ``event_id``. It keeps the ids of the events it counted (:attr:`WindowState.ids`) for
its lifetime, so a replayed record, an event that waited and is released a second time, and
an event the SDK resent from its spool after a broker crash (a new record with the same
``event_id``) are not counted again (``replayed_effects``). A window also remembers, per
origin partition of the raw topic, the offset of the last record whose effect it holds
(``upto``, in the same changelog record as its counts): a replayed record (its offset was
not committed) is known by its offset alone.

The ids survive a crash without rewriting them all on every batch: each batch's changelog
record of a window carries the ids that batch added, and the same ids go to a second table
(``window_ids``) under ``<window key>#<revision>``. Recovery takes the window's record and
the id chunks of its revisions up to the record's: a chunk of a later revision was written
by a batch whose window record was lost, its events uncounted (:func:`merge_id_chunks`).
Memory: one id per event of the open windows (window size + allowed lateness of traffic).
"""

from __future__ import annotations

import base64
import datetime as dt
import heapq
import json
import math
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.schemas.aggregates import SESSION_SKETCH_K, WindowAggregate, session_hash

__all__ = [
    "Group",
    "WindowState",
    "PartitionWindows",
    "UNATTRIBUTED",
    "id_chunk_key",
    "merge_id_chunks",
    "pack_ids",
    "unpack_ids",
    "window_start",
]

#: (app_id, experiment, variant, prompt_version, model); "" means not set.
Group = tuple[str, str, str, str, str]


def UNATTRIBUTED(app_id: str) -> Group:  # noqa: N802 - reads like a constant at call sites
    """Group of events without a known interaction (orphans, session-level outcomes)."""
    return (app_id, "", "", "", "")


def window_start(ts: float, size: float) -> float:
    """Start of the tumbling window of ``size`` seconds holding event time ``ts``."""
    return math.floor(ts / size) * size


def pack_ids(ids: Iterable[int]) -> bytes:
    """Event ids (a UUID's 128-bit int) as 16 bytes each."""
    return b"".join(i.to_bytes(16, "big") for i in ids)


def unpack_ids(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 16], "big") for i in range(0, len(data), 16)]


def id_chunk_key(window_key: bytes, revision: int) -> bytes:
    """Key in ``window_ids`` of the ids a window's batch of ``revision`` added."""
    return b"%s#%d" % (window_key, revision)


# The statistics a window adds up: WindowAggregate's counts (int) and sums (float), but for
# the int fields set when the window is emitted.
_SET_ON_EMIT = {"aggregate_schema_version", "source_partition", "revision", "distinct_sessions"}
_COUNTERS = tuple(
    n
    for n, f in WindowAggregate.model_fields.items()
    if f.annotation is int and n not in _SET_ON_EMIT
)
_SUMS = tuple(n for n, f in WindowAggregate.model_fields.items() if f.annotation is float)


@dataclass
class WindowState:
    """Mutable sufficient statistics of one (partition, window, group)."""

    c: dict[str, float] = field(default_factory=dict)
    outcome_counts: dict[str, int] = field(default_factory=dict)
    outcome_value_sums: dict[str, float] = field(default_factory=dict)
    #: Session hashes: all of them below 2K, pruned to the K smallest above (KMV).
    sessions: set[int] = field(default_factory=set)
    revision: int = 0
    #: Origin partition -> offset of the last raw record counted here (see the module doc).
    upto: dict[int, int] = field(default_factory=dict)
    #: ``event_id.int`` of every event counted here (see the module doc).
    ids: set[int] = field(default_factory=set)

    def add(self, name: str, value: float = 1) -> None:
        self.c[name] = self.c.get(name, 0) + value

    def add_sessions(self, hashes: set[int]) -> None:
        self.sessions |= hashes
        if len(self.sessions) > 2 * SESSION_SKETCH_K:
            self.sessions = set(heapq.nsmallest(SESSION_SKETCH_K, self.sessions))

    @property
    def sketch(self) -> list[int]:
        return sorted(self.sessions)[:SESSION_SKETCH_K]

    def distinct_sessions(self) -> int:
        """Exact below K distinct sessions, the KMV estimate (K-1)/x_K above."""
        sk = self.sketch
        if len(sk) < SESSION_SKETCH_K:
            return len(sk)
        return round((SESSION_SKETCH_K - 1) / (sk[-1] / 2.0**64))

    def to_bytes(self, batch_ids: bytes = b"") -> bytes:
        """The changelog record; ``batch_ids``: the ids this revision added, packed (the
        others are in ``window_ids`` chunks, see the module doc)."""
        # Written per touched window per batch. from_bytes reads the sketch back as a set, so
        # its order is moot: sort only when the set must be cut to the K smallest.
        s = self.sessions
        sk = list(s) if len(s) <= SESSION_SKETCH_K else self.sketch
        return json.dumps(
            [
                self.c,
                self.outcome_counts,
                self.outcome_value_sums,
                sk,
                self.revision,
                self.upto,
                base64.b64encode(batch_ids).decode(),
            ],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowState:
        c, oc, ov, sk, rev, *rest = json.loads(data)
        upto = {int(p): o for p, o in rest[0].items()} if rest else {}
        # A list here is the origins set of records before windows kept event ids: dropped.
        ids = rest[1] if len(rest) > 1 and isinstance(rest[1], str) else ""
        return cls(c, oc, ov, set(sk), rev, upto, set(unpack_ids(base64.b64decode(ids))))

    def to_aggregate(
        self, group: Group, start: float, size: float, partition: int, emitted_at: dt.datetime
    ) -> WindowAggregate:
        app, exp, var, pv, model = group
        # Field names from the tuples above, so no single value type: pydantic checks them.
        stats: dict[str, Any] = {k: int(self.c.get(k, 0)) for k in _COUNTERS}
        stats.update((k, float(self.c.get(k, 0.0))) for k in _SUMS)
        return WindowAggregate(
            window_start=dt.datetime.fromtimestamp(start, dt.timezone.utc),
            window_end=dt.datetime.fromtimestamp(start + size, dt.timezone.utc),
            app_id=app,
            experiment=exp,
            variant=var,
            prompt_version=pv,
            model=model,
            source_partition=partition,
            revision=max(self.revision, 1),
            emitted_at=emitted_at,
            **stats,
            outcome_counts=dict(self.outcome_counts),
            outcome_value_sums=dict(self.outcome_value_sums),
            distinct_sessions=self.distinct_sessions(),
            session_sketch=self.sketch,
        )


WindowKey = tuple[float, Group]


class PartitionWindows:
    """The open windows of one source partition, and its watermark.

    Events are folded in batches: :meth:`touch` returns the state to update and marks it
    dirty, so the caller writes one changelog record per touched window per batch rather
    than one per event.
    """

    def __init__(self, size: float, lateness: float) -> None:
        self.size = size
        self.lateness = lateness
        self.open: dict[WindowKey, WindowState] = {}
        self.watermark = -math.inf
        self.dirty: set[WindowKey] = set()
        self.late_events = 0
        #: Effects not counted again because the window already held them (replays).
        self.replayed_effects = 0
        #: Session ids seen in the current batch per window, hashed once at flush.
        self._batch_sessions: dict[WindowKey, set[str]] = {}
        #: Origins counted in the current batch per window; ``upto`` moves at batch end so
        #: that several effects of one record (an interaction releasing its waiting
        #: feedback) all count.
        self._batch_upto: dict[WindowKey, dict[int, int]] = {}
        #: Event ids counted in the current batch per window (its changelog writes).
        self._batch_ids: dict[WindowKey, list[int]] = {}

    def is_late(self, ts: float) -> bool:
        return window_start(ts, self.size) + self.size + self.lateness <= self.watermark

    def touch(
        self,
        ts: float,
        group: Group,
        session_id: str,
        event_id: int,
        origin_partition: int = -1,
        origin_offset: int = -1,
    ) -> WindowState | None:
        """The state of the window holding ``ts`` for ``group`` to count event ``event_id``
        in, read at ``(origin_partition, origin_offset)`` of the raw topic; None if it is too
        late or the window already counted that event (a replay, a second release, a
        resend). ``origin_offset=-1``: a released event, out of its origin's order."""
        start = math.floor(ts / self.size) * self.size
        if start + self.size + self.lateness <= self.watermark:
            self.late_events += 1
            return None
        key = (start, group)
        st = self.open.get(key)
        if st is None:
            st = self.open[key] = WindowState()
        if origin_offset >= 0:
            if origin_offset <= st.upto.get(origin_partition, -1):
                self.replayed_effects += 1
                return None
            bu = self._batch_upto.get(key)
            if bu is None:
                self._batch_upto[key] = {origin_partition: origin_offset}
            else:
                bu[origin_partition] = origin_offset
        ids = st.ids
        if event_id in ids:
            self.replayed_effects += 1
            return None
        ids.add(event_id)
        if key not in self.dirty:
            self.dirty.add(key)
            self._batch_sessions[key] = {session_id}
            self._batch_ids[key] = [event_id]
        else:
            self._batch_sessions[key].add(session_id)
            self._batch_ids[key].append(event_id)
        return st

    def advance(self, ts: float) -> None:
        if ts > self.watermark:
            self.watermark = ts

    def end_batch(self) -> list[tuple[WindowKey, WindowState, list[int]]]:
        """Fold the batch's sessions in; return the dirty windows with the event ids the batch
        added to each (to write to the changelog)."""
        out = []
        for key in self.dirty:
            st = self.open.get(key)
            if st is None:
                continue
            st.add_sessions({session_hash(s) for s in self._batch_sessions.get(key, ())})
            bu = self._batch_upto.get(key)
            if bu:
                st.upto.update(bu)
            st.revision += 1
            out.append((key, st, self._batch_ids.get(key, [])))
        self.dirty.clear()
        self._batch_sessions.clear()
        self._batch_upto.clear()
        self._batch_ids.clear()
        return out

    def close_due(self) -> list[tuple[WindowKey, WindowState]]:
        """Remove and return the windows whose end + lateness the watermark has passed."""
        due = [k for k in self.open if k[0] + self.size + self.lateness <= self.watermark]
        return [(k, self.open.pop(k)) for k in sorted(due)]


def merge_id_chunks(
    windows: MutableMapping[bytes, WindowState],
    chunks: MutableMapping[bytes, bytes],
    belongs: Callable[[bytes], bool] | None = None,
) -> None:
    """Add the recovered ``window_ids`` chunks to their windows' ids and drop them from
    ``chunks`` (the ids live on in the windows). A chunk of a revision past its window's
    record, or of no window, is dropped: its batch was cut by a crash and counted nothing.
    ``belongs``: a predicate on a window key; chunks of other windows stay."""
    for k in list(chunks):
        wk, _, rev = k.rpartition(b"#")
        if belongs is not None and not belongs(wk):
            continue
        data = chunks.pop(k)
        st = windows.get(wk)
        if st is not None and int(rev) <= st.revision:
            st.ids.update(unpack_ids(data))
