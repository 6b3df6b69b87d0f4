"""A ClickHouse failure reaches the caller as a ClickHouseError with the server's code and
name, whether the query ran directly or through the sink's query endpoint; callers match on
the name (the prompt registry's "run db migrate first"), never on the message text."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from feedbackloop.analysis.loop.prompts import list_prompts
from feedbackloop.cli import cli
from feedbackloop.config import Settings
from feedbackloop.errors import ClickHouseError, ConfigError
from feedbackloop.infra import get_client
from feedbackloop.sinks import run_query
from feedbackloop.sinks.query import QueryEndpoint

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
