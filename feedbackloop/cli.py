"""The ``feedbackloop`` command line. Commands are thin: parse options, call a library function.

Only this module turns a :class:`~feedbackloop.errors.FeedbackLoopError` into a message and
exit code 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable
from typing import Any

import click

from feedbackloop.config import Settings, load_settings
from feedbackloop.errors import FeedbackLoopError, InfraError, MissingDependency

__all__ = ["main", "cli"]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeedbackLoopError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="FEEDBACKLOOP_CONFIG",
    help="TOML settings file (env: FEEDBACKLOOP_CONFIG). Env vars FEEDBACKLOOP_* override it.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """feedbackloop: stream, join and judge LLM interactions, feedback and outcomes."""
    ctx.obj = load_settings(config_file)


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


def _operations(s: Settings, service: str, metrics: bool = True) -> Callable[[], None]:
    """Logging and metrics of a long-running command; returns what to call on exit.

    Metrics go to the shared directory (the one ``up`` chose, else ``s.metrics_path``), so
    the web server's /metrics, ``feedbackloop metrics`` or ``metrics_port`` show them all.
    """
    import os

    from feedbackloop.infra.logs import setup_logging

    setup_logging(service, s.log_format, s.log_level)
    if not metrics:
        return lambda: None
    try:
        from feedbackloop.infra import metrics as m

        path = m.enable_multiprocess(m.multiprocess_dir() or s.metrics_path)
        m.families().service_up.labels(service).set(1)
    except ImportError as e:
        raise MissingDependency("prometheus-client", "sinks") from e
    if s.metrics_port is not None:
        _serve_metrics(s, path)
    pid = os.getpid()
    return lambda: m.mark_process_dead(pid, path)


def _serve_metrics(s: Settings, path: Any) -> None:
    from feedbackloop.infra.metrics import serve_http

    assert s.metrics_port is not None
    try:
        serve_http(s.metrics_port, s.metrics_host, path)
    except OSError as e:
        raise InfraError(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {e}") from e
    click.echo(f"metrics on http://{s.metrics_host}:{s.metrics_port}/metrics")


# --- stats: A/B statistics from counts alone (feedbackloop.analysis) -----------------------


class _CountsType(click.ParamType):
    """``SUCCESSES/N`` such as ``540/1000``."""

    name = "SUCCESSES/N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            from feedbackloop.analysis.statistics.sufficient import BinaryStats, InvalidStatistics
        except ImportError as e:
            raise MissingDependency("numpy/scipy", "analysis") from e
        try:
            return BinaryStats.parse(value)
        except InvalidStatistics as e:
            self.fail(str(e), param, ctx)


class _WeightsType(click.ParamType):
    """``W1/W2`` such as ``50/50`` or ``0.9/0.1``."""

    name = "W_CONTROL/W_TREATMENT"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            weights = tuple(float(w) for w in value.split("/"))
        except ValueError:
            self.fail(f"expected two numbers such as 50/50, got {value!r}", param, ctx)
        if len(weights) != 2 or min(weights) < 0 or sum(weights) <= 0:
            self.fail(f"expected two non-negative weights such as 50/50, got {value!r}", param, ctx)
        return weights


@cli.group()
def stats() -> None:
    """A/B statistics that need no database."""


@stats.command("compare")
@click.option(
    "--control", required=True, type=_CountsType(), help="Control successes/units, e.g. 540/1000."
)
@click.option(
    "--treatment",
    required=True,
    type=_CountsType(),
    help="Treatment successes/units, e.g. 580/1010.",
)
@click.option(
    "--alpha",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Significance level (two-sided).",
)
@click.option(
    "--power",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Power for the required sample size.",
)
@click.option(
    "--mde",
    type=float,
    default=None,
    help="Absolute change in rate to plan for (e.g. 0.02); default: the observed one.",
)
@click.option(
    "--weights",
    type=_WeightsType(),
    default=None,
    help="Configured split for the sample-ratio check, e.g. 50/50 (default: equal).",
)
@click.option(
    "--lower-is-better",
    is_flag=True,
    help="A lower rate is the improvement (e.g. an error or escalation rate).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats_compare(
    control: Any,
    treatment: Any,
    alpha: float,
    power: float,
    mde: float | None,
    weights: tuple[float, float] | None,
    lower_is_better: bool,
    as_json: bool,
) -> None:
    """Compare two variants of a binary metric from counts alone.

    \b
    Example:
      feedbackloop stats compare --control 540/1000 --treatment 580/1010
    """
    import json

    from feedbackloop.analysis.statistics import compare_counts, format_comparison

    result = compare_counts(
        control,
        treatment,
        alpha=alpha,
        power=power,
        mde=mde,
        weights=weights,
        higher_is_better=not lower_is_better,
    )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_comparison(result))


# --- db / sink / sql: ClickHouse storage and analyst access (feedbackloop.sinks) ----------


@cli.group()
def db() -> None:
    """ClickHouse schema."""


@db.command("migrate")
@click.option("--target", type=int, default=None, help="Stop at this migration version.")
@click.option(
    "--ttl-days",
    type=click.IntRange(min=0),
    default=None,
    envvar="FEEDBACKLOOP_TTL_DAYS",
    help="Drop event partitions older than this many days (0 removes the TTL).",
)
@click.pass_context
def db_migrate(ctx: click.Context, target: int | None, ttl_days: int | None) -> None:
    """Apply pending schema migrations (idempotent)."""
    from feedbackloop.infra import get_client
    from feedbackloop.sinks import applied_migrations, migrate

    s = settings_of(ctx)
    client = get_client(s.clickhouse_dsn)
    try:
        applied = migrate(
            client,
            s.clickhouse_database,
            target=target,
            ttl_days=s.ttl_days if ttl_days is None else ttl_days,
        )
        current = max(applied_migrations(client, s.clickhouse_database), default=0)
    finally:
        client.close()
    what = ", ".join(map(str, applied)) if applied else "nothing to apply"
    click.echo(f"{s.clickhouse_database}: {what}; schema version {current}")


@cli.group()
def sink() -> None:
    """The ClickHouse writer."""


@sink.command("run")
@click.option(
    "--raw/--no-raw",
    default=None,
    envvar="FEEDBACKLOOP_SINK_RAW",
    help="Also store the raw events topic (when the stream jobs are not running). "
    "Default: settings sink_raw (off).",
)
@click.option(
    "--group-id",
    default=None,
    envvar="FEEDBACKLOOP_SINK_GROUP_ID",
    help="Kafka consumer group (default: settings sink_group_id, feedbackloop-sink).",
)
@click.option(
    "--max-rows",
    type=click.IntRange(min=1),
    default=None,
    envvar="FEEDBACKLOOP_SINK_MAX_ROWS",
    help="Rows per insert, at most (default: settings sink_max_rows, 50000).",
)
@click.option(
    "--max-age",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    envvar="FEEDBACKLOOP_SINK_MAX_AGE",
    help="Seconds a row may wait for its batch to be written (default: settings "
    "sink_max_age, 0.5).",
)
@click.option(
    "--no-query-endpoint", is_flag=True, help="Do not serve `feedbackloop sql` from this process."
)
@click.pass_context
def sink_run(
    ctx: click.Context,
    raw: bool | None,
    group_id: str | None,
    max_rows: int | None,
    max_age: float | None,
    no_query_endpoint: bool,
) -> None:
    """Consume the topics into ClickHouse until Ctrl-C / SIGTERM (flushes on exit)."""
    import signal

    from feedbackloop.infra.broker import connect_or_start
    from feedbackloop.sinks import SinkConfig, SinkWorker

    s = settings_of(ctx)
    done = _operations(s, "sink")
    config = SinkConfig(
        raw=s.sink_raw if raw is None else raw,
        group_id=group_id or s.sink_group_id,
        max_rows=max_rows or s.sink_max_rows,
        max_age_s=max_age or s.sink_max_age,
        query_endpoint=not no_query_endpoint,
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


@cli.command("sql")
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
@click.option(
    "--url",
    default=None,
    envvar="FEEDBACKLOOP_SQL_URL",
    help="ClickHouse URL to query (use a read-only user). Default: the running sink's "
    "endpoint if any, else the configured ClickHouse.",
)
@click.pass_context
def sql_command(
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


# --------------------------------------------------------------------------- foundation


def _wait_for_signal(while_true: Callable[[], bool] = lambda: True) -> None:
    """Block until SIGINT or SIGTERM, or until ``while_true()`` turns false."""
    import signal
    import threading

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0) and while_true():
        pass


@cli.command("broker")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="FEEDBACKLOOP_BROKER_PORT",
    help="Port on 127.0.0.1 (default 9092; 0 = any free port).",
)
@click.option(
    "--storage",
    default=None,
    envvar="FEEDBACKLOOP_BROKER_STORAGE",
    help="Tansu storage: durable (default: an embedded S3 store under the data dir), "
    "memory://tansu/, or s3://bucket/ with AWS_* variables.",
)
@click.pass_context
def broker_command(ctx: click.Context, port: int | None, storage: str | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) until Ctrl-C, with our topics."""
    from feedbackloop.infra import EmbeddedBroker, ensure_topics
    from feedbackloop.schemas import Topics

    s = settings_of(ctx)
    _operations(s, "broker", metrics=False)
    if storage:
        s = s.model_copy(update={"broker_storage": storage})
    broker = EmbeddedBroker.from_settings(s, port=port)
    broker.start()
    try:
        s = s.model_copy(update={"bootstrap_servers": broker.bootstrap_servers})
        topics = Topics(s.topic_prefix).all()
        ensure_topics(s.kafka_client_config(), topics, s.topic_partitions)
        click.echo(
            f"broker ready on {broker.bootstrap_servers} (tansu, {broker.storage_description})"
        )
        click.echo(f"topics: {', '.join(topics)}")
        click.echo(f"use it with: FEEDBACKLOOP_BOOTSTRAP_SERVERS={broker.bootstrap_servers}")
        _wait_for_signal()
    finally:
        broker.stop()
        click.echo("broker stopped")


