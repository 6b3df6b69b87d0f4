"""fetched_end_offsets: the check of ListOffsets end offsets used for table recovery.

The real broker case (Tansu's ListOffsets answers the last batch's base offset + 1) is in
tests/integration/test_stream_jobs.py; these cover the decisions with a stand-in consumer.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("faust")

from aiokafka import TopicPartition  # noqa: E402
from faust.types import TP  # noqa: E402

from feedbackloop.stream_jobs.consumer import fetched_end_offsets  # noqa: E402


class FakeProbe:
    """Answers a fetch at ``offset`` with the records up to ``ends[tp]`` and that watermark."""

    def __init__(self, ends: dict[tuple[str, int], int], fail: bool = False) -> None:
        self.ends = ends
        self.fail = fail
        self.positions: dict[TopicPartition, int] = {}
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
        return {
            tp: [SimpleNamespace(offset=o) for o in range(self.positions[tp], self.ends[tp])]
            for tp in tps
        }

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends[tp]


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
