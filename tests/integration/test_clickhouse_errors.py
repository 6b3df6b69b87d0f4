"""A ClickHouse failure reaches the caller as a ClickHouseError with the server's code and
name, whether the query ran directly or through the sink's query endpoint; callers match on
the name (the prompt registry's "run db migrate first"), never on the message text."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sink_helpers import wait_until

from feedbackloop.analysis.loop.prompts import list_prompts
from feedbackloop.cli import cli
from feedbackloop.config import Settings
from feedbackloop.errors import ClickHouseError, ConfigError
from feedbackloop.infra import get_client
from feedbackloop.sinks import query as query_module
from feedbackloop.sinks import run_query
from feedbackloop.sinks.query import ENDPOINT_SESSIONS, QueryEndpoint

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(clickhouse_dsn: str, clickhouse_database: str, tmp_path: Path) -> Iterator[Settings]:
    """An existing, empty database (no migrations, so no prompt registry)."""
    admin = get_client(clickhouse_dsn)
    admin.command(f"CREATE DATABASE IF NOT EXISTS {clickhouse_database}")
    yield Settings(
        clickhouse_url=clickhouse_dsn, clickhouse_database=clickhouse_database, data_dir=tmp_path
    )
    admin.command(f"DROP DATABASE IF EXISTS {clickhouse_database}")
    admin.close()


def _failure(settings: Settings, sql: str) -> ClickHouseError:
    with pytest.raises(ClickHouseError) as info:
        run_query(settings, sql)
    return info.value


def test_a_failed_query_carries_the_servers_code_and_name(settings: Settings) -> None:
    db = settings.clickhouse_database
    err = _failure(settings, f"SELECT * FROM {db}.no_such_table")
    assert (err.code, err.name) == (60, "UNKNOWN_TABLE")
    err = _failure(settings, "SELECT * FROM no_such_database_x.t")
    assert (err.code, err.name) == (81, "UNKNOWN_DATABASE")


def test_the_query_endpoint_relays_code_and_name(settings: Settings) -> None:
    endpoint = QueryEndpoint(settings)
    endpoint.start()
    try:
        err = _failure(settings, f"SELECT * FROM {settings.clickhouse_database}.no_such_table")
        assert (err.code, err.name) == (60, "UNKNOWN_TABLE")
        assert "no_such_table" in str(err)
    finally:
        endpoint.stop()


def test_a_missing_prompt_registry_says_run_db_migrate(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="db migrate"):
        list_prompts(settings)
    gone = settings.model_copy(update={"clickhouse_database": "no_such_database_y"})
    with pytest.raises(ConfigError, match="db migrate"):
        list_prompts(gone)
    env = {
        "FEEDBACKLOOP_CLICKHOUSE_URL": settings.clickhouse_dsn,
        "FEEDBACKLOOP_CLICKHOUSE_DATABASE": settings.clickhouse_database,
        "FEEDBACKLOOP_DATA_DIR": str(settings.data_dir),
    }
    res = CliRunner().invoke(cli, ["prompts", "list"], env=env)
    assert res.exit_code == 1
    assert res.output.startswith("error: no prompt registry") and "Traceback" not in res.output


def test_the_query_endpoint_runs_queries_side_by_side_and_says_busy_when_all_are_held(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report read sends its independent statements at once (derived.READ_LANES): each
    runs on a session of its own, and a query finding every session held for
    BUSY_WAIT_S is answered "busy" (before, one query at a time held the only session)."""
    held = settings.model_copy(update={"sql_max_execution_s": 4.0})
    endpoint = QueryEndpoint(held)
    endpoint.start()
    long_sql = "SELECT count() FROM system.numbers WHERE number != 7"
    stopped: list[str | None] = []

    def hold() -> None:
        try:
            run_query(held, long_sql)  # runs until max_execution_time stops it
        except ClickHouseError as e:
            stopped.append(e.name)

    def running() -> int:
        sql = f"SELECT count() FROM system.processes WHERE startsWith(query, '{long_sql}')"
        return int(run_query(held, sql).rows[0][0])

    holders = [threading.Thread(target=hold) for _ in range(ENDPOINT_SESSIONS)]
    try:
        for t in holders[:-1]:
            t.start()
        # Every session but one runs a long query, and the last one still answers at once.
        wait_until(lambda: running() == ENDPOINT_SESSIONS - 1, timeout=3, interval=0.05)
        holders[-1].start()
        monkeypatch.setattr(query_module, "BUSY_WAIT_S", 0.2)

        def busy() -> bool:
            try:
                run_query(held, "SELECT 1")
            except ClickHouseError as e:
                assert "busy" in str(e)
                return True
            return False

        wait_until(busy, timeout=3, interval=0.05)
    finally:
        for t in holders:
            if t.ident is not None:
                t.join(30)
        endpoint.stop()
    assert stopped == ["TIMEOUT_EXCEEDED"] * ENDPOINT_SESSIONS