@cli.command("up")
@click.option("--no-web", is_flag=True, help="Do not start the web server.")
@click.option(
    "--no-stream",
    is_flag=True,
    help="Do not start the stream jobs; the sink then stores raw events.",
)
@click.pass_context
def up_command(ctx: click.Context, no_web: bool, no_stream: bool) -> None:
    """Start the broker (embedded unless configured), stream jobs, sink and web; Ctrl-C stops
    them in order, each flushing first."""
    from feedbackloop.demo import status_line
    from feedbackloop.infra.stack import Stack, default_services

    s = settings_of(ctx)
    _operations(s, "stack", metrics=False)
    stack = Stack(
        s,
        default_services(with_stream=not no_stream, with_web=not no_web),
        on_status=lambda st: click.echo(status_line(st)),
    )
    click.echo("starting feedbackloop:")
    run = stack.start()
    if s.metrics_port is not None:
        # The children write metrics to the stack's directory; serve them all from here.
        _serve_metrics(s, stack.metrics_dir)
    click.echo(f"running. Kafka: {run.bootstrap_servers}  ClickHouse: {run.clickhouse_dsn}")
    click.echo('query with: feedbackloop sql "SELECT ..."   stop with: Ctrl-C')
    try:
        # A crashed child is restarted (with back-off); only a crash loop ends the wait.
        _wait_for_signal(while_true=stack.supervise)
    finally:
        click.echo("stopping (flushing every service):")
        stack.stop()
    if stack.failure is not None:
        raise InfraError(f"stopped: {stack.failure}")


