"""``feedbackloop prompts``: the prompt-version registry stored with the data
(:mod:`feedbackloop.analysis.loop.prompts`)."""

from __future__ import annotations

from typing import Any

import click

from feedbackloop.cli.base import echo_json, settings_of
from feedbackloop.cli.options import json_option, url_option

__all__ = ["prompts"]


@click.group()
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
def add(
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
@url_option
@json_option
@click.pass_context
def list_(ctx: click.Context, name: str | None, url: str | None, as_json: bool) -> None:
    """List registered prompt versions, oldest first."""
    from feedbackloop.analysis.loop.prompts import list_prompts

    found = list_prompts(settings_of(ctx), name, url=url)
    if as_json:
        echo_json([p.to_dict() for p in found])
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
@url_option
@click.pass_context
def show(ctx: click.Context, version: str, name: str | None, url: str | None) -> None:
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
@url_option
@click.pass_context
def diff(ctx: click.Context, old: str, new: str | None, name: str | None, url: str | None) -> None:
    """Unified diff between two versions (one version: against its parent)."""
    from feedbackloop.analysis.loop.prompts import diff_versions

    click.echo(diff_versions(settings_of(ctx), old, new, name, url=url), nl=False)
