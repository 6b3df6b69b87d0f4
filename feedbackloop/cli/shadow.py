"""``feedbackloop shadow``: shadow candidates judged against what users did with the live
answers (:mod:`feedbackloop.analysis.reads.shadow` then
:mod:`feedbackloop.analysis.reports.shadow`)."""

from __future__ import annotations

import click

from feedbackloop.cli.base import echo_json, emit, settings_of
from feedbackloop.cli.options import (
    alpha_option,
    app_option,
    json_option,
    since_option,
    url_option,
)
from feedbackloop.errors import FeedbackLoopError

__all__ = ["shadow"]


@click.group()
def shadow() -> None:
    """Shadow deployments: candidates logged with FeedbackClient.shadow(), judged offline."""


@shadow.command("report")
@click.option(
    "--candidate",
    required=True,
    metavar="VERSION",
    help="The shadow candidate: its prompt_version (or its model, if it has none).",
)
@click.option(
    "--against",
    default=None,
    metavar="VERSION",
    help="Only live answers of this prompt_version (or model). Default: every live answer "
    "the candidate shadowed.",
)
@since_option
@app_option
@alpha_option
@click.option(
    "--promote",
    is_flag=True,
    help="When the recommendation is 'promote to canary', create the live canary experiment "
    "canary-CANDIDATE (AGAINST or 'live' as control, the candidate ramped 1%->5%->25%->50% and "
    "guarded on satisfaction) through the control plane; otherwise refuse, saying why.",
)
@url_option
@json_option
@click.pass_context
def report(
    ctx: click.Context,
    candidate: str,
    against: str | None,
    since: str,
    app: str | None,
    alpha: float,
    promote: bool,
    url: str | None,
    as_json: bool,
) -> None:
    """Is the candidate closer than the live answer to what users wanted?

    Where users corrected the live answer: win/tie/loss against the correction with a
    paired interval; where they rejected it: how much the candidate differs and whether it is
    closer to their follow-up; where they accepted it: does the candidate stay close;
    latency, token and cost differences; the slices where it wins or loses most; and a
    one-line recommendation.

    \b
    Example:
      feedbackloop shadow report --candidate v2.0-shadow --since 7d
    """
    from feedbackloop.analysis.reads.queries import settings_runner
    from feedbackloop.analysis.reads.shadow import ShadowScope
    from feedbackloop.analysis.reads.since import parse_since
    from feedbackloop.analysis.reports.shadow import PROMOTE_RECOMMENDATION, run_shadow_report

    scope = ShadowScope(candidate=candidate, against=against, since=parse_since(since), app_id=app)
    result = run_shadow_report(
        settings_runner(settings_of(ctx), url, max_rows=scope.limit), scope, alpha=alpha
    )
    emit(result, as_json)
    if promote:
        if result.recommendation != PROMOTE_RECOMMENDATION:
            raise FeedbackLoopError(
                f"not promoted: the recommendation is {result.recommendation!r} ({result.reason})"
            )
        _promote(ctx, candidate, against, app, result.reason)


def _promote(
    ctx: click.Context, candidate: str, against: str | None, app: str | None, why: str
) -> None:
    """The candidate as a canary on the live control plane (``feedbackloop experiments``)."""
    from feedbackloop.cli.control import create_live
    from feedbackloop.control import new_experiment

    name = f"canary-{candidate}"
    cfg = new_experiment(
        app or settings_of(ctx).app_id,
        name,
        {against or "live": 1.0, candidate: 0.0},
        changed_by="feedbackloop shadow report --promote",
        reason=f"promoted from shadow: {why}",
        canary_steps=(0.01, 0.05, 0.25, 0.5),
    )
    create_live(ctx, cfg)
    click.echo(
        f"canary {name!r} created: the app serves variant {candidate!r} to the canary's "
        f"sessions (FeedbackClient follows live config by default); follow it with "
        f"`feedbackloop experiments show {name}`."
    )


@shadow.command("list")
@since_option
@app_option
@url_option
@json_option
@click.pass_context
def list_candidates(
    ctx: click.Context, since: str, app: str | None, url: str | None, as_json: bool
) -> None:
    """Every candidate with shadow answers, most answers first."""
    from dataclasses import asdict

    from feedbackloop.analysis.reads.queries import settings_runner
    from feedbackloop.analysis.reads.shadow import fetch_shadow_candidates
    from feedbackloop.analysis.reads.since import parse_since

    rows = fetch_shadow_candidates(
        settings_runner(settings_of(ctx), url), since=parse_since(since), app_id=app
    )
    if as_json:
        echo_json([asdict(r) for r in rows])
        return
    if not rows:
        click.echo("no shadow answers stored (log them with FeedbackClient.shadow())")
        return
    for r in rows:
        unlinked = f", {r.shadows - r.linked:,} without shadow_of" if r.linked < r.shadows else ""
        click.echo(
            f"{r.candidate:24} {r.shadows:>10,} shadow answers ({r.model}{unlinked}), "
            f"{r.first_at} .. {r.last_at}"
        )