@cli.command("simulate")
@click.option(
    "--duration",
    type=click.FloatRange(min=0.1),
    default=None,
    help="Seconds to run (default: until Ctrl-C).",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=1000.0,
    show_default=True,
    help="Target events per second.",
)
@click.option(
    "--effect",
    type=click.FloatRange(-1, 1),
    default=0.10,
    show_default=True,
    help="True satisfaction of treatment minus control.",
)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--collector",
    default=None,
    envvar="FEEDBACKLOOP_COLLECTOR_URL",
    help="Send through the HTTP collector at this base URL instead of Kafka.",
)
@click.option(
    "--key",
    default=None,
    envvar="FEEDBACKLOOP_COLLECTOR_KEY",
    help="API key for --collector (a public write key is enough).",
)
@click.pass_context
def simulate_command(
    ctx: click.Context,
    duration: float | None,
    rate: float,
    effect: float,
    seed: int,
    collector: str | None,
    key: str | None,
) -> None:
    """Send simulated traffic through the SDK to the configured broker, or to a collector
    URL (a load generator)."""
    from feedbackloop.producers import FeedbackClient
    from feedbackloop.producers.collector_client import CollectorClient
    from feedbackloop.simulator import Simulator, TrafficSpec

    s = settings_of(ctx)
    spec = TrafficSpec(
        satisfaction={"control": 0.62, "treatment": min(1.0, 0.62 + effect)}, seed=seed
    )
    client = (
        CollectorClient(collector, key, s, app_id=spec.app_id)
        if collector
        else FeedbackClient(s, app_id=spec.app_id)
    )
    sim = Simulator(client, spec)
    target = collector or client.settings.bootstrap_servers or "the local broker"
    click.echo(f"simulating {rate:,.0f} events/s to {target} (Ctrl-C to stop)", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the run; the client still closes
        sim.run(
            duration_s=duration if duration is not None else float("inf"),
            rate=rate,
            progress=lambda r: click.echo(
                f"\r  {r.total:>10,} events in {r.elapsed_s:6.1f} s "
                f"({r.total / max(r.elapsed_s, 1e-9):,.0f}/s)",
                nl=False,
                err=True,
            ),
        )
    stats = client.close()
    click.echo("", err=True)
    click.echo(json.dumps({**sim.result.to_dict(), "sdk": dataclasses.asdict(stats)}, indent=2))


@cli.group()
def schemas() -> None:
    """The event contract."""


@schemas.command("export")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of standard output.",
)
def schemas_export(output: str | None) -> None:
    """Print the JSON Schema of every event, for clients in other languages."""
    from feedbackloop.schemas import event_json_schema_text

    text = event_json_schema_text()
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"wrote {output}", err=True)
    else:
        click.echo(text, nl=False)


@cli.command("demo")
@click.option(
    "--duration",
    type=click.FloatRange(min=1),
    default=20.0,
    show_default=True,
    help="Seconds of simulated traffic.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=1),
    default=3000.0,
    show_default=True,
    help="Events per second to offer.",
)
@click.option(
    "--control-satisfaction",
    type=click.FloatRange(0, 1),
    default=0.62,
    show_default=True,
    help="True thumbs-up rate of the control variant.",
)
@click.option(
    "--effect",
    type=click.FloatRange(-1, 1),
    default=0.10,
    show_default=True,
    help="True satisfaction of treatment minus control (the planted effect).",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Simulator seed.")
@click.option(
    "--broker-only",
    is_flag=True,
    help="Only the broker: send, read back and count, without stream jobs, ClickHouse or web.",
)
@click.option(
    "--no-stream", is_flag=True, help="Without the stream jobs (the sink stores raw events)."
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Keep the pipeline and dashboard running after the results, until Ctrl-C.",
)
@click.pass_context
def demo_command(
    ctx: click.Context,
    duration: float,
    rate: float,
    control_satisfaction: float,
    effect: float,
    seed: int,
    broker_only: bool,
    no_stream: bool,
    wait: bool,
) -> None:
    """Run the pipeline on embedded defaults with simulated traffic and show the results."""
    from feedbackloop.demo import DemoResult, run_demo
    from feedbackloop.infra.stack import default_services
    from feedbackloop.simulator import TrafficSpec

    s = settings_of(ctx)
    treatment = min(1.0, max(0.0, control_satisfaction + effect))
    spec = TrafficSpec(
        satisfaction={"control": control_satisfaction, "treatment": treatment}, seed=seed
    )
    click.echo("starting the embedded pipeline:")

    def progress(result: object) -> None:
        from feedbackloop.simulator import SimulationResult

        assert isinstance(result, SimulationResult)
        click.echo(
            f"\r  simulating: {result.total:>8,} events sent in {result.elapsed_s or 0:5.1f} s",
            nl=False,
            err=True,
        )

    services = [] if broker_only else default_services(with_stream=not no_stream)

    def show(demo: DemoResult) -> None:
        click.echo("", err=True)
        click.echo(format_demo(demo, spec))
        run = demo.settings
        if run is None or broker_only:
            return
        click.echo("")
        web = next((st.detail for st in demo.services if st.name == "web"), "")
        if web:
            click.echo(web)
        click.echo(
            'query:      feedbackloop sql "SELECT variant, count() FROM interactions '
            'FINAL GROUP BY variant"   feedbackloop sql --examples'
        )
        click.echo(
            f"reports:    feedbackloop ab report --experiment {spec.experiment}   "
            "feedbackloop failures   "
            f"feedbackloop impact --experiment {spec.experiment}"
        )
        if wait:
            click.echo(
                f"the pipeline keeps running; Ctrl-C stops it (data stays in {run.data_dir})"
            )
            _wait_for_signal()

    run_demo(
        s,
        duration_s=duration,
        rate=rate,
        spec=spec,
        services=services,
        echo=click.echo,
        progress=progress,
        while_running=show,
    )


def format_demo(demo: object, spec: object) -> str:
    from feedbackloop.analysis.statistics import compare_counts
    from feedbackloop.demo import DemoResult
    from feedbackloop.simulator import TrafficSpec

    assert isinstance(demo, DemoResult) and isinstance(spec, TrafficSpec)
    sim = demo.simulation
    lines = [
        f"sent through the SDK: {sum(sim.sent.values()):,} events "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(sim.sent.items()))}) "
        f"+ {sim.malformed} malformed, in {sim.elapsed_s:.1f} s "
        f"({(sum(sim.sent.values()) + sim.malformed) / max(sim.elapsed_s, 1e-9):,.0f} events/s)",
        f"SDK counters: {', '.join(f'{k} {v:,}' for k, v in demo.sdk_stats.items())}",
        f"read back from Kafka: {demo.read_back:,} of {sum(sim.sent.values()):,} events by "
        f"event_id ({demo.missing} missing), {demo.malformed_read} malformed payloads",
        "",
        f"experiment {spec.experiment!r}: thumbs-up rate by variant "
        f"(planted: {', '.join(f'{v} {p:.0%}' for v, p in spec.satisfaction.items())})",
    ]
    for variant, (up, rated) in demo.thumbs.items():
        lines.append(f"  {variant:<10} {up:>7,} / {rated:<7,} = {up / max(rated, 1):.1%}")
    if demo.stored_events is not None:
        lines.insert(
            3,
            f"in ClickHouse: {demo.stored_events:,} distinct events, "
            f"{demo.stored_dead_letters:,} dead letters "
            f"(expected {sum(sim.sent.values()):,} and {sim.malformed:,})",
        )
        lines += ["", demo.results]
    elif set(demo.thumbs) >= {"control", "treatment"}:
        cmp = compare_counts(control=demo.thumbs["control"], treatment=demo.thumbs["treatment"])
        lines += ["", cmp.to_text()]
    return "\n".join(lines)


