"""``feedbackloop experiments``, ``ab`` and ``impact``: an experiment's registered design,
and the reports over its events stored in ClickHouse (:mod:`feedbackloop.analysis.reads`
then :mod:`feedbackloop.analysis.reports`)."""

from __future__ import annotations

from typing import Any

import click

from feedbackloop.cli.base import emit, scope_of, settings_of
from feedbackloop.cli.options import (
    alpha_option,
    app_option,
    build_design,
    design_options,
    experiment_option,
    json_option,
    plan_options,
    primary_option,
    since_option,
    url_option,
)

__all__ = ["ab", "design", "design_of", "impact", "print_design"]


class NamedWeightsType(click.ParamType):
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


_weights_option = click.option(
    "--weights",
    type=NamedWeightsType(),
    default=None,
    help="Configured split for the sample-ratio check, e.g. control=50,treatment=50 "
    "(default: equal).",
)

_control_option = click.option(
    "--control",
    default=None,
    help="Control variant (default: the one named 'control', else the first).",
)


@click.group()
def ab() -> None:
    """Experiment reports over the events stored in ClickHouse."""


@ab.command("report")
@experiment_option(required=True)
@since_option
@app_option
@_control_option
@_weights_option
@design_options
@primary_option
@click.option(
    "--correction",
    type=click.Choice(["bh", "holm", "none"]),
    default="bh",
    show_default=True,
    help="Adjustment across treatments x metrics for metric rows.",
)
@url_option
@json_option
@click.pass_context
def report(
    ctx: click.Context,
    experiment: str,
    since: str,
    app: str | None,
    control: str | None,
    weights: dict[str, float] | None,
    mde: float | None,
    mde_relative: bool,
    alpha: float,
    power: float,
    primary: str,
    correction: str,
    url: str | None,
    as_json: bool,
) -> None:
    """Per-variant metrics, differences vs control, SRM and a verdict per treatment.

    The experiment is judged by its registered design (`feedbackloop experiments design`);
    without one, by --primary / --mde / --alpha / --power (sequential analysis), and the
    report says which defaults it assumed.

    \b
    Example:
      feedbackloop ab report --experiment new-prompt --since 7d --weights control=50,treatment=50
    """
    from feedbackloop.analysis.reads.queries import settings_runner
    from feedbackloop.analysis.reports.report import report_experiment

    design_params = ("mde", "mde_relative", "alpha", "power", "primary")
    given = [
        p
        for p in design_params
        if ctx.get_parameter_source(p) is click.core.ParameterSource.COMMANDLINE
    ]
    options = None
    if given:
        options = build_design(
            experiment=experiment,
            mde=mde,
            mde_relative=mde_relative,
            alpha=alpha,
            power=power,
            primary=primary,
        )
    result = report_experiment(
        settings_runner(settings_of(ctx), url),
        scope_of(since, experiment, app),
        options=options,
        control=control,
        weights=weights,
        correction=correction,
    )
    emit(result, as_json)


@ab.command("versions")
@experiment_option()
@since_option
@app_option
@click.option(
    "--bucket",
    type=click.Choice(["day", "week"]),
    default="day",
    show_default=True,
    help="Time bucket of the trend.",
)
@alpha_option
@url_option
@json_option
@click.pass_context
def versions(
    ctx: click.Context,
    experiment: str | None,
    since: str,
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

    run, scope = settings_runner(settings_of(ctx), url), scope_of(since, experiment, app)
    result = build_versions(
        fetch_versions(run, scope, bucket),
        fetch_version_totals(run, scope),
        bucket=bucket,
        alpha=alpha,
        experiment=experiment,
        since=scope.since.isoformat() if scope.since else None,
    )
    emit(result, as_json)


@click.command("impact")
@experiment_option(required=True)
@since_option
@app_option
@_control_option
@click.option(
    "--outcome",
    "outcomes",
    multiple=True,
    help="Outcome(s) whose time_to_outcome_ms make up a session's time "
    "(repeatable; default: every timed outcome).",
)
@alpha_option
@url_option
@json_option
@click.pass_context
def impact(
    ctx: click.Context,
    experiment: str,
    since: str,
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

    scope = scope_of(since, experiment, app)
    data = fetch_impact(settings_runner(settings_of(ctx), url), scope, outcomes or None)
    emit(build_impact(data, control=control, alpha=alpha), as_json)


@click.command("design")
@click.argument("name")
@primary_option
@click.option(
    "--guardrail",
    "guardrails",
    multiple=True,
    help="A metric that must not regress (repeatable), e.g. --guardrail latency_ms.",
)
@design_options
@plan_options
@_weights_option
@click.option("--note", default="", help="What is tested and why (hypothesis, owner, ticket).")
@click.pass_context
def design(
    ctx: click.Context,
    name: str,
    primary: str,
    guardrails: tuple[str, ...],
    mde: float | None,
    mde_relative: bool,
    alpha: float,
    power: float,
    mode: str,
    baseline: float | None,
    sd: float | None,
    sessions: int | None,
    weights: dict[str, float] | None,
    note: str,
) -> None:
    """Register experiment NAME's design (immutable; the same design again is a no-op).

    \b
    Examples:
      feedbackloop experiments design new-prompt --mde 0.02 --guardrail latency_ms
      feedbackloop experiments design new-prompt --mode fixed --mde 0.05 --mde-relative \\
          --baseline 0.6
    Needs write access: with embedded chDB, stop a running `sink run` first.
    """
    from feedbackloop.analysis.reads.designs import register_design

    d = build_design(
        experiment=name,
        primary=primary,
        guardrails=tuple(guardrails),
        mde=mde,
        mde_relative=mde_relative,
        alpha=alpha,
        power=power,
        mode=mode,
        baseline=baseline,
        sd=sd,
        planned_sessions=sessions,
        weights=dict(weights or {}),
        note=note,
    )
    stored, new = register_design(settings_of(ctx), d)
    what = "registered" if new else "already registered (same design)"
    click.echo(f"{name}: {what}: {stored.summary()}")


def design_of(ctx: click.Context, name: str, url: str | None) -> Any:
    """Experiment NAME's registered design, or None (``experiments show`` prints it)."""
    from feedbackloop.analysis.reads.designs import fetch_design
    from feedbackloop.analysis.reads.queries import settings_runner

    return fetch_design(settings_runner(settings_of(ctx), url), name)


def print_design(name: str, found: Any) -> None:
    click.echo(f"{name}: {found.summary()}")
    click.echo(f"registered {found.created_at[:19]} UTC by {found.created_by or '?'}")
    if found.weights:
        click.echo("weights: " + ", ".join(f"{k}={v:g}" for k, v in found.weights.items()))
    if found.note:
        click.echo(f"note: {found.note}")
