"""The compactor stands aside while analyst statements run (report_rows._Yield), within a
credit its own statements earn back; and sinks/query.reading() says when they run (the
rounds under real reads are in tests/integration/test_report_rows.py)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from feedbackloop.errors import FeedbackLoopError
from feedbackloop.sinks import query, report_rows
from feedbackloop.sinks.report_rows import _Locked, _Yield


class Client:
    """Runs each statement in ``seconds``, and notes when it started."""

    def __init__(self, seconds: float = 0.0) -> None:
        self.seconds = seconds
        self.started: list[tuple[float, str]] = []
        self.ended: list[float] = []

    def command(self, sql: str) -> None:
        self.started.append((time.monotonic(), sql))
        time.sleep(self.seconds)
        self.ended.append(time.monotonic())


def _durations(client: Client) -> list[float]:
    """Each statement's seconds."""
    return [e - t for (t, _), e in zip(client.started, client.ended, strict=True)]


def _locked(reading: Any, seconds: float = 0.0) -> tuple[_Locked, Client]:
    client = Client(seconds)
    return _Locked(client, threading.Lock(), _Yield(reading, threading.Event())), client


def test_a_statement_waits_while_reads_run_and_starts_once_they_stop() -> None:
    until = time.monotonic() + 0.3
    locked, client = _locked(lambda: time.monotonic() < until)
    locked.command("SELECT 1")
    assert until <= client.started[0][0] < until + 0.1
    assert locked.gate is not None and 0.25 < locked.gate.waited < 0.4


def test_without_reads_nothing_waits() -> None:
    locked, client = _locked(lambda: False)
    t0 = time.monotonic()
    for _ in range(20):
        locked.command("SELECT 1")
    assert time.monotonic() - t0 < 0.1
    assert locked.gate is not None and locked.gate.waited == 0


def test_reads_that_never_stop_leave_the_compactor_half_of_the_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(report_rows, "YIELD_CREDIT_S", 0.2)
    locked, client = _locked(lambda: True, seconds=0.05)
    gate = locked.gate
    assert gate is not None
    gate.credit = 0.2
    took = []
    for _ in range(20):
        t0 = time.monotonic()
        locked.command("SELECT 1")
        took.append(time.monotonic() - t0)
    worked = _durations(client)
    assert len(worked) == 20
    # It waits the first credit, then as long as each statement took, never more: half of
    # the time it runs (the last statement's time is credit left over).
    assert abs(gate.waited - (0.2 + sum(worked[:-1]))) < 0.1
    assert sum(took) < 2 * sum(worked) + 0.2 + 0.3


def test_the_checkpoint_after_a_state_insert_never_waits() -> None:
    """After an insert into a state table comes its checkpoint, which the reads wait for;
    any other statement waits for the reads."""
    reads = threading.Event()
    locked, client = _locked(reads.is_set)
    locked.command("INSERT INTO db.report_sessions (session_id) SELECT 1")
    reads.set()
    threading.Timer(0.2, reads.clear).start()
    t0 = time.monotonic()
    locked.command("INSERT INTO db.report_rows_checkpoints (inserts) SELECT 'x'")
    assert time.monotonic() - t0 < 0.05
    locked.command("INSERT INTO db.report_lookup_units SELECT 1")  # waits for the reads
    assert time.monotonic() - t0 > 0.15


def test_a_stopping_compactor_does_not_wait_for_reads() -> None:
    stop = threading.Event()
    client = Client()
    locked = _Locked(client, threading.Lock(), _Yield(lambda: True, stop))
    threading.Timer(0.1, stop.set).start()
    t0 = time.monotonic()
    locked.command("SELECT 1")
    assert time.monotonic() - t0 < 0.5


class Slow:
    """A client whose statements take ``seconds`` (and fail on ``boom``)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def query(self, sql: str, parameters: Any = None) -> Any:
        time.sleep(self.seconds)
        if "boom" in sql:
            raise RuntimeError("Code: 47. DB::Exception: Unknown identifier boom")

        class Result:
            column_names = ("x",)
            column_types: tuple[Any, ...] = ()
            result_rows = [["SELECT 1"]]

        return Result()


def test_reading_is_true_while_an_analyst_statement_runs_and_after_a_failure_false() -> None:
    assert not query.reading()
    done = threading.Event()
    errors: list[Exception] = []

    def run(sql: str) -> None:
        try:
            query.execute(Slow(0.2), sql)
        except FeedbackLoopError as e:
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=run, args=("SELECT 1",)).start()
    time.sleep(0.1)
    assert query.reading()
    done.wait(5)
    time.sleep(0.05)
    assert not query.reading()

    done.clear()
    threading.Thread(target=run, args=("SELECT boom",)).start()
    done.wait(5)
    assert not query.reading() and errors


def test_a_compactor_that_is_behind_stops_standing_aside_until_it_caught_up() -> None:
    """Each session a round leaves is one more that every read recomputes itself."""
    locked, client = _locked(lambda: True)
    gate = locked.gate
    assert gate is not None
    gate.after_round(report_rows.YIELD_MAX_SESSIONS + 1)
    t0 = time.monotonic()
    locked.command("SELECT 1")
    assert time.monotonic() - t0 < 0.05 and gate.waited == 0
    gate.after_round(report_rows.YIELD_MAX_SESSIONS)
    threading.Timer(0.1, lambda: setattr(gate, "reading", lambda: False)).start()
    locked.command("SELECT 1")
    assert gate.waited > 0.05