# --- ab / impact: experiment reports from ClickHouse (feedbackloop.analysis) ---------------


class _NamedWeightsType(click.ParamType):
    """``control=50,treatment=50`` (any scale)."""

    name = "VARIANT=WEIGHT,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        out: dict[str, float] = {}
        for item in value.split(","):
            name, sep, w = item.partition("=")
            try:
                weight = float(w)
            except ValueError:
                weight = -1.0
            if not sep or not name.strip() or weight < 0:
                self.fail(
                    f"expected VARIANT=WEIGHT,... such as control=50,treatment=50, got {value!r}",
                    param,
                    ctx,
                )
            out[name.strip()] = weight
        if len(out) < 2 or sum(out.values()) <= 0:
            self.fail("need at least two variants and a positive total weight", param, ctx)
        return out


def _scope(experiment: str | None, since: str | None, app: str | None) -> Any:
    from feedbackloop.analysis.reads.scope import Scope
    from feedbackloop.analysis.reads.since import parse_since

    return Scope(experiment=experiment, since=parse_since(since) if since else None, app_id=app)


def _emit(result: Any, as_json: bool) -> None:
    import json

    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_text())


_since_opt = click.option(
    "--since",
    default=None,
    metavar="7d|24h|ISO",
    help="Only interactions since this long ago (7d, 24h, 30m, 2w) or this ISO date/time (UTC).",
)
_app_opt = click.option("--app", default=None, help="Only this app_id (default: every app).")
_url_opt = click.option(
    "--url",
    default=None,
    envvar="FEEDBACKLOOP_SQL_URL",
    help="ClickHouse URL to query (read-only user). Default: the running sink's endpoint, "
    "else the configured ClickHouse.",
)
_alpha_opt = click.option(
    "--alpha",
    default=0.05,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Significance level (two-sided); intervals are 1 - alpha.",
)
_json_opt = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")


@cli.group()
def ab() -> None:
    """Experiment reports over the events stored in ClickHouse."""


@ab.command("report")
@click.option("--experiment", "-e", required=True, help="Experiment name.")
@_since_opt
@_app_opt
@click.option(
    "--control",
    default=None,
    help="Control variant (default: the one named 'control', else the first).",
)
@click.option(
    "--weights",
    type=_NamedWeightsType(),
    default=None,
    help="Configured split for the sample-ratio check, e.g. control=50,treatment=50 "
    "(default: equal).",
)
@_alpha_opt
@click.option(
    "--power",
    default=0.8,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Power for the required number of sessions.",
)
@click.option(
    "--mde",
    type=float,
    default=None,
    help="Absolute change of the primary metric to plan for (e.g. 0.02); "
    "default: the observed one.",
)
@click.option(
    "--primary",
    default="satisfaction",
    show_default=True,
    help="Metric that decides (e.g. satisfaction, outcome.code_accepted).",
)
@click.option(
    "--correction",
    type=click.Choice(["bh", "holm", "none"]),
    default="bh",
    show_default=True,
    help="Adjustment across treatments x metrics for metric rows.",
)
@_url_opt
@_json_opt
@click.pass_context
def ab_report(
    ctx: click.Context,
    experiment: str,
    since: str | None,
    app: str | None,
    control: str | None,
    weights: dict[str, float] | None,
    alpha: float,
    power: float,
    mde: float | None,
    primary: str,
    correction: str,
    url: str | None,
    as_json: bool,
) -> None:
    """Per-variant metrics, differences vs control, SRM, power and a decision.

    \b
    Example:
      feedbackloop ab report --experiment new-prompt --since 7d --weights control=50,treatment=50
    """
    from feedbackloop.analysis.reads.queries import fetch_experiment, settings_runner
    from feedbackloop.analysis.reports.report import build_report

    data = fetch_experiment(settings_runner(settings_of(ctx), url), _scope(experiment, since, app))
    _emit(
        build_report(
            data,
            control=control,
            weights=weights,
            alpha=alpha,
            power=power,
            mde=mde,
            primary=primary,
            correction=correction,
        ),
        as_json,
    )


@ab.command("versions")
@click.option("--experiment", "-e", default=None, help="Only this experiment's interactions.")
@_since_opt
@_app_opt
@click.option(
    "--bucket",
    type=click.Choice(["day", "week"]),
    default="day",
    show_default=True,
    help="Time bucket of the trend.",
)
@_alpha_opt
@_url_opt
@_json_opt
@click.pass_context
def ab_versions(
    ctx: click.Context,
    experiment: str | None,
    since: str | None,
    app: str | None,
    bucket: str,
    alpha: float,
    url: str | None,
    as_json: bool,
) -> None:
    """Satisfaction per prompt_version over time, with intervals (release cycles)."""
    from feedbackloop.analysis.reads.queries import (
        fetch_version_totals,
        fetch_versions,
        settings_runner,
    )
    from feedbackloop.analysis.reports.versions import build_versions

    run, scope = settings_runner(settings_of(ctx), url), _scope(experiment, since, app)
    _emit(
        build_versions(
            fetch_versions(run, scope, bucket),
            fetch_version_totals(run, scope),
            bucket=bucket,
            alpha=alpha,
            experiment=experiment,
            since=scope.since.isoformat() if scope.since else None,
        ),
        as_json,
    )


@cli.command("impact")
@click.option("--experiment", "-e", required=True, help="Experiment name.")
@_since_opt
@_app_opt
@click.option(
    "--control",
    default=None,
    help="Control variant (default: the one named 'control', else the first).",
)
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    help="Outcome(s) whose time_to_outcome_ms make up a session's time "
    "(repeatable; default: every timed outcome).",
)
@_alpha_opt
@_url_opt
@_json_opt
@click.pass_context
def impact_command(
    ctx: click.Context,
    experiment: str,
    since: str | None,
    app: str | None,
    control: str | None,
    outcomes: tuple[str, ...],
    alpha: float,
    url: str | None,
    as_json: bool,
) -> None:
    """Business impact: outcome rates, time to outcome, time saved per session vs control."""
    from feedbackloop.analysis.reads.queries import fetch_impact, settings_runner
    from feedbackloop.analysis.reports.impact import build_impact

    data = fetch_impact(
        settings_runner(settings_of(ctx), url), _scope(experiment, since, app), outcomes or None
    )
    _emit(build_impact(data, control=control, alpha=alpha), as_json)


