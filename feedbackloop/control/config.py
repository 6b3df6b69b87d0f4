"""An experiment's live configuration: one immutable version of it, as the control topic
carries it (JSON, keyed ``app_id|name``; the latest version per key is the truth).

A version says which variants exist, their weights, the hashing salt and the status; a
*canary* adds a ramp schedule and guardrails, and the treatment's weight is then the ramp
step it is at. Every version records who made it, why and when, so the topic read in order
(and its copy in ClickHouse, ``experiment_changes``) is the audit trail.

What a status serves (:meth:`ExperimentConfig.serving_weights`):

* ``running``: the configured weights (a canary: its current step);
* ``paused`` / ``stopped`` / ``rolled_back``: control for every session, so a rollback moves
  every treatment session back (the SDK forgets sticky assignments of a treatment that no
  longer has weight, see :class:`~feedbackloop.control.live.LiveConfig`).
"""

from __future__ import annotations

import datetime as dt
import math
from enum import Enum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from feedbackloop.errors import ConfigError, SchemaError
from feedbackloop.producers.assignment import Experiment

__all__ = [
    "CONTROL_SCHEMA_VERSION",
    "Canary",
    "ExperimentConfig",
    "Guardrail",
    "GuardrailMetric",
    "Status",
    "config_key",
    "decode_config",
]

CONTROL_SCHEMA_VERSION = 1

#: What a guardrail can watch, from the stream jobs' window aggregates.
GuardrailMetric = Literal[
    "satisfaction", "rating", "regenerate", "abandon", "latency_ms", "cost_usd", "error"
]

#: Whether a higher value of the metric is better (a breach is a move the other way).
HIGHER_IS_BETTER: dict[str, bool] = {
    "satisfaction": True,
    "rating": True,
    "regenerate": False,
    "abandon": False,
    "latency_ms": False,
    "cost_usd": False,
    "error": False,
}


class Status(str, Enum):
    running = "running"
    paused = "paused"
    stopped = "stopped"
    rolled_back = "rolled_back"


class Guardrail(BaseModel):
    """A metric the treatment must not make worse by more than ``tolerance`` (absolute, on
    the metric's scale: 0.02 of satisfaction is 2 points, 200 of latency_ms is 200 ms,
    0.0005 of cost_usd is 0.05 cents per interaction, 0.01 of error is 1 point of the
    share of failed calls). Every metric is judged per session
    (:mod:`feedbackloop.control.guardrails`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    metric: GuardrailMetric
    tolerance: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class Canary(BaseModel):
    """A ramp schedule and its guardrails; ``step`` indexes ``steps`` (the treatment's
    weight), and the guard advances it once a step held for ``min_step_s`` and
    ``min_step_samples`` treatment sessions (with that metric) of every guardrail."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    treatment: str
    steps: tuple[float, ...] = (0.01, 0.05, 0.25, 0.5)
    step: int = 0
    step_started_at: AwareDatetime
    min_step_s: float = Field(default=600.0, ge=0, allow_inf_nan=False)
    min_step_samples: int = Field(default=500, ge=0)
    guardrails: tuple[Guardrail, ...] = (Guardrail(metric="satisfaction", tolerance=0.0),)
    alpha: float = Field(default=0.05, gt=0, lt=1)
    #: When the canary started (its first step): the guard judges all data since then.
    started_at: AwareDatetime

    @model_validator(mode="after")
    def _check(self) -> Canary:
        if not self.steps:
            raise ValueError("a canary needs at least one ramp step")
        if any(not (0 < w <= 1) or not math.isfinite(w) for w in self.steps):
            raise ValueError("ramp steps are treatment weights in (0, 1]")
        if list(self.steps) != sorted(self.steps):
            raise ValueError("ramp steps must not decrease")
        if not 0 <= self.step < len(self.steps):
            raise ValueError(f"step {self.step} is not one of the {len(self.steps)} steps")
        if not self.guardrails:
            raise ValueError("a canary needs at least one guardrail")
        return self

    @property
    def weight(self) -> float:
        return self.steps[self.step]

    @property
    def last_step(self) -> bool:
        return self.step == len(self.steps) - 1


