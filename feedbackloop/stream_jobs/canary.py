"""The canary guard: a stream job that judges every running canary continuously and acts.

It reads two topics with no consumer group (every guard sees every partition, so control
and treatment of one experiment are always judged together): the control topic from the
beginning (the latest version per experiment) and the enriched topic from a few minutes
before each running canary started (located by timestamp). Of the enriched events it keeps,
per canary, arm and session, the totals the guardrails read (:class:`~feedbackloop.control.
guardrails.ArmStats`): interactions with their latency, cost and errors, thumbs, ratings,
regenerations and abandonments, each counted for the variant of its interaction and only
if that interaction came after the canary started. The window aggregates cannot serve: they
are per window and per source partition (the raw topic is keyed by interaction), so a
session's votes are spread over rows that cannot be put back together per session.

Each event counts once: an offset of the enriched topic at or below the last one a canary
counted is not counted again (the guard re-reads the topic when a new canary appears), and
an ``event_id`` seen in the last 10 to 20 minutes is not counted again (an SDK resend, a
stream-job replay after a crash). Every ``interval_s`` it runs
:func:`feedbackloop.control.guardrails.judge` on each running canary and, through the
:class:`~feedbackloop.control.plane.ControlPlane`:

* on a breach publishes the rollback itself (``changed_by`` ``canary-guard``, the breached
  guardrails in ``reason``), POSTs an alert to the webhook and logs it;
* when the step held, publishes the next ramp step.

Both land in the audit trail like any other change. The guard acts at most once per
version: it waits for its own change to come back on the control topic before judging
that canary again. Its changes are compare-and-set like everyone's
(:meth:`~feedbackloop.control.plane.ControlPlane.commit`): when an operator's change (or a
second guard's) reaches the topic first, the guard's is not applied, and the guard judges
the newer version when it comes back.
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

import orjson

from feedbackloop.config import Settings
from feedbackloop.control.config import ExperimentConfig, Status, config_key, decode_config
from feedbackloop.control.guardrails import ArmStats, Judgement, is_error, judge
from feedbackloop.control.plane import ControlPlane, apply
from feedbackloop.errors import FeedbackLoopError, SchemaError, VersionConflict
from feedbackloop.schemas import Topics

__all__ = ["CanaryGuard", "GuardAction"]

log = logging.getLogger(__name__)

GUARD = "canary-guard"
#: How far before a canary's start the guard re-reads the enriched topic (by the broker's
#: timestamps): an event's own time may be ahead of the broker's by the 5 minutes of clock
#: skew validation allows.
REWIND_S = 300.0
#: A session idle this long (event time) is closed: its totals stay, its row is freed.
SESSION_IDLE_S = 1800.0
#: How long an ``event_id`` is remembered against resends: one to two generations.
DEDUPE_GENERATION_S = 600.0


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
class _Tracked:
    """What the guard holds for one live canary: per-session totals of both arms since it
    started, the treatment's since its current step started, and how far it has read."""

    started_at: float
    step: tuple[int, float]
    control: ArmStats = field(default_factory=ArmStats)
    treatment: ArmStats = field(default_factory=ArmStats)
    at_step: ArmStats = field(default_factory=ArmStats)
    #: enriched partition -> last offset counted.
    upto: dict[int, int] = field(default_factory=dict)
    #: Largest event time counted (closes idle sessions).
    watermark: float = 0.0

    def arms(self) -> tuple[ArmStats, ...]:
        return (self.control, self.treatment, self.at_step)


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def _counts(event: dict[str, Any]) -> dict[str, float] | None:
    """What one event adds to its session's totals (None: nothing a guardrail reads)."""
    kind = event.get("event_type")
    if kind == "interaction":
        inc: dict[str, float] = {"interactions": 1.0}
        lat, cost = event.get("latency_ms"), event.get("cost_usd")
        if lat is not None:
            inc["latency_n"], inc["latency_sum"] = 1.0, float(lat)
        if cost is not None:
            inc["cost_n"], inc["cost_sum"] = 1.0, float(cost)
        if is_error(event.get("metadata")):
            inc["errors"] = 1.0
        return inc
    if kind == "feedback":
        if event.get("kind") == "thumbs":
            return {"votes": 1.0, "up": 1.0 if event.get("thumbs") == 1 else 0.0}
        if event.get("kind") == "rating":
            return {"rating_n": 1.0, "rating_sum": float(event.get("rating") or 0)}
        return None
    if kind == "implicit":
        signal = event.get("signal")
        if signal == "regenerate":
            return {"regenerate": 1.0}
        if signal == "abandon":
            return {"abandon": 1.0}
    return None


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
        #: Live canaries' session totals, by experiment key.
        self.tracked: dict[str, _Tracked] = {}
        self.actions: list[GuardAction] = []
        #: Last judgement per experiment key (``experiments show`` and the demo print it).
        self.judgements: dict[str, Judgement] = {}
        self.rejected = 0
        #: Enriched events not counted again (an offset re-read, an event_id seen lately).
        self.duplicates = 0
        #: Changes of the guard that lost to another writer's (then re-judged).
        self.conflicts = 0
        #: Rollback alerts sent (tests, the demo).
        self.alerts: list[Any] = []
        self._acted: dict[str, int] = {}
        #: The tracked canaries' names, JSON-quoted (the cheap pre-filter of on_enriched).
        self._needles: tuple[bytes, ...] = ()
        #: Epoch seconds the enriched topic should be re-read from (a canary appeared).
        self._rewind: float | None = None
        self._ids: tuple[set[bytes], set[bytes]] = (set(), set())
        self._ids_rotated = time.monotonic()
        self._housekeeping = time.monotonic()
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
            if seen is not None and cfg.version <= seen.version:
                return  # the first message of a version wins (see control/plane.py)
            self.configs[cfg.key] = cfg
            try:
                self._track(cfg)
            finally:
                self._needles = tuple(
                    {orjson.dumps(self.configs[k].name) for k in self.tracked if k in self.configs}
                )

    def _track(self, cfg: ExperimentConfig) -> None:
        """Start, restart or stop holding sessions for ``cfg`` (under the lock)."""
        c = cfg.canary
        if c is None or cfg.status not in (Status.running, Status.paused):
            self.tracked.pop(cfg.key, None)  # finished: forget its sessions
            return
        started = c.started_at.timestamp()
        step = (c.step, c.step_started_at.timestamp())
        tr = self.tracked.get(cfg.key)
        if tr is None or tr.started_at != started:
            self.tracked[cfg.key] = _Tracked(started, step)
            since = started - REWIND_S
            self._rewind = since if self._rewind is None else min(self._rewind, since)
        elif tr.step != step:
            tr.step, tr.at_step = step, ArmStats()

    def on_enriched(self, value: bytes | None, partition: int = 0, offset: int = -1) -> None:
        """Count one enriched event for the live canary its interaction belongs to."""
        needles = self._needles
        # Most events belong to no canary: a substring test of the quoted experiment names
        # (any JSON spacing) spares them the parse.
        if not value or not any(n in value for n in needles):
            return
        try:
            doc = orjson.loads(value)
            event = doc["event"]
            if event.get("event_type") == "interaction":
                if event.get("shadow"):
                    return
                exp, variant = event.get("experiment"), event.get("variant")
                when = event["occurred_at"]
            else:
                ctx = doc.get("context")
                if not ctx:
                    return  # orphans and session-level outcomes belong to no variant
                exp, variant = ctx.get("experiment"), ctx.get("variant")
                when = ctx["interaction_occurred_at"]
            if not exp or not variant:
                return
            key = config_key(event["app_id"], exp)
            with self._lock:
                tr = self.tracked.get(key)
                cfg = self.configs.get(key)
                if tr is None or cfg is None or cfg.canary is None:
                    return
                if offset >= 0:
                    if offset <= tr.upto.get(partition, -1):
                        self.duplicates += 1
                        return
                    tr.upto[partition] = offset
                at = _ts(when)
                if at <= tr.started_at:
                    return
                counts = _counts(event)
                if counts is None:
                    return
                eid = str(event.get("event_id", "")).encode()
                if eid in self._ids[0] or eid in self._ids[1]:
                    self.duplicates += 1
                    return
                self._ids[0].add(eid)
                sid = event["session_id"]
                if variant == cfg.control:
                    tr.control.add(sid, at, **counts)
                elif variant == cfg.canary.treatment:
                    tr.treatment.add(sid, at, **counts)
                    if at >= tr.step[1]:
                        tr.at_step.add(sid, at, **counts)
                tr.watermark = max(tr.watermark, at)
        except (ValueError, KeyError, TypeError, AttributeError):
            return  # the sink dead-letters what it cannot read

    def evaluate(self, now: dt.datetime | None = None) -> list[GuardAction]:
        """Judge every running canary once; publish what follows. Returns what was done."""
        now = now or dt.datetime.now(dt.timezone.utc)
        self._keep_bounded()
        done = []
        with self._lock:
            running = [
                (c, self.tracked.get(c.key))
                for c in self.configs.values()
                if c.canary is not None and c.status is Status.running
            ]
        for cfg, tr in running:
            if self._acted.get(cfg.key, 0) >= cfg.version:
                continue  # we acted on this version: wait for our change to come back
            with self._lock:
                tr = tr or _Tracked(0.0, (0, 0.0))
                verdict = judge(cfg, (tr.control, tr.treatment), tr.at_step, now)
            self.judgements[cfg.key] = verdict
            if verdict.action is None:
                continue
            action = self._act(cfg, verdict, now)
            if action is not None:
                done.append(action)
        return done

    def _keep_bounded(self) -> None:
        """Forget event ids older than two generations; once a minute close idle sessions
        and recompute the sums exactly."""
        mono = time.monotonic()
        if mono - self._ids_rotated >= DEDUPE_GENERATION_S:
            self._ids = (set(), self._ids[0])
            self._ids_rotated = mono
        if mono - self._housekeeping < 60.0:
            return
        self._housekeeping = mono
        with self._lock:
            for tr in self.tracked.values():
                for arm in tr.arms():
                    arm.close_idle(tr.watermark - SESSION_IDLE_S)
                    arm.rebuild()

    # ------------------------------------------------------------------ acting

    def _act(
        self, cfg: ExperimentConfig, verdict: Judgement, now: dt.datetime
    ) -> GuardAction | None:
        assert verdict.action is not None
        try:
            new = apply(cfg, verdict.action, changed_by=GUARD, reason=verdict.reason)
            self.plane.commit(new, expected=cfg.version)
        except VersionConflict as e:
            # Someone else changed it first (an operator paused it, another guard acted):
            # their version comes back on the control topic and is judged afresh.
            self.conflicts += 1
            self._acted[cfg.key] = cfg.version
            log.info("canary guard: %s; judging the newer version", e)
            return None
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
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

        consumer = Consumer(
            {
                **self.settings.kafka_client_config(),
                "group.id": f"{self.settings.topic_prefix}canary-guard",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 100,
                "log_level": 0,
            }
        )
        control, enriched = self.topics.control, self.topics.enriched
        try:
            assigned: dict[str, list[int]] = {}
            next_eval = time.monotonic()
            while not self._stop.is_set():
                for t in (control, enriched):
                    if t in assigned:
                        continue
                    with contextlib.suppress(Exception):
                        found = consumer.list_topics(timeout=2).topics.get(t)
                        if found is not None and found.error is None and found.partitions:
                            assigned[t] = sorted(found.partitions)
                            # The control topic from the start; the enriched one from the
                            # end, rewound to each canary's start when it is seen.
                            at = OFFSET_BEGINNING if t == control else OFFSET_END
                            consumer.incremental_assign(
                                [TopicPartition(t, p, at) for p in assigned[t]]
                            )
                if enriched in assigned and self._rewind is not None:
                    self._seek(consumer, enriched, assigned[enriched], self._rewind)
                for msg in consumer.consume(1000, timeout=0.1):
                    if msg.error() is not None:
                        continue
                    if msg.topic() == control:
                        self.on_control(msg.value())
                    else:
                        part, off = msg.partition(), msg.offset()
                        self.on_enriched(msg.value(), part or 0, off if off is not None else -1)
                if time.monotonic() >= next_eval:
                    next_eval = time.monotonic() + self.interval_s
                    try:
                        self.evaluate()
                    except Exception:  # one bad canary must not stop guarding the others
                        log.exception("canary guard: evaluation failed")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()

    def _seek(self, consumer: Any, topic: str, partitions: list[int], since: float) -> None:
        """Re-read ``topic`` from the first message at or after ``since`` (broker time) on
        every partition; the canaries already counting skip what they counted (``upto``)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        with self._lock:
            self._rewind = None
        wanted = [TopicPartition(topic, p, max(0, int(since * 1000))) for p in partitions]
        try:
            found = consumer.offsets_for_times(wanted, timeout=10)
        except Exception as e:  # a broker without timestamp look-ups: read it all
            log.warning(
                "canary guard: no offsets by time (%s); reading %s from the start", e, topic
            )
            found = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        for tp in found:
            if tp.offset < 0 and tp.offset != OFFSET_BEGINNING:
                continue  # nothing at or after that time on this partition
            try:
                consumer.seek(tp)
            except Exception as e:  # not yet fetching: assign afresh at that offset
                log.debug(
                    "canary guard: seek %s[%d] failed (%s); re-assigning", topic, tp.partition, e
                )
                with contextlib.suppress(Exception):
                    consumer.incremental_unassign([TopicPartition(topic, tp.partition)])
                    consumer.incremental_assign([tp])
