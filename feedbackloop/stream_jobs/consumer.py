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
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

__all__ = ["BatchConsumer", "BatchHandler", "FetchTuning", "TunedConsumerThread", "Transport"]

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


class BatchConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return TunedConsumerThread(self, loop=self.loop, beacon=self.beacon)

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
                    # Shielded: a stop request must not cut a batch between its outputs and
                    # its acknowledgement (faust gives the drainer 1 s to finish).
                    task = asyncio.ensure_future(self._run_batch(handler, tp, recs, r_offset))
                    try:
                        await asyncio.shield(task)
                    except asyncio.CancelledError:
                        await task
                        raise
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

    async def _run_batch(
        self, handler: BatchHandler, tp: TP, recs: Sequence[Any], r_offset: int | None
    ) -> None:
        first = recs[0].offset
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