class ExperimentConfig(BaseModel):
    """One version of one experiment's live configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    control_schema_version: int = CONTROL_SCHEMA_VERSION
    app_id: str = Field(min_length=1, max_length=200)
    name: str = Field(min_length=1, max_length=200)
    version: int = Field(ge=1)
    status: Status = Status.running
    #: Variants, control first, with their configured weights (a canary's treatment weight
    #: here is ignored: its step decides).
    variants: dict[str, float]
    salt: str | None = None
    canary: Canary | None = None
    changed_by: str = Field(min_length=1, max_length=200)
    reason: str = Field(default="", max_length=2000)
    changed_at: AwareDatetime
    #: What this version did: create, weights, ramp, pause, resume, stop, rollback, advance.
    action: str = Field(min_length=1, max_length=40)

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if "|" in self.app_id or "|" in self.name:
            raise ValueError("app_id and name may not contain '|' (the topic key separator)")
        if self.canary is not None and self.canary.treatment not in self.variants:
            raise ValueError(f"canary treatment {self.canary.treatment!r} is not a variant")
        if self.canary is not None and len(self.variants) != 2:
            raise ValueError("a canary has exactly two variants: control and the treatment")
        # The weights must make an Experiment (sum 1, monotone-ramp caps): checked here so a
        # version that reaches the topic can always be served.
        try:
            Experiment(self.name, self.variants, salt=self.salt)
            self.experiment()
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return self

    @property
    def key(self) -> str:
        return config_key(self.app_id, self.name)

    @property
    def control(self) -> str:
        return next(iter(self.variants))

    def serving_weights(self) -> dict[str, float]:
        """The weights sessions are assigned by under this version's status."""
        if self.status is not Status.running:
            return {v: (1.0 if v == self.control else 0.0) for v in self.variants}
        if self.canary is not None:
            w = self.canary.weight
            return {self.control: 1.0 - w, self.canary.treatment: w}
        return dict(self.variants)

    def experiment(self) -> Experiment:
        """The :class:`Experiment` the SDK assigns with (same name and salt, so the MD5
        buckets never move: ramping only moves sessions from control to the treatment)."""
        return Experiment(self.name, self.serving_weights(), salt=self.salt)

    def next_version(
        self, action: str, changed_by: str, reason: str, **changes: object
    ) -> ExperimentConfig:
        """The following version with ``changes`` applied (validated)."""
        data = self.model_dump()
        data.update(changes)
        data.update(
            version=self.version + 1,
            action=action,
            changed_by=changed_by,
            reason=reason,
            changed_at=dt.datetime.now(dt.timezone.utc),
        )
        try:
            return ExperimentConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(_first_error(e)) from None

    def describe(self) -> str:
        """One line: version, status, serving weights (and the ramp step of a canary)."""
        weights = ", ".join(
            f"{v} {w:.0%}" if w * 100 == int(w * 100) else f"{v} {w:.2%}"
            for v, w in self.serving_weights().items()
        )
        line = f"v{self.version} {self.status.value}: {weights}"
        if self.canary is not None:
            c = self.canary
            line += f" (canary step {c.step + 1}/{len(c.steps)})"
        return line


def config_key(app_id: str, name: str) -> str:
    return f"{app_id}|{name}"


def decode_config(value: bytes | None) -> ExperimentConfig:
    """A version from the control topic; :class:`SchemaError` if it is not a valid one."""
    if value is None:
        raise SchemaError("empty_message", "control message has no value")
    try:
        return ExperimentConfig.model_validate_json(value)
    except ValidationError as e:
        raise SchemaError("invalid_config", _first_error(e)) from None


def _first_error(e: ValidationError) -> str:
    errs = e.errors()
    if not errs:
        return str(e)
    err = errs[0]
    where = ".".join(str(p) for p in err["loc"])
    more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"{where + ': ' if where else ''}{err['msg']}{more}"
