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
