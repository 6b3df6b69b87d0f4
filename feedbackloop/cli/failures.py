"""``feedbackloop failures`` and ``complaints``: where negative feedback concentrates, and
what users said there (:mod:`feedbackloop.analysis.failures`)."""

from __future__ import annotations

from typing import Any

import click

from feedbackloop.cli.base import echo_json, scope_of, settings_of
from feedbackloop.cli.options import (
    alpha_option,
    app_option,
    experiment_option,
    json_option,
    limit_option,
    min_support_option,
    negative_options,
    prompt_version_option,
    since_option,
    url_option,
)

__all__ = ["complaints", "failures"]


@click.command("failures")
@since_option
@experiment_option()
@app_option
@prompt_version_option()
@click.option(
    "--population",
    type=click.Choice(["all", "with-feedback"]),
    default="all",
    show_default=True,
    help="Rate per interaction served, or per interaction that got any signal.",
)
@min_support_option
@alpha_option
@click.option("--no-pairs", is_flag=True, help="Single attributes only, no pairs.")
@click.option(
    "--top", type=click.IntRange(min=1), default=15, show_default=True, help="Rows of the table."
)
@click.option("--all", "show_all", is_flag=True, help="Also list slices that are not significant.")
@negative_options
@limit_option
@url_option
@json_option
@click.pass_context
def failures(
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
    definition: Any,
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
    from feedbackloop.analysis.failures.analyze import failure_report
    from feedbackloop.analysis.failures.slice_counts import load_slice_counts

    scope = scope_of(since, experiment, app, prompt_version=prompt_version, limit=limit)
    report = failure_report(
        load_slice_counts(settings_of(ctx), scope, definition, url=url),
        definition,
        since=since,
        experiment=experiment,
        limit=scope.limit,
        population=population,
        pairs=not no_pairs,
        min_support=min_support,
        alpha=alpha,
    )
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.to_text(top=top, show_all=show_all))


@click.command("complaints")
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
    help="Cluster the users' comments, corrections and report texts, or the failing inputs.",
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
@since_option
@experiment_option()
@app_option
@prompt_version_option()
@negative_options
@limit_option
@url_option
@json_option
@click.pass_context
def complaints(
    ctx: click.Context,
    slice_: str | None,
    source: str,
    k: int | None,
    examples: int,
    since: str,
    experiment: str | None,
    app: str | None,
    prompt_version: str | None,
    definition: Any,
    limit: int | None,
    url: str | None,
    as_json: bool,
) -> None:
    """Cluster the complaints (or failing inputs) of the negative interactions of a slice.

    \b
    Example:
      feedbackloop complaints --slice 'prompt_version=v1.2&language_group=not-en'
    """
    from feedbackloop.analysis.failures.analyze import parse_slice
    from feedbackloop.analysis.failures.complaints import find_complaints
    from feedbackloop.analysis.failures.records import load_judged_interactions

    conditions = parse_slice(slice_)
    scope = scope_of(since, experiment, app, prompt_version=prompt_version, limit=limit)
    report = find_complaints(
        load_judged_interactions(settings_of(ctx), scope, url=url),
        definition,
        conditions=conditions,
        source=source,
        k=k,
        examples=examples,
    )
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.to_text(f"since {since}"))
