"""The stream jobs' hot path, free of faust: validate, enrich, window, one batch at a time.

:class:`Pipeline` turns a batch of raw records of one partition into output messages
(enriched events, dead letters, window aggregates) and changelog records of its state, through
an :class:`Output`. Its state lives in plain dicts that the faust layer shares with the
changelog-backed tables' stores, so a restart recovers it (see :mod:`.app`).

Per-event work is kept small: one pydantic-core parse-and-validate, dict look-ups, counter
increments and a byte splice. Per-batch work: one changelog write per touched window and
per partition watermark.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from feedbackloop.errors import SchemaError
from feedbackloop.schemas import (
    DeadLetter,
    Feedback,
    FeedbackKind,
    Implicit,
    ImplicitSignal,
    Interaction,
    Outcome,
    Topics,
)
from feedbackloop.schemas.serialization import decode
from feedbackloop.stream_jobs.config import StreamConfig
from feedbackloop.stream_jobs.enrich import (
    ENRICHED_PREFIX,
    InteractionRecord,
    enriched_json,
    interaction_record,
    iso_now,
)
from feedbackloop.stream_jobs.windows import UNATTRIBUTED, Group, PartitionWindows, WindowState

__all__ = ["Output", "PendingEvent", "Pipeline", "PipelineStats", "TABLES"]

log = logging.getLogger(__name__)

#: Payload kept of a dead letter the producer refuses whole.
_DLQ_TRUNCATE = 256 * 1024

#: Names of the changelog-backed tables the pipeline keeps.
TABLES = ("interactions", "pending", "windows", "watermarks")

_FEEDBACK_KIND = {
    "thumbs": None,  # thumbs_up / thumbs_down, decided by the vote
    "rating": "rating_count",
    "correction": "corrections",
    "comment": "comments",
    "report": "reports",
}
# Keyed by the enum's value: an Enum's own hash and ``.value`` are Python-level calls.
_IMPLICIT_COUNTER = {s.value: "implicit_" + s.value for s in ImplicitSignal}


class Output(Protocol):
    """Where the pipeline writes; the faust layer backs it with a Kafka producer."""

    def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None: ...

    def changelog(self, table: str, partition: int, key: bytes, value: bytes | None) -> None: ...


@dataclass(slots=True)
class PendingEvent:
    """A feedback, signal or outcome waiting for its interaction."""

    raw: bytes
    offset: int
    arrived: float  # wall clock, epoch seconds
    occurred_at: float
    session_id: str
    app_id: str
    partition: int

    def to_obj(self) -> list[Any]:
        return [
            self.raw.decode(),
            self.offset,
            self.arrived,
            self.occurred_at,
            self.session_id,
            self.app_id,
            self.partition,
        ]

    @classmethod
    def from_obj(cls, o: list[Any]) -> PendingEvent:
        return cls(o[0].encode(), o[1], o[2], o[3], o[4], o[5], o[6])


def encode_pending(events: Sequence[PendingEvent]) -> bytes:
    return json.dumps([e.to_obj() for e in events], separators=(",", ":")).encode()


def decode_pending(data: bytes) -> list[PendingEvent]:
    return [PendingEvent.from_obj(o) for o in json.loads(data)]


def window_key(partition: int, start: float, group: Group) -> bytes:
    return json.dumps([partition, start, list(group)], separators=(",", ":")).encode()


def parse_window_key(key: bytes) -> tuple[int, float, Group]:
    p, start, g = json.loads(key)
    return p, start, tuple(g)  # type: ignore[return-value]


@dataclass
class PipelineStats:
    """Counters that must add up: ``records_in == valid + dead_letters``."""

    records_in: int = 0
    valid: int = 0
    dead_letters: int = 0
    enriched: int = 0
    orphaned: int = 0
    pending: int = 0
    late_events: int = 0
    aggregates: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)


class Pipeline:
    """Validation, enrichment with a grace period, and per-partition windows."""

    def __init__(
        self,
        topics: Topics,
        config: StreamConfig,
        output: Output,
        *,
        interactions: MutableMapping[bytes, InteractionRecord] | None = None,
        pending: MutableMapping[bytes, list[PendingEvent]] | None = None,
        windows: MutableMapping[bytes, WindowState] | None = None,
        watermarks: MutableMapping[bytes, float] | None = None,
    ) -> None:
        self.topics = topics
        self.config = config
        self.out = output
        # The four dicts are the faust tables' stores (or plain dicts in unit tests).
        self.interactions = interactions if interactions is not None else {}
        self.pending = pending if pending is not None else {}
        self.window_store = windows if windows is not None else {}
        self.watermark_store = watermarks if watermarks is not None else {}
        self.partitions: dict[int, PartitionWindows] = {}
        self.last_event_wall: dict[int, float] = {}
        self.stats = PipelineStats()

    # --- state ----------------------------------------------------------------------------
    def windows_of(self, partition: int) -> PartitionWindows:
        pw = self.partitions.get(partition)
        if pw is None:
            pw = self.partitions[partition] = PartitionWindows(
                self.config.window_s, self.config.allowed_lateness_s
            )
            wm = self.watermark_store.get(str(partition).encode())
            if wm is not None:
                pw.watermark = wm
            for key, st in self.window_store.items():
                p, start, group = parse_window_key(key)
                if p == partition:
                    pw.open[(start, group)] = st
        return pw

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the window view of revoked partitions; it is rebuilt from the store."""
        for p in partitions:
            self.partitions.pop(p, None)

    # --- hot path -------------------------------------------------------------------------
    def process(
        self,
        partition: int,
        records: Sequence[tuple[bytes | None, bytes | None, int]],
        now: float | None = None,
    ) -> None:
        """Process ``(key, value, offset)`` records of one partition, in offset order."""
        now = time.time() if now is None else now
        stamp = iso_now()
        pw = self.windows_of(partition)
        produce = self.out.produce
        changelog = self.out.changelog
        topic_enriched = self.topics.enriched
        interactions = self.interactions
        pending = self.pending
        stats = self.stats
        stats.records_in += len(records)
        if records:
            self.last_event_wall[partition] = now
        # Enriched JSON of an event joined without waiting: only the offset varies per event
        # within a batch, the rest is spliced from fragments (see enrich.enriched_json).
        head = ENRICHED_PREFIX
        mid = b',"orphaned":false,"waited_ms":0.0,"source_partition":%d,"source_offset":' % (
            partition
        )
        tail = b',"enriched_at":"' + stamp.encode() + b'"}'
        no_context = b',"context":null,"derived":null'
        count_signal = self._count_signal
        count_interaction = self._count_interaction
        valid = enriched = 0
        for key, value, offset in records:
            try:
                if value is None:
                    raise SchemaError("invalid_json", "message has no value (tombstone)")
                ev = decode(value)
            except SchemaError as e:
                self._dead_letter(partition, key, value, offset, e)
                continue
            valid += 1
            ts = ev.occurred_at.timestamp()
            if type(ev) is Interaction and ev.shadow and ev.shadow_of is not None:
                self._shadow(pw, partition, ev, value, offset, now, stamp, ts)
            elif type(ev) is Interaction:
                rec = interaction_record(ev, partition)
                iid = key if key else str(ev.interaction_id).encode()
                interactions[iid] = rec
                changelog("interactions", partition, iid, rec.to_bytes())
                produce(
                    topic_enriched,
                    iid,
                    b"".join(
                        (
                            head,
                            value.strip(),
                            b',"context":null,"derived":',
                            rec.derived_json,
                            mid,
                            b"%d" % offset,
                            tail,
                        )
                    ),
                )
                enriched += 1
                count_interaction(pw, ev, rec, ts)
                if pending:
                    waiting = pending.pop(iid, None)
                    if waiting:
                        changelog("pending", partition, iid, None)
                        stats.pending -= len(waiting)
                        for pe in waiting:
                            self._emit_joined(
                                pw,
                                partition,
                                iid,
                                pe.raw,
                                pe.offset,
                                rec,
                                (now - pe.arrived) * 1000.0,
                                stamp,
                            )
            else:
                iid_obj = ev.interaction_id  # type: ignore[union-attr]
                if iid_obj is None:  # a session-level outcome: nothing to join
                    produce(
                        topic_enriched,
                        key,
                        b"".join((head, value.strip(), no_context, mid, b"%d" % offset, tail)),
                    )
                    enriched += 1
                    count_signal(pw, ev, UNATTRIBUTED(ev.app_id), ts)  # type: ignore[arg-type]
                    continue
                iid = key if key else str(iid_obj).encode()
                known = interactions.get(iid)
                if known is not None:
                    count_signal(pw, ev, known.group, ts)  # type: ignore[arg-type]
                    produce(
                        topic_enriched,
                        iid,
                        b"".join(
                            (
                                head,
                                value.strip(),
                                b',"context":',
                                known.context_json,
                                b',"derived":',
                                known.derived_json,
                                mid,
                                b"%d" % offset,
                                tail,
                            )
                        ),
                    )
                    enriched += 1
                else:
                    # Early: it waits (durably, in the pending table) for its interaction.
                    lst = pending.setdefault(iid, [])
                    lst.append(
                        PendingEvent(value, offset, now, ts, ev.session_id, ev.app_id, partition)
                    )
                    changelog("pending", partition, iid, encode_pending(lst))
                    stats.pending += 1
            if ts > pw.watermark:
                pw.watermark = ts
        stats.valid += valid
        stats.enriched += enriched
        self._end_batch(partition, pw)

    def _shadow(
        self,
        pw: PartitionWindows,
        partition: int,
        ev: Interaction,
        raw: bytes,
        offset: int,
        now: float,
        stamp: str,
        ts: float,
    ) -> None:
        """A shadow answer joins its live interaction: emitted with the live answer's context,
        or held (same grace period as feedback) until the live interaction arrives.

        It never enters the join state (no feedback is about an answer nobody saw) and the
        windows count it only as ``shadow_interactions``.
        """
        live_key = str(ev.shadow_of).encode()
        rec = interaction_record(ev, partition)
        self._count_interaction(pw, ev, rec, ts)
        live = self.interactions.get(live_key)
        if live is None:
            lst = self.pending.setdefault(live_key, [])
            lst.append(PendingEvent(raw, offset, now, ts, ev.session_id, ev.app_id, partition))
            self.out.changelog("pending", partition, live_key, encode_pending(lst))
            self.stats.pending += 1
            return
        self.out.produce(
            self.topics.enriched,
            live_key,
            enriched_json(
                raw,
                context_json=live.context_json,
                derived_json=rec.derived_json,
                orphaned=False,
                waited_ms=0.0,
                partition=partition,
                offset=offset,
                enriched_at=stamp,
            ),
        )
        self.stats.enriched += 1

    def _emit_joined(
        self,
        pw: PartitionWindows,
        partition: int,
        iid: bytes,
        raw: bytes,
        offset: int,
        rec: InteractionRecord,
        waited_ms: float,
        stamp: str,
    ) -> None:
        ev = decode(raw)  # validated before; re-parsed only on this rare path
        derived = rec.derived_json
        if type(ev) is Interaction:  # a shadow answer, counted when it arrived
            derived = interaction_record(ev, partition).derived_json
        else:
            self._count_signal(pw, ev, rec.group, ev.occurred_at.timestamp())  # type: ignore[arg-type]
        self.out.produce(
            self.topics.enriched,
            iid,
            enriched_json(
                raw,
                context_json=rec.context_json,
                derived_json=derived,
                orphaned=False,
                waited_ms=waited_ms,
                partition=partition,
                offset=offset,
                enriched_at=stamp,
            ),
        )
        self.stats.enriched += 1

    def _dead_letter(
        self,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        offset: int,
        err: SchemaError,
    ) -> None:
        dl = DeadLetter(
            reason=err.reason,
            error=str(err),
            payload=value or b"",
            key=key,
            source="stream",
            source_topic=self.topics.events,
            source_partition=partition,
            source_offset=offset,
        )
        try:
            self.out.produce(self.topics.dead_letters, key, value, headers=dl.headers())
        except Exception as e:  # e.g. too large even for the dead-letter topic
            # A poison message must never stop the worker: keep its head and say so.
            log.warning("dead letter of %d bytes refused (%s); truncating", len(value or b""), e)
            headers = [
                *dl.headers(),
                ("feedbackloop.dlq.truncated_from", str(len(value or b"")).encode()),
            ]
            self.out.produce(
                self.topics.dead_letters, key, (value or b"")[:_DLQ_TRUNCATE], headers=headers
            )
        self.stats.dead_letters += 1
        self.stats.by_reason[err.reason] += 1

    @staticmethod
    def _count_interaction(
        pw: PartitionWindows, ia: Interaction, rec: InteractionRecord, ts: float
    ) -> None:
        st = pw.touch(ts, rec.group, ia.session_id)
        if st is None:
            return
        c = st.c
        get = c.get
        if ia.shadow:
            c["shadow_interactions"] = get("shadow_interactions", 0) + 1
            return
        c["interactions"] = get("interactions", 0) + 1
        lat = ia.latency_ms
        if lat is not None:
            c["latency_count"] = get("latency_count", 0) + 1
            c["latency_sum"] = get("latency_sum", 0) + lat
            c["latency_sum_squares"] = get("latency_sum_squares", 0) + lat * lat
        if ia.input_tokens is not None:
            c["input_tokens_sum"] = get("input_tokens_sum", 0) + ia.input_tokens
        if ia.output_tokens is not None:
            c["output_tokens_sum"] = get("output_tokens_sum", 0) + ia.output_tokens
        if ia.cost_usd is not None:
            c["cost_usd_sum"] = get("cost_usd_sum", 0) + ia.cost_usd

    @staticmethod
    def _count_signal(
        pw: PartitionWindows,
        ev: Feedback | Implicit | Outcome,
        group: Group,
        ts: float,
        orphaned: bool = False,
    ) -> None:
        st = pw.touch(ts, group, ev.session_id)
        if st is None:
            return
        c = st.c
        get = c.get
        if orphaned:
            c["orphaned"] = get("orphaned", 0) + 1
        t = type(ev)
        if t is Feedback:
            kind = ev.kind  # type: ignore[union-attr]
            if kind is FeedbackKind.thumbs:
                name = "thumbs_up" if ev.thumbs == 1 else "thumbs_down"  # type: ignore[union-attr]
                c[name] = get(name, 0) + 1
            else:
                name = _FEEDBACK_KIND[kind._value_]  # type: ignore[assignment]
                c[name] = get(name, 0) + 1
                if kind is FeedbackKind.rating:
                    r = ev.rating or 0  # type: ignore[union-attr]
                    c["rating_sum"] = get("rating_sum", 0) + r
                    c["rating_sum_squares"] = get("rating_sum_squares", 0) + r * r
        elif t is Implicit:
            name = _IMPLICIT_COUNTER[ev.signal._value_]  # type: ignore[union-attr]
            c[name] = get(name, 0) + 1
            dwell = ev.dwell_ms  # type: ignore[union-attr]
            if dwell is not None:
                c["dwell_ms_sum"] = get("dwell_ms_sum", 0) + dwell
        else:
            assert isinstance(ev, Outcome)
            name = ev.outcome
            st.outcome_counts[name] = st.outcome_counts.get(name, 0) + 1
            st.outcome_value_sums[name] = st.outcome_value_sums.get(name, 0.0) + (ev.value or 0.0)

    def _end_batch(self, partition: int, pw: PartitionWindows) -> None:
        for (start, group), st in pw.end_batch():
            k = window_key(partition, start, group)
            self.window_store[k] = st
            self.out.changelog("windows", partition, k, st.to_bytes())
        self._close(partition, pw)
        wk = str(partition).encode()
        if pw.watermark != self.watermark_store.get(wk) and pw.watermark > float("-inf"):
            self.watermark_store[wk] = pw.watermark
            self.out.changelog("watermarks", partition, wk, json.dumps(pw.watermark).encode())
        self.stats.late_events = sum(p.late_events for p in self.partitions.values())

    def _close(self, partition: int, pw: PartitionWindows) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        for (start, group), st in pw.close_due():
            agg = st.to_aggregate(group, start, pw.size, partition, now)
            app, exp, var = group[0], group[1], group[2]
            self.out.produce(
                self.topics.aggregates,
                f"{app}|{exp}|{var}".encode(),
                agg.model_dump_json().encode(),
            )
            self.stats.aggregates += 1
            k = window_key(partition, start, group)
            self.window_store.pop(k, None)
            self.out.changelog("windows", partition, k, None)

    # --- timers ---------------------------------------------------------------------------
    def tick(self, now: float | None = None, partitions: Iterable[int] | None = None) -> None:
        """Release orphans past the grace period; close the windows of idle partitions."""
        now = time.time() if now is None else now
        stamp = iso_now()
        grace = self.config.grace_s
        for iid in [k for k, v in self.pending.items() if v and v[0].arrived + grace <= now]:
            waiting = self.pending[iid]
            due = [pe for pe in waiting if pe.arrived + grace <= now]
            rest = [pe for pe in waiting if pe.arrived + grace > now]
            partition = waiting[0].partition
            pw = self.windows_of(partition)
            for pe in due:
                ev = decode(pe.raw)
                derived = None
                if isinstance(ev, Interaction):  # a shadow answer whose live one never came
                    derived = interaction_record(ev, partition).derived_json
                else:
                    self._count_signal(
                        pw, ev, UNATTRIBUTED(pe.app_id), pe.occurred_at, orphaned=True
                    )
                self.out.produce(
                    self.topics.enriched,
                    iid,
                    enriched_json(
                        pe.raw,
                        context_json=None,
                        derived_json=derived,
                        orphaned=True,
                        waited_ms=(now - pe.arrived) * 1000.0,
                        partition=partition,
                        offset=pe.offset,
                        enriched_at=stamp,
                    ),
                )
                self.stats.orphaned += 1
                self.stats.enriched += 1
                self.stats.pending -= 1
            if rest:
                self.pending[iid] = rest
                self.out.changelog("pending", partition, iid, encode_pending(rest))
            else:
                del self.pending[iid]
                self.out.changelog("pending", partition, iid, None)
            self._end_batch(partition, pw)
        idle = self.config.idle_close_s
        for p in list(partitions if partitions is not None else self.partitions):
            pw = self.windows_of(p)
            if pw.open and self.last_event_wall.get(p, 0.0) + idle <= now:
                # No events for a while: let wall-clock time stand in for the watermark.
                pw.advance(now - self.config.allowed_lateness_s)
                self._end_batch(p, pw)

    def sweep(self, now: float | None = None) -> int:
        """Forget interactions older than the retention (event time behind the watermark)."""
        if not self.partitions:
            return 0
        horizon = max(pw.watermark for pw in self.partitions.values()) - self.config.retention_s
        old = [(k, r.partition) for k, r in self.interactions.items() if r.occurred_at < horizon]
        for k, p in old:
            del self.interactions[k]
            self.out.changelog("interactions", p, k, None)
        return len(old)
