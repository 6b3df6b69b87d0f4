"""derived._Steady: a statement that reads the totals beside the session rows is trusted
only when no insert into the tables it reads committed while it ran, and at a moment a
compactor checkpoint recorded (the integration cases are in test_report_rows.py)."""

from __future__ import annotations

from typing import Any

import pytest

from feedbackloop.analysis.reads import derived

K1 = "report_sessions:all:5,report_variant_totals:all:5,report_version_sessions:all:5"
# A round's insert into the version sessions only (and its views' tables).
K1_VERSIONS = "report_sessions:all:5,report_variant_totals:all:5,report_version_sessions:all:6"
K2 = "report_sessions:all:6,report_variant_totals:all:6,report_version_sessions:all:6"
READ = "SELECT variant, sum(sessions) FROM report_variant_totals UNION ALL report_sessions"


class Store:
    """Answers the reads' statements: ``inserts`` in turn for each look at the tables'
    inserts, ``checkpoints`` the moments recorded."""

    def __init__(self, inserts: list[str], checkpoints: set[str]) -> None:
        self.inserts, self.checkpoints = inserts, checkpoints
        self.reads = 0

    def __call__(self, sql: str) -> list[dict[str, Any]]:
        if "system.parts" in sql:
            now = self.inserts.pop(0) if len(self.inserts) > 1 else self.inserts[0]
            settled = int(now in self.checkpoints)
            return [{"inserts": now, "since": "2026-11-30 00:00:00.000", "settled": settled}]
        self.reads += 1
        return [{"variant": "a", "read": self.reads}]


def test_a_commit_into_tables_the_statement_does_not_read_changes_nothing() -> None:
    store = Store([K1_VERSIONS], {K1})
    assert derived._Steady(store, K1)(READ) == [{"variant": "a", "read": 1}]


def test_a_commit_into_the_tables_it_reads_makes_it_wait_and_run_again() -> None:
    # the round's state part committed, then its checkpoint
    store = Store([K2, K2, K2], {K1, K2})
    steady = derived._Steady(store, K1)
    assert steady(READ) == [{"variant": "a", "read": 2}]
    assert steady.inserts == K2


def test_tables_that_never_agree_again_send_the_read_to_the_exact_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(derived, "SETTLE_S", 0.05)
    store = Store([K2], {K1})  # committed, and no checkpoint comes

    @derived._exact_when_unsettled
    def read() -> list[dict[str, Any]]:
        return derived._Steady(store, K1)(READ)

    assert read() is None
    assert store.reads == 1


def test_a_statement_compares_with_the_reading_it_started_from() -> None:
    """Statements of one read run side by side: while one runs, another finds a round's
    commit and moves the read to the next checkpoint. The first one still compares with
    the reading it started from, so it runs again (it may have read half of that round)."""
    store = Store([K2, K2, K2], {K1, K2})
    steady = derived._Steady(store, K1)

    def rows(sql: str) -> list[dict[str, Any]]:
        if sql == READ and store.reads == 0:
            steady.inserts = K2  # the other statement, meanwhile
        return store(sql)

    steady.rows = rows
    assert steady(READ) == [{"variant": "a", "read": 2}]
