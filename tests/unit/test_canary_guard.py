"""The canary guard's bookkeeping without a broker: it counts each enriched event once per
session, acts once per version, yields to another writer's change, and forgets finished
canaries' sessions."""

from __future__ import annotations

import datetime as dt

from feedbackloop.config import Settings
from feedbackloop.control import ExperimentConfig, Guardrail, Status, apply, new_experiment
from feedbackloop.errors import VersionConflict
from feedbackloop.schemas import Alert, EnrichedEvent, Feedback, Interaction, RequestContext
from feedbackloop.stream_jobs.canary import CanaryGuard


class _Plane:
    def __init__(self) -> None:
        self.published: list[ExperimentConfig] = []
        self.other: list[tuple[str, bytes]] = []
        self.rival: ExperimentConfig | None = None

    def commit(self, cfg: ExperimentConfig, expected: int | None = None) -> None:
        if self.rival is not None and self.rival.version >= cfg.version:
            raise VersionConflict("another change came first", current=self.rival.version)
        self.published.append(cfg)

    def publish_to(self, topic: str, key: bytes, value: bytes) -> None:
        self.other.append((topic, value))


def _guard() -> tuple[CanaryGuard, _Plane]:
    guard = CanaryGuard(Settings(bootstrap_servers="127.0.0.1:1", app_id="shop"))
    plane = _Plane()
    guard.plane = plane  # type: ignore[assignment]
    return guard, plane


class _Feed:
    """Enriched events as the stream jobs write them, at increasing offsets."""

    def __init__(self, guard: CanaryGuard) -> None:
        self.guard = guard
        self.offset = 0

    def send(self, value: bytes, partition: int = 0, offset: int | None = None) -> None:
        if offset is None:
            self.offset += 1
            offset = self.offset
        self.guard.on_enriched(value, partition, offset)

    def session(
        self,
        sid: str,
        variant: str,
        ups: int,
        downs: int,
        at: dt.datetime,
        experiment: str = "prompt",
        **interaction: object,
    ) -> list[bytes]:
        """One interaction per vote, each with its thumbs; returns what was sent."""
        sent = []
        for i in range(ups + downs):
            ia = Interaction(
                app_id="shop",
                session_id=sid,
                user_input="q",
                response="a",
                model="m",
                experiment=experiment,
                variant=variant,
                occurred_at=at,
                **interaction,  # type: ignore[arg-type]
            )
            fb = Feedback(
                app_id="shop",
                session_id=sid,
                interaction_id=ia.interaction_id,
                kind="thumbs",
                thumbs=1 if i < ups else -1,
                occurred_at=at,
            )
            ctx = RequestContext(
                interaction_id=ia.interaction_id,
                interaction_occurred_at=at,
                model="m",
                experiment=experiment,
                variant=variant,
                user_input="q",
                response="a",
            )
            for value in (
                EnrichedEvent(event=ia, source_partition=0, source_offset=0),
                EnrichedEvent(event=fb, context=ctx, source_partition=0, source_offset=1),
            ):
                raw = value.model_dump_json().encode()
                self.send(raw)
                sent.append(raw)
        return sent


def _canary(**kw: object) -> ExperimentConfig:
    args: dict = dict(
        changed_by="alice",
        canary_steps=(0.05, 0.5),
        guardrails=(Guardrail(metric="satisfaction"),),
        min_step_s=3600,
    )
    args.update(kw)
    return new_experiment("shop", "prompt", {"v1": 0.5, "v2": 0.5}, **args)  # type: ignore[arg-type]


def test_the_guard_rolls_back_once_and_forgets_the_canary_afterwards() -> None:
    guard, plane = _guard()
    v1 = _canary()
    guard.on_control(v1.model_dump_json().encode())
    feed = _Feed(guard)
    t = dt.datetime.now(dt.timezone.utc)
    for i in range(700):
        feed.session(f"c{i}", "v1", 1, 0, t)
    for i in range(300):
        feed.session(f"cd{i}", "v1", 0, 1, t)
    for i in range(50):
        feed.session(f"t{i}", "v2", 1, 0, t)
    for i in range(50):
        feed.session(f"td{i}", "v2", 0, 1, t)
    guard.on_enriched(b"{not an event", 0, 10**6)  # ignored (the sink dead-letters it)
    actions = guard.evaluate()
    assert [(a.action, a.version) for a in actions] == [("rollback", 2)]
    assert "treatment 0.5 (100 sessions)" in actions[0].reason
    assert guard.evaluate() == []  # waits for its own change to come back
    assert len(plane.published) == 1 and plane.published[0].status is Status.rolled_back
    # the alert, on the alerts topic, readable by the sink's Alert model
    ((topic, value),) = plane.other
    alert = Alert.model_validate_json(value)
    assert topic == guard.topics.alerts and alert.alert_type == "canary_rollback"
    assert (alert.experiment, alert.variant, alert.recent_n) == ("prompt", "v2", 100)
    guard.on_control(plane.published[0].model_dump_json().encode())
    guard.evaluate()
    assert guard.tracked == {}  # a finished canary's sessions are forgotten
    feed.session("late", "v2", 1, 1, t)
    assert guard.tracked == {}


