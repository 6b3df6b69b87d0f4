"""The canary guard's bookkeeping without a broker: it acts once per version, keeps the
latest revision of each partial aggregate, and forgets finished canaries' rows."""

from __future__ import annotations

import datetime as dt

from feedbackloop.config import Settings
from feedbackloop.control import ExperimentConfig, Guardrail, Status, new_experiment
from feedbackloop.schemas import Alert, WindowAggregate
from feedbackloop.stream_jobs.canary import CanaryGuard


class _Plane:
    def __init__(self) -> None:
        self.published: list[ExperimentConfig] = []
        self.other: list[tuple[str, bytes]] = []

    def publish(self, cfg: ExperimentConfig) -> None:
        self.published.append(cfg)

    def publish_to(self, topic: str, key: bytes, value: bytes) -> None:
        self.other.append((topic, value))


def _guard() -> tuple[CanaryGuard, _Plane]:
    guard = CanaryGuard(Settings(bootstrap_servers="127.0.0.1:1", app_id="shop"))
    plane = _Plane()
    guard.plane = plane  # type: ignore[assignment]
    return guard, plane


def _agg(variant: str, up: int, down: int, start: dt.datetime, revision: int = 1) -> bytes:
    return (
        WindowAggregate(
            window_start=start,
            window_end=start + dt.timedelta(seconds=60),
            app_id="shop",
            experiment="prompt",
            variant=variant,
            source_partition=0,
            revision=revision,
            emitted_at=start,
            thumbs_up=up,
            thumbs_down=down,
        )
        .model_dump_json()
        .encode()
    )


def _canary() -> ExperimentConfig:
    return new_experiment(
        "shop",
        "prompt",
        {"v1": 0.5, "v2": 0.5},
        changed_by="alice",
        canary_steps=(0.05, 0.5),
        guardrails=(Guardrail(metric="satisfaction"),),
        min_step_s=3600,
    )


def test_the_guard_rolls_back_once_and_forgets_the_canary_afterwards() -> None:
    guard, plane = _guard()
    v1 = _canary()
    guard.on_control(v1.model_dump_json().encode())
    t = dt.datetime.now(dt.timezone.utc)
    guard.on_aggregate(_agg("v1", 700, 300, t))
    guard.on_aggregate(_agg("v2", 10, 10, t))
    guard.on_aggregate(_agg("v2", 300, 300, t, revision=2))  # the later snapshot replaces it
    guard.on_aggregate(b"{not an aggregate")  # ignored (the sink dead-letters it)
    actions = guard.evaluate()
    assert [(a.action, a.version) for a in actions] == [("rollback", 2)]
    assert "treatment 0.5 (n=600)" in actions[0].reason
    assert guard.evaluate() == []  # waits for its own change to come back
    assert len(plane.published) == 1 and plane.published[0].status is Status.rolled_back
    # the alert, on the alerts topic, readable by the sink's Alert model
    ((topic, value),) = plane.other
    alert = Alert.model_validate_json(value)
    assert topic == guard.topics.alerts and alert.alert_type == "canary_rollback"
    assert (alert.experiment, alert.variant, alert.recent_n) == ("prompt", "v2", 600)
    guard.on_control(plane.published[0].model_dump_json().encode())
    guard.evaluate()
    assert guard.rows == {}  # a finished canary's rows are forgotten
    guard.on_aggregate(_agg("v2", 1, 1, t + dt.timedelta(minutes=1)))
    assert guard.rows == {}


def test_a_malformed_control_message_leaves_the_guard_on_the_last_good_version() -> None:
    guard, _plane = _guard()
    v1 = _canary()
    guard.on_control(v1.model_dump_json().encode())
    guard.on_control(b'{"name": "prompt"}')
    guard.on_control(None)
    assert guard.rejected == 2 and guard.configs[v1.key].version == 1
