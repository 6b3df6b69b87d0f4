"""``feedbackloop experiments``: the live experiment control plane from the command line.

Each change publishes a new version of the experiment on the control topic (who: ``--by``,
default the OS user; why: ``--reason``), which every SDK following live config picks up
within seconds and the sink copies into the audit table ``experiment_changes``.
"""

from __future__ import annotations

import getpass
import json
import re
from typing import Any

import click

from feedbackloop.cli.base import echo_json, settings_of
from feedbackloop.cli.options import alpha_option, if_version_option, json_option, url_option
from feedbackloop.config import Settings
from feedbackloop.errors import ConfigError, FeedbackLoopError

__all__ = ["experiments"]


def _plane(ctx: click.Context) -> Any:
    from feedbackloop.control import ControlPlane
    from feedbackloop.infra.broker import _port_in_use

    s: Settings = settings_of(ctx)
    if s.bootstrap_servers is None:
        if not (s.embedded_broker and s.broker_port and _port_in_use(s.broker_host, s.broker_port)):
            raise FeedbackLoopError(
                "no broker to publish to: set FEEDBACKLOOP_BOOTSTRAP_SERVERS, or run "
                "`feedbackloop up` (its embedded broker is found on broker_host:broker_port)"
            )
        s = s.model_copy(update={"bootstrap_servers": f"{s.broker_host}:{s.broker_port}"})
    return ControlPlane(s)


def _app(ctx: click.Context, app_id: str | None) -> str:
    return app_id or settings_of(ctx).app_id


def _weights(pairs: tuple[str, ...] | str) -> dict[str, float]:
    items = pairs.split(",") if isinstance(pairs, str) else list(pairs)
    out: dict[str, float] = {}
    for item in items:
        name, sep, w = item.strip().partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected VARIANT=WEIGHT, got {item!r}")
        try:
            out[name] = float(w)
        except ValueError:
            raise click.BadParameter(f"weight of {name!r} is not a number: {w!r}") from None
    return out


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h)?\s*$")


def _seconds(text: str) -> float:
    m = _DURATION.match(text)
    if not m:
        raise click.BadParameter(f"expected a duration such as 30s, 10m or 1h, got {text!r}")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _guardrail(text: str) -> Any:
    from feedbackloop.control import Guardrail

    metric, _, tol = text.partition(":")
    try:
        return Guardrail.model_validate({"metric": metric, "tolerance": float(tol or 0)})
    except ValueError as e:
        raise click.BadParameter(
            f"{text!r}: expected METRIC[:TOLERANCE] with METRIC one of satisfaction, rating, "
            "regenerate, abandon, latency_ms, cost_usd, error and TOLERANCE >= 0"
        ) from e


def _by_option(f: Any) -> Any:
    return click.option(
        "--by",
        "by",
        default=None,
        metavar="WHO",
        help="Who makes the change, for the audit trail (default: the OS user).",
    )(f)


def _reason_option(f: Any) -> Any:
    return click.option(
        "--reason", required=True, help="Why: recorded with the new version in the audit trail."
    )(f)


def _app_id_option(f: Any) -> Any:
    return click.option(
        "--app-id",
        default=None,
        metavar="APP_ID",
        help="The experiment's app (default: setting app_id).",
    )(f)


def _who(by: str | None) -> str:
    if by:
        return by
    try:
        return getpass.getuser()
    except Exception:
        return "cli"


def _print(cfg: Any, as_json: bool) -> None:
    if as_json:
        echo_json(json.loads(cfg.model_dump_json()))
    else:
        click.echo(f"{cfg.app_id}/{cfg.name} {cfg.describe()}")


@click.group()
def experiments() -> None:
    """Experiments: live configuration (create, ramp, pause, stop, roll back without a
    redeploy; canaries guarded automatically) and designs (the rules an experiment is
    judged by, registered before its data; `ab report`, the dashboard and the alerts read
    them)."""