# --- web: HTTP collector and dashboard (feedbackloop.web) ----------------------------------


@cli.command("web")
@click.option(
    "--host",
    default=None,
    envvar="FEEDBACKLOOP_WEB_HOST",
    help="Address to bind (default: settings web_host, 127.0.0.1).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    envvar="FEEDBACKLOOP_WEB_PORT",
    help="Port (default: settings web_port, 8080).",
)
@click.pass_context
def web_command(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Serve the HTTP collector (/v1), the read API (/api) and the dashboard (/dashboard/).

    Events go to Kafka through the SDK (spooled to disk while the broker is away); reads go
    through the running sink's query endpoint, else ClickHouse. Without API keys
    (FEEDBACKLOOP_WEB_PUBLIC_KEYS / FEEDBACKLOOP_WEB_SECRET_KEYS) only clients on this
    machine are served. The OpenAPI document is at /openapi.json.
    """
    try:
        from feedbackloop.web import serve
    except ImportError as e:
        raise MissingDependency("fastapi/uvicorn", "web") from e
    settings = settings_of(ctx)
    if settings.bootstrap_servers is None:
        raise FeedbackLoopError(
            "no broker configured: set FEEDBACKLOOP_BOOTSTRAP_SERVERS (or run `feedbackloop up`, "
            "which starts the embedded broker and this web server together)"
        )
    done = _operations(settings, "web")
    try:
        serve(
            settings,
            host=host,
            port=port,
            ready=lambda url: click.echo(
                f"web ready: dashboard {url}/dashboard/  collector {url}/v1/events  "
                f"OpenAPI {url}/openapi.json  metrics {url}/metrics  (Ctrl-C stops)"
            ),
        )
    finally:
        done()


# --- failures / complaints / prompts / regressions / export: closing the loop --------------
# (feedbackloop.analysis: negative, slices, failures, clusters, prompts, regressions, finetune)


def _negative_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options that choose what counts as negative (feedbackloop.analysis.failures.negative)."""
    opts = [
        click.option(
            "--weight",
            "weights",
            multiple=True,
            metavar="SIGNAL=W",
            help="Weight of a negative signal, e.g. abandon=1 (repeatable). Signals: "
            "thumbs_down low_rating correction report regenerate abandon edit comment.",
        ),
        click.option(
            "--signals",
            default=None,
            metavar="LIST",
            help="Count only these signals (comma-separated), e.g. thumbs_down,correction.",
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            help="Summed weight at which an interaction is negative.",
        ),
        click.option(
            "--low-rating",
            "low_rating_max",
            type=click.IntRange(1, 4),
            default=2,
            show_default=True,
            help="Ratings up to this value count as low.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _definition(
    weights: tuple[str, ...], signals: str | None, threshold: float, low_rating_max: int
) -> Any:
    from feedbackloop.analysis.failures.negative import NegativeDefinition

    return NegativeDefinition.build(
        weights=weights,
        signals=signals.split(",") if signals else None,
        threshold=threshold,
        low_rating_max=low_rating_max,
    )


def _selection(
    since: str | None,
    experiment: str | None = None,
    app: str | None = None,
    prompt_version: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    with_text: bool = False,
) -> Any:
    from feedbackloop.analysis.reads.scope import DEFAULT_LIMIT, Scope
    from feedbackloop.analysis.reads.since import parse_since

    return Scope(
        since=parse_since(since),
        experiment=experiment,
        app_id=app,
        prompt_version=prompt_version,
        model=model,
        limit=limit or DEFAULT_LIMIT,
        with_text=with_text,
    )


_since_option = click.option(
    "--since",
    default="7d",
    show_default=True,
    envvar="FEEDBACKLOOP_SINCE",
    help="Window: 7d, 12h, 30m, an ISO date, or 'all'.",
)
_limit_option = click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    help="Read at most this many interactions, newest first (default 200000).",
)
_url_option = click.option(
    "--url",
    default=None,
    envvar="FEEDBACKLOOP_SQL_URL",
    help="ClickHouse URL to read from (default: the running sink's "
    "endpoint if any, else the configured ClickHouse).",
)


@cli.command("failures")
@_since_option
@click.option("--experiment", default=None, help="Only interactions of this experiment.")
@click.option("--app", default=None, help="Only this app_id.")
@click.option("--prompt-version", default=None, help="Only this prompt version.")
@click.option(
    "--population",
    type=click.Choice(["all", "with-feedback"]),
    default="all",
    show_default=True,
    help="Rate per interaction served, or per interaction that got any signal.",
)
@click.option(
    "--min-support",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Smallest slice that is tested.",
)
@click.option(
    "--alpha",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.05,
    show_default=True,
    help="False discovery rate (Benjamini-Hochberg).",
)
@click.option("--no-pairs", is_flag=True, help="Single attributes only, no pairs.")
@click.option(
    "--top", type=click.IntRange(min=1), default=15, show_default=True, help="Rows of the table."
)
@click.option("--all", "show_all", is_flag=True, help="Also list slices that are not significant.")
@_negative_options
@_limit_option
@_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def failures_command(
    ctx: click.Context,
    since: str,
    experiment: str | None,
    app: str | None,
    prompt_version: str | None,
    population: str,
    min_support: int,
    alpha: float,
    no_pairs: bool,
    top: int,
    show_all: bool,
    weights: tuple[str, ...],
    signals: str | None,
    threshold: float,
    low_rating_max: int,
    limit: int | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Rank the slices where negative feedback concentrates.

    \b
    Example:
      feedbackloop failures --since 7d
      feedbackloop failures --experiment onboarding --weight abandon=1 --json
    """
    import json

    from feedbackloop.analysis.failures.analyze import analyze_failures
    from feedbackloop.analysis.failures.records import load_judged_interactions
    from feedbackloop.analysis.failures.slices import format_slice_report

    definition = _definition(weights, signals, threshold, low_rating_max)
    sel = _selection(since, experiment, app, prompt_version, limit=limit)
    judged = load_judged_interactions(settings_of(ctx), sel, url=url)
    report = analyze_failures(
        judged,
        definition,
        population=population,
        pairs=not no_pairs,
        min_support=min_support,
        alpha=alpha,
    )
    if as_json:
        payload = {
            "since": since,
            "experiment": experiment,
            "definition": definition.to_dict(),
            **report.to_dict(),
        }
        click.echo(json.dumps(payload, indent=1))
        return
    scope = f"since {since}" + (f", experiment {experiment}" if experiment else "")
    if len(judged) >= sel.limit:
        scope += f" (newest {sel.limit:,} only: raise --limit)"
    click.echo(
        format_slice_report(
            report,
            top=top,
            show_all=show_all,
            heading=f"Failure slices, {scope}\n{definition.describe()}\n",
        )
    )


@cli.command("complaints")
@click.option(
    "--slice",
    "slice_",
    default=None,
    metavar="DIM=VALUE[&DIM=VALUE]",
    help="Only this failure slice, e.g. 'prompt_version=v1.2&language_group=not-en'.",
)
@click.option(
    "--source",
    type=click.Choice(["feedback", "inputs"]),
    default="feedback",
    show_default=True,
    help="Cluster the users' comments and corrections, or the failing inputs.",
)
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=None,
    help="Number of clusters (default: chosen by silhouette, 2..8).",
)
@click.option(
    "--examples",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Representative texts per cluster.",
)
@_since_option
@click.option("--experiment", default=None, help="Only interactions of this experiment.")
@click.option("--prompt-version", default=None, help="Only this prompt version.")
@_negative_options
@_limit_option
@_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.pass_context
def complaints_command(
    ctx: click.Context,
    slice_: str | None,
    source: str,
    k: int | None,
    examples: int,
    since: str,
    experiment: str | None,
    prompt_version: str | None,
    weights: tuple[str, ...],
    signals: str | None,
    threshold: float,
    low_rating_max: int,
    limit: int | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Cluster the complaints (or failing inputs) of the negative interactions of a slice.

    \b
    Example:
      feedbackloop complaints --slice 'prompt_version=v1.2&language_group=not-en'
    """
    import json

    from feedbackloop.analysis.failures.analyze import label_interactions, matches, parse_slice
    from feedbackloop.analysis.failures.clusters import cluster_texts, format_clusters
    from feedbackloop.analysis.failures.records import load_judged_interactions

    conds = parse_slice(slice_)
    definition = _definition(weights, signals, threshold, low_rating_max)
    sel = _selection(since, experiment, prompt_version=prompt_version, limit=limit)
    labeled = label_interactions(
        load_judged_interactions(settings_of(ctx), sel, url=url), definition
    )
    bad = [lab for lab in labeled if lab.negative and matches(lab.attributes, conds)]
    if source == "inputs":
        texts = [lab.interaction.user_input for lab in bad]
    else:
        texts = [
            t.text
            for lab in bad
            for t in lab.interaction.texts
            if t.kind in ("comment", "correction", "report")
        ]
    clusters = cluster_texts(texts, k=k, examples=examples)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "slice": dict(conds),
                    "source": source,
                    "negatives": len(bad),
                    "texts": len(texts),
                    "clusters": [c.to_dict() for c in clusters],
                },
                indent=1,
            )
        )
        return
    where = slice_ or "all interactions"
    click.echo(
        format_clusters(
            clusters,
            heading=f"{len(texts)} texts from {len(bad)} negative interactions in "
            f"{where}, since {since}:",
        )
    )


