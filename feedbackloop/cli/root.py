"""The root group: global options, error handling, and every command group registered.

Like celery's ``celery/bin/celery.py``, this module only assembles: each command lives in the
module of its group and is added here with ``add_command``, so the full command list reads
top to bottom below. This is the one place that turns a
:class:`~feedbackloop.errors.FeedbackLoopError` (a bad setting included) into a message and
exit code 1.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from feedbackloop.cli import (
    control,
    demo,
    experiments,
    exports,
    failures,
    prompts,
    reference,
    services,
    shadow,
    stats,
    storage,
)
from feedbackloop.cli.base import CliState
from feedbackloop.errors import FeedbackLoopError

__all__ = ["cli", "main"]


class _Root(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FeedbackLoopError as e:
            for line in str(e).splitlines() or [type(e).__name__]:
                click.echo(f"error: {line}", err=True)
            sys.exit(1)


@click.group(cls=_Root)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    envvar="FEEDBACKLOOP_CONFIG",
    help="TOML settings file (env: FEEDBACKLOOP_CONFIG). Env vars FEEDBACKLOOP_* override it.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """feedbackloop: stream, join and judge LLM interactions, feedback and outcomes."""
    ctx.obj = CliState(config_file)


# Run the pipeline (services.py, demo.py).
cli.add_command(services.up)
cli.add_command(services.broker)
cli.add_command(services.worker)
cli.add_command(storage.sink)
cli.add_command(services.web)
cli.add_command(services.metrics)
cli.add_command(demo.demo)
cli.add_command(demo.simulate)
# Storage and analyst access (storage.py).
cli.add_command(storage.db)
cli.add_command(storage.sql)
# Judge experiments (stats.py, experiments.py).
cli.add_command(stats.stats)
cli.add_command(experiments.ab)
cli.add_command(experiments.impact)
# Experiments: live configuration, canaries (control.py) and designs (experiments.py).
control.experiments.add_command(experiments.design)
cli.add_command(control.experiments)
cli.add_command(shadow.shadow)
# Find failures and close the loop (failures.py, prompts.py, exports.py).
cli.add_command(failures.failures)
cli.add_command(failures.complaints)
cli.add_command(prompts.prompts)
cli.add_command(exports.regressions)
cli.add_command(exports.export)
# The contract and the settings (reference.py).
cli.add_command(reference.schemas)
cli.add_command(reference.config)


def main() -> None:
    cli(prog_name="feedbackloop")
