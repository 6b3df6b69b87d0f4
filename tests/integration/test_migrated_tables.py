"""The migrations' DDL, as ClickHouse reports it, equals the column declaration.

Migrations are history (never edited); sinks/tables.py is what the writer, the parsed
ingest, the row builders and the dashboard use. Migrating a fresh database and reading
``DESCRIBE TABLE`` keeps the two from drifting: a new migration that adds or changes a
column fails here until the declaration says the same.
"""

from __future__ import annotations

from feedbackloop.infra import get_client
from feedbackloop.sinks import TABLES, migrate
from feedbackloop.sinks.migrations import MIGRATIONS_TABLE


def test_every_migrated_table_is_described_by_the_declaration(
    clickhouse_dsn: str, clickhouse_database: str
) -> None:
    client = get_client(clickhouse_dsn)
    db = clickhouse_database
    try:
        migrate(client, db)
        tables = {
            name
            for (name,) in client.query(
                "SELECT name FROM system.tables WHERE database = {d:String} "
                "AND engine != 'MaterializedView'",
                parameters={"d": db},
            ).result_rows
        }
        assert tables - {MIGRATIONS_TABLE} == set(TABLES)
        for table in TABLES.values():
            described = [
                (name, type_, f"{kind} {expr}".strip())
                for name, type_, kind, expr, *_ in client.query(
                    f"DESCRIBE TABLE `{db}`.`{table.name}`"
                ).result_rows
            ]
            declared = [(c.name, c.type, c.default) for c in table.columns]
            assert described == declared, table.name
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()


def test_migration_8_keeps_the_first_message_of_each_version_already_stored(
    clickhouse_dsn: str, clickhouse_database: str
) -> None:
    """A database at migration 7 holding a winner and a later losing write of one version:
    after migration 8 the audit table serves the winner (before, merges kept the loser)."""
    client = get_client(clickhouse_dsn)
    db = clickhouse_database
    try:
        migrate(client, db, target=7)
        for offset, who in ((10, "winner"), (11, "loser"), (12, "next")):
            version = 2 if who != "next" else 3
            client.command(
                f"INSERT INTO {db}.experiment_changes (app_id, name, version, changed_by, "
                f"kafka_offset) VALUES ('a', 'e', {version}, '{who}', {offset})"
            )
        assert migrate(client, db, target=8) == [8]
        rows = client.query(
            f"SELECT version, changed_by FROM {db}.experiment_changes FINAL ORDER BY version"
        ).result_rows
        assert [tuple(r) for r in rows] == [(2, "winner"), (3, "next")]
        tables = client.query(
            "SELECT name FROM system.tables WHERE database = {d:String} AND name LIKE 'exp%'",
            parameters={"d": db},
        ).result_rows
        assert sorted(t for (t,) in tables) == ["experiment_changes", "experiment_designs"]
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()