@experiments.command("create")
@click.argument("name")
@click.option(
    "--variants",
    required=True,
    metavar="CONTROL=W,TREATMENT=W,...",
    help="Variants with weights, control first (a canary: CONTROL=1,TREATMENT=0 style "
    "names; its weights follow --steps).",
)
@click.option(
    "--canary",
    is_flag=True,
    help="A canary of the second variant: ramped through --steps by the canary guard, "
    "rolled back automatically on a guardrail breach.",
)
@click.option(
    "--steps",
    default="0.01,0.05,0.25,0.5",
    show_default=True,
    help="Canary ramp: the treatment's weight at each step.",
)
@click.option(
    "--guardrail",
    "guardrails",
    multiple=True,
    metavar="METRIC[:TOLERANCE]",
    help="Canary guardrail, repeatable (default satisfaction:0). METRIC: satisfaction, "
    "rating, regenerate, abandon, latency_ms, cost_usd, error (interactions whose metadata "
    "has error or stream_error); TOLERANCE: degradation tolerated, absolute (0.02 = 2 points "
    "of satisfaction or of the error rate, 200 = 200 ms, 0.0005 = $0.0005 per interaction). "
    "Judged per session.",
)
@click.option("--min-step", default="10m", show_default=True, help="Canary: least time per step.")
@click.option(
    "--min-step-samples",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Canary: least treatment sessions per guardrail at a step before it advances.",
)
@alpha_option
@click.option("--salt", default=None, help="Hashing salt (default: the name).")
@_app_id_option
@_by_option
@_reason_option
@json_option
@click.pass_context
def create(
    ctx: click.Context,
    name: str,
    variants: str,
    canary: bool,
    steps: str,
    guardrails: tuple[str, ...],
    min_step: str,
    min_step_samples: int,
    alpha: float,
    salt: str | None,
    app_id: str | None,
    by: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Create live experiment NAME (version 1)."""
    from feedbackloop.control import new_experiment

    weights = _weights(variants)
    kwargs: dict[str, Any] = {}
    if canary:
        try:
            kwargs["canary_steps"] = tuple(float(x) for x in steps.split(","))
        except ValueError:
            raise click.BadParameter(
                f"--steps: expected weights such as 0.01,0.05, got {steps!r}"
            ) from None
        kwargs["guardrails"] = tuple(_guardrail(g) for g in guardrails)
        kwargs["min_step_s"] = _seconds(min_step)
        kwargs["min_step_samples"] = min_step_samples
        kwargs["alpha"] = alpha
    elif guardrails:
        raise click.UsageError("--guardrail applies to a --canary")
    app, who = _app(ctx, app_id), _who(by)
    cfg = new_experiment(app, name, weights, changed_by=who, reason=reason, salt=salt, **kwargs)
    _print(create_live(ctx, cfg), as_json)


def create_live(ctx: click.Context, cfg: Any) -> Any:
    """Publish version 1 of a live experiment (``experiments create``, ``shadow report
    --promote``) and return it as published."""
    return _plane(ctx).create(cfg)


def _change(
    ctx: click.Context,
    action: str,
    name: str,
    app_id: str | None,
    by: str | None,
    reason: str,
    as_json: bool,
    if_version: int | None,
    **kw: Any,
) -> None:
    app, who = _app(ctx, app_id), _who(by)
    cfg = _plane(ctx).change(
        app, name, action, if_version=if_version, changed_by=who, reason=reason, **kw
    )
    _print(cfg, as_json)


def _simple(action: str, doc: str) -> None:
    @experiments.command(action, help=doc)
    @click.argument("name")
    @_app_id_option
    @_by_option
    @_reason_option
    @if_version_option
    @json_option
    @click.pass_context
    def command(
        ctx: click.Context,
        name: str,
        app_id: str | None,
        by: str | None,
        reason: str,
        if_version: int | None,
        as_json: bool,
    ) -> None:
        _change(ctx, action, name, app_id, by, reason, as_json, if_version)


_simple("pause", "Pause NAME: every session gets control until it resumes.")
_simple("resume", "Resume paused NAME (a canary's step clock restarts).")
_simple("stop", "Stop NAME: every session gets control from now on.")
_simple("rollback", "Roll NAME back: every session of the treatment returns to control.")


@experiments.command("weights")
@click.argument("name")
@click.argument("weights", nargs=-1, required=True, metavar="VARIANT=WEIGHT...")
@_app_id_option
@_by_option
@_reason_option
@if_version_option
@json_option
@click.pass_context
def weights_cmd(
    ctx: click.Context,
    name: str,
    weights: tuple[str, ...],
    app_id: str | None,
    by: str | None,
    reason: str,
    if_version: int | None,
    as_json: bool,
) -> None:
    """Set the weight of every variant of NAME (not a canary: ramp it)."""
    w = _weights(weights)
    _change(ctx, "weights", name, app_id, by, reason, as_json, if_version, weights=w)


@experiments.command("ramp")
@click.argument("name")
@click.argument("weight", type=click.FloatRange(0, 1))
@_app_id_option
@_by_option
@_reason_option
@if_version_option
@json_option
@click.pass_context
def ramp(
    ctx: click.Context,
    name: str,
    weight: float,
    app_id: str | None,
    by: str | None,
    reason: str,
    if_version: int | None,
    as_json: bool,
) -> None:
    """Set the treatment of NAME to WEIGHT (a canary: to that step of its ramp)."""
    _change(ctx, "ramp", name, app_id, by, reason, as_json, if_version, to=weight)


@experiments.command("list")
@_app_id_option
@json_option
@click.pass_context
def list_cmd(ctx: click.Context, app_id: str | None, as_json: bool) -> None:
    """Every live experiment's current version (of one app with --app-id)."""
    configs = sorted(_plane(ctx).current().values(), key=lambda c: (c.app_id, c.name))
    configs = [c for c in configs if app_id is None or c.app_id == app_id]
    if as_json:
        echo_json([json.loads(c.model_dump_json()) for c in configs])
        return
    if not configs:
        click.echo("no live experiments")
    for c in configs:
        click.echo(f"{c.app_id}/{c.name} {c.describe()}")


@experiments.command("show")
@click.argument("name")
@_app_id_option
@url_option
@json_option
@click.pass_context
def show(ctx: click.Context, name: str, app_id: str | None, url: str | None, as_json: bool) -> None:
    """NAME's live configuration (current version, canary, every change still on the control
    topic; the full history is in ClickHouse, experiment_changes) and its registered design."""
    from feedbackloop.cli.experiments import design_of, print_design
    from feedbackloop.control.config import config_key

    app = _app(ctx, app_id)
    key = config_key(app, name)
    try:
        history = [c for c in _plane(ctx).history() if c.key == key]
        live_error = None
    except FeedbackLoopError as e:  # no broker: the design may still be there
        history, live_error = [], str(e)
    try:
        design = design_of(ctx, name, url)
        design_error = None
    except FeedbackLoopError as e:  # no ClickHouse: the live config may still be there
        design, design_error = None, str(e)
    if not history and design is None:
        why = "; ".join(e for e in (live_error, design_error) if e)
        raise ConfigError(
            f"no live experiment {name!r} for app {app!r} and no design registered for it"
            + (f" ({why})" if why else "")
            + f": feedbackloop experiments create {name} ... / experiments design {name} ..."
        )
    current = max(history, key=lambda c: c.version) if history else None
    if as_json:
        echo_json(
            {
                "current": None if current is None else json.loads(current.model_dump_json()),
                "history": [json.loads(c.model_dump_json()) for c in history],
                "design": None if design is None else design.to_dict(),
            }
        )
        return
    if current is not None:
        _print_live(app, name, current, history)
    if design is not None:
        if current is not None:
            click.echo("design:")
        print_design(name, design)


def _print_live(app: str, name: str, current: Any, history: list[Any]) -> None:
    click.echo(f"{app}/{name} {current.describe()}")
    if current.canary is not None:
        c = current.canary
        rails = ", ".join(f"{g.metric} (tolerance {g.tolerance:g})" for g in c.guardrails)
        click.echo(
            f"  canary of {c.treatment!r}: steps {', '.join(f'{w:g}' for w in c.steps)}; "
            f"each step >= {c.min_step_s:g} s and {c.min_step_samples} sessions; "
            f"guardrails {rails}; alpha {c.alpha:g}"
        )
    click.echo("  history:")
    for c in sorted(history, key=lambda c: c.version):
        why = f" -- {c.reason}" if c.reason else ""
        click.echo(
            f"    v{c.version} {c.changed_at:%Y-%m-%d %H:%M:%S} {c.action:<8} by {c.changed_by}: "
            f"{c.describe().split(': ', 1)[1]}{why}"
        )
