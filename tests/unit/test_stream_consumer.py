"""fetched_end_offsets: the check of ListOffsets end offsets used for table recovery.

The real broker case (Tansu's ListOffsets answers the last batch's base offset + 1) is in
tests/integration/test_stream_jobs.py; these cover the decisions with a stand-in consumer.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("faust")

from aiokafka import TopicPartition  # noqa: E402
from faust.types import TP  # noqa: E402

from feedbackloop.stream_jobs.consumer import fetched_end_offsets  # noqa: E402


class FakeProbe:
    """Serves the records up to ``ends[tp]`` from the position on, answering with the high
    watermark ``highwaters[tp]`` (default: ``ends[tp]``); past ``ends`` nothing is served."""

    def __init__(
        self,
        ends: dict[tuple[str, int], int],
        fail: bool = False,
        highwaters: dict[tuple[str, int], int] | None = None,
    ) -> None:
        self.ends = ends
        self.highwaters = highwaters or {}
        self.fail = fail
        self.positions: dict[TopicPartition, int] = {}
        self.answered: dict[TopicPartition, float] = {}
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.fail:
            raise ConnectionError("broker unreachable")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def assign(self, tps: list[TopicPartition]) -> None:
        self.positions = {tp: 0 for tp in tps}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[Any, list[Any]]:
        await asyncio.sleep(0.01)
        out = {}
        for tp in tps:
            self.answered[tp] = time.time() * 1000.0
            recs = [SimpleNamespace(offset=o) for o in range(self.positions[tp], self.ends[tp])]
            if recs:
                out[tp] = recs
                self.positions[tp] = recs[-1].offset + 1
        return out

    def highwater(self, tp: TopicPartition) -> int | None:
        if tp not in self.answered:
            return None
        return self.highwaters.get((tp.topic, tp.partition), self.ends[tp])

    def last_poll_timestamp(self, tp: TopicPartition) -> float | None:
        return self.answered.get(tp)


def run(probe: FakeProbe | None, listed: dict[TP, int]) -> dict[TP, int]:
    made: list[FakeProbe] = []

    def new_probe() -> Any:
        assert probe is not None, "no fetch expected"
        made.append(probe)
        return probe

    result = asyncio.run(fetched_end_offsets(new_probe, listed, timeout=1.0))
    if made:
        assert probe is not None and probe.stopped  # always closed again
    return result


def test_a_listed_end_inside_the_last_batch_is_moved_after_its_last_record() -> None:
    # Tansu: 14 records in one batch, ListOffsets says 1.
    probe = FakeProbe({("c", 0): 14, ("c", 1): 30})
    assert run(probe, {TP("c", 0): 1, TP("c", 1): 21}) == {TP("c", 0): 14, TP("c", 1): 30}


def test_a_correct_listed_end_is_kept() -> None:
    assert run(FakeProbe({("c", 0): 5}), {TP("c", 0): 5}) == {TP("c", 0): 5}


def test_empty_partitions_need_no_fetch() -> None:
    assert run(None, {TP("c", 0): 0, TP("c", 1): 0}) == {TP("c", 0): 0, TP("c", 1): 0}


def test_a_failed_fetch_keeps_the_listed_ends(caplog: pytest.LogCaptureFixture) -> None:
    probe = FakeProbe({("c", 0): 14}, fail=True)
    assert run(probe, {TP("c", 0): 1}) == {TP("c", 0): 1}
    assert "using ListOffsets" in caplog.text


def test_a_log_ending_in_a_hole_ends_after_its_last_served_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Tansu after its object store died between a watermark write and the batch write:
    # partition 1 says 541, serves up to 507 (the SIGKILL-of-SeaweedFS recovery stall).
    probe = FakeProbe({("c", 0): 521, ("c", 1): 508}, highwaters={("c", 1): 541})
    assert run(probe, {TP("c", 0): 504, TP("c", 1): 393}) == {TP("c", 0): 521, TP("c", 1): 508}
    assert "ends in a hole: its high watermark is 541 but its last record is 507" in caplog.text


class StopCancelled(FakeProbe):
    """aiokafka's ``stop()`` raising the ``CancelledError`` of its own fetch task (seen when
    the probe stops right after its seek)."""

    async def stop(self) -> None:
        self.stopped = True
        raise asyncio.CancelledError


def test_aiokafkas_own_cancellation_on_stop_does_not_end_the_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Let through, it ended faust's table recovery and the worker read nothing more.
    probe = StopCancelled({("c", 0): 14})
    assert run(probe, {TP("c", 0): 1}) == {TP("c", 0): 14}
    assert "own CancelledError" in caplog.text


def test_a_cancellation_of_the_recovery_itself_still_goes_through() -> None:
    class Slow(FakeProbe):
        async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[Any, Any]:
            await asyncio.sleep(10)
            return {}

    probe = Slow({("c", 0): 14})

    async def main() -> None:
        task = asyncio.create_task(fetched_end_offsets(lambda: probe, {TP("c", 0): 1}))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert probe.stopped
