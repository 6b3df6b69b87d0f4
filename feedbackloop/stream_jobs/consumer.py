"""A small adaptation of faust's aiokafka consumer: tunable fetches and batch delivery.

Why (evidence in docs/PERFORMANCE.md, "Stream jobs"):

1. faust 0.15.3 hard-codes ``fetch_max_wait_ms=1500``. A faust consumer always has
   partitions without new data (its ``__assignor-__leader`` topic, quiet partitions).
   aiokafka keeps at most one fetch in flight per broker node and does not fetch a node
   while any of its partitions still has unconsumed records; with every partition on one
   node (the embedded broker, or any single-broker setup) the fetch for the idle partitions
   is parked by the broker for the full 1.5 s and every busy partition waits behind it.
   :class:`TunedConsumerThread` sets the fetch wait (and fetch size) from our config.
2. faust delivers each message through ``wait_first`` (two tasks per message), the
   conductor, a channel queue and a stream: ~60 us of framework time per event, so a bare
   agent tops out near 17k events/s on this machine whatever the broker does.
   :class:`BatchConsumer` hands whole fetched batches of the topics registered in
   ``app.batch_handlers`` to one coroutine, then acknowledges their offsets in faust's own
   bookkeeping, so faust still commits them (after the handler returned, i.e. after our
   outputs were flushed: at-least-once). Other topics keep faust's per-message path.
3. faust recovers a table by reading its changelog up to the end offset that ListOffsets
   reports when recovery starts. Tansu answers ListOffsets(latest) with the base offset of the
   partition's last record batch + 1, not the offset after its last record: a changelog whose
   last flush wrote one batch of 14 records reports 1 instead of 14. faust then ends recovery
   after the first record of that batch and the rest of it is lost to the recovered table
   (docs/RELIABILITY.md, "Table recovery reads each changelog to its real end").
   :meth:`TunedConsumerThread._highwaters` checks each listed end by fetching the record just
   before it: the fetch response's high watermark is right on Tansu, and on a correct broker
   it equals the listed end.
4. Tansu (0.6, ``s3://`` storage) writes a partition's new high watermark to the object
   store before the record batch, in two requests. An object store that dies between them
   leaves the watermark past records that were never stored (the producer got an error); a
   fetch there answers nothing until later records are appended after the hole. faust
   would wait for those offsets forever (a restarted worker stalled in table recovery after
   a SIGKILL of SeaweedFS, docs/RELIABILITY.md). :func:`fetched_end_offsets` reads each
   changelog to the last record it serves; the records of the hole belonged to a batch whose
   flush failed, so its input was not acknowledged and is processed again.
5. A fetch can run ahead of a produce on Tansu's S3 engine: with several producers writing a
   partition, a fetch may return a later batch while an earlier one is still being written
   (docs/RELIABILITY.md, "A fetch can run ahead of a produce"). The topics with batch
   handlers (raw events, repartition) are written without transactions, so a hole in their
   offsets is a record not visible yet: :class:`~feedbackloop.infra.offset_gaps.GapGuard`
   stops the batch before it, the partition is sought back to it and fetched again, and
   nothing after it is acknowledged (so never committed) until it arrived or
   ``GapGuard.max_wait_s`` passed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from feedbackloop.infra.offset_gaps import GapGuard

__all__ = [
    "BatchConsumer",
    "BatchHandler",
    "FetchTuning",
    "TunedConsumerThread",
    "Transport",
    "fetched_end_offsets",
]

log = logging.getLogger(__name__)

#: ``handler(tp, records)``: records are aiokafka ``ConsumerRecord`` of one partition.
BatchHandler = Callable[[TP, Sequence[Any]], Awaitable[None]]


class FetchTuning:
    """Consumer settings faust does not expose; read from ``app.fetch_tuning``."""

    def __init__(
        self, fetch_max_wait_ms: int, max_partition_fetch_bytes: int, fetch_min_bytes: int = 1
    ) -> None:
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.max_partition_fetch_bytes = max_partition_fetch_bytes
        self.fetch_min_bytes = fetch_min_bytes


class TunedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        tuning: FetchTuning | None = getattr(self.app, "fetch_tuning", None)
        if tuning is not None:
            # Read by AIOKafkaConsumer.start() when it builds its Fetcher.
            consumer._fetch_max_wait_ms = tuning.fetch_max_wait_ms
            consumer._max_partition_fetch_bytes = tuning.max_partition_fetch_bytes
            consumer._fetch_min_bytes = tuning.fetch_min_bytes
        return consumer

    async def _highwaters(self, partitions: Iterable[TP]) -> Mapping[TP, int]:
        """End offsets for table recovery, checked against a fetch (see the module doc, 3.)."""
        listed = await super()._highwaters(list(partitions))
        if self.consumer.in_transaction:  # last stable offsets: a fetch's high watermark is not
            return listed
        conf = self.app.conf
        transport = cast(faust_aiokafka.Transport, self.transport)  # our Transport subclass

        def probe() -> aiokafka.AIOKafkaConsumer:
            return aiokafka.AIOKafkaConsumer(
                client_id=f"{conf.broker_client_id}-end-offsets",
                bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
                enable_auto_commit=False,
                auto_offset_reset="none",
                # Not 0: Tansu answers a fetch with max wait 0 without records or watermark.
                fetch_max_wait_ms=100,
                request_timeout_ms=int(conf.broker_request_timeout * 1000.0),
                **faust_aiokafka.credentials_to_aiokafka_auth(
                    conf.broker_credentials, conf.ssl_context
                ),
            )

        return await fetched_end_offsets(probe, listed)

    async def _seek_wait(
        self, consumer: aiokafka.AIOKafkaConsumer, partitions: Mapping[TP, int]
    ) -> None:
        gaps: GapGuard | None = getattr(self.consumer, "gaps", None)
        if gaps is not None:  # the position every later record of the partition must follow
            for tp, offset in partitions.items():
                gaps.expect(tp, offset)
        await super()._seek_wait(consumer, partitions)


async def _stop(probe: aiokafka.AIOKafkaConsumer) -> None:
    """``probe.stop()``, which can raise the ``CancelledError`` of one of aiokafka's own tasks
    (seen when it stops right after its seek: its fetch task is cancelled under it). Let
    through, that error ended faust's table recovery without a word, and the worker lived on
    reading nothing; only a cancellation of the task running this propagates."""
    try:
        await probe.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.warning("stopping the end-offset probe raised aiokafka's own CancelledError")


async def fetched_end_offsets(
    new_probe: Callable[[], aiokafka.AIOKafkaConsumer],
    listed: Mapping[TP, int],
    timeout: float = 10.0,
) -> dict[TP, int]:
    """The offset after the last record each changelog partition serves, from ``end - 1`` of
    its listed (ListOffsets) end, read forward to the fetch's high watermark.

    A partition whose high watermark stays past the last record it serves ends in a hole
    (module doc, 4.): its end is the offset after that record, with a warning. The hole is
    declared only when a fetch at that position was answered with no record, and the round
    after it brought none either (aiokafka keeps only answers for the current position, and
    hands over an answer's records on the next ``getmany``).

    ``new_probe()`` makes an unstarted consumer without a group, started and stopped here
    (only if some partition is not empty).
    Where the fetch fails or does not answer in time, the listed offset is kept (faust's own
    behaviour), with a warning.
    """
    ends = dict(listed)
    check = {tp: end for tp, end in listed.items() if end}  # empty partitions need no fetch
    if not check:
        return ends
    probe = new_probe()
    atps = {aiokafka.TopicPartition(tp.topic, tp.partition): tp for tp in check}
    last: dict[aiokafka.TopicPartition, int] = {}  # the offset after the last record served
    found: dict[aiokafka.TopicPartition, int] = {}  # the end, once known
    holes: dict[aiokafka.TopicPartition, int] = {}  # tp -> high watermark past ``last``
    try:
        try:
            await probe.start()
            probe.assign(list(atps))
            for atp, tp in atps.items():
                probe.seek(atp, check[tp] - 1)
            reached = dict.fromkeys(atps, time.time() * 1000.0)  # when ``last`` was reached
            answered_empty: set[aiokafka.TopicPartition] = set()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and len(found) < len(atps):
                open_tps = [atp for atp in atps if atp not in found]
                batches = await probe.getmany(*open_tps, timeout_ms=200)
                now_ms = time.time() * 1000.0
                for atp in open_tps:
                    recs = batches.get(atp)
                    if recs:
                        last[atp] = max(last.get(atp, 0), recs[-1].offset + 1)
                        reached[atp] = now_ms
                        answered_empty.discard(atp)
                    hw = probe.highwater(atp)
                    if hw is None:
                        continue
                    if last.get(atp, 0) >= hw:
                        found[atp] = hw
                    elif recs or atp not in last:
                        continue
                    elif atp in answered_empty:
                        found[atp] = last[atp]  # still nothing: the log ends in a hole
                        holes[atp] = hw
                    elif (probe.last_poll_timestamp(atp) or 0) > reached[atp]:
                        answered_empty.add(atp)  # a fetch at ``last`` came back empty
        finally:
            await _stop(probe)
    except Exception as e:  # the listed offsets are what faust would have used anyway
        log.warning("could not check changelog end offsets by a fetch (%s); using ListOffsets", e)
        return ends
    for atp, tp in atps.items():
        listed_end = check[tp]
        end = found.get(atp)
        if end is None:
            log.warning("no fetch answer for %s; its end offset stays %d", tp, listed_end)
            continue
        if atp in holes:
            log.warning(
                "%s ends in a hole: its high watermark is %d but its last record is %d (a "
                "write the broker's storage lost, e.g. to a restart); recovery reads to %d",
                tp,
                holes[atp],
                end - 1,
                end,
            )
        elif end != listed_end:
            log.info("end offset of %s: ListOffsets said %d, a fetch %d", tp, listed_end, end)
        ends[tp] = end
    return ends


class BatchConsumer(faust_aiokafka.Consumer):
    #: Seconds to wait between re-fetches of a partition with a hole (see the module doc, 4.).
    gap_retry_s = 0.05

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gaps = GapGuard(name="stream worker")

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self.gaps.forget(tp)
        await super().on_partitions_revoked(revoked)

    def ack_offsets(self, tp: TP, offsets: Sequence[int]) -> None:
        """Acknowledge processed offsets the way :meth:`Consumer.ack` does per message."""
        committed = self._committed_offset[tp]
        index = self._acked_index[tp]
        new = [o for o in offsets if (committed is None or o >= committed) and o not in index]
        index.update(new)
        self._acked[tp].extend(new)
        self._n_acked += len(new)

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - via tests
        handlers: dict[str, BatchHandler] = getattr(self.app, "batch_handlers", {})
        if not handlers:
            return await super()._drain_messages(fetcher)
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = self._read_offset
        to_message = self._to_message
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                records, active = await self._wait_next_records(1.0)
                if not records or self.should_stop:
                    await asyncio.sleep(0)
                    continue
                generation = self.app.consumer_generation_id
                refetch = False
                for tp, recs in records.items():
                    if not self.flow_active or self.app.consumer_generation_id != generation:
                        break  # rebalancing: faust seeks back to the committed offsets
                    if not (active is None or tp in active or tp in self._buffered_partitions):
                        continue
                    r_offset = read_offset[tp]
                    if r_offset is not None:
                        # faust's rule (>=): after a seek the read offset is the committed
                        # position, i.e. the next record to process, not the last processed.
                        recs = [r for r in recs if r.offset >= r_offset]
                    if not recs:
                        continue
                    handler = handlers.get(tp.topic)
                    if handler is None:
                        for r in recs:
                            await callback(to_message(tp, r))
                            read_offset[tp] = r.offset
                        continue
                    admitted = self.gaps.admit(tp, [r.offset for r in recs])
                    if admitted.count:
                        await self._run_shielded(handler, tp, recs[: admitted.count], r_offset)
                    if admitted.missing is not None:
                        # Drops what was fetched after the hole; the next fetch starts at it.
                        await self._seek(tp, admitted.missing)
                        refetch = True
                if refetch:
                    await asyncio.sleep(self.gap_retry_s)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise

    async def _run_shielded(
        self, handler: BatchHandler, tp: TP, recs: Sequence[Any], r_offset: int | None
    ) -> None:
        # Shielded: a stop request must not cut a batch between its outputs and its
        # acknowledgement (faust gives the drainer 1 s to finish).
        task = asyncio.ensure_future(self._run_batch(handler, tp, recs, r_offset))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    async def _run_batch(
        self, handler: BatchHandler, tp: TP, recs: Sequence[Any], r_offset: int | None
    ) -> None:
        first = recs[0].offset
        # Holes reach here only once GapGuard passed over them: faust commits past a hole
        # only when it is registered as a gap.
        if r_offset and first - r_offset > 1:  # the same gap rule as faust's drain loop
            await self._add_gap(tp, r_offset + 1, first)
        await handler(tp, recs)
        offsets = [r.offset for r in recs]
        last = offsets[-1]
        if last - first + 1 != len(offsets):  # holes (compaction, markers): faust needs gaps
            prev = first
            for o in offsets[1:]:
                if o > prev + 1:
                    await self._add_gap(tp, prev + 1, o)
                prev = o
        self.ack_offsets(tp, offsets)
        self._read_offset[tp] = last


class Transport(faust_aiokafka.Transport):
    Consumer = BatchConsumer
