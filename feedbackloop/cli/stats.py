"""``feedbackloop stats``: A/B statistics from counts alone, no database
(:mod:`feedbackloop.analysis.statistics`)."""

from __future__ import annotations

from typing import Any

import click

from feedbackloop.cli.base import echo_json
from feedbackloop.cli.options import build_design, design_options, json_option, plan_options
from feedbackloop.errors import MissingDependency

__all__ = ["stats"]


class CountsType(click.ParamType):
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


class WeightsType(click.ParamType):
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


@click.group()
def stats() -> None:
    """A/B statistics that need no database."""


@stats.command("compare")
@click.option(
    "--control", required=True, type=CountsType(), help="Control successes/units, e.g. 540/1000."
)
@click.option(
    "--treatment",
    required=True,
    type=CountsType(),
    help="Treatment successes/units, e.g. 580/1010.",
)
@design_options
@plan_options
@click.option(
    "--weights",
    type=WeightsType(),
    default=None,
    help="Configured split for the sample-ratio check, e.g. 50/50 (default: equal).",
)
@click.option(
    "--lower-is-better",
    is_flag=True,
    help="A lower rate is the improvement (e.g. an error or escalation rate).",
)
@json_option
def compare(
    control: Any,
    treatment: Any,
    mde: float | None,
    mde_relative: bool,
    alpha: float,
    power: float,
    mode: str,
    baseline: float | None,
    sd: float | None,
    sessions: int | None,
    weights: tuple[float, float] | None,
    lower_is_better: bool,
    as_json: bool,
) -> None:
    """Compare two variants of a binary metric from counts alone.

    The options are an experiment design's (`feedbackloop experiments design`), and the
    verdict is the one `ab report` and the dashboard print for the same data.

    \b
    Example:
      feedbackloop stats compare --control 540/1000 --treatment 580/1010 --mde 0.03
    """
    from feedbackloop.analysis.statistics import compare_counts, format_comparison

    design = build_design(
        primary="rate",  # counts are a rate: an absolute MDE must be below 1
        mde=mde,
        mde_relative=mde_relative,
        alpha=alpha,
        power=power,
        mode=mode,
        baseline=baseline,
        sd=sd,
        planned_sessions=sessions,
    )
    result = compare_counts(
        control, treatment, design=design, weights=weights, higher_is_better=not lower_is_better
    )
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(format_comparison(result))
