"""The ClickHouse sink: one columnar insert per (batch, table), retried, never dropped.

Exactly-once *effect* by event id, from two mechanisms (docs/ARCHITECTURE.md, "Storage"):

* every insert carries ``insert_deduplication_token = <topic>/<partition>/<first>-<last>/<table>``,
  so retrying a batch whose insert actually succeeded (an ambiguous timeout) is dropped by
  ClickHouse itself (needs ``non_replicated_deduplication_window``, set by the migrations);
* the tables are ``ReplacingMergeTree`` keyed by event id, so a replay with *different*
  batch boundaries (restart after a crash between insert and commit, a rebalance) collapses
  at merge time; queries read ``FINAL`` (or ``argMax``/``uniqExact(event_id)``) until then.

Errors are split in two. A *transient* one (connection refused, timeout, too many parts,
memory, anything unknown) raises :class:`BackPressure`: the caller pauses and retries the same
batch. A *rejection* (the data itself is refused: a value out of a column's range, a violated
constraint) bisects the insert until the offending rows are isolated; those go to the
``dead_letters`` table with the reason, the rest is inserted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from feedbackloop.config import default_of
from feedbackloop.errors import BackPressure, ClickHouseError, SchemaError
from feedbackloop.schemas import DeadLetter, Topics
from feedbackloop.sinks.base import BatchingSink, SinkBatch, retry_delay
from feedbackloop.sinks.event_keys import (
    CONFLICTING_RESEND,
    EVENT_TABLES,
    EventKey,
    IdentityCheck,
    error_text,
    id_of_text,
    lookup,
    row_key,
    scan_event_id,
    text_of_id,
)
from feedbackloop.sinks.ingest import (
    insert_sql,
    keys_sql,
    remove_stale_blocks,
    route,
    stamp_ms,
    write_block,
)
from feedbackloop.sinks.rows import DEAD_LETTERS, Row, TopicRouter, dead_letter_row
from feedbackloop.sinks.tables import TABLES

__all__ = ["ClickHouseSink", "SinkMessage", "is_rejection", "SinkStats"]

log = logging.getLogger(__name__)

# How often the worker looks back while a background insert runs (``time_to_due``).
_INFLIGHT_POLL_S = 0.05

# Server error codes that mean "this data is refused", so retrying the same rows cannot help.
# Anything else is treated as transient: retried forever rather than dropped.
_REJECTION_CODES = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        69,  # ARGUMENT_OUT_OF_BOUND
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        131,  # TOO_LARGE_STRING_SIZE
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        376,  # CANNOT_PARSE_UUID
        469,  # VIOLATED_CONSTRAINT
    }
)


class SinkMessage(NamedTuple):
    """What the sink keeps of one Kafka message (the item type of its batches)."""

    value: bytes | None
    key: bytes | None = None
    headers: Any = None
    #: Kafka timestamp in ms (0 if unknown); stamps the sink's own dead letters so that a
    #: replayed message produces an identical dead-letter row.
    timestamp_ms: int = 0
    #: The message's offset (-1: unknown, then counted from the batch's first offset).
    offset: int = -1


@dataclass
class SinkStats:
    """Counters since start (read by the worker's status line and the tests)."""

    messages: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dead_letters: int = 0
    rejected_rows: int = 0
    #: Blocks of enriched messages ClickHouse refused to parse (they took the Python path).
    json_fallbacks: int = 0
    inserts: int = 0
    transient_errors: int = 0
    insert_seconds: float = 0.0
    #: The sink's own dead letters (undecodable messages, rows ClickHouse refused) by reason.
    by_reason: Counter[str] = field(default_factory=Counter)


class _Skipped(BackPressure):
    """An insert not attempted because the one before it failed (retried in order)."""

    def __init__(self) -> None:
        super().__init__("an earlier batch's insert failed", retry_after=0.0)


@dataclass
class _Prepared:
    """A batch converted once into rows per table; survives retries of the same batch."""

    rows: dict[str, list[tuple[Row, int]]]  # table -> (row, index of its message in the batch)
    #: table -> (message, offset, index in the batch, scanned event id): parsed by ClickHouse
    #: (ingest.py).
    lines: dict[str, list[tuple[bytes, int, int, bytes]]] = field(default_factory=dict)
    #: table -> offsets of lines taken off the parsed path by the identity check.
    excluded: dict[str, set[int]] = field(default_factory=dict)
    #: The batch's event ids, their stored keys and first keys (None: not checked yet).
    identity: IdentityCheck | None = None
    #: Rows added by a refused block, not yet held to the identity check.
    unchecked: bool = False
    #: table -> the ``enriched_at`` values of its lines and their milliseconds.
    stamps: dict[str, dict[bytes, int]] = field(default_factory=dict)
    #: table -> its block file, written while the insert before it runs (taken by the insert).
    files: dict[str, str] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)

    def remove_files(self) -> None:
        """Remove block files not yet taken by an insert (a batch dropped before its insert)."""
        for path in self.files.values():
            with contextlib.suppress(OSError):
                os.unlink(path)
        self.files.clear()


