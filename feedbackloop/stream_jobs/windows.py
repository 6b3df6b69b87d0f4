"""Tumbling event-time windows of sufficient statistics, one set per source partition.

Each partition of the raw topic is aggregated where it is read (no repartition hop); the
rows it emits are partials that sum exactly (see :mod:`feedbackloop.schemas.aggregates`).
A window closes when the partition's watermark (the largest event time seen there) passes
``window_end + allowed_lateness``; later events are counted in ``late_events`` and left out.

Counting is idempotent across a crash: each window remembers, per origin partition of the
raw topic, the offset of the last record whose effect it holds (``upto``), written in the
same changelog record as its counts. A record replayed after a crash (its offset was not
committed) finds its offset at or below ``upto`` and is not counted again
(``replayed_effects``). An event that waited for its interaction is counted when it is
released (joined when the interaction comes, or orphaned after the grace period), out of
its origin's order: a window keeps the origins of the released events it counted
(``released``), and neither a second release nor a replay of the event counts it again.
"""

from __future__ import annotations

import datetime as dt
import heapq
import json
import math
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.schemas.aggregates import SESSION_SKETCH_K, WindowAggregate, session_hash

__all__ = ["Group", "WindowState", "PartitionWindows", "UNATTRIBUTED", "window_start"]

#: (app_id, experiment, variant, prompt_version, model); "" means not set.
Group = tuple[str, str, str, str, str]


def UNATTRIBUTED(app_id: str) -> Group:  # noqa: N802 - reads like a constant at call sites
    """Group of events without a known interaction (orphans, session-level outcomes)."""
    return (app_id, "", "", "", "")


def window_start(ts: float, size: float) -> float:
    """Start of the tumbling window of ``size`` seconds holding event time ``ts``."""
    return math.floor(ts / size) * size


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
    #: Origins ``(partition, offset)`` of the waiting events counted here on release.
    released: set[tuple[int, int]] = field(default_factory=set)

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

    def to_bytes(self) -> bytes:
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
                [list(o) for o in self.released],
            ],
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowState:
        c, oc, ov, sk, rev, *rest = json.loads(data)
        upto = {int(p): o for p, o in rest[0].items()} if rest else {}
        released = {(p, o) for p, o in rest[1]} if len(rest) > 1 else set()
        return cls(c, oc, ov, set(sk), rev, upto, released)

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

    def is_late(self, ts: float) -> bool:
        return window_start(ts, self.size) + self.size + self.lateness <= self.watermark

    def touch(
        self,
        ts: float,
        group: Group,
        session_id: str,
        origin_partition: int = -1,
        origin_offset: int = -1,
    ) -> WindowState | None:
        """The state of the window holding ``ts`` for ``group`` to count the effect of the
        raw record at ``(origin_partition, origin_offset)`` in; None if it is too late or the
        window already holds that record's effects (a replay). ``origin_offset=-1``: no
        record (the caller checks :attr:`WindowState.released`)."""
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
        if key not in self.dirty:
            self.dirty.add(key)
            self._batch_sessions[key] = {session_id}
        else:
            self._batch_sessions[key].add(session_id)
        return st

    def advance(self, ts: float) -> None:
        if ts > self.watermark:
            self.watermark = ts

    def end_batch(self) -> list[tuple[WindowKey, WindowState]]:
        """Fold the batch's sessions in; return the dirty windows (to write to the changelog)."""
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
            out.append((key, st))
        self.dirty.clear()
        self._batch_sessions.clear()
        self._batch_upto.clear()
        return out

    def close_due(self) -> list[tuple[WindowKey, WindowState]]:
        """Remove and return the windows whose end + lateness the watermark has passed."""
        due = [k for k in self.open if k[0] + self.size + self.lateness <= self.watermark]
        return [(k, self.open.pop(k)) for k in sorted(due)]