@cli.group()
def prompts() -> None:
    """The prompt-version registry, stored with the data (table prompt_versions)."""


@prompts.command("add")
@click.argument("version")
@click.option(
    "--name",
    required=True,
    envvar="FEEDBACKLOOP_PROMPT_NAME",
    help="The prompt this is a version of (env: FEEDBACKLOOP_PROMPT_NAME).",
)
@click.option(
    "--file",
    "file_",
    type=click.File("r", encoding="utf-8"),
    required=True,
    help="The prompt text ('-' reads stdin).",
)
@click.option("--parent", default=None, help="The version this one changes.")
@click.option("--note", default="", help="What changed and why (e.g. the failure it fixes).")
@click.pass_context
def prompts_add(
    ctx: click.Context, version: str, name: str, file_: Any, parent: str | None, note: str
) -> None:
    """Register VERSION of a prompt (immutable; re-adding the same text is a no-op).

    Needs write access: with embedded chDB, stop a running `sink run` first.
    """
    from feedbackloop.analysis.loop.prompts import add_prompt

    pv, new = add_prompt(settings_of(ctx), name, version, file_.read(), parent=parent, note=note)
    what = "registered" if new else "already registered (same text)"
    click.echo(
        f"{pv.name} {pv.version} {what}; sha256 {pv.text_sha256[:12]}"
        + (f", parent {pv.parent_version}" if pv.parent_version else "")
    )


@prompts.command("list")
@click.option("--name", default=None, help="Only versions of this prompt.")
@_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def prompts_list(ctx: click.Context, name: str | None, url: str | None, as_json: bool) -> None:
    """List registered prompt versions, oldest first."""
    import json

    from feedbackloop.analysis.loop.prompts import list_prompts

    found = list_prompts(settings_of(ctx), name, url=url)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in found], indent=1))
        return
    if not found:
        click.echo("no prompt versions registered")
    for p in found:
        parent = f" (from {p.parent_version})" if p.parent_version else ""
        note = f"  {p.note}" if p.note else ""
        click.echo(f"{p.name}  {p.version}{parent}  {p.created_at[:19]}  {len(p.text)} chars{note}")


@prompts.command("show")
@click.argument("version")
@click.option("--name", default=None, help="The prompt, if several share VERSION.")
@_url_option
@click.pass_context
def prompts_show(ctx: click.Context, version: str, name: str | None, url: str | None) -> None:
    """Print a version's text and where it came from."""
    from feedbackloop.analysis.loop.prompts import get_prompt

    p = get_prompt(settings_of(ctx), version, name, url=url)
    click.echo(
        f"# {p.name} {p.version}" + (f" (parent {p.parent_version})" if p.parent_version else "")
    )
    click.echo(f"# created {p.created_at} by {p.created_by or '?'}; sha256 {p.text_sha256[:12]}")
    if p.note:
        click.echo(f"# note: {p.note}")
    click.echo(p.text)


