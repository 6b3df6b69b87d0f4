"""The control plane: read the live experiment configuration from the control topic and
publish new versions of it (the CLI, the HTTP API, the dashboard and the canary guard all
write through here).

The control topic is the source of truth: every process reads it from the beginning and
keeps the latest version per ``app_id|name``; it is compacted, so it stays as small as the
number of experiments. The full history lives in ClickHouse (``experiment_changes``, written
by the sink from the same topic).

Writes are compare-and-set, with the topic's order as the arbiter. Kafka has no
conditional write, but one partition is a total order and every message of an experiment
goes to one partition (:func:`partition_of`). Every reader takes, per experiment, the
**first** message of each higher version (a later message of a version it holds is a
conflicting write and is ignored). :meth:`ControlPlane.change` reads the current version
(refusing at once if it is not the ``if_version`` the caller expects), applies an action
(:func:`apply`, pure), publishes version + 1, then reads the partition up to its own
message: if another version + 1 (or later) came first, its change lost and
:class:`~feedbackloop.errors.VersionConflict` says so; it never silently replaces another
writer's change. The losing message stays on the topic, ignored by every reader.

Each message has a key of its own (``app_id|name|v<version>|<random>``), so compaction, which
keeps the last message per key, can never drop the winner of a version in favour of a later
loser: the topic keeps every version (one small message per change).
"""

from __future__ import annotations

import datetime as dt
import math
import time
import uuid
import zlib
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
from feedbackloop.errors import BrokerError, ConfigError, SchemaError, VersionConflict
from feedbackloop.schemas import Topics

__all__ = [
    "ACTIONS",
    "ControlPlane",
    "apply",
    "latest",
    "message_key",
    "new_experiment",
    "partition_of",
    "read_topic",
]

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


def partition_of(key: str, partitions: int) -> int:
    """The control topic partition of experiment ``key`` (``app_id|name``): CRC-32 modulo
    the partition count, where librdkafka's default partitioner put a message keyed ``key``
    (so the messages written before keys were per version sit there too)."""
    return zlib.crc32(key.encode()) % max(1, partitions)


def message_key(config: ExperimentConfig) -> bytes:
    """A key of its own for each message (see the module docstring: compaction)."""
    return f"{config.key}|v{config.version}|{uuid.uuid4().hex[:12]}".encode()


def latest(seen: ExperimentConfig | None, cfg: ExperimentConfig) -> bool:
    """Whether a reader holding ``seen`` takes ``cfg`` read after it: only a higher version
    (the first message of a version wins; a later one is a write that lost)."""
    return seen is None or cfg.version > seen.version