def _error_code(e: BaseException) -> int | None:
    return ClickHouseError.from_driver(e).code


def is_rejection(e: BaseException) -> bool:
    """True when ``e`` says the inserted data itself is invalid (retrying cannot help)."""
    # clickhouse-connect serializes columns in Python: a value that does not fit the column
    # type fails there (struct.error for an out-of-range integer, ValueError for a bad UUID).
    if isinstance(e, (struct.error, OverflowError, ValueError, TypeError, UnicodeError)):
        return True
    from clickhouse_connect.driver.exceptions import DatabaseError, DataError

    if isinstance(e, DataError):
        return True
    if isinstance(e, DatabaseError):
        return _error_code(e) in _REJECTION_CODES
    cause = e.__cause__ or e.__context__
    return cause is not None and cause is not e and is_rejection(cause)


class ClickHouseSink(BatchingSink):
    """Writes batches of Kafka messages to the tables of ``database``.

    ``client_factory`` makes a clickhouse-connect client (default:
    :func:`feedbackloop.infra.get_client` on ``dsn``); it is called lazily, and again after a
    transient failure, so a restarted server or a re-opened chDB is picked up.
    """

    def __init__(
        self,
        dsn: str,
        database: str,
        topics: Topics,
        *,
        max_rows: int = default_of("sink_max_rows"),
        max_age_s: float = default_of("sink_max_age"),
        client_factory: Callable[[], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
        json_path: bool = True,
    ) -> None:
        super().__init__(max_rows=max_rows, max_age_s=max_age_s)
        self.dsn = dsn
        self.database = database
        self.router = TopicRouter(topics)
        self.stats = SinkStats()
        #: Called with the seconds from a batch's first message to the batch stored.
        self.on_batch_stored: Callable[[float], None] | None = None
        self._client_factory = client_factory
        #: Let embedded chDB parse enriched messages itself (see feedbackloop.sinks.ingest).
        self.json_path = json_path
        self._embedded: bool | None = None
        self._client: Any = None
        self._contexts: dict[str, Any] = {}
        self._failures = 0
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None
        # Parsed inserts of a batch's other tables run on these, with their own client.
        self._helper_pool: ThreadPoolExecutor | None = None
        self._helper: Any = None
        #: Full batches whose insert is queued or running: always the first of ``_closed``.
        self._inflight: list[tuple[SinkBatch, Future[None]]] = []
        self._collector = _CollectorPause()

    # --- connection --------------------------------------------------------------------------
    def setup(self) -> None:
        self._connect()
        remove_stale_blocks()

    def _connect(self) -> Any:
        if self._client is None:
            if self._client_factory is not None:
                self._client = self._client_factory()
            else:
                from feedbackloop.infra import get_client

                self._client = get_client(self.dsn)
            self._contexts = {}
            self._embedded = str(getattr(self._client, "uri", "")).startswith("chdb:")
        return self._client

    def _drop_client(self) -> None:
        client, self._client, self._contexts = self._client, None, {}
        helper, self._helper = self._helper, None
        for c in (client, helper):
            if c is not None:
                try:
                    c.close()
                except Exception:  # already broken; closing is best effort
                    log.debug("closing a failed ClickHouse client raised", exc_info=True)

    def close(self) -> None:
        for pool in (self._executor, self._helper_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._executor = self._helper_pool = None
        self._inflight.clear()  # finished; their batches are still pending (never committed)
        for batch in self._closed:
            if batch.state is not None:
                batch.state.remove_files()
        self._collector.resume()
        self._drop_client()

    @property
    def client(self) -> Any:
        """The current client (connecting if needed); shared with the query endpoint."""
        return self._connect()

    # --- writing -----------------------------------------------------------------------------
    # Full batches are prepared (decoded, validated, turned into rows) on the caller's thread
    # and inserted, one at a time and in order, by one insert thread: chDB (and the HTTP
    # client's socket wait) release the GIL while an insert runs, so consuming and preparing
    # the next batch overlap the insert on a second core. A batch's insert starts as soon as
    # it closes (``add``), not only at ``flush``; ``flush`` still returns only once every batch
    # is stored, and a batch's offsets are handed out only after its insert returned.

    def add(self, topic: str, partition: int, offset: int, item: Any) -> None:
        closed = len(self._closed)
        super().add(topic, partition, offset, item)
        if len(self._closed) != closed:
            self._pump()

    def flush(self) -> dict[tuple[str, int], int]:
        self._collector.pause()
        try:
            return super().flush()
        finally:
            # Rows of stored batches are already freed (``_stored``): the collector's next
            # pass has little left to scan.
            self._collector.resume()

    def due(self, now: float | None = None) -> bool:
        if self._inserting_only():
            # Every full batch is being inserted: not due until the first insert returns
            # (then flush commits it), or an open batch reaches the age bound.
            return self._open_due(now) == 0.0
        return super().due(now)

    def time_to_due(self, now: float | None = None) -> float | None:
        if self._inserting_only():
            wait = self._open_due(now)
            return _INFLIGHT_POLL_S if wait is None else min(wait, _INFLIGHT_POLL_S)
        return super().time_to_due(now)

    def discard(self, partitions: Iterable[tuple[str, int]]) -> int:
        # Let the inserts already started finish first (their rows are stored either way;
        # the revoked partitions' offsets are simply not committed).
        self._retire(wait=True)
        self._inflight.clear()
        gone = set(partitions)
        for batch in self._closed:
            if (batch.topic, batch.partition) in gone and batch.state is not None:
                batch.state.remove_files()
        return super().discard(gone)

    def _inserting_only(self) -> bool:
        inflight = self._inflight
        return bool(inflight) and len(inflight) == len(self._closed) and not inflight[0][1].done()

    def _open_due(self, now: float | None) -> float | None:
        """Seconds until the oldest *open* batch reaches the age bound (``None``: none open)."""
        if not self._open:
            return None
        now = time.monotonic() if now is None else now
        oldest = min(b.started for b in self._open.values())
        return max(0.0, self.max_age_s - (now - oldest))

    def _pump(self) -> None:
        """Called when a batch closes in ``add``: retire finished inserts, start the new one.

        A batch whose insert returned is marked written (its offsets go out with the next
        ``flush``). After a failed insert nothing new starts; ``flush`` raises its
        :class:`BackPressure` and retries it first.
        """
        if not self._retire(wait=False):
            return  # flush raises the failure; the same batches stay first in line
        if len(self._inflight) < len(self._closed):
            self._collector.pause()  # until the flush that stores them (see _CollectorPause)
            while len(self._inflight) < len(self._closed):
                self._submit(self._closed[len(self._inflight)])

    def _submit(self, batch: SinkBatch) -> None:
        """Prepare ``batch`` (on this thread) and queue its insert after those in flight."""
        if batch.state is None:
            batch.state = self._prepare(batch)
        before = self._inflight[-1][1] if self._inflight else None
        job = self._inserter().submit(self._insert_in_turn, before, batch, batch.state)
        self._inflight.append((batch, job))

    def _insert_in_turn(self, before: Future[None] | None, batch: SinkBatch, prep: Any) -> None:
        # One insert thread runs the jobs in order, so ``before`` has finished by now. Nothing
        # is stored after a failed batch: the failure and the batches behind it are retried
        # together, in order, by the next flush.
        if before is not None and before.exception() is not None:
            raise _Skipped
        self._insert_batch(batch, prep)

    def _retire(self, wait: bool) -> bool:
        """Mark batches whose insert returned as written, from the front.

        False when the first of them failed: it is left in place for ``write`` to raise.
        """
        inflight = self._inflight
        while inflight and (wait or inflight[0][1].done()):
            batch, job = inflight[0]
            if job.exception() is not None:
                return False
            inflight.pop(0)
            self._stored(batch)
            self._first_written()
        return True

    def write(self, batch: SinkBatch) -> None:
        inflight = self._inflight
        if not inflight or inflight[0][0] is not batch:
            inflight.clear()
            self._submit(batch)
        if len(inflight) < len(self._closed):
            # Prepare the next batch while this one is inserted.
            self._submit(self._closed[len(inflight)])
        job = inflight[0][1]
        try:
            job.result()  # BackPressure propagates: this batch stays first in line
        except BaseException:
            inflight.clear()
            raise
        inflight.pop(0)
        self._stored(batch)

    def _stored(self, batch: SinkBatch) -> None:
        prep: _Prepared = batch.state
        self.stats.messages += len(batch)
        if self.on_batch_stored is not None:
            self.on_batch_stored(time.monotonic() - batch.started)
        self.stats.dead_letters += len(prep.rows.get(DEAD_LETTERS, ()))
        self._failures = 0
        # Free the rows while the collector is still paused: re-enabling it with batches of
        # rows alive would make its next (full) pass scan them all once more.
        batch.state = None

    def _inserter(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="clickhouse-insert")
        return self._executor

    def _insert_batch(self, batch: SinkBatch, prep: _Prepared) -> None:
        """Insert every table of a prepared batch (tables already stored are skipped)."""
        if prep.identity is None:
            # Here, on the insert thread, in batch order: the batches before this one are
            # stored, so their event ids are in event_keys. Decided once; a retry reuses it.
            # All or nothing: a lookup that fails leaves the batch as it was prepared.
            saved = {t: list(pairs) for t, pairs in prep.rows.items()}
            try:
                self._check_identity(batch, prep)
            except BaseException:
                prep.rows, prep.identity = saved, None
                prep.excluded.clear()
                raise
        # Blocks parsed by ClickHouse first: a block it rejects joins the Python rows below.
        self._insert_parsed(batch, prep)
        if prep.unchecked:
            # A refused block's messages, now Python rows: a message may have hidden its
            # real event id from the scan. Checked before any of them is inserted.
            self._refuse_conflicts(batch, prep)
        # Dead letters last: rows rejected by the other tables are added to them on the way.
        order = [t for t in prep.rows if t != DEAD_LETTERS] + [DEAD_LETTERS]
        for table in order:
            if table in prep.done or not prep.rows.get(table):
                continue
            rejected = self._insert_all(table, prep.rows[table], f"{batch.key}/{table}")
            prep.done.add(table)
            n = len(prep.rows[table]) - len(rejected)
            self.stats.rows[table] = self.stats.rows.get(table, 0) + n
            for (_row, idx), reason in rejected:
                self.stats.rejected_rows += 1
                self.stats.by_reason["clickhouse_rejected"] += 1
                prep.rows.setdefault(DEAD_LETTERS, []).append(
                    (self._rejected_row(batch, idx, table, reason), idx)
                )

    def _prepare(self, batch: SinkBatch) -> _Prepared:
        prep = _Prepared({})
        topic, first = batch.topic, batch.first_offset
        items: Iterable[tuple[int, SinkMessage]] = enumerate(batch.items)
        if topic == self.router.topics.enriched and self._json_path_on():
            lines, stamps = prep.lines, prep.stamps
            python: list[tuple[int, SinkMessage]] = []
            for idx, msg in items:
                value = msg.value
                routed = route(value) if value is not None else None
                if routed is None:
                    python.append((idx, msg))
                    continue
                table, stamp = routed
                event_id = scan_event_id(value)  # type: ignore[arg-type]
                if event_id is None:
                    python.append((idx, msg))
                    continue
                block = lines.get(table)
                if block is None:
                    block = lines[table] = []
                    stamps[table] = {}
                known = stamps[table]
                if stamp not in known:
                    ms = stamp_ms(stamp)
                    if ms is None:
                        python.append((idx, msg))
                        continue
                    known[stamp] = ms
                offset = msg.offset if msg.offset >= 0 else first + idx
                block.append((value, offset, idx, event_id))  # type: ignore[arg-type]
            items = python
            # Written here, on the consumer thread, while the insert before this one runs:
            # the insert thread's turn is then ClickHouse's work only.
            for table, block in lines.items():
                try:
                    prep.files[table] = write_block(block)
                except OSError as e:  # the insert writes it (or reports it) in its turn
                    log.warning("cannot write a block file for %s: %s", table, e)
        self._route(batch, items, prep.rows)
        return prep

    def _json_path_on(self) -> bool:
        if not self.json_path:
            return False
        if self._embedded is None:
            if self._client_factory is None:
                from feedbackloop.infra import is_embedded

                return is_embedded(self.dsn)
            try:
                self._connect()
            except Exception:  # the insert reports it (BackPressure); decide once connected
                return False
        return bool(self._embedded)

    def _route(
        self,
        batch: SinkBatch,
        items: Iterable[tuple[int, SinkMessage]],
        rows: dict[str, list[tuple[Row, int]]],
    ) -> None:
        """The Python path: decode ``items`` into rows per table, or dead letters."""
        to_rows = self.router.rows
        topic, partition = batch.topic, batch.partition
        for idx, msg in items:
            offset = msg.offset if msg.offset >= 0 else batch.first_offset + idx
            try:
                routed = to_rows(
                    topic, partition, offset, msg.value, msg.key, msg.headers, msg.timestamp_ms
                )
            except SchemaError as e:
                self.stats.by_reason[e.reason] += 1
                dl = DeadLetter(
                    reason=e.reason,
                    error=str(e),
                    payload=msg.value or b"",
                    key=msg.key,
                    source="sink",
                    source_topic=topic,
                    source_partition=partition,
                    source_offset=offset,
                    failed_at=_kafka_time(msg.timestamp_ms),
                )
                rows.setdefault(DEAD_LETTERS, []).append(
                    (dead_letter_row(dl, (topic, partition, offset)), idx)
                )
                continue
            for table, row in routed:
                pairs = rows.get(table)
                if pairs is None:
                    pairs = rows[table] = []
                pairs.append((row, idx))

    def _insert_parsed(self, batch: SinkBatch, prep: _Prepared) -> None:
        """The batch's ClickHouse-parsed inserts, one per table, run side by side.

        ClickHouse does all of the work of these inserts, with the GIL released, so the
        tables of one batch go in at once: the first on this thread, the others on helper
        threads with a second client (chDB serializes the calls of one client). A block
        ClickHouse refuses is not bisected here: its messages are decoded in Python and join
        ``prep.rows``, whose insert isolates any row ClickHouse still refuses (dead letters).
        """
        todo = [t for t in prep.lines if f"json:{t}" not in prep.done]
        if not todo:
            return
        errors: dict[str, Exception] = {}
        timings: dict[str, float] = {}
        jobs = []
        here = todo
        if len(todo) > 1:
            try:
                helper = self._helper_client()
            except Exception as e:  # the tables go in one after the other instead
                log.debug("no second ClickHouse client: %s", _short(e))
            else:
                submit = self._helpers().submit
                jobs = [(t, submit(self._insert_json, helper, batch, prep, t)) for t in todo[1:]]
                here = todo[:1]
        for table in here:
            try:
                timings[table] = self._insert_json(self._connect(), batch, prep, table)
            except Exception as e:
                errors[table] = e
        for table, job in jobs:
            try:
                timings[table] = job.result()
            except Exception as e:
                errors[table] = e
        for table, seconds in timings.items():
            prep.done.add(f"json:{table}")
            self.stats.inserts += 1
            self.stats.insert_seconds += seconds
            n = len(prep.lines[table]) - len(prep.excluded.get(table, ()))
            self.stats.rows[table] = self.stats.rows.get(table, 0) + n
        unanswered: tuple[str, Exception] | None = None
        for table, err in errors.items():
            if _error_code(err) is None and not is_rejection(err):
                unanswered = (table, err)  # no answer from ClickHouse: retried as it is
                continue
            # ClickHouse answered with an error: whatever it was, the Python path decides
            # (a row it refuses becomes a dead letter, an outage raises BackPressure there).
            lines = prep.lines[table]
            self.stats.json_fallbacks += 1
            log.warning(
                "%s refused a block of %d parsed messages, taking the Python path: %s",
                table,
                len(lines),
                _short(err),
            )
            skip = prep.excluded.get(table, set())  # on the Python path already
            self._route(
                batch,
                ((idx, batch.items[idx]) for _, o, idx, _ in lines if o not in skip),
                prep.rows,
            )
            prep.done.add(f"json:{table}")
            prep.unchecked = True
        if unanswered is not None:
            self._transient(*unanswered)

    def _helper_client(self) -> Any:
        if self._helper is None:
            if self._client_factory is not None:
                self._helper = self._client_factory()
            else:
                from feedbackloop.infra import get_client

                self._helper = get_client(self.dsn)
        return self._helper

    def _helpers(self) -> ThreadPoolExecutor:
        if self._helper_pool is None:
            self._helper_pool = ThreadPoolExecutor(3, thread_name_prefix="clickhouse-insert-helper")
        return self._helper_pool

    def _insert_json(self, client: Any, batch: SinkBatch, prep: _Prepared, table: str) -> float:
        """One ClickHouse-parsed insert of ``table``'s block; returns its seconds."""
        path = prep.files.pop(table, None) or write_block(prep.lines[table])  # a retry rewrites
        exclude = prep.excluded.get(table, set())
        token = f"{batch.key}/{table}/json"
        if exclude:
            # Another block than the one without exclusions: another token, so that neither
            # can be dropped as the other's duplicate on a replay.
            left_out = ",".join(map(str, sorted(exclude))).encode()
            token += f"/x{hashlib.blake2b(left_out, digest_size=8).hexdigest()}"
        t0 = self._clock()
        try:
            client.command(
                insert_sql(
                    self.database,
                    table,
                    path,
                    batch.topic,
                    batch.partition,
                    prep.stamps[table],
                    {
                        # Synchronous, deduplicated by the batch's token (as the Native insert).
                        "async_insert": 0,
                        "insert_deduplicate": 1,
                        "insert_deduplication_token": token,
                        # ReplacingMergeTree's collapse within the block cost ~40 % of this
                        # insert; copies collapse at merge time instead (queries use FINAL).
                        "optimize_on_insert": 0,
                    },
                    exclude,
                )
            )
        finally:
            os.unlink(path)
        return self._clock() - t0

    # --- event identity (feedbackloop.sinks.event_keys) ----------------------------------------
    def _check_identity(self, batch: SinkBatch, prep: _Prepared) -> None:
        """Look the batch's event ids up; refuse every message that would change an id's key.

        Only an id already stored, or repeated in the batch, can conflict: such ids are
        *suspects*, and only their messages are keyed (the rest costs one lookup and a few
        set operations per batch, no Python work per message). A parsed suspect's key is
        read by ClickHouse from the block file (:func:`~feedbackloop.sinks.ingest.keys_sql`),
        so it stays on the parsed path unless refused; Python rows carry their keys.
        """
        texts = [text for lines in prep.lines.values() for _, _, _, text in lines]
        ids = [
            row[0]
            for table, pairs in prep.rows.items()
            if table in EVENT_TABLES
            for row, _ in pairs
        ]
        known = self._lookup(texts, ids)
        prep.identity = IdentityCheck(known)
        text_suspects = _repeated(texts)
        suspects = _repeated(ids) | known.keys()
        if texts and ids:  # a message on the Python path may share its id with a parsed one
            shared = {text_of_id(i) for i in ids}.intersection(texts)
            text_suspects |= shared
            suspects |= {id_of_text(t) for t in shared}
        text_suspects |= {text_of_id(i) for i in known}
        suspects |= {id_of_text(t) for t in text_suspects}
        at_offset: dict[str, dict[int, int]] = {}  # table -> offset -> index in the batch
        if text_suspects:
            for table, lines in prep.lines.items():
                for _, offset, idx, text in lines:
                    if text in text_suspects:
                        at_offset.setdefault(table, {})[offset] = idx
        keyed: list[tuple[int, str, int, EventKey, int]] = []
        moved: list[tuple[int, SinkMessage]] = []
        for table, at in at_offset.items():
            try:
                keys = self._line_keys(prep, table, at)
            except Exception as e:
                if _error_code(e) is None and not is_rejection(e):
                    self._transient("event_keys", e)
                # ClickHouse cannot read these lines: the Python path decides (and stores).
                log.debug("keys of %d lines of %s unread: %s", len(at), table, _short(e))
                keys = {}
            for offset, idx in at.items():
                if offset in keys:
                    keyed.append((idx, table, *keys[offset], offset))
                else:
                    prep.excluded.setdefault(table, set()).add(offset)
                    moved.append((idx, batch.items[idx]))
        if moved:
            moved.sort(key=lambda m: m[0])
            self._route(batch, moved, prep.rows)
        self._refuse_conflicts(batch, prep, keyed, suspects)
        if moved:
            # Decoded by Python, a message may show another id than its bytes' scan: held
            # again, with every Python row, once the parsed blocks are stored (_insert_batch).
            prep.unchecked = True

    def _line_keys(
        self, prep: _Prepared, table: str, at: dict[int, int]
    ) -> dict[int, tuple[int, EventKey]]:
        """Offset -> (event id, key) of the parsed lines at those offsets, read by ClickHouse."""
        path = prep.files.get(table)
        if path is None:
            path = prep.files[table] = write_block(prep.lines[table])
        rows = self._connect().query(keys_sql(table, path, at)).result_rows
        return {
            int(o): (eid.int, EventKey(table, app_id, tuple(slice_), int(hour)))
            for o, eid, app_id, slice_, hour in rows
        }

    def _lookup(self, texts: Collection[bytes] = (), ids: Iterable[int] = ()) -> dict[int, Any]:
        try:
            return lookup(self._connect(), self.database, bool(self._embedded), texts, ids)
        except Exception as e:
            self._transient("event_keys", e)
            raise  # pragma: no cover - _transient raises

    def _refuse_conflicts(
        self,
        batch: SinkBatch,
        prep: _Prepared,
        lines: Iterable[tuple[int, str, int, EventKey, int]] = (),
        suspects: Collection[int] | None = None,
    ) -> None:
        """Turn messages whose id has another key (stored, or earlier here) into dead letters.

        ``lines``: parsed lines with their keys (index, table, id, key, offset). Python rows
        not yet stored are checked too: those whose id is in ``suspects`` (the first check,
        whose lookup covered every id of the batch), or all of them, their ids looked up
        again (``None``: after a block fell back to the Python path, whose messages may carry
        ids the first lookup never saw, and once the batch's parsed blocks are stored).
        Idempotent (a message admitted once is admitted again).
        """
        check = prep.identity
        assert check is not None
        keyed: list[tuple[int, str, int, EventKey, int | None]] = []
        if suspects is None or suspects:
            keyed = [
                (idx, table, *row_key(table, row), None)
                for table, pairs in prep.rows.items()
                if table in EVENT_TABLES and table not in prep.done
                for row, idx in pairs
                if suspects is None or row[0] in suspects
            ]
        if suspects is None and keyed:
            check.add(self._lookup(ids={k[2] for k in keyed}))
        keyed += lines
        refused: dict[str, set[int]] = {}
        keyed.sort(key=lambda k: k[0])  # the first in the batch wins
        for idx, table, eid, key, offset in keyed:
            first = check.conflict(eid, key)
            if first is None:
                continue
            if offset is None:
                refused.setdefault(table, set()).add(idx)
            else:
                prep.excluded.setdefault(table, set()).add(offset)
            self.stats.by_reason[CONFLICTING_RESEND] += 1
            dl = self._dead_letter_row(batch, idx, CONFLICTING_RESEND, error_text(eid, first, key))
            prep.rows.setdefault(DEAD_LETTERS, []).append((dl, idx))
        for table, gone in refused.items():
            prep.rows[table] = [p for p in prep.rows[table] if p[1] not in gone]
        prep.unchecked = False

    def _rejected_row(self, batch: SinkBatch, idx: int, table: str, reason: str) -> Row:
        return self._dead_letter_row(batch, idx, "clickhouse_rejected", f"{table}: {reason}")

    def _dead_letter_row(self, batch: SinkBatch, idx: int, reason: str, error: str) -> Row:
        msg: SinkMessage = batch.items[idx]
        offset = _offset_of(batch, idx)
        dl = DeadLetter(
            reason=reason,
            error=error,
            payload=msg.value or b"",
            key=msg.key,
            source="sink",
            source_topic=batch.topic,
            source_partition=batch.partition,
            source_offset=offset,
            failed_at=_kafka_time(msg.timestamp_ms),
        )
        return dead_letter_row(dl, (batch.topic, batch.partition, offset))

    def _insert_all(
        self, table: str, rows: list[tuple[Row, int]], token: str
    ) -> list[tuple[tuple[Row, int], str]]:
        """Insert ``rows``; return the ones ClickHouse rejects (with the reason), bisecting."""
        try:
            self._insert(table, [r for r, _ in rows], token)
            return []
        except Exception as e:
            if not is_rejection(e):
                self._transient(table, e)
            if len(rows) == 1:
                log.warning("%s rejected a row: %s", table, _short(e))
                if table == DEAD_LETTERS:
                    # Nowhere further to put it; keep the reason in the log at least.
                    log.error("dead letter row rejected, payload logged instead: %r", rows[0][0])
                    return []
                return [(rows[0], _short(e))]
            mid = len(rows) // 2
            return self._insert_all(table, rows[:mid], f"{token}/a") + self._insert_all(
                table, rows[mid:], f"{token}/b"
            )

    def _insert(self, table: str, rows: list[Row], token: str) -> None:
        client = self._connect()
        ctx = self._contexts.get(table)
        if ctx is None:
            # One insert context per table, reused; names and types come from the
            # declaration (sinks/tables.py), which a test holds equal to the migrated DDL.
            declared = TABLES[table]
            ctx = client.create_insert_context(
                table=table,
                database=self.database,
                column_names=list(declared.names),
                column_type_names=list(declared.types),
                column_oriented=True,
            )
            self._contexts[table] = ctx
        ctx.settings.update(
            {
                # Synchronous insert: chDB defaults to async_insert=1, which would bypass
                # the block-level deduplication that the token relies on.
                "async_insert": 0,
                "insert_deduplicate": 1,
                "insert_deduplication_token": token,
            }
        )
        ctx.data = list(zip(*rows, strict=True))
        t0 = self._clock()
        try:
            client.insert(context=ctx)
        finally:
            ctx.data = None
        self.stats.inserts += 1
        self.stats.insert_seconds += self._clock() - t0

    def _transient(self, table: str, e: Exception) -> None:
        self._failures += 1
        self.stats.transient_errors += 1
        delay = retry_delay(self._failures - 1)
        log.warning(
            "insert into %s failed (attempt %d), retrying in %.1f s: %s",
            table,
            self._failures,
            delay,
            _short(e),
        )
        self._drop_client()
        err = ClickHouseError.from_driver(e, f"insert into {table} failed: {_short(e)}")
        raise BackPressure(str(err), retry_after=delay) from e


class _CollectorPause:
    """Suspends the cyclic garbage collector while the sink holds prepared batches.

    A batch allocates several tracked objects per row (tuples, metadata dicts, lists of
    rows), none of them cyclic; with the collector on, its passes rescan every live batch
    again and again, which cost ~40% of the writer's throughput in bench/bench_sink.py (and
    ~1.1 s of 3.5 s once inserts started during ``add``). Reference counting still frees
    everything. The pause starts when a full batch is prepared (``add``) or a flush starts,
    and ends when the flush that stores those batches returns (or the sink closes), so it
    lasts about one flush interval (``max_age_s``) at most under steady load; the collector
    is only re-enabled if it was enabled before.
    """

    def __init__(self) -> None:
        self._paused = False
        self._was_enabled = False

    def pause(self) -> None:
        if not self._paused:
            self._was_enabled = gc.isenabled()
            gc.disable()
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            if self._was_enabled:
                gc.enable()


def _repeated(items: list[Any]) -> set[Any]:
    """The items that occur more than once (the usual answer, none, costs one set)."""
    if len(set(items)) == len(items):
        return set()
    return {item for item, n in Counter(items).items() if n > 1}


def _offset_of(batch: SinkBatch, idx: int) -> int:
    # Offsets within a partition need not be contiguous (transaction markers, compaction).
    off = batch.items[idx].offset
    return off if off >= 0 else batch.first_offset + idx


def _kafka_time(timestamp_ms: int) -> dt.datetime:
    if timestamp_ms > 0:
        return dt.datetime.fromtimestamp(timestamp_ms / 1000, dt.timezone.utc)
    return dt.datetime.now(dt.timezone.utc)


def _short(e: BaseException, limit: int = 500) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + "..."