@prompts.command("diff")
@click.argument("old")
@click.argument("new", required=False)
@click.option("--name", default=None, help="The prompt, if several share a version label.")
@_url_option
@click.pass_context
def prompts_diff(
    ctx: click.Context, old: str, new: str | None, name: str | None, url: str | None
) -> None:
    """Unified diff between two versions (one version: against its parent)."""
    from feedbackloop.analysis.loop.prompts import diff_prompts, get_prompt
    from feedbackloop.errors import ConfigError

    s = settings_of(ctx)
    if new is None:
        child = get_prompt(s, old, name, url=url)
        if not child.parent_version:
            raise ConfigError(f"{old} has no parent version: give two versions")
        a, b = get_prompt(s, child.parent_version, child.name, url=url), child
    else:
        a, b = get_prompt(s, old, name, url=url), get_prompt(s, new, name, url=url)
    click.echo(diff_prompts(a, b), nl=False)


@cli.group()
def regressions() -> None:
    """Regression suites made from real failures, and a runner for candidate fixes."""


@regressions.command("export")
@click.option("--prompt-version", required=True, help="The prompt version whose failures to use.")
@click.option(
    "--top", type=click.IntRange(min=1), default=20, show_default=True, help="Number of cases."
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Suite file (JSONL). Default: regressions-<version>.jsonl.",
)
@_since_option
@click.option("--app", default=None, help="Only this app_id.")
@click.option(
    "--min-support",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Smallest slice tested when labelling cases.",
)
@_negative_options
@_limit_option
@_url_option
@click.pass_context
def regressions_export(
    ctx: click.Context,
    prompt_version: str,
    top: int,
    out: str | None,
    since: str,
    app: str | None,
    min_support: int,
    weights: tuple[str, ...],
    signals: str | None,
    threshold: float,
    low_rating_max: int,
    limit: int | None,
    url: str | None,
) -> None:
    """Write the most common failure cases of a prompt version as a JSONL eval set."""
    from feedbackloop.analysis.failures.records import load_judged_interactions
    from feedbackloop.analysis.loop.regressions import select_regression_cases, write_suite

    definition = _definition(weights, signals, threshold, low_rating_max)
    sel = _selection(since, app=app, prompt_version=prompt_version, limit=limit)
    judged = load_judged_interactions(settings_of(ctx), sel, full_text=True, url=url)
    cases, _ = select_regression_cases(judged, definition, top=top, min_support=min_support)
    path = write_suite(cases, out or f"regressions-{prompt_version}.jsonl")
    slices = sorted({c.slice for c in cases if c.slice})
    click.echo(
        f"{len(cases)} cases from {len(judged)} interactions of {prompt_version} "
        f"-> {path}" + (f"; slices: {'; '.join(slices)}" if slices else "")
    )


@regressions.command("run")
@click.option(
    "--suite",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Suite file from `regressions export` (JSONL).",
)
@click.option(
    "--candidate",
    required=True,
    envvar="FEEDBACKLOOP_CANDIDATE",
    help="A command (case JSON on stdin, response on stdout) or a Python callable module:function.",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "command", "callable"]),
    default="auto",
    show_default=True,
    help="How to read --candidate.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Report base name: writes OUT.md and OUT.jsonl. Default: <suite>-report.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per case for a command.",
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=2, show_default=True, help="Cases run at once."
)
@click.pass_context
def regressions_run(
    ctx: click.Context,
    suite: str,
    candidate: str,
    kind: str,
    out: str | None,
    timeout: float,
    jobs: int,
) -> None:
    """Run a candidate on every case and write a side-by-side report for review.

    \b
    Example:
      feedbackloop regressions run --suite regressions-v1.2.jsonl \\
          --candidate 'python my_app/answer.py --prompt prompts/v1.3.txt'
    """
    from pathlib import Path

    from feedbackloop.analysis.loop.regressions import (
        load_suite,
        resolve_candidate,
        run_suite,
        summarize,
        write_run_report,
    )

    cases = load_suite(suite)
    results = run_suite(cases, resolve_candidate(candidate, timeout=timeout, kind=kind), jobs=jobs)
    base = out or str(Path(suite).with_suffix("")) + "-report"
    md, jl = write_run_report(results, base, suite=suite, candidate=candidate)
    s = summarize(results)
    click.echo(
        f"{s.cases} cases, {s.errors} errors, {s.unchanged} unchanged, "
        f"{s.closer}/{s.with_correction} closer to the correction -> {md}, {jl}"
    )


@cli.group("export")
def export_group() -> None:
    """Training data made from feedback."""


@export_group.command("finetune")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="finetune",
    show_default=True,
    help="Directory for the JSONL files, provenance and manifest.",
)
@_since_option
@click.option("--prompt-version", default=None, help="Only corrections of this prompt version.")
@click.option("--model", default=None, help="Only corrections of this model.")
@click.option("--app", default=None, help="Only this app_id.")
@click.option(
    "--min-chars",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Shortest correction kept.",
)
@click.option(
    "--max-chars",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Longest correction kept.",
)
@click.option(
    "--validation",
    "validation_fraction",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Share for validation.",
)
@click.option(
    "--seed", default="feedbackloop", show_default=True, help="Seed of the deterministic split."
)
@click.option(
    "--system-prompt-file",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help="Use this system prompt in every example (e.g. the new version's text).",
)
@click.option("--no-scrub", is_flag=True, help="Keep e-mails, phone numbers and API keys.")
@click.option("--no-preference", is_flag=True, help="Skip the preference (DPO) pairs.")
@click.option("--include-edits", is_flag=True, help="Also use users' edits of a response.")
@_limit_option
@_url_option
@click.pass_context
def export_finetune(
    ctx: click.Context,
    out_dir: str,
    since: str,
    prompt_version: str | None,
    model: str | None,
    app: str | None,
    min_chars: int,
    max_chars: int,
    validation_fraction: float,
    seed: str,
    system_prompt_file: Any,
    no_scrub: bool,
    no_preference: bool,
    include_edits: bool,
    limit: int | None,
    url: str | None,
) -> None:
    """Corrections as OpenAI chat JSONL and preference pairs, with provenance beside them."""
    from feedbackloop.analysis.failures.records import load_judged_interactions
    from feedbackloop.analysis.loop.finetune import (
        FinetuneOptions,
        build_finetune_export,
        corrections_of,
        write_finetune_export,
    )

    opts = FinetuneOptions(
        min_chars=min_chars,
        max_chars=max_chars,
        validation_fraction=validation_fraction,
        seed=seed,
        scrub=not no_scrub,
        preference=not no_preference,
        system_prompt=system_prompt_file.read() if system_prompt_file else None,
        include_edits=include_edits,
    )
    sel = _selection(
        since, app=app, prompt_version=prompt_version, model=model, limit=limit, with_text=True
    )
    judged = load_judged_interactions(settings_of(ctx), sel, full_text=True, url=url)
    export = build_finetune_export(corrections_of(judged, include_edits=include_edits), opts)
    paths = write_finetune_export(export, out_dir, opts)
    m = export.manifest(opts)
    dropped = ", ".join(f"{k} {v}" for k, v in m["dropped"].items()) or "none"
    click.echo(
        f"{m['candidates']} corrections; dropped: {dropped}; "
        f"train {m['counts']['train']}, validation {m['counts']['validation']}, "
        f"preference {m['counts']['preference_train']}+"
        f"{m['counts']['preference_validation']}; scrubbed {m['scrubbed']} -> "
        f"{paths['manifest'].parent}"
    )


