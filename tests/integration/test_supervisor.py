"""`feedbackloop up` is a supervisor: a child that dies is restarted after a back-off while the
others keep running, the embedded broker and its S3 store included; a crash loop stops it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from feedbackloop.config import Settings
from feedbackloop.infra.stack import RestartPolicy, Service, ServiceStatus, Stack

pytestmark = [pytest.mark.integration, pytest.mark.fault]

# A real feedbackloop command that starts fast and says when it is ready.
_CHILD = Service(
    "child",
    ("broker", "--port", "0", "--storage", "memory://tansu/"),
    ready_marker="broker ready on",
    ready_timeout_s=30,
)


def _supervise_until(stack: Stack, done: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert stack.supervise(), stack.failure
        if callable(done) and done():
            return
        time.sleep(0.1)
    raise AssertionError(f"not done within {timeout} s: {stack.status()}")


def _state(stack: Stack, name: str) -> ServiceStatus:
    return next(st for st in stack.status() if st.name == name)


def test_crashed_children_are_restarted_and_a_crash_loop_stops_the_stack(
    tmp_path: Path, topic_prefix: str
) -> None:
    settings = Settings(
        data_dir=tmp_path, broker_port=0, topic_prefix=topic_prefix, topic_partitions=1
    )
    seen: list[ServiceStatus] = []
    policy = RestartPolicy(backoff_s=0.2, max_backoff_s=1.0, max_crashes=3, stable_s=60.0)
    stack = Stack(settings, [_CHILD], on_status=seen.append, policy=policy)
    stack.start()
    try:
        assert stack.healthy()
        assert {st.name for st in stack.status()} == {"s3", "broker", "child"}

        # the service: SIGKILLed, restarted with a new pid, the broker untouched
        first = _state(stack, "child").pid
        broker_pid = stack.broker.pid if stack.broker else None
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _supervise_until(stack, lambda: _state(stack, "child").pid != first and stack.healthy())
        child = _state(stack, "child")
        assert child.pid != first and child.restarts == 1
        assert stack.broker is not None and stack.broker.pid == broker_pid
        assert any(
            st.name == "child" and st.state == "exited" and "SIGKILL" in st.detail for st in seen
        )

        # the broker, then its S3 store
        stack.broker.kill()  # returns once the process is gone
        _supervise_until(stack, stack.healthy)
        assert _state(stack, "broker").restarts == 1
        assert stack.broker.object_store is not None
        stack.broker.object_store.kill()
        _supervise_until(stack, stack.healthy)
        assert _state(stack, "s3").restarts == 1

        # a crash loop: the third crash in a row (each soon after its start) gives up
        pid = _state(stack, "child").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _supervise_until(stack, lambda: _state(stack, "child").pid != pid and stack.healthy())
        assert _state(stack, "child").restarts == 2
        pid = _state(stack, "child").pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while stack.supervise() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stack.failure is not None
        assert "child crashed 3 times in a row" in stack.failure
        assert seen[-1].state == "failed"
    finally:
        stack.stop()


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=1.0, max_backoff_s=30.0)
    assert [policy.delay(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 4, 8, 16, 30, 30]
