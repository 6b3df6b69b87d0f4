"""The control plane: read the live experiment configuration from the control topic and
publish new versions of it (the CLI, the HTTP API, the dashboard and the canary guard all
write through here).

The control topic is the source of truth: every process reads it from the beginning and
keeps the latest version per ``app_id|name``; it is compacted, so it stays as small as the
number of experiments. The full history lives in ClickHouse (``experiment_changes``, written
by the sink from the same topic).

Writes are read-modify-write: :meth:`ControlPlane.change` reads the current version, applies
an action (:func:`apply`, pure) and publishes version + 1. Kafka has no compare-and-set, so
two writers acting on the same experiment in the same instant both publish; the later
message wins and both stay in the audit trail.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from feedbackloop.config import Settings
from feedbackloop.control.config import (
    ExperimentConfig,
    Guardrail,
    Status,
    config_key,
    decode_config,
)
from feedbackloop.errors import BrokerError, ConfigError, SchemaError
from feedbackloop.schemas import Topics

__all__ = ["ACTIONS", "ControlPlane", "apply", "new_experiment", "read_topic"]

#: What a change can do (the audit trail's ``action`` column).
ACTIONS = ("create", "weights", "ramp", "pause", "resume", "stop", "rollback", "advance")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def new_experiment(
    app_id: str,
    name: str,
    variants: Mapping[str, float],
    *,
    changed_by: str,
    reason: str = "",
    salt: str | None = None,
    canary_steps: Sequence[float] | None = None,
    guardrails: Sequence[Guardrail] = (),
    min_step_s: float | None = None,
    min_step_samples: int | None = None,
    alpha: float | None = None,
) -> ExperimentConfig:
    """Version 1 of an experiment; with ``canary_steps`` a canary of its second variant."""
    from pydantic import ValidationError

    now = _now()
    data: dict[str, Any] = {
        "app_id": app_id,
        "name": name,
        "version": 1,
        "variants": dict(variants),
        "salt": salt,
        "changed_by": changed_by,
        "reason": reason,
        "changed_at": now,
        "action": "create",
    }
    if canary_steps is not None:
        names = list(variants)
        if len(names) != 2:
            raise ConfigError("a canary has exactly two variants: control and the treatment")
        canary: dict[str, Any] = {
            "treatment": names[1],
            "steps": tuple(canary_steps),
            "step_started_at": now,
            "started_at": now,
        }
        if guardrails:
            canary["guardrails"] = tuple(guardrails)
        for key, value in (
            ("min_step_s", min_step_s),
            ("min_step_samples", min_step_samples),
            ("alpha", alpha),
        ):
            if value is not None:
                canary[key] = value
        data["canary"] = canary
        # The configured split of a canary is its final step (what it ramps towards).
        last = float(canary_steps[-1]) if canary_steps else math.nan
        data["variants"] = {names[0]: 1.0 - last, names[1]: last}
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        from feedbackloop.control.config import _first_error

        raise ConfigError(f"experiment {name!r}: {_first_error(e)}") from None


def apply(
    current: ExperimentConfig,
    action: str,
    *,
    changed_by: str,
    reason: str = "",
    weights: Mapping[str, float] | None = None,
    to: float | None = None,
) -> ExperimentConfig:
    """The version that follows ``current`` after ``action`` (pure; raises
    :class:`ConfigError` for an action that does not apply)."""
    status = current.status
    name = current.name

    def nxt(**changes: Any) -> ExperimentConfig:
        return current.next_version(action, changed_by, reason, **changes)

    if action == "pause":
        if status is not Status.running:
            raise ConfigError(f"experiment {name!r} is {status.value}, not running")
        return nxt(status=Status.paused)
    if action == "resume":
        if status is not Status.paused:
            raise ConfigError(f"experiment {name!r} is {status.value}; only a paused one resumes")
        changes: dict[str, Any] = {"status": Status.running}
        if current.canary is not None:  # the step's clock restarts: paused time proved nothing
            changes["canary"] = current.canary.model_copy(update={"step_started_at": _now()})
        return nxt(**changes)
    if action in ("stop", "rollback"):
        if status in (Status.stopped, Status.rolled_back):
            raise ConfigError(f"experiment {name!r} is already {status.value}")
        return nxt(status=Status.stopped if action == "stop" else Status.rolled_back)
    if status is not Status.running:
        raise ConfigError(f"experiment {name!r} is {status.value}; {action} needs it running")
    if action == "weights":
        if current.canary is not None:
            raise ConfigError(f"{name!r} is a canary: its weights follow its ramp (use ramp)")
        if not weights:
            raise ConfigError("weights needs the new weight of every variant")
        if set(weights) != set(current.variants):
            raise ConfigError(
                f"give a weight to each of {', '.join(current.variants)} (and nothing else)"
            )
        return nxt(variants={v: float(weights[v]) for v in current.variants})
    if action == "ramp":
        if to is None:
            raise ConfigError("ramp needs the treatment's new weight")
        if current.canary is not None:
            steps = current.canary.steps
            matches = [i for i, w in enumerate(steps) if math.isclose(w, to, abs_tol=1e-9)]
            if not matches:
                raise ConfigError(
                    f"{name!r} ramps through {', '.join(f'{w:g}' for w in steps)}; "
                    f"{to:g} is not one of its steps"
                )
            canary = current.canary.model_copy(
                update={"step": matches[0], "step_started_at": _now()}
            )
            return nxt(canary=canary)
        names = list(current.variants)
        if len(names) != 2:
            raise ConfigError(f"{name!r} has {len(names)} variants: set them all with weights")
        return nxt(variants={names[0]: 1.0 - to, names[1]: to})
    if action == "advance":
        c = current.canary
        if c is None:
            raise ConfigError(f"{name!r} is not a canary")
        if c.last_step:
            raise ConfigError(f"canary {name!r} is at its last step already")
        return nxt(canary=c.model_copy(update={"step": c.step + 1, "step_started_at": _now()}))
    raise ConfigError(f"unknown action {action!r} (one of {', '.join(ACTIONS)})")


def read_topic(
    kafka_config: Mapping[str, Any], topic: str, timeout: float = 15.0
) -> Iterator[tuple[bytes | None, bytes | None, int | None, int | None]]:
    """Every (key, value, partition, offset) on ``topic`` now, from the beginning."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            **kafka_config,
            "group.id": "feedbackloop-control-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout)
        except Exception as e:
            raise BrokerError(f"cannot read the control topic {topic}: {e}") from e
        found = meta.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            return
        parts = sorted(found.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        pending = set(parts)
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise BrokerError(f"timed out reading the control topic {topic}")
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    pending.discard(msg.partition())
                    continue
                raise BrokerError(f"cannot read the control topic {topic}: {err}")
            yield msg.key(), msg.value(), msg.partition(), msg.offset()
    finally:
        consumer.close()


class ControlPlane:
    """Reads and writes one prefix's control topic (``Topics.control``)."""

    def __init__(self, settings: Settings) -> None:
        if settings.bootstrap_servers is None:
            raise ConfigError("the control plane needs bootstrap_servers (a running broker)")
        self.settings = settings
        self.topic = Topics(settings.topic_prefix).control
        self._kafka = settings.kafka_client_config()
        self._producer: Any = None

    def ensure_topic(self) -> None:
        from feedbackloop.infra import ensure_topics

        ensure_topics(self._kafka, [self.topic], self.settings.topic_partitions)

    def history(self) -> list[ExperimentConfig]:
        """Every valid version still on the topic, in topic order (malformed messages are
        skipped: the sink dead-letters them)."""
        out = []
        for _key, value, _p, _o in read_topic(self._kafka, self.topic):
            try:
                out.append(decode_config(value))
            except SchemaError:
                continue
        return out

    def current(self) -> dict[str, ExperimentConfig]:
        """The latest version per ``app_id|name``."""
        latest: dict[str, ExperimentConfig] = {}
        for cfg in self.history():
            seen = latest.get(cfg.key)
            if seen is None or cfg.version >= seen.version:
                latest[cfg.key] = cfg
        return latest

    def get(self, app_id: str, name: str) -> ExperimentConfig:
        found = self.current().get(config_key(app_id, name))
        if found is None:
            raise ConfigError(f"no live experiment {name!r} for app {app_id!r}")
        return found

    def create(self, config: ExperimentConfig) -> ExperimentConfig:
        """Publish version 1 (refused while a live version of that name exists)."""
        self.ensure_topic()
        existing = self.current().get(config.key)
        if existing is not None and existing.status in (Status.running, Status.paused):
            raise ConfigError(
                f"experiment {config.name!r} of {config.app_id!r} is {existing.status.value} "
                f"(v{existing.version}); stop it before creating it again"
            )
        if existing is not None:
            config = config.model_copy(update={"version": existing.version + 1})
        self.publish(config)
        return config

    def change(self, app_id: str, name: str, action: str, **kwargs: Any) -> ExperimentConfig:
        """Apply ``action`` to the current version and publish the result."""
        new = apply(self.get(app_id, name), action, **kwargs)
        self.publish(new)
        return new

    def publish(self, config: ExperimentConfig) -> None:
        """Write one version and wait for the broker's acknowledgement."""
        self.publish_raw(config.key.encode(), config.model_dump_json().encode())

    def publish_raw(self, key: bytes, value: bytes, timeout: float = 15.0) -> None:
        """Write raw bytes to the control topic (tests use it to plant a bad message)."""
        self.publish_to(self.topic, key, value, timeout)

    def publish_to(self, topic: str, key: bytes, value: bytes, timeout: float = 15.0) -> None:
        """Write one message to ``topic`` and wait for the broker's acknowledgement."""
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer({**self._kafka, "linger.ms": 0, "log_level": 0})
        errors: list[str] = []

        def done(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        self._producer.produce(topic, value, key, on_delivery=done)
        if self._producer.flush(timeout) or errors:
            why = errors[0] if errors else "timeout"
            raise BrokerError(f"the change was not acknowledged by the broker: {why}")
