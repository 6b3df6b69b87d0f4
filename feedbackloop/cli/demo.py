"""``feedbackloop demo`` and ``simulate``: the pipeline on embedded defaults with simulated
traffic, and the traffic alone (a load generator). See :mod:`feedbackloop.demo`."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import click

from feedbackloop.cli.base import echo_json, settings_of, wait_for_signal

__all__ = ["demo", "simulate"]

# Options of both demo and simulate (the simulator's traffic).
_effect_option = click.option(
    "--effect",
    type=click.FloatRange(-1, 1),
    default=0.10,
    show_default=True,
    help="True satisfaction of treatment minus control (the planted effect).",
)
_seed_option = click.option(
    "--seed", type=int, default=7, show_default=True, help="Simulator seed."
)
_shadow_option = click.option(
    "--shadow-candidate",
    default=None,
    metavar="VERSION",
    help="Plant a shadow candidate named VERSION in half the sessions: it answers what users "
    "wanted on inputs with code, off the point on German ones, as the live model elsewhere "
    "(then: feedbackloop shadow report --candidate VERSION).",
)


def _shadow_plan(candidate: str | None) -> Any:
    from feedbackloop.simulator import ShadowPlan

    return ShadowPlan(candidate=candidate) if candidate else None


@click.command("simulate")
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
@_effect_option
@_seed_option
@_shadow_option
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
def simulate(
    ctx: click.Context,
    duration: float | None,
    rate: float,
    effect: float,
    seed: int,
    shadow_candidate: str | None,
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
        satisfaction={"control": 0.62, "treatment": min(1.0, 0.62 + effect)},
        seed=seed,
        shadow=_shadow_plan(shadow_candidate),
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
    echo_json({**sim.result.to_dict(), "sdk": dataclasses.asdict(stats)})


@click.command("demo")
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
@_effect_option
@_seed_option
@_shadow_option
@click.option(
    "--broker-only",
    is_flag=True,
    help="Only the broker: send, read back and count, without stream jobs, ClickHouse or web.",
)
@click.option(
    "--no-stream",
    is_flag=True,
    help="Do not start the stream jobs; the sink then stores raw events.",
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Keep the pipeline and dashboard running after the results, until Ctrl-C.",
)
@click.option(
    "--scenario",
    type=click.Choice(["experiment", "canary"]),
    default="experiment",
    show_default=True,
    help="experiment: an A/B test, judged (the default story). canary: a good canary that "
    "ramps and a bad one (a planted satisfaction drop) that the canary guard rolls back, "
    "with the timeline.",
)
@click.pass_context
def demo(
    ctx: click.Context,
    scenario: str,
    duration: float,
    rate: float,
    control_satisfaction: float,
    effect: float,
    seed: int,
    shadow_candidate: str | None,
    broker_only: bool,
    no_stream: bool,
    wait: bool,
) -> None:
    """Run the pipeline on embedded defaults with simulated traffic and show the results."""
    if scenario == "canary":
        from feedbackloop.canary_demo import run_canary_demo

        drop = 0.10 if effect == 0.10 else max(0.0, -effect)  # --effect -0.2: a 20-point drop
        result = run_canary_demo(
            settings_of(ctx), base=control_satisfaction, drop=drop, seed=seed, echo=click.echo
        )
        if not result.finished:
            raise click.ClickException("the canaries did not finish within the time limit")
        return
    from feedbackloop.demo import DemoResult, run_demo, summary_text
    from feedbackloop.infra.stack import default_services
    from feedbackloop.simulator import SimulationResult, TrafficSpec

    s = settings_of(ctx)
    treatment = min(1.0, max(0.0, control_satisfaction + effect))
    spec = TrafficSpec(
        satisfaction={"control": control_satisfaction, "treatment": treatment},
        seed=seed,
        shadow=_shadow_plan(shadow_candidate),
    )
    click.echo("starting the embedded pipeline:")

    def progress(result: SimulationResult) -> None:
        click.echo(
            f"\r  simulating: {result.total:>8,} events sent in {result.elapsed_s or 0:5.1f} s",
            nl=False,
            err=True,
        )

    services = [] if broker_only else default_services(with_stream=not no_stream)

    def show(result: DemoResult) -> None:
        click.echo("", err=True)
        click.echo(summary_text(result, spec))
        run = result.settings
        if run is None or broker_only:
            return
        click.echo("")
        web = next((st.detail for st in result.services if st.name == "web"), "")
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
            + (
                f"   feedbackloop shadow report --candidate {spec.shadow.candidate}"
                if spec.shadow
                else ""
            )
        )
        if wait:
            click.echo(
                f"the pipeline keeps running; Ctrl-C stops it (data stays in {run.data_dir})"
            )
            wait_for_signal()

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
