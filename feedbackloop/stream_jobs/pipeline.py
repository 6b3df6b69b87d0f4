"""The stream jobs' hot path, free of faust: validate, enrich, window, one batch at a time.

:class:`Pipeline` turns a batch of raw records of one partition into output messages
(enriched events, dead letters, window aggregates) and changelog records of its state, through
an :class:`Output`. Its state lives in plain dicts that the faust layer shares with the
changelog-backed tables' stores, so a restart recovers it (see :mod:`.app`).

Per-event work is kept small: one pydantic-core parse-and-validate, dict look-ups, counter
increments and a byte splice. Per-batch work: one changelog write per touched window and
per partition watermark.

The join never trusts the Kafka message key. The join key is the interaction id of the
payload, canonical (lower-case UUID text). Its events are joined on the partition
:func:`owner_partition` assigns it; an event read on another partition (a producer keyed by
session, by nothing, by an upper-case id, or with another partitioner, e.g. the Java
client's murmur2) is forwarded to that partition of the repartition topic, keyed by the
canonical id, carrying its origin (raw partition, offset, timestamp) in headers, and is
processed there by whichever worker owns that partition (faust co-partitions topics and
tables with equal partition counts). Our SDK keys by the canonical id with librdkafka's
default partitioner, so its events are never forwarded.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import zlib
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
from feedbackloop.schemas.identity import needs_identity, with_identity
from feedbackloop.schemas.serialization import decode
from feedbackloop.stream_jobs.config import StreamConfig
from feedbackloop.stream_jobs.enrich import (
    ENRICHED_PREFIX,
    InteractionRecord,
    enriched_json,
    interaction_record,
    iso_now,
)
from feedbackloop.stream_jobs.windows import (
    UNATTRIBUTED,
    Group,
    PartitionWindows,
    WindowState,
    id_chunk_key,
    merge_id_chunks,
    pack_ids,
)

__all__ = [
    "ORIGIN_HEADER",
    "Output",
    "PendingEvent",
    "Pipeline",
    "PipelineStats",
    "Record",
    "TABLES",
    "owner_partition",
]

#: ``(key, value, offset, timestamp_ms)`` of one Kafka record.
Record = tuple[bytes | None, bytes | None, int, int]
#: Header of a forwarded event: ``b"<raw partition>:<raw offset>:<raw timestamp ms>"``.
ORIGIN_HEADER = "feedbackloop.origin"


def owner_partition(interaction_key: bytes, partitions: int) -> int:
    """The partition that joins the events of ``interaction_key`` (canonical id bytes).

    librdkafka's default partitioner for keyed messages (CRC-32 of the key, modulo the
    partition count), so events our SDK keys by interaction id already sit there.
    """
    return zlib.crc32(interaction_key) % partitions


log = logging.getLogger(__name__)

#: Payload kept of a dead letter the producer refuses whole.
_DLQ_TRUNCATE = 256 * 1024

#: Names of the changelog-backed tables the pipeline keeps.
TABLES = ("interactions", "pending", "windows", "window_ids", "watermarks")

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
    #: Where the event sits in the raw topic (differs from ``partition`` / ``offset`` for an
    #: event forwarded through the repartition topic).
    origin_partition: int = -1
    origin_offset: int = -1

    def to_obj(self) -> list[Any]:
        return [
            self.raw.decode(),
            self.offset,
            self.arrived,
            self.occurred_at,
            self.session_id,
            self.app_id,
            self.partition,
            self.origin_partition,
            self.origin_offset,
        ]

    @classmethod
    def from_obj(cls, o: list[Any]) -> PendingEvent:
        origin = (o[7], o[8]) if len(o) > 8 else (o[6], o[1])
        return cls(o[0].encode(), o[1], o[2], o[3], o[4], o[5], o[6], *origin)


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
    """Counters that must add up: ``records_in == valid + dead_letters + forwarded``."""

    records_in: int = 0
    valid: int = 0
    dead_letters: int = 0
    enriched: int = 0
    orphaned: int = 0
    pending: int = 0
    late_events: int = 0
    aggregates: int = 0
    #: Raw events sent on to the partition that joins them (not counted in ``valid``; they
    #: are counted where they arrive).
    forwarded: int = 0
    #: Events that arrived without event_id / occurred_at and got them derived.
    identities_derived: int = 0
    #: Window effects not counted twice after a replay (see :mod:`.windows`).
    replayed_effects: int = 0
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
        window_ids: MutableMapping[bytes, bytes] | None = None,
        watermarks: MutableMapping[bytes, float] | None = None,
        partitions: int | None = None,
    ) -> None:
        """``partitions``: the raw topic's partition count; events read on a partition that
        does not own their interaction are forwarded. None: every partition is treated as the
        owner (one pipeline sees everything, as in unit tests and benchmarks)."""
        self.topics = topics
        self.config = config
        self.out = output
        self.n_partitions = partitions
        # The dicts are the faust tables' stores (or plain dicts in unit tests).
        self.interactions = interactions if interactions is not None else {}
        self.pending = pending if pending is not None else {}
        self.window_store = windows if windows is not None else {}
        #: Recovered event-id chunks of the windows, until a window view takes them in (the
        #: pipeline only writes their changelog: the ids live in the windows' states).
        self.window_id_store = window_ids if window_ids is not None else {}
        self.watermark_store = watermarks if watermarks is not None else {}
        self.partitions: dict[int, PartitionWindows] = {}
        self.last_event_wall: dict[int, float] = {}
        self.stats = PipelineStats()
        #: Changelog deletions held back until the outputs they follow are flushed: a crash
        #: must never keep a deletion (of a released pending list, of a closed window) and
        #: lose what it was released into (the window, the aggregate).
        self._deletions: list[tuple[str, int, bytes]] = []

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
            mine = [k for k in self.window_store if parse_window_key(k)[0] == partition]
            merge_id_chunks(self.window_store, self.window_id_store, set(mine).__contains__)
            for key in mine:
                _p, start, group = parse_window_key(key)
                pw.open[(start, group)] = self.window_store[key]
        return pw

    def forget_partitions(self, partitions: Iterable[int]) -> None:
        """Drop the window view of revoked partitions (rebuilt from the store if they come
        back) and their held-back deletions (the next owner releases and closes again, once).

        faust revokes every partition at the start of each rebalance, also those it then
        assigns again: the stores' state stays here, see :meth:`keep_only`."""
        gone = set(partitions)
        for p in gone:
            self.partitions.pop(p, None)
            self.last_event_wall.pop(p, None)
        self._deletions = [d for d in self._deletions if d[1] not in gone]

    def keep_only(self, assigned: Iterable[int]) -> None:
        """Drop the stores' state of every partition not in ``assigned`` (the assignment
        after a rebalance). faust removes a lost partition's keys only if it recovered them
        itself, and the pipeline writes the stores directly: left behind, a waiting event of
        a partition another worker now owns would be released here too, counted twice."""
        keep = set(assigned)
        for k in [k for k, r in self.interactions.items() if r.partition not in keep]:
            del self.interactions[k]
        for k in [k for k, v in self.pending.items() if v and v[0].partition not in keep]:
            self.stats.pending -= len(self.pending.pop(k))
        for k in [k for k in self.window_store if parse_window_key(k)[0] not in keep]:
            del self.window_store[k]
        for k in [
            k
            for k in self.window_id_store
            if parse_window_key(k.rpartition(b"#")[0])[0] not in keep
        ]:
            del self.window_id_store[k]
        for k in [k for k in self.watermark_store if int(k) not in keep]:
            del self.watermark_store[k]

    # --- hot path -------------------------------------------------------------------------
    def process(
        self,
        partition: int,
        records: Sequence[Record],
        now: float | None = None,
        origins: Sequence[tuple[int, int, int]] | None = None,
    ) -> None:
        """Process records of one partition, in offset order.

        ``origins``: for records of the repartition topic, each one's ``(raw partition, raw
        offset, raw timestamp ms)`` from its header; None for the raw topic itself.
        """
        now = time.time() if now is None else now
        self._write_deletions()
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
        n_parts = self.n_partitions if origins is None else None
        raw_topic = self.topics.events
        valid = enriched = 0
        for i, (key, value, offset, timestamp_ms) in enumerate(records):
            if origins is None:
                op, oo = partition, offset
            else:
                op, oo, timestamp_ms = origins[i]
            try:
                if value is None:
                    raise SchemaError("invalid_json", "message has no value (tombstone)")
                ev = decode(value)
                if needs_identity(ev):
                    ev, value = with_identity(ev, value, raw_topic, op, oo, timestamp_ms)  # type: ignore[assignment]
                    stats.identities_derived += 1
            except SchemaError as e:
                self._dead_letter(partition, key, value, offset, e)
                continue
            # The join key: the payload's interaction id, canonical; never the message key. A
            # shadow answer joins its live interaction, so it belongs where that one is.
            iid_obj = getattr(ev, "interaction_id", None)
            if type(ev) is Interaction and ev.shadow and ev.shadow_of is not None:
                iid_obj = ev.shadow_of
            iid = str(iid_obj).encode() if iid_obj is not None else b""
            if n_parts is not None and iid and owner_partition(iid, n_parts) != partition:
                self._forward(iid, value, n_parts, partition, offset, timestamp_ms)
                continue
            valid += 1
            ts = ev.occurred_at.timestamp()
            if type(ev) is Interaction and ev.shadow and ev.shadow_of is not None:
                self._shadow(pw, partition, ev, value, offset, now, stamp, ts, op, oo)
            elif type(ev) is Interaction:
                rec = interaction_record(ev, partition)
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
                count_interaction(pw, ev, rec, ts, op, oo)
                if pending:
                    waiting = pending.pop(iid, None)
                    if waiting:
                        self._deletions.append(("pending", partition, iid))
                        stats.pending -= len(waiting)
                        for pe in waiting:
                            self._emit_joined(
                                pw, partition, iid, pe, rec, (now - pe.arrived) * 1000.0, stamp
                            )
            else:
                if not iid:  # a session-level outcome: nothing to join
                    produce(
                        topic_enriched,
                        key,
                        b"".join((head, value.strip(), no_context, mid, b"%d" % offset, tail)),
                    )
                    enriched += 1
                    count_signal(pw, ev, UNATTRIBUTED(ev.app_id), ts, op, oo)  # type: ignore[arg-type]
                    continue
                known = interactions.get(iid)
                if known is not None:
                    count_signal(pw, ev, known.group, ts, op, oo)  # type: ignore[arg-type]
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
                    if any(pe.origin_offset == oo and pe.origin_partition == op for pe in lst):
                        continue  # a replay: it already waits
                    lst.append(
                        PendingEvent(
                            value, offset, now, ts, ev.session_id, ev.app_id, partition, op, oo
                        )
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
        origin_partition: int,
        origin_offset: int,
    ) -> None:
        """A shadow answer joins its live interaction: emitted with the live answer's context,
        or held (same grace period as feedback) until the live interaction arrives.

        It never enters the join state (no feedback is about an answer nobody saw) and the
        windows count it only as ``shadow_interactions``.
        """
        live_key = str(ev.shadow_of).encode()
        rec = interaction_record(ev, partition)
        self._count_interaction(pw, ev, rec, ts, origin_partition, origin_offset)
        live = self.interactions.get(live_key)
        if live is None:
            lst = self.pending.setdefault(live_key, [])
            if any(
                pe.origin_offset == origin_offset and pe.origin_partition == origin_partition
                for pe in lst
            ):
                return  # a replay: it already waits
            lst.append(
                PendingEvent(
                    raw,
                    offset,
                    now,
                    ts,
                    ev.session_id,
                    ev.app_id,
                    partition,
                    origin_partition,
                    origin_offset,
                )
            )
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

    def _forward(
        self,
        iid: bytes,
        value: bytes,
        n_parts: int,
        partition: int,
        offset: int,
        timestamp_ms: int,
    ) -> None:
        """Send an event read on a partition that does not own its interaction to the owner."""
        self.out.produce(
            self.topics.repartition,
            iid,
            value,
            partition=owner_partition(iid, n_parts),
            headers=[(ORIGIN_HEADER, b"%d:%d:%d" % (partition, offset, timestamp_ms))],
        )
        self.stats.forwarded += 1

    def _write_deletions(self) -> None:
        """Write the deletions held back by the previous batch (flushed since)."""
        if self._deletions:
            for table, partition, key in self._deletions:
                self.out.changelog(table, partition, key, None)
            self._deletions.clear()

    def _emit_joined(
        self,
        pw: PartitionWindows,
        partition: int,
        iid: bytes,
        pe: PendingEvent,
        rec: InteractionRecord,
        waited_ms: float,
        stamp: str,
    ) -> None:
        ev = decode(pe.raw)  # validated before; re-parsed only on this rare path
        derived = rec.derived_json
        if type(ev) is Interaction:  # a shadow answer, counted when it arrived
            derived = interaction_record(ev, partition).derived_json
        else:
            self._count_signal(
                pw,
                ev,  # type: ignore[arg-type]
                rec.group,
                ev.occurred_at.timestamp(),
                pe.origin_partition,
                pe.origin_offset,
                released=True,
            )
        raw, offset = pe.raw, pe.offset
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
        pw: PartitionWindows,
        ia: Interaction,
        rec: InteractionRecord,
        ts: float,
        origin_partition: int,
        origin_offset: int,
    ) -> None:
        st = pw.touch(
            ts, rec.group, ia.session_id, ia.event_id.int, origin_partition, origin_offset
        )
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
        origin_partition: int,
        origin_offset: int,
        released: bool = False,
        orphaned: bool = False,
    ) -> None:
        """Count one signal; ``released``: it waited for its interaction, and is counted
        out of its origin's order (see .windows)."""
        if released:
            st = pw.touch(ts, group, ev.session_id, ev.event_id.int)
        else:
            st = pw.touch(
                ts, group, ev.session_id, ev.event_id.int, origin_partition, origin_offset
            )
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
        for (start, group), st, ids in pw.end_batch():
            k = window_key(partition, start, group)
            self.window_store[k] = st
            # Two topics, so a crash may store one record and not the other: the window record
            # holds this batch's ids too, and recovery ignores a chunk past its window record
            # (earlier batches' chunks were flushed before their input was acknowledged).
            packed = pack_ids(ids)
            self.out.changelog("window_ids", partition, id_chunk_key(k, st.revision), packed)
            self.out.changelog("windows", partition, k, st.to_bytes(packed))
        self._close(partition, pw)
        wk = str(partition).encode()
        if pw.watermark != self.watermark_store.get(wk) and pw.watermark > float("-inf"):
            self.watermark_store[wk] = pw.watermark
            self.out.changelog("watermarks", partition, wk, json.dumps(pw.watermark).encode())
        self.stats.late_events = sum(p.late_events for p in self.partitions.values())
        self.stats.replayed_effects = sum(p.replayed_effects for p in self.partitions.values())

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
            self._deletions.append(("windows", partition, k))
            # Its id chunks, and the one a batch cut by a crash may have left past them.
            self._deletions.extend(
                ("window_ids", partition, id_chunk_key(k, r)) for r in range(1, st.revision + 2)
            )

    # --- timers ---------------------------------------------------------------------------
    def tick(
        self,
        now: float | None = None,
        partitions: Iterable[int] | None = None,
        closable: Iterable[int] | None = None,
    ) -> None:
        """Release orphans past the grace period; close the windows of idle partitions.

        ``closable``: the partitions known to be caught up (every record read and
        processed); only their windows may close by the wall clock. None: all of them.
        """
        now = time.time() if now is None else now
        self._write_deletions()
        stamp = iso_now()
        grace = self.config.grace_s
        # Waiting events whose interaction is known (a pending list recovered after a crash
        # that had released it) join now; the windows' released sets count them once.
        for iid in [k for k, v in self.pending.items() if v and k in self.interactions]:
            waiting = self.pending.pop(iid)
            rec = self.interactions[iid]
            partition = waiting[0].partition
            pw = self.windows_of(partition)
            for pe in waiting:
                self._emit_joined(pw, partition, iid, pe, rec, (now - pe.arrived) * 1000.0, stamp)
            self.stats.pending -= len(waiting)
            self._deletions.append(("pending", partition, iid))
            self._end_batch(partition, pw)
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
                        pw,
                        ev,
                        UNATTRIBUTED(pe.app_id),
                        pe.occurred_at,
                        pe.origin_partition,
                        pe.origin_offset,
                        released=True,
                        orphaned=True,
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
                self._deletions.append(("pending", partition, iid))
            self._end_batch(partition, pw)
        idle = self.config.idle_close_s
        closable_set = set(closable) if closable is not None else set()
        for p in list(partitions if partitions is not None else self.partitions):
            pw = self.windows_of(p)
            # A partition this worker just took over (after a restart or a rebalance) is
            # not idle: its backlog is on the way. Without this, its recovered windows would
            # close by the wall clock and the backlog would arrive late.
            last = self.last_event_wall.setdefault(p, now)
            if closable is not None and p not in closable_set:
                continue
            if pw.open and last + idle <= now:
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
