"""Options more than one command takes, each written once: one spelling, one meaning.

Like celery's ``celery/bin/base.py``: a command module applies ``@since_option`` rather than
declaring its own ``--since``. tests/unit/test_cli_layout.py holds every command to these
definitions, so ``--since`` cannot mean "all time" in one command and "7d" in another again.

Options that mirror a setting default to ``None`` ("use the setting") and name the setting in
their help; pydantic-settings already reads its ``FEEDBACKLOOP_*`` variable, so they declare
no ``envvar`` of their own.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = [
    "SHARED_OPTIONS",
    "alpha_option",
    "app_option",
    "experiment_option",
    "json_option",
    "limit_option",
    "mde_option",
    "min_support_option",
    "negative_options",
    "power_option",
    "prompt_version_option",
    "since_option",
    "url_option",
]

F = TypeVar("F", bound=Callable[..., Any])

_PROBABILITY = click.FloatRange(0, 1, min_open=True, max_open=True)

#: Every shared option by its long name: the introspection test compares each command's
#: option of that name with these keyword arguments.
SHARED_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "--since": (
        ("--since",),
        {
            "default": "all",
            "show_default": True,
            "envvar": "FEEDBACKLOOP_SINCE",
            "metavar": "7d|24h|ISO|all",
            "help": "Only interactions since this long ago (7d, 24h, 30m, 2w), since this "
            "ISO date/time (UTC), or all of them ('all'). Env: FEEDBACKLOOP_SINCE.",
        },
    ),
    "--experiment": (
        ("--experiment", "-e"),
        {"default": None, "metavar": "NAME", "help": "Only this experiment's interactions."},
    ),
    "--prompt-version": (
        ("--prompt-version",),
        {"default": None, "metavar": "VERSION", "help": "Only this prompt version's interactions."},
    ),
    "--app": (
        ("--app",),
        {"default": None, "metavar": "APP_ID", "help": "Only this app_id (default: every app)."},
    ),
    "--url": (
        ("--url",),
        {
            "default": None,
            "envvar": "FEEDBACKLOOP_SQL_URL",
            "help": "ClickHouse URL to read from; give it a read-only user. Default: the "
            "running sink's query endpoint if any, else the configured ClickHouse "
            "(setting clickhouse_url). Env: FEEDBACKLOOP_SQL_URL.",
        },
    ),
    "--alpha": (
        ("--alpha",),
        {
            "default": 0.05,
            "show_default": True,
            "type": _PROBABILITY,
            "help": "Error rate accepted: two-sided significance level, intervals are "
            "1 - alpha; where many tests run at once, the false discovery rate.",
        },
    ),
    "--power": (
        ("--power",),
        {
            "default": 0.8,
            "show_default": True,
            "type": _PROBABILITY,
            "help": "Power for the required number of units (sessions or trials).",
        },
    ),
    "--mde": (
        ("--mde",),
        {
            "default": None,
            "type": float,
            "help": "Absolute change of the deciding metric to plan for, e.g. 0.02 "
            "(default: the observed one).",
        },
    ),
    "--json": (
        ("--json", "as_json"),
        {"is_flag": True, "help": "Print JSON instead of text."},
    ),
    "--min-support": (
        ("--min-support",),
        {
            "type": click.IntRange(min=1),
            "default": 30,
            "show_default": True,
            "help": "Smallest slice (in interactions) that is tested.",
        },
    ),
    "--limit": (
        ("--limit",),
        {
            "type": click.IntRange(min=1),
            "default": None,
            "help": "Read at most this many interactions, newest first (default 200000).",
        },
    ),
}


def _shared(name: str, **overrides: Any) -> Callable[[F], F]:
    decls, attrs = SHARED_OPTIONS[name]
    return click.option(*decls, **{**attrs, **overrides})


since_option = _shared("--since")
app_option = _shared("--app")
url_option = _shared("--url")
alpha_option = _shared("--alpha")
power_option = _shared("--power")
mde_option = _shared("--mde")
json_option = _shared("--json")
limit_option = _shared("--limit")
min_support_option = _shared("--min-support")


def experiment_option(required: bool = False) -> Callable[[F], F]:
    """``--experiment/-e``; a report about one experiment requires it, a filter does not."""
    return _shared("--experiment", required=required)


def prompt_version_option(required: bool = False) -> Callable[[F], F]:
    """``--prompt-version``; a regression suite is made for one, a filter takes any."""
    return _shared("--prompt-version", required=required)


def negative_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options that choose what counts as negative; the command receives them as one
    ``definition`` (a :class:`~feedbackloop.analysis.failures.negative.NegativeDefinition`)."""

    @functools.wraps(f)
    def with_definition(
        *args: Any,
        weights: tuple[str, ...],
        signals: str | None,
        threshold: float,
        low_rating_max: int,
        **kwargs: Any,
    ) -> Any:
        from feedbackloop.analysis.failures.negative import NegativeDefinition

        definition = NegativeDefinition.build(
            weights=weights,
            signals=signals.split(",") if signals else None,
            threshold=threshold,
            low_rating_max=low_rating_max,
        )
        return f(*args, definition=definition, **kwargs)

    opts = [
        click.option(
            "--weight",
            "weights",
            multiple=True,
            metavar="SIGNAL=W",
            help="Weight of a negative signal, e.g. abandon=1 (repeatable). Signals: "
            "thumbs_down low_rating correction report regenerate abandon edit comment.",
        ),
        click.option(
            "--signals",
            default=None,
            metavar="LIST",
            help="Count only these signals (comma-separated), e.g. thumbs_down,correction.",
        ),
        click.option(
            "--threshold",
            type=click.FloatRange(min=0, min_open=True),
            default=1.0,
            show_default=True,
            help="Summed weight at which an interaction is negative.",
        ),
        click.option(
            "--low-rating",
            "low_rating_max",
            type=click.IntRange(1, 4),
            default=2,
            show_default=True,
            help="Ratings up to this value count as low.",
        ),
    ]
    decorated: Callable[..., Any] = with_definition
    for opt in reversed(opts):
        decorated = opt(decorated)
    return decorated
