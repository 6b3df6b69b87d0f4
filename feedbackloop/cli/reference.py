"""``feedbackloop schemas`` and ``config``: the event contract and the settings, for people
and for clients in other languages."""

from __future__ import annotations

import json

import click

from feedbackloop.cli.base import settings_of

__all__ = ["config", "schemas"]


@click.group()
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


@click.group("config")
def config() -> None:
    """The settings: env vars FEEDBACKLOOP_*, a TOML file (--config), defaults."""


@config.command("show")
@click.pass_context
def show(ctx: click.Context) -> None:
    """Print the effective settings as TOML-like lines (secrets masked)."""
    for name, value in settings_of(ctx).model_dump(mode="json").items():
        click.echo(f"{name} = {json.dumps(value)}")


@config.command("docs")
def docs() -> None:
    """Print the Markdown table of every setting (the one in docs/CONFIGURATION.md)."""
    from feedbackloop.config import settings_table

    click.echo(settings_table(), nl=False)