def test_each_event_counts_once_whether_re_read_or_resent() -> None:
    guard, _plane = _guard()
    guard.on_control(_canary().model_dump_json().encode())
    feed = _Feed(guard)
    t = dt.datetime.now(dt.timezone.utc)
    sent = feed.session("s1", "v2", 2, 1, t)
    tr = guard.tracked["shop|prompt"]
    before = tr.treatment.rows["s1"][:]
    for off, raw in enumerate(sent, start=1):
        feed.send(raw, offset=off)  # the guard re-reading the topic (a new canary appeared)
    for raw in sent:
        feed.send(raw)  # the same events again at new offsets (SDK resend, replay)
    assert tr.treatment.rows["s1"] == before and guard.duplicates == 2 * len(sent)
    s = tr.treatment.metric("satisfaction")
    assert (s.n, s.sum_num, s.sum_den) == (1, 2.0, 3.0)


def test_events_from_before_the_canary_started_or_of_other_variants_are_left_out() -> None:
    guard, _plane = _guard()
    v1 = _canary()
    guard.on_control(v1.model_dump_json().encode())
    assert v1.canary is not None
    feed = _Feed(guard)
    feed.session("old", "v2", 1, 0, v1.canary.started_at - dt.timedelta(seconds=5))
    feed.session("other", "v9", 1, 0, dt.datetime.now(dt.timezone.utc))
    feed.session("elsewhere", "v2", 1, 0, dt.datetime.now(dt.timezone.utc), experiment="x")
    tr = guard.tracked["shop|prompt"]
    assert tr.control.rows == {} and tr.treatment.rows == {}


def test_a_planted_cost_and_error_regression_rolls_the_canary_back() -> None:
    guard, plane = _guard()
    rails = (
        Guardrail(metric="cost_usd", tolerance=0.0002),
        Guardrail(metric="error", tolerance=0.01),
    )
    guard.on_control(_canary(guardrails=rails).model_dump_json().encode())
    feed = _Feed(guard)
    t = dt.datetime.now(dt.timezone.utc)
    for i in range(400):
        feed.session(f"c{i}", "v1", 1, 0, t, cost_usd=0.001 + (i % 7) * 1e-5)
    for i in range(200):
        meta = {"error": "timeout"} if i % 5 == 0 else {}
        feed.session(f"t{i}", "v2", 1, 0, t, cost_usd=0.0016 + (i % 7) * 1e-5, metadata=meta)
    (action,) = guard.evaluate()
    assert action.action == "rollback"
    assert "cost_usd BREACHED" in action.reason and "error BREACHED" in action.reason
    assert plane.published[0].status is Status.rolled_back


def test_when_another_writer_changed_the_canary_first_the_guard_judges_the_newer_version() -> None:
    guard, plane = _guard()
    v1 = _canary(min_step_s=0, min_step_samples=1)
    guard.on_control(v1.model_dump_json().encode())
    feed = _Feed(guard)
    t = dt.datetime.now(dt.timezone.utc)
    for i in range(40):
        feed.session(f"c{i}", "v1", 1, 1, t)
        feed.session(f"t{i}", "v2", 1, 1, t)
    # an operator paused it; the guard has not read that yet and its advance loses
    paused = apply(v1, "pause", changed_by="bob", reason="looking")
    plane.rival = paused
    assert guard.evaluate() == [] and guard.conflicts == 1 and plane.published == []
    assert guard.evaluate() == []  # it does not retry on the stale version
    guard.on_control(paused.model_dump_json().encode())
    assert guard.evaluate() == []  # paused: nothing to do
    resumed = apply(paused, "resume", changed_by="bob", reason="ok")
    plane.rival = None
    guard.on_control(resumed.model_dump_json().encode())
    assert guard.evaluate() == []  # the step's clock and sample restarted on resume
    feed.session("t-after", "v2", 1, 0, dt.datetime.now(dt.timezone.utc))
    (action,) = guard.evaluate()
    assert (action.action, action.version) == ("advance", 4)


def test_a_malformed_control_message_leaves_the_guard_on_the_last_good_version() -> None:
    guard, _plane = _guard()
    v1 = _canary()
    guard.on_control(v1.model_dump_json().encode())
    guard.on_control(b'{"name": "prompt"}')
    guard.on_control(None)
    assert guard.rejected == 2 and guard.configs[v1.key].version == 1
