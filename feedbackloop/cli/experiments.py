"""``feedbackloop ab`` and ``impact``: experiment reports over the events stored in
ClickHouse (:mod:`feedbackloop.analysis.reads` then :mod:`feedbackloop.analysis.reports`)."""

from __future__ import annotations

from typing import Any

import click

from feedbackloop.cli.base import emit, scope_of, settings_of
from feedbackloop.cli.options import (
    alpha_option,
    app_option,
    experiment_option,
    json_option,
    mde_option,
    power_option,
    since_option,
    url_option,
)

__all__ = ["ab", "impact"]


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
@click.option(
    "--weights",
    type=NamedWeightsType(),
    default=None,
    help="Configured split for the sample-ratio check, e.g. control=50,treatment=50 "
    "(default: equal).",
)
@alpha_option
@power_option
@mde_option
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

    data = fetch_experiment(
        settings_runner(settings_of(ctx), url), scope_of(since, experiment, app)
    )
    result = build_report(
        data,
        control=control,
        weights=weights,
        alpha=alpha,
        power=power,
        mde=mde,
        primary=primary,
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
