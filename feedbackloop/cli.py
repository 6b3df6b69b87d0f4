"""The ``feedbackloop`` command line. Commands are thin: parse options, call a library function.

Only this module turns a :class:`~feedbackloop.errors.FeedbackLoopError` into a message and
exit code 1.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from feedbackloop.config import Settings, load_settings
from feedbackloop.errors import FeedbackLoopError

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


def main() -> None:
    cli(prog_name="feedbackloop")


if __name__ == "__main__":
    main()
