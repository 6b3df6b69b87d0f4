"""The long-running services: ``up`` (all of them), ``broker``, ``worker`` (the stream
jobs), ``web`` and ``metrics``. The sink's ``sink run`` lives with the storage commands."""

from __future__ import annotations

import click

from feedbackloop.cli.base import (
    operations,
    overridden,
    serve_metrics,
    settings_of,
    wait_for_signal,
)
from feedbackloop.errors import FeedbackLoopError, InfraError, MissingDependency

__all__ = ["broker", "metrics", "up", "web", "worker"]


@click.command("up")
@click.option("--no-web", is_flag=True, help="Do not start the web server.")
@click.option(
    "--no-stream",
    is_flag=True,
    help="Do not start the stream jobs; the sink then stores raw events.",
)
@click.pass_context
def up(ctx: click.Context, no_web: bool, no_stream: bool) -> None:
    """Start the broker (embedded unless configured), stream jobs, sink and web; Ctrl-C stops
    them in order, each flushing first."""
    from feedbackloop.demo import status_line
    from feedbackloop.infra.stack import Stack, default_services

    s = settings_of(ctx)
    operations(s, "stack", metrics=False)
    stack = Stack(
        s,
        default_services(with_stream=not no_stream, with_web=not no_web),
        on_status=lambda st: click.echo(status_line(st)),
    )
    click.echo("starting feedbackloop:")
    run = stack.start()
    if s.metrics_port is not None:
        # The children write metrics to the stack's directory; serve them all from here.
        serve_metrics(s, stack.metrics_dir)
    click.echo(f"running. Kafka: {run.bootstrap_servers}  ClickHouse: {run.clickhouse_dsn}")
    click.echo('query with: feedbackloop sql "SELECT ..."   stop with: Ctrl-C')
    try:
        # A crashed child is restarted (with back-off); only a crash loop ends the wait.
        wait_for_signal(while_true=stack.supervise)
    finally:
        click.echo("stopping (flushing every service):")
        stack.stop()
    if stack.failure is not None:
        raise InfraError(f"stopped: {stack.failure}")


@click.command("broker")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port on the setting broker_host (0 = any free port). Default: setting broker_port.",
)
@click.option(
    "--storage",
    default=None,
    help="Tansu storage: durable (the log on an embedded S3 store under the data dir), "
    "memory://tansu/, or s3://bucket/ with AWS_* variables. Default: setting broker_storage.",
)
@click.pass_context
def broker(ctx: click.Context, port: int | None, storage: str | None) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) until Ctrl-C, with our topics."""
    from feedbackloop.infra import EmbeddedBroker, ensure_topics
    from feedbackloop.schemas import Topics

    s = overridden(settings_of(ctx), broker_port=port, broker_storage=storage)
    operations(s, "broker", metrics=False)
    embedded = EmbeddedBroker.from_settings(s)
    embedded.start()
    try:
        s = s.model_copy(update={"bootstrap_servers": embedded.bootstrap_servers})
        topics = Topics(s.topic_prefix).all()
        ensure_topics(s.kafka_client_config(), topics, s.topic_partitions)
        click.echo(
            f"broker ready on {embedded.bootstrap_servers} (tansu, {embedded.storage_description})"
        )
        click.echo(f"topics: {', '.join(topics)}")
        click.echo(f"use it with: FEEDBACKLOOP_BOOTSTRAP_SERVERS={embedded.bootstrap_servers}")
        wait_for_signal()
    finally:
        embedded.stop()
        click.echo("broker stopped")


@click.command("worker")
@click.option(
    "--grace",
    "grace_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Seconds early feedback waits for its interaction before it is orphaned. "
    "Default: setting stream_grace_s.",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Tumbling window size in seconds. Default: setting stream_window_s.",
)
@click.option(
    "--lateness",
    "lateness_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Allowed lateness (event time) of an event for its window, in seconds. "
    "Default: setting stream_lateness_s.",
)
@click.option(
    "--retention",
    "retention_s",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds an interaction stays joinable (bounds the join table). "
    "Default: setting stream_retention_s.",
)
@click.option(
    "--alert-webhook",
    "webhook",
    default=None,
    help="Slack-compatible webhook URL for satisfaction-drop alerts. "
    "Default: setting stream_alert_webhook.",
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
    """Run the stream jobs (validate, enrich, window, alert, guard canaries) until Ctrl-C.

    Each option overrides the setting of the same name (see docs/CONFIGURATION.md).
    """
    from feedbackloop.infra.broker import connect_or_start

    try:
        from feedbackloop.stream_jobs import StreamConfig, run_worker
    except ImportError as e:
        raise MissingDependency("faust-streaming", "stream") from e
    s = settings_of(ctx)
    done = operations(s, "stream")
    config = StreamConfig.from_settings(
        s,
        grace_s=grace_s,
        window_s=window_s,
        allowed_lateness_s=lateness_s,
        retention_s=retention_s,
        alert_webhook_url=webhook,
    )
    s, embedded = connect_or_start(s)
    from feedbackloop.stream_jobs.canary import CanaryGuard

    # Judges running canaries beside the stream jobs (ramps them, rolls them back).
    guard = CanaryGuard(s, webhook_url=config.alert_webhook_url)
    try:
        guard.start()
        stats = run_worker(
            s,
            config,
            ready=lambda jobs: click.echo(
                f"worker running on {s.bootstrap_servers}; reading {jobs.topics.events}; "
                "guarding canaries"
            ),
        )
    finally:
        guard.stop()
        done()
        if embedded is not None:
            embedded.stop()
    click.echo(
        f"worker stopped: {stats.records_in} in = {stats.valid} valid + "
        f"{stats.dead_letters} dead letters + {stats.forwarded} forwarded to the partition "
        f"that joins them; {stats.enriched} enriched "
        f"({stats.orphaned} orphaned), {stats.aggregates} window aggregates"
    )


@click.command("web")
@click.option(
    "--host", default=None, help="Address to bind. Default: setting web_host (loopback only)."
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port (0 = any free port). Default: setting web_port.",
)
@click.pass_context
def web(ctx: click.Context, host: str | None, port: int | None) -> None:
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
    done = operations(settings, "web")
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


#: Port of ``metrics`` when neither --port nor the setting metrics_port is given: the
#: default port of OpenTelemetry's Prometheus exporter.
_METRICS_PORT = 9464


@click.command("metrics")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help=f"Serve http://HOST:PORT/metrics until Ctrl-C. Default: setting metrics_port, "
    f"else {_METRICS_PORT}.",
)
@click.option("--once", is_flag=True, help="Print the exposition once and exit.")
@click.pass_context
def metrics(ctx: click.Context, port: int | None, once: bool) -> None:
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
    if port is None:
        port = _METRICS_PORT if s.metrics_port is None else s.metrics_port
    serve_metrics(overridden(s, metrics_port=port), path)
    wait_for_signal()
