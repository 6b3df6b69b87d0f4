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
    "CheckedFloat",
    "build_design",
    "design_options",
    "plan_options",
    "alpha_option",
    "app_option",
    "experiment_option",
    "if_version_option",
    "json_option",
    "limit_option",
    "mde_option",
    "mde_relative_option",
    "primary_option",
    "min_support_option",
    "negative_options",
    "power_option",
    "prompt_version_option",
    "since_option",
    "url_option",
]

F = TypeVar("F", bound=Callable[..., Any])


class CheckedFloat(click.ParamType):
    """A float checked by a library validator that names the rule it enforces (``nan`` and
    ``inf`` parse as floats, so a range type alone lets them through)."""

    name = "number"

    def __init__(self, check: Callable[[float], float], what: str) -> None:
        self._check = check
        self._what = what

    def __repr__(self) -> str:
        return f"CheckedFloat({self._what})"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from feedbackloop.errors import ConfigError

        if isinstance(value, float):
            x = value
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        try:
            return self._check(x)
        except ConfigError as e:
            self.fail(str(e), param, ctx)


def _alpha(x: float) -> float:
    from feedbackloop.analysis.statistics.design import check_alpha

    return check_alpha(x, "alpha")


def _power(x: float) -> float:
    from feedbackloop.analysis.statistics.design import check_power

    return check_power(x, 0.0, "power")


def _mde(x: float) -> float:
    from feedbackloop.analysis.statistics.design import check_mde

    return check_mde(x, relative=True, proportion=False, name="mde")


def _positive(x: float) -> float:
    from feedbackloop.analysis.statistics.design import check_positive

    return check_positive(x, "value")


def _finite(x: float) -> float:
    from feedbackloop.errors import ConfigError

    if x != x or x in (float("inf"), float("-inf")):
        raise ConfigError(f"must be a finite number, got {x!r}")
    return x


_ALPHA = CheckedFloat(_alpha, "alpha in (0, 0.5)")
_POWER = CheckedFloat(_power, "power in (0, 1)")
_MDE = CheckedFloat(_mde, "finite, > 0, at most 10")
_POSITIVE = CheckedFloat(_positive, "finite, > 0")
_FINITE = CheckedFloat(_finite, "finite")

#: Every shared option by its long name: the introspection test compares each command's
#: option of that name with these keyword arguments.
SHARED_OPTIONS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "--if-version": (
        ("--if-version",),
        {
            "type": click.IntRange(min=1),
            "default": None,
            "metavar": "N",
            "help": "Compare-and-set: change only if the experiment is still at version N (as "
            "`experiments show` printed it); otherwise nothing changes and the command fails. "
            "Without it, a change that reached the control topic first still wins: no change "
            "ever overwrites another unseen.",
        },
    ),
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
            "type": _ALPHA,
            "help": "Error rate accepted, in (0, 0.5): two-sided significance level, intervals "
            "are 1 - alpha; where many tests run at once, the false discovery rate.",
        },
    ),
    "--power": (
        ("--power",),
        {
            "default": 0.8,
            "show_default": True,
            "type": _POWER,
            "help": "Power at the MDE for the fixed-horizon sample size, in (alpha/2, 1).",
        },
    ),
    "--mde": (
        ("--mde",),
        {
            "default": None,
            "type": _MDE,
            "help": "Minimum detectable effect of the deciding metric: an absolute change "
            "(0.02 = 2 points of a rate) unless --mde-relative. Plans the fixed horizon and "
            "enables the verdict 'no difference as large as the MDE'. Never the observed one.",
        },
    ),
    "--mde-relative": (
        ("--mde-relative",),
        {
            "is_flag": True,
            "help": "--mde is a share of the control's value (0.05 = 5%), not an absolute change.",
        },
    ),
    "--primary": (
        ("--primary",),
        {
            "default": "satisfaction",
            "show_default": True,
            "help": "The metric that decides (e.g. satisfaction, outcome.code_accepted).",
        },
    ),
    "--mode": (
        ("--mode",),
        {
            "type": click.Choice(["sequential", "fixed"]),
            "default": "sequential",
            "show_default": True,
            "help": "sequential: always-valid verdicts at any look; fixed: one verdict at the "
            "planned horizon, 'keep running (n of N)' before it.",
        },
    ),
    "--baseline": (
        ("--baseline",),
        {
            "type": _FINITE,
            "default": None,
            "help": "Expected control value of the deciding metric (a rate in [0, 1]), to plan "
            "the fixed horizon from the MDE.",
        },
    ),
    "--sd": (
        ("--sd",),
        {
            "type": _POSITIVE,
            "default": None,
            "help": "Per-unit standard deviation of the deciding metric (a mean, or a rate "
            "with chatty sessions), to plan the fixed horizon.",
        },
    ),
    "--sessions": (
        ("--sessions",),
        {
            "type": click.IntRange(min=2),
            "default": None,
            "help": "Planned units per variant of the fixed horizon (instead of planning it "
            "from --baseline / --sd).",
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
if_version_option = _shared("--if-version")
app_option = _shared("--app")
url_option = _shared("--url")
alpha_option = _shared("--alpha")
power_option = _shared("--power")
mde_option = _shared("--mde")
mde_relative_option = _shared("--mde-relative")
primary_option = _shared("--primary")


def design_options(f: F) -> F:
    """The design's error rates and effect (``stats compare``, ``ab report``,
    ``experiments design``): --mde, --mde-relative, --alpha, --power."""
    for o in reversed((mde_option, mde_relative_option, alpha_option, power_option)):
        f = o(f)
    return f


def plan_options(f: F) -> F:
    """How a design is analysed and its fixed horizon planned: --mode, --baseline, --sd,
    --sessions (``stats compare``, ``experiments design``)."""
    for name in reversed(("--mode", "--baseline", "--sd", "--sessions")):
        f = _shared(name)(f)
    return f


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


def build_design(**kwargs: Any) -> Any:
    """An ExperimentDesign from the design options; a contradiction between them (fixed mode
    without an MDE, an absolute MDE of 1 or more on a rate metric, ...) is a usage error."""
    from feedbackloop.analysis.reads.queries import metric_kind
    from feedbackloop.analysis.statistics.design import ExperimentDesign, check_mde
    from feedbackloop.errors import ConfigError

    try:
        design = ExperimentDesign(**kwargs)
        if design.mde is not None:
            rate = metric_kind(design.primary) in ("proportion", None)
            check_mde(design.mde, design.mde_relative, rate, "--mde")
        return design
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
