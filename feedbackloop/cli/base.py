"""What every command module shares besides options: the settings, printing a result, the
logging and metrics of a long-running service, waiting for Ctrl-C.

The settings are read on first use, not when the root group starts, so a command that needs
none (``stats compare``, ``schemas export``, ``config docs``) runs whatever the environment
holds; a bad setting becomes an :class:`InvalidSettings` naming it (the root prints it).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from feedbackloop.config import Settings, load_settings
from feedbackloop.errors import ConfigError, InfraError, MissingDependency

__all__ = [
    "CliState",
    "InvalidSettings",
    "echo_json",
    "emit",
    "operations",
    "overridden",
    "scope_of",
    "serve_metrics",
    "settings_of",
    "wait_for_signal",
]


class InvalidSettings(ConfigError):
    """A setting's value is not valid: one line per bad setting, naming it and the problem."""


@dataclass
class CliState:
    """``ctx.obj`` of the root group: where the settings come from, and them once read."""

    config_file: str | None = None
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = _load(self.config_file)
        return self._settings


def settings_of(ctx: click.Context) -> Settings:
    """The settings of this invocation (env vars FEEDBACKLOOP_*, the --config file)."""
    obj = ctx.find_root().obj
    if isinstance(obj, Settings):  # a caller that invoked with obj=Settings(...)
        return obj
    if not isinstance(obj, CliState):
        obj = ctx.find_root().obj = CliState()
    return obj.settings


def _load(config_file: str | None) -> Settings:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        return load_settings(config_file)
    except ValidationError as e:
        raise InvalidSettings("\n".join(_problems(e))) from e
    except SettingsError as e:  # a dict / list setting whose env var is not JSON
        raise InvalidSettings(f"bad setting: {e} (a list or dict setting takes JSON)") from e
    except ValueError as e:  # tomllib's / tomli's TOMLDecodeError
        where = f"settings file {config_file}" if config_file else "settings"
        raise InvalidSettings(f"bad {where}: {e}") from e


def _problems(e: Any) -> list[str]:
    """``setting broker_port (FEEDBACKLOOP_BROKER_PORT): Input should be ...; got 'abc'``."""
    lines = []
    for err in e.errors():
        name = str(err["loc"][0]) if err["loc"] else "?"
        field = Settings.model_fields.get(name)
        secret = field is not None and "SecretStr" in str(field.annotation)
        got = "" if secret or "input" not in err else f"; got {err['input']!r}"
        where = ".".join(str(p) for p in err["loc"])
        lines.append(f"setting {where} (FEEDBACKLOOP_{name.upper()}): {err['msg']}{got}")
    return lines


def overridden(settings: Settings, **options: Any) -> Settings:
    """``settings`` with each option that was given (not None) in place of its setting: the
    one way a command's option overrides a setting of the same name."""
    given = {name: value for name, value in options.items() if value is not None}
    unknown = set(given) - set(Settings.model_fields)
    assert not unknown, f"not settings: {unknown}"
    return settings.model_copy(update=given) if given else settings


def scope_of(
    since: str | None = None,
    experiment: str | None = None,
    app: str | None = None,
    *,
    prompt_version: str | None = None,
    model: str | None = None,
    limit: int | None = None,
    with_text: bool = False,
) -> Any:
    """The :class:`~feedbackloop.analysis.reads.scope.Scope` the shared options describe."""
    from feedbackloop.analysis.reads.scope import DEFAULT_LIMIT, Scope
    from feedbackloop.analysis.reads.since import parse_since

    return Scope(
        since=parse_since(since),
        experiment=experiment,
        app_id=app,
        prompt_version=prompt_version,
        model=model,
        limit=limit or DEFAULT_LIMIT,
        with_text=with_text,
    )


def echo_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2))


def emit(result: Any, as_json: bool) -> None:
    """Print a result object: ``to_dict()`` as JSON with --json, else ``to_text()``."""
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(result.to_text())


def operations(s: Settings, service: str, metrics: bool = True) -> Callable[[], None]:
    """Logging and metrics of a long-running command; returns what to call on exit.

    Metrics go to the shared directory (the one ``up`` chose, else ``s.metrics_path``), so
    the web server's /metrics, ``feedbackloop metrics`` or ``metrics_port`` show them all.
    """
    from feedbackloop.infra.files import owner_only
    from feedbackloop.infra.logs import setup_logging

    owner_only(s.data_dir)  # before anything is created under it (docs/SECURITY.md)
    setup_logging(service, s.log_format, s.log_level)
    if not metrics:
        return lambda: None
    try:
        from feedbackloop.infra import metrics as m

        path = m.enable_multiprocess(m.multiprocess_dir() or s.metrics_path)
        m.families().service_up.labels(service).set(1)
    except ImportError as e:
        raise MissingDependency("prometheus-client", "sinks") from e
    if s.metrics_port is not None:
        serve_metrics(s, path)
    pid = os.getpid()
    return lambda: m.mark_process_dead(pid, path)


def serve_metrics(s: Settings, path: Path) -> None:
    from feedbackloop.infra.metrics import serve_http

    assert s.metrics_port is not None
    try:
        serve_http(s.metrics_port, s.metrics_host, path)
    except OSError as e:
        raise InfraError(f"cannot serve metrics on {s.metrics_host}:{s.metrics_port}: {e}") from e
    click.echo(f"metrics on http://{s.metrics_host}:{s.metrics_port}/metrics")


def wait_for_signal(while_true: Callable[[], bool] = lambda: True) -> None:
    """Block until SIGINT or SIGTERM, or until ``while_true()`` turns false."""
    import signal
    import threading

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    while not done.wait(1.0) and while_true():
        pass