# --- config: the one settings list ------------------------------------------------------------


def settings_table() -> str:
    """The Markdown table of every setting (docs/CONFIGURATION.md embeds it verbatim)."""
    rows = ["| env var / TOML key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in Settings.model_fields.items():
        ann = field.annotation
        kind = getattr(ann, "__name__", None) if getattr(ann, "__args__", None) is None else None
        kind = (kind or str(ann)).replace("typing.", "").replace("pathlib.", "")
        kind = kind.replace("pydantic.types.", "").replace("|", "\\|")
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None else f"`{default}`"
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `FEEDBACKLOOP_{name.upper()}` / `{name}` | {kind} | {shown} | {meaning} |")
    return "\n".join(rows) + "\n"


@cli.group("config")
def config_group() -> None:
    """The settings: env vars FEEDBACKLOOP_*, a TOML file (--config), defaults."""


@config_group.command("show")
@click.pass_context
def config_show(ctx: click.Context) -> None:
    """Print the effective settings as TOML-like lines (secrets masked)."""
    for name, value in settings_of(ctx).model_dump(mode="json").items():
        click.echo(f"{name} = {json.dumps(value)}")


@config_group.command("docs")
def config_docs() -> None:
    """Print the Markdown table of every setting (the one in docs/CONFIGURATION.md)."""
    click.echo(settings_table(), nl=False)


# --- metrics: the Prometheus exposition of every service (feedbackloop.infra.metrics) --------


@cli.command("metrics")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve http://HOST:PORT/metrics until Ctrl-C (default: settings metrics_port, else 9464).",
)
@click.option("--once", is_flag=True, help="Print the exposition once and exit.")
@click.pass_context
def metrics_command(ctx: click.Context, port: int | None, once: bool) -> None:
    """The metrics of every service writing to this machine's metrics directory.

    The web server serves the same at /metrics; use this when it is not running (for
    example a worker and a sink without web), or for a quick look with --once.
    """
    try:
        from feedbackloop.infra.metrics import exposition
    except ImportError as e:
        raise MissingDependency("prometheus-client", "sinks") from e
    s = settings_of(ctx)
    path = s.metrics_path
    if not path.is_dir():
        raise InfraError(
            f"no metrics directory at {path}: is a service running with data_dir {s.data_dir}?"
        )
    if once:
        click.echo(exposition(path).decode(), nl=False)
        return
    port = s.metrics_port if port is None else port
    _serve_metrics(s.model_copy(update={"metrics_port": 9464 if port is None else port}), path)
    _wait_for_signal()


# --- worker: the stream jobs (feedbackloop.stream_jobs) -------------------------------------


@cli.command("worker")
@click.option(
    "--grace",
    "grace_s",
    type=float,
    default=None,
    envvar="FEEDBACKLOOP_STREAM_GRACE_S",
    help="Seconds early feedback waits for its interaction before it is orphaned.",
)
@click.option(
    "--window",
    "window_s",
    type=float,
    default=None,
    envvar="FEEDBACKLOOP_STREAM_WINDOW_S",
    help="Tumbling window size in seconds.",
)
@click.option(
    "--lateness",
    "lateness_s",
    type=float,
    default=None,
    envvar="FEEDBACKLOOP_STREAM_LATENESS_S",
    help="Allowed lateness (event time) of an event for its window, in seconds.",
)
@click.option(
    "--retention",
    "retention_s",
    type=float,
    default=None,
    envvar="FEEDBACKLOOP_STREAM_RETENTION_S",
    help="Seconds an interaction stays joinable (bounds the join table).",
)
@click.option(
    "--alert-webhook",
    "webhook",
    default=None,
    envvar="FEEDBACKLOOP_STREAM_ALERT_WEBHOOK",
    help="Slack-compatible webhook URL for satisfaction-drop alerts.",
)
@click.pass_context
def worker(
    ctx: click.Context,
    grace_s: float | None,
    window_s: float | None,
    lateness_s: float | None,
    retention_s: float | None,
    webhook: str | None,
) -> None:
    """Run the stream jobs (validate, enrich, window, alert) until Ctrl-C.

    Each option defaults to the setting of the same name (stream_grace_s, stream_window_s,
    stream_lateness_s, stream_retention_s, stream_alert_webhook; see docs/CONFIGURATION.md).
    """
    from feedbackloop.infra.broker import connect_or_start

    try:
        from feedbackloop.stream_jobs import StreamConfig, run_worker
    except ImportError as e:
        raise MissingDependency("faust-streaming", "stream") from e
    s = settings_of(ctx)
    done = _operations(s, "stream")
    secret = s.stream_alert_webhook
    config = StreamConfig(
        grace_s=s.stream_grace_s if grace_s is None else grace_s,
        window_s=s.stream_window_s if window_s is None else window_s,
        allowed_lateness_s=s.stream_lateness_s if lateness_s is None else lateness_s,
        retention_s=s.stream_retention_s if retention_s is None else retention_s,
        alert_webhook_url=webhook or (secret.get_secret_value() if secret else None),
    )
    s, broker = connect_or_start(s)
    try:
        stats = run_worker(
            s,
            config,
            ready=lambda jobs: click.echo(
                f"worker running on {s.bootstrap_servers}; reading {jobs.topics.events}"
            ),
        )
    finally:
        done()
        if broker is not None:
            broker.stop()
    click.echo(
        f"worker stopped: {stats.records_in} in = {stats.valid} valid + "
        f"{stats.dead_letters} dead letters + {stats.forwarded} forwarded to the partition "
        f"that joins them; {stats.enriched} enriched "
        f"({stats.orphaned} orphaned), {stats.aggregates} window aggregates"
    )


def main() -> None:
    cli(prog_name="feedbackloop")


if __name__ == "__main__":
    main()