def read_topic(
    kafka_config: Mapping[str, Any],
    topic: str,
    timeout: float = 15.0,
    upto: tuple[int, int] | None = None,
) -> Iterator[tuple[bytes | None, bytes | None, int | None, int | None]]:
    """Every (key, value, partition, offset) on ``topic`` now, from the beginning; with
    ``upto=(partition, offset)`` only that partition, up to and including that offset."""
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
        parts = sorted(found.partitions) if upto is None else [upto[0]]
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
            if upto is not None and (msg.offset() or 0) >= upto[1]:
                return
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
        self._n_partitions: int | None = None

    def ensure_topic(self) -> None:
        from feedbackloop.infra import ensure_topics

        ensure_topics(self._kafka, [self.topic], self.settings.topic_partitions)

    def history(self) -> list[ExperimentConfig]:
        """Every version in force at some time, in topic order: malformed messages (the sink
        dead-letters them) and writes that lost their version to another are left out."""
        out = []
        held: dict[str, ExperimentConfig] = {}
        for _key, value, _p, _o in read_topic(self._kafka, self.topic):
            try:
                cfg = decode_config(value)
            except SchemaError:
                continue
            if latest(held.get(cfg.key), cfg):
                held[cfg.key] = cfg
                out.append(cfg)
        return out

    def current(self) -> dict[str, ExperimentConfig]:
        """The latest version per ``app_id|name``."""
        return {cfg.key: cfg for cfg in self.history()}

    def get(self, app_id: str, name: str) -> ExperimentConfig:
        found = self.current().get(config_key(app_id, name))
        if found is None:
            raise ConfigError(f"no live experiment {name!r} for app {app_id!r}")
        return found

    def create(self, config: ExperimentConfig) -> ExperimentConfig:
        """Publish version 1 (refused while a live version of that name exists; a second
        create racing this one loses with :class:`VersionConflict`)."""
        self.ensure_topic()
        existing = self.current().get(config.key)
        if existing is not None and existing.status in (Status.running, Status.paused):
            raise ConfigError(
                f"experiment {config.name!r} of {config.app_id!r} is {existing.status.value} "
                f"(v{existing.version}); stop it before creating it again"
            )
        if existing is not None:
            config = config.model_copy(update={"version": existing.version + 1})
        self.commit(config)
        return config

    def change(
        self, app_id: str, name: str, action: str, *, if_version: int | None = None, **kwargs: Any
    ) -> ExperimentConfig:
        """Apply ``action`` to the current version and publish the result, compare-and-set:
        :class:`VersionConflict` if the current version is not ``if_version`` (when given)
        or another change of the same version came first."""
        current = self.get(app_id, name)
        if if_version is not None and current.version != if_version:
            raise VersionConflict(
                f"experiment {name!r} is at v{current.version} ({current.action} by "
                f"{current.changed_by}), not v{if_version}: nothing changed",
                current=current.version,
                expected=if_version,
            )
        new = apply(current, action, **kwargs)
        self.commit(new, expected=if_version)
        return new

    def commit(self, config: ExperimentConfig, expected: int | None = None) -> None:
        """Publish ``config`` and confirm it won its version (see the module docstring)."""
        partition, offset = self.publish(config)
        winner: ExperimentConfig | None = None
        won = False
        for _key, value, _p, off in read_topic(self._kafka, self.topic, upto=(partition, offset)):
            try:
                cfg = decode_config(value)
            except SchemaError:
                continue
            if cfg.key == config.key and latest(winner, cfg):
                winner, won = cfg, off == offset
        if not won:
            cur = winner.version if winner is not None else 0
            by = f" ({winner.action} by {winner.changed_by})" if winner is not None else ""
            raise VersionConflict(
                f"experiment {config.name!r}: another change reached v{cur}{by} first; "
                f"this {config.action} (v{config.version}) was not applied",
                current=cur,
                expected=expected,
            )

    def publish(self, config: ExperimentConfig) -> tuple[int, int]:
        """Write one version to its experiment's partition and wait for the broker's
        acknowledgement; returns (partition, offset). No check: :meth:`commit` checks."""
        return self.publish_to(
            self.topic,
            message_key(config),
            config.model_dump_json().encode(),
            partition=partition_of(config.key, self._partitions()),
        )

    def _partitions(self) -> int:
        if self._n_partitions is None:
            try:
                meta = self._client().list_topics(self.topic, timeout=15)
            except Exception as e:
                raise BrokerError(f"cannot read the control topic {self.topic}: {e}") from e
            found = meta.topics.get(self.topic)
            if found is None or found.error is not None or not found.partitions:
                self.ensure_topic()
                return self.settings.topic_partitions
            self._n_partitions = len(found.partitions)
        return self._n_partitions

    def _client(self) -> Any:
        from confluent_kafka import Producer

        if self._producer is None:
            self._producer = Producer({**self._kafka, "linger.ms": 0, "log_level": 0})
        return self._producer

    def publish_raw(self, key: bytes, value: bytes, timeout: float = 15.0) -> None:
        """Write raw bytes to the control topic (tests use it to plant a bad message)."""
        self.publish_to(self.topic, key, value, timeout)

    def publish_to(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        timeout: float = 15.0,
        partition: int | None = None,
    ) -> tuple[int, int]:
        """Write one message to ``topic`` and wait for the broker's acknowledgement;
        returns (partition, offset)."""
        producer = self._client()
        errors: list[str] = []
        where: list[tuple[int, int]] = []

        def done(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                where.append((msg.partition(), msg.offset()))

        if partition is None:
            producer.produce(topic, value, key, on_delivery=done)
        else:
            producer.produce(topic, value, key, partition=partition, on_delivery=done)
        if producer.flush(timeout) or errors or not where:
            why = errors[0] if errors else "timeout"
            raise BrokerError(f"the change was not acknowledged by the broker: {why}")
        return where[0]
