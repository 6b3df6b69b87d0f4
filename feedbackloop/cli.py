"""The ``feedbackloop`` command line. Commands are thin: parse options, call a library function.

Only this module turns a :class:`~feedbackloop.errors.FeedbackLoopError` into a message and
exit code 1.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from feedbackloop.config import Settings, load_settings
from feedbackloop.errors import FeedbackLoopError, MissingDependency

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


# --- stats: A/B statistics from counts alone (feedbackloop.analysis) -----------------------


class _CountsType(click.ParamType):
    """``SUCCESSES/N`` such as ``540/1000``."""

    name = "SUCCESSES/N"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            from feedbackloop.analysis.sufficient import BinaryStats, InvalidStatistics
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
@click.option("--control", required=True, type=_CountsType(),
              help="Control successes/units, e.g. 540/1000.")
@click.option("--treatment", required=True, type=_CountsType(),
              help="Treatment successes/units, e.g. 580/1010.")
@click.option("--alpha", default=0.05, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Significance level (two-sided).")
@click.option("--power", default=0.8, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Power for the required sample size.")
@click.option("--mde", type=float, default=None,
              help="Absolute change in rate to plan for (e.g. 0.02); default: the observed one.")
@click.option("--weights", type=_WeightsType(), default=None,
              help="Configured split for the sample-ratio check, e.g. 50/50 (default: equal).")
@click.option("--lower-is-better", is_flag=True,
              help="A lower rate is the improvement (e.g. an error or escalation rate).")
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

    from feedbackloop.analysis import compare_counts, format_comparison

    result = compare_counts(
        control, treatment, alpha=alpha, power=power, mde=mde, weights=weights,
        higher_is_better=not lower_is_better,
    )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else format_comparison(result))


def main() -> None:
    cli(prog_name="feedbackloop")


if __name__ == "__main__":
    main()
