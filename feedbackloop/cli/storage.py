"""``feedbackloop db``, ``sink`` and ``sql``: the ClickHouse schema, the writer and analyst
access (:mod:`feedbackloop.sinks`)."""

from __future__ import annotations

import click

from feedbackloop.cli.base import operations, overridden, settings_of
from feedbackloop.cli.options import url_option

__all__ = ["db", "sink", "sql"]


@click.group()
def db() -> None:
    """ClickHouse schema."""


@db.command("migrate")
@click.option("--target", type=int, default=None, help="Stop at this migration version.")
@click.option(
    "--ttl-days",
    type=click.IntRange(min=0),
    default=None,
    help="Drop event partitions older than this many days (0 removes the TTL). "
    "Default: setting ttl_days (none).",
)
@click.pass_context
def migrate(ctx: click.Context, target: int | None, ttl_days: int | None) -> None:
    """Apply pending schema migrations (idempotent)."""
    from feedbackloop.infra import get_client
    from feedbackloop.sinks import applied_migrations
    from feedbackloop.sinks import migrate as apply

    s = overridden(settings_of(ctx), ttl_days=ttl_days)
    client = get_client(s.clickhouse_dsn)
    try:
        applied = apply(client, s.clickhouse_database, target=target, ttl_days=s.ttl_days)
        current = max(applied_migrations(client, s.clickhouse_database), default=0)
    finally:
        client.close()
    what = ", ".join(map(str, applied)) if applied else "nothing to apply"
    click.echo(f"{s.clickhouse_database}: {what}; schema version {current}")


@click.group()
def sink() -> None:
    """The ClickHouse writer."""


@sink.command("run")
@click.option(
    "--raw/--no-raw",
    default=None,
    help="Also store the raw events topic (when the stream jobs are not running). "
    "Default: setting sink_raw.",
)
@click.option(
    "--group-id", default=None, help="Kafka consumer group. Default: setting sink_group_id."
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=None,
    help="Rows per insert, at most. Default: setting sink_max_rows.",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a row may wait for its batch to be written. Default: setting sink_max_age.",
)
@click.option(
    "--no-query-endpoint", is_flag=True, help="Do not serve `feedbackloop sql` from this process."
)
@click.option(
    "--compact-every",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds between the report rows' compaction rounds; 0: this worker never compacts "
    "(another one does). On a ClickHouse server only the worker that owns partition 0 of the "
    "enriched topic compacts. Default: setting sink_compact_every.",
)
@click.pass_context
def run(
    ctx: click.Context,
    raw: bool | None,
    group_id: str | None,
    max_rows: int | None,
    max_age: float | None,
    no_query_endpoint: bool,
    compact_every: float | None,
) -> None:
    """Consume the topics into ClickHouse until Ctrl-C / SIGTERM (flushes on exit)."""
    import signal

    from feedbackloop.infra.broker import connect_or_start
    from feedbackloop.sinks import SinkConfig, SinkWorker

    s = settings_of(ctx)
    done = operations(s, "sink")
    config = SinkConfig.from_settings(
        s,
        raw=raw,
        group_id=group_id,
        max_rows=max_rows,
        max_age_s=max_age,
        query_endpoint=not no_query_endpoint,
        compact_interval_s=compact_every,
    )
    s, broker = connect_or_start(s)
    worker = SinkWorker(s, config)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        worker.run(
            ready=lambda: click.echo(f"sink running; topics: {', '.join(worker.topic_names)}")
        )
    finally:
        done()
        if broker is not None:
            broker.stop()
    st = worker.sink.stats
    click.echo(
        f"sink stopped: {st.messages} messages, rows {st.rows}, {st.dead_letters} dead letters"
    )


@click.command("sql")
@click.argument("query", required=False)
@click.option(
    "--example",
    default=None,
    metavar="NAME",
    help="Run a documented example query instead of QUERY (list them with --examples).",
)
@click.option("--examples", is_flag=True, help="Print the documented example queries and exit.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Print at most this many rows.",
)
@url_option
@click.pass_context
def sql(
    ctx: click.Context,
    query: str | None,
    example: str | None,
    examples: bool,
    fmt: str,
    max_rows: int,
    url: str | None,
) -> None:
    """Run one read-only query (SELECT, WITH, SHOW, DESCRIBE, EXPLAIN, EXISTS).

    \b
    Examples:
      feedbackloop sql "SELECT variant, count() FROM feedback FINAL GROUP BY variant"
      feedbackloop sql --example satisfaction-by-day
      feedbackloop sql --examples
    """
    from feedbackloop.analysis.reads.analyst_queries import analyst_query, render_examples

    if examples:
        click.echo(render_examples())
        return
    if (query is None) == (example is None):
        raise click.UsageError("give either QUERY or --example NAME (see --examples)")
    if example is not None:
        query = analyst_query(example).sql
    assert query is not None

    from feedbackloop.sinks import format_result, run_query

    res = run_query(settings_of(ctx), query, url=url, max_rows=max_rows)
    click.echo(format_result(res, fmt))
