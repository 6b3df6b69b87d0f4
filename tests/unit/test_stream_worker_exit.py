"""A stream worker that failed acknowledges nothing more, and exits even when its shutdown
hangs, so `up` restarts it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("faust")

_HANGS = """
import logging
import time
logging.basicConfig()
from feedbackloop.stream_jobs.app import exit_unless_done
exit_unless_done({seconds}, code=3){cancel}
time.sleep(4)  # a shutdown that takes far longer than the deadline
print("slept")
"""


def _run(seconds: float, cancel: bool) -> subprocess.CompletedProcess[str]:
    code = _HANGS.format(seconds=seconds, cancel=".cancel()" if cancel else "")
    return subprocess.run([sys.executable, "-c", code], timeout=60, capture_output=True, text=True)


def test_a_worker_whose_shutdown_hangs_exits_with_the_given_code_at_the_deadline() -> None:
    proc = _run(0.5, cancel=False)
    assert (proc.returncode, proc.stdout) == (3, "")
    assert "stream worker did not stop within 0 s; exiting now" in proc.stderr


def test_a_cancelled_deadline_lets_the_process_finish() -> None:
    proc = _run(0.5, cancel=True)
    assert (proc.returncode, proc.stdout) == (0, "slept\n")


def test_after_a_lost_delivery_every_flush_fails_so_no_later_batch_is_acknowledged() -> None:
    from confluent_kafka import KafkaError

    from feedbackloop.errors import BrokerError
    from feedbackloop.stream_jobs import KafkaOutput

    out = KafkaOutput({"bootstrap.servers": "127.0.0.1:9"}, {})
    out.flush(timeout=1)  # nothing produced, nothing lost
    # a timer's flush served the failed delivery report of a batch's output
    out._on_delivery(KafkaError(KafkaError.UNKNOWN), None)
    with pytest.raises(BrokerError, match="delivery failed"):
        out.flush(timeout=1)  # the timer's
    with pytest.raises(BrokerError, match="delivery failed"):
        out.flush(timeout=1)  # the batch's own: its offsets must not be acknowledged


def test_a_crashed_consumer_service_is_named_with_its_reason() -> None:
    from mode import Service

    from feedbackloop.stream_jobs.app import first_crash

    running, crashed = Service(), Service()
    assert first_crash([running, None, crashed]) is None
    crashed._crash(RuntimeError("offset commit: UnknownError"))
    found = first_crash([running, None, crashed])
    assert found == "Service crashed: RuntimeError('offset commit: UnknownError')"


def test_a_table_recovery_loop_ended_by_a_stray_cancellation_fails_the_worker() -> None:
    """mode ends a service task quietly on a CancelledError it did not ask for; faust's
    recovery then never runs again and the worker would read nothing: it must fail."""
    import asyncio

    from mode import Service

    from feedbackloop.stream_jobs.app import recovery_ended

    class Recovery(Service):
        @Service.task
        async def _restart_recovery(self) -> None:
            await self.sleep(3600)

    async def main() -> None:
        recovery = Recovery()
        assert recovery_ended(recovery) is None  # not started yet
        await recovery.start()
        await asyncio.sleep(0.05)
        assert recovery_ended(recovery) is None
        loop = next(f for f in recovery._futures if f.__wrapped__.__name__ == "_restart_recovery")
        loop.cancel()  # what aiokafka's stray CancelledError did
        await asyncio.sleep(0.05)
        assert recovery_ended(recovery) == (
            "Recovery: its table recovery loop ended; nothing would be read"
        )
        await recovery.stop()
        assert recovery_ended(recovery) is None  # stopping: not a failure

    asyncio.run(main())
