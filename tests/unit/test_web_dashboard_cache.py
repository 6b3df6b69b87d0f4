"""The dashboard's answers: reused for web_cache_s, computed once for concurrent requests."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

pytest.importorskip("fastapi")

from feedbackloop.sinks.query import QueryResult  # noqa: E402
from feedbackloop.web.dashboard import DashboardQueries  # noqa: E402


class SlowQuery:
    """A query function that takes ``delay`` seconds and counts its calls."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, sql: str) -> QueryResult:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        return QueryResult(["id"], ["String"], [[f"row{self.calls}"]])


def _alerts_in_threads(dq: DashboardQueries, n: int) -> list[Any]:
    out: list[Any] = [None] * n

    def run(i: int) -> None:
        out[i] = dq.alerts("app1", 24)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_concurrent_identical_requests_share_one_query() -> None:
    q = SlowQuery(0.3)
    dq = DashboardQueries(q, cache_s=5.0)
    answers = _alerts_in_threads(dq, 8)
    assert q.calls == 1
    assert all(a == [{"id": "row1"}] for a in answers)


def test_answers_are_reused_within_the_ttl_and_recomputed_after() -> None:
    q = SlowQuery(0.0)
    dq = DashboardQueries(q, cache_s=0.3)
    assert dq.alerts("app1", 24) == dq.alerts("app1", 24) == [{"id": "row1"}]
    assert q.calls == 1
    assert dq.alerts("app2", 24) == [{"id": "row2"}]  # another key: its own query
    time.sleep(0.35)
    assert dq.alerts("app1", 24) == [{"id": "row3"}]
    assert q.calls == 3


def test_zero_disables_reuse() -> None:
    q = SlowQuery(0.0)
    dq = DashboardQueries(q, cache_s=0.0)
    dq.alerts("app1", 24)
    dq.alerts("app1", 24)
    assert q.calls == 2


def test_a_failed_computation_is_not_cached() -> None:
    calls = 0

    def failing_once(sql: str) -> QueryResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("ClickHouse away")
        return QueryResult(["id"], ["String"], [["ok"]])

    dq = DashboardQueries(failing_once, cache_s=60.0)
    with pytest.raises(RuntimeError):
        dq.alerts(None, 24)
    assert dq.alerts(None, 24) == [{"id": "ok"}]
