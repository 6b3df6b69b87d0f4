"""The canary guard: a stream job that judges every running canary continuously and acts.

It reads two topics from the beginning, with no consumer group (every guard sees every
partition, so control and treatment of one experiment are always judged together): the
control topic (the latest version per experiment) and the aggregates topic (per-variant
window sufficient statistics, keeping the highest ``revision`` of each partial row). Every
``interval_s`` it runs :func:`feedbackloop.control.guardrails.judge` on each running canary
and, through the :class:`~feedbackloop.control.plane.ControlPlane`:

* on a breach publishes the rollback itself (``changed_by`` ``canary-guard``, the breached
  guardrails in ``reason``), POSTs an alert to the webhook and logs it;
* when the step held, publishes the next ramp step.

Both land in the audit trail like any other change. The guard acts at most once per
version: it waits for its own change to come back on the control topic before judging
that canary again. Two guards (two workers) judging the same data publish the same next
version; the audit table keeps one row per version.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.config import Settings
from feedbackloop.control.config import ExperimentConfig, Status, config_key, decode_config
from feedbackloop.control.guardrails import ArmStats, Judgement, judge
from feedbackloop.control.plane import ControlPlane, apply
from feedbackloop.errors import FeedbackLoopError, SchemaError
from feedbackloop.schemas import Topics, WindowAggregate

__all__ = ["CanaryGuard", "GuardAction"]

log = logging.getLogger(__name__)

GUARD = "canary-guard"

#: (app_id, experiment, variant, prompt_version, model, window_start, source_partition)
_RowKey = tuple[str, str, str, str, str, float, int]


@dataclass(frozen=True)
class GuardAction:
    """A change the guard published (tests, the demo's timeline)."""

    at: dt.datetime
    app_id: str
    experiment: str
    action: str
    version: int
    reason: str
    config: ExperimentConfig


@dataclass
class _Rows:
    """The latest revision of each partial aggregate row of one experiment."""

    rows: dict[_RowKey, tuple[int, float, float, ArmStats]] = field(default_factory=dict)

    def add(self, agg: WindowAggregate) -> None:
        key = (
            agg.app_id,
            agg.experiment,
            agg.variant,
            agg.prompt_version,
            agg.model,
            agg.window_start.timestamp(),
            agg.source_partition,
        )
        seen = self.rows.get(key)
        if seen is None or agg.revision >= seen[0]:
            end = agg.window_end.timestamp()
            self.rows[key] = (agg.revision, key[5], end, ArmStats.of(agg))

    def arms(self, control: str, treatment: str, since: float) -> tuple[ArmStats, ArmStats]:
        """(control, treatment) sums of the windows that end after ``since``."""
        c, t = ArmStats(), ArmStats()
        for key, (_rev, _start, end, stats) in self.rows.items():
            if end <= since:
                continue
            if key[2] == control:
                c += stats
            elif key[2] == treatment:
                t += stats
        return c, t


class CanaryGuard:
    """Judges running canaries on a daemon thread ("feedbackloop-canary"); see the module."""

    def __init__(
        self,
        settings: Settings,
        *,
        interval_s: float = 1.0,
        webhook_url: str | None = None,
        on_action: Callable[[GuardAction], None] | None = None,
    ) -> None:
        self.settings = settings
        self.topics = Topics(settings.topic_prefix)
        self.plane = ControlPlane(settings)
        self.interval_s = interval_s
        self.webhook_url = webhook_url
        self.on_action = on_action
        self.configs: dict[str, ExperimentConfig] = {}
        self.rows: dict[tuple[str, str], _Rows] = {}
        self.actions: list[GuardAction] = []
        #: Last judgement per experiment key (``experiments show`` and the demo print it).
        self.judgements: dict[str, Judgement] = {}
        self.rejected = 0
        #: Rollback alerts sent (tests, the demo).
        self.alerts: list[Any] = []
        self._acted: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> CanaryGuard:
        self.plane.ensure_topic()
        self._thread = threading.Thread(target=self._run, name="feedbackloop-canary", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> CanaryGuard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ feeding (pure)

    def on_control(self, value: bytes | None) -> None:
        try:
            cfg = decode_config(value)
        except SchemaError as e:  # the sink dead-letters it; the last good version stays
            self.rejected += 1
            log.warning("canary guard: refused a control message: %s", e)
            return
        with self._lock:
            seen = self.configs.get(cfg.key)
            if seen is None or cfg.version >= seen.version:
                self.configs[cfg.key] = cfg

    def on_aggregate(self, value: bytes | None) -> None:
        if value is None:
            return
        try:
            agg = WindowAggregate.model_validate_json(value)
        except ValueError:
            return  # the sink dead-letters what it cannot read
        if not agg.experiment:
            return
        with self._lock:
            # Only what a running canary will judge: memory stays bounded by the canaries,
            # not by the history of every experiment. (Before its config is read, keep it.)
            cfg = self.configs.get(config_key(agg.app_id, agg.experiment))
            if cfg is not None and not _judged(cfg, agg.window_end.timestamp()):
                return
            self.rows.setdefault((agg.app_id, agg.experiment), _Rows()).add(agg)

    def evaluate(self, now: dt.datetime | None = None) -> list[GuardAction]:
        """Judge every running canary once; publish what follows. Returns what was done."""
        now = now or dt.datetime.now(dt.timezone.utc)
        done = []
        with self._lock:
            running = [
                c
                for c in self.configs.values()
                if c.canary is not None and c.status is Status.running
            ]
        with self._lock:
            live = {
                (c.app_id, c.name)
                for c in self.configs.values()
                if c.canary is not None and c.status in (Status.running, Status.paused)
            }
            for gone in [k for k in self.rows if k not in live]:
                if config_key(*gone) in self.configs:  # finished canaries: forget their rows
                    del self.rows[gone]
        for cfg in running:
            if self._acted.get(cfg.key, 0) >= cfg.version:
                continue  # we acted on this version: wait for our change to come back
            c = cfg.canary
            assert c is not None
            with self._lock:
                rows = self.rows.get((cfg.app_id, cfg.name), _Rows())
                since_start = rows.arms(cfg.control, c.treatment, c.started_at.timestamp())
                at_step = rows.arms(cfg.control, c.treatment, c.step_started_at.timestamp())
            verdict = judge(cfg, since_start, at_step, now)
            self.judgements[cfg.key] = verdict
            if verdict.action is None:
                continue
            action = self._act(cfg, verdict, now)
            if action is not None:
                done.append(action)
        return done

    # ------------------------------------------------------------------ acting

    def _act(
        self, cfg: ExperimentConfig, verdict: Judgement, now: dt.datetime
    ) -> GuardAction | None:
        assert verdict.action is not None
        try:
            new = apply(cfg, verdict.action, changed_by=GUARD, reason=verdict.reason)
            self.plane.publish(new)
        except FeedbackLoopError as e:  # broker down: judge again next time
            log.error("canary guard: cannot publish %s of %s: %s", verdict.action, cfg.name, e)
            return None
        self._acted[cfg.key] = cfg.version
        action = GuardAction(
            now, cfg.app_id, cfg.name, verdict.action, new.version, verdict.reason, new
        )
        self.actions.append(action)
        if verdict.action == "rollback":
            log.warning(
                "CANARY ROLLBACK %s/%s v%d: %s", cfg.app_id, cfg.name, new.version, verdict.reason
            )
            self._alert(new, verdict, now)
        else:
            log.info("canary %s/%s advanced: %s", cfg.app_id, cfg.name, new.describe())
        if self.on_action is not None:
            self.on_action(action)
        return action

    def _alert(self, cfg: ExperimentConfig, verdict: Judgement, now: dt.datetime) -> None:
        """The rollback as an :class:`Alert` (``canary_rollback``) on the alerts topic (the
        alerts table and the dashboard list it) and to the webhook, as alerts are sent."""
        from feedbackloop.schemas import Alert

        c = cfg.canary
        assert c is not None
        check = next(ch for ch in verdict.checks if ch.breached)
        alert = Alert(
            alert_type="canary_rollback",
            metric=check.metric,
            dimension="variant",
            detector_key=f"canary:{cfg.key}",
            app_id=cfg.app_id,
            experiment=cfg.name,
            variant=c.treatment,
            baseline_rate=check.control,
            baseline_n=check.n_control,
            recent_rate=check.treatment,
            recent_n=check.n_treatment,
            recent_successes=0,
            since=c.started_at,
            detected_at=now,
            statistic=check.p_value,
            threshold=c.alpha,
            design_drop=check.tolerance,
            arl0_observations=0.0,  # a CUSUM's figure: no meaning here
            message=(
                f":rotating_light: [{cfg.app_id}] canary {cfg.name!r} rolled back "
                f"automatically (v{cfg.version}): {verdict.reason}"
            ),
        )
        try:
            self.plane.publish_to(
                self.topics.alerts, alert.detector_key.encode(), alert.model_dump_json().encode()
            )
        except Exception as e:  # the rollback stands; the alert is logged above anyway
            log.error("canary guard: cannot publish the alert: %s", e)
        if self.webhook_url:
            from feedbackloop.stream_jobs.app import post_webhook

            try:
                post_webhook(self.webhook_url, alert)
            except Exception as e:  # a webhook outage must not stop the guard
                log.error("canary guard: alert webhook POST failed: %s", e)
        self.alerts.append(alert)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"{self.settings.topic_prefix}canary-guard",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
                "log_level": 0,
            }
        )
        wanted = (self.topics.control, self.topics.aggregates)
        try:
            assigned: set[str] = set()
            next_eval = time.monotonic()
            while not self._stop.is_set():
                missing = [t for t in wanted if t not in assigned]
                if missing:
                    tps = []
                    with contextlib.suppress(Exception):
                        meta = consumer.list_topics(timeout=2)
                        for t in missing:
                            found = meta.topics.get(t)
                            if found is not None and found.error is None and found.partitions:
                                assigned.add(t)
                                tps += [
                                    TopicPartition(t, p, OFFSET_BEGINNING) for p in found.partitions
                                ]
                    if tps:
                        consumer.incremental_assign(tps)
                for msg in consumer.consume(1000, timeout=0.1):
                    if msg.error() is not None:
                        continue
                    if msg.topic() == self.topics.control:
                        self.on_control(msg.value())
                    else:
                        self.on_aggregate(msg.value())
                if time.monotonic() >= next_eval:
                    next_eval = time.monotonic() + self.interval_s
                    try:
                        self.evaluate()
                    except Exception:  # one bad canary must not stop guarding the others
                        log.exception("canary guard: evaluation failed")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()


def _judged(cfg: ExperimentConfig, window_end: float) -> bool:
    """Whether a window ending at ``window_end`` counts for ``cfg``: a running (or paused,
    to resume) canary's, after it started."""
    c = cfg.canary
    return (
        c is not None
        and cfg.status in (Status.running, Status.paused)
        and window_end > c.started_at.timestamp()
    )
