"""The live control plane without a broker: versions, actions, the SDK's live config and its
cache, the client's assignment from it, and the canary guardrails' judgement."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from feedbackloop.config import Settings
from feedbackloop.control import ExperimentConfig, Guardrail, LiveConfig, Status, apply
from feedbackloop.control.config import decode_config
from feedbackloop.control.guardrails import ArmStats, check_guardrail, judge
from feedbackloop.control.plane import new_experiment
from feedbackloop.errors import ConfigError, SchemaError
from feedbackloop.producers import FeedbackClient, Transport
from feedbackloop.producers.delivery import Counters, DeliveryStats

SESSIONS = [f"s{i}" for i in range(6_000)]


def canary(**kw: object) -> ExperimentConfig:
    args: dict = {
        "changed_by": "alice",
        "reason": "try v2",
        "canary_steps": (0.01, 0.05, 0.25, 0.5),
        "guardrails": (Guardrail(metric="satisfaction", tolerance=0.0),),
        "min_step_s": 0,
        "min_step_samples": 100,
    }
    args.update(kw)
    return new_experiment("app", "prompt", {"v1": 0.5, "v2": 0.5}, **args)  # type: ignore[arg-type]


def test_a_new_canary_serves_its_first_step_and_records_who_and_why() -> None:
    cfg = canary()
    assert cfg.version == 1 and cfg.action == "create" and cfg.changed_by == "alice"
    assert cfg.serving_weights() == {"v1": 0.99, "v2": 0.01}
    assert "step 1/4" in cfg.describe()


def test_each_action_is_a_new_version_and_stopped_states_serve_control_only() -> None:
    v1 = canary()
    v2 = apply(v1, "ramp", changed_by="bob", reason="looks fine", to=0.25)
    assert (v2.version, v2.action, v2.changed_by, v2.serving_weights()["v2"]) == (
        2,
        "ramp",
        "bob",
        0.25,
    )
    v3 = apply(v2, "pause", changed_by="bob")
    assert v3.serving_weights() == {"v1": 1.0, "v2": 0.0}
    v4 = apply(v3, "resume", changed_by="bob")
    assert v4.status is Status.running and v4.serving_weights()["v2"] == 0.25
    v5 = apply(v4, "rollback", changed_by="carol", reason="complaints")
    assert v5.status is Status.rolled_back and v5.serving_weights()["v2"] == 0.0
    with pytest.raises(ConfigError, match="already rolled_back"):
        apply(v5, "stop", changed_by="carol")
    with pytest.raises(ConfigError, match="needs it running"):
        apply(v5, "advance", changed_by="guard")


def test_actions_that_do_not_apply_are_refused_with_a_reason() -> None:
    v1 = canary()
    with pytest.raises(ConfigError, match="not one of its steps"):
        apply(v1, "ramp", changed_by="x", to=0.3)
    with pytest.raises(ConfigError, match="is a canary"):
        apply(v1, "weights", changed_by="x", weights={"v1": 0.5, "v2": 0.5})
    plain = new_experiment("app", "e", {"a": 0.5, "b": 0.5}, changed_by="x")
    with pytest.raises(ConfigError, match="weights must sum to 1"):
        apply(plain, "weights", changed_by="x", weights={"a": 0.5, "b": 0.6})
    with pytest.raises(ConfigError, match="not a canary"):
        apply(plain, "advance", changed_by="x")


def test_ramping_only_moves_sessions_from_control_to_the_treatment() -> None:
    cfg = canary()
    before = {s: cfg.experiment().assign(s) for s in SESSIONS}
    for step in (0.05, 0.25, 0.5):
        cfg = apply(cfg, "ramp", changed_by="x", to=step)
        after = {s: cfg.experiment().assign(s) for s in SESSIONS}
        moved = {(before[s], after[s]) for s in SESSIONS if before[s] != after[s]}
        assert moved == {("v1", "v2")}
        share = sum(v == "v2" for v in after.values()) / len(SESSIONS)
        assert share == pytest.approx(step, abs=0.02)
        before = after
    back = apply(cfg, "rollback", changed_by="x")
    assert {back.experiment().assign(s) for s in SESSIONS} == {"v1"}


def test_a_malformed_or_invalid_message_is_a_schema_error() -> None:
    with pytest.raises(SchemaError) as e:
        decode_config(b"{not json")
    assert e.value.reason == "invalid_config"
    bad = json.loads(canary().model_dump_json())
    bad["variants"] = {"v1": 0.5, "v2": 0.7}
    with pytest.raises(SchemaError, match="sum to 1"):
        decode_config(json.dumps(bad).encode())
    with pytest.raises(SchemaError):
        decode_config(None)


def test_live_config_refuses_a_bad_message_and_keeps_the_last_good_version(
    tmp_path: Path,
) -> None:
    live = LiveConfig("app", cache_path=tmp_path / "c.json")
    v1 = canary()
    assert live.offer(b"app|prompt", v1.model_dump_json().encode())
    assert not live.offer(b"app|prompt", b'{"name": "prompt", "version": 99}')
    assert live.rejected == 1 and live.version("prompt") == 1
    # an older version read again after a restart does not replace a newer one
    v2 = apply(v1, "ramp", changed_by="x", to=0.05)
    live.offer(None, v2.model_dump_json().encode())
    live.offer(None, v1.model_dump_json().encode())
    assert live.version("prompt") == 2
    # a later write of a version held lost its compare-and-set: the first one stays
    rival = apply(v1, "pause", changed_by="bob")
    assert rival.version == 2 and live.offer(None, rival.model_dump_json().encode())
    assert live.configs["prompt"].action == "ramp"
    other = new_experiment("other-app", "prompt", {"a": 0.5, "b": 0.5}, changed_by="x")
    live.offer(None, other.model_dump_json().encode())
    assert live.configs["prompt"].app_id == "app"


def test_a_process_starting_without_the_control_plane_serves_the_cached_config(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "control" / "app.json"
    first = LiveConfig("app", cache_path=cache)
    first.offer(None, apply(canary(), "ramp", changed_by="x", to=0.25).model_dump_json().encode())
    second = LiveConfig("app", cache_path=cache)  # no source: the control plane is away
    assert second.from_cache and second.version("prompt") == 2
    exp = second.experiment("prompt")
    assert exp is not None and exp.variants["v2"] == 0.25
    cache.write_text("{damaged")
    assert LiveConfig("app", cache_path=cache).configs == {}  # ignored, never raised


class _Null:
    """A transport that keeps what it is given."""

    def __init__(self) -> None:
        self.counters = Counters()
        self.sent: list[bytes] = []

    def send_event(self, key: bytes | None, value: bytes) -> bool:
        self.sent.append(value)
        return True

    def send_dead_letter(self, key: bytes | None, value: bytes, headers: object) -> bool:
        return True

    def stats(self) -> DeliveryStats:
        return self.counters.snapshot(0)

    def flush(self, timeout: float) -> int:
        return 0

    def close(self, timeout: float | None = None) -> None:
        pass


def _variants(client: FeedbackClient, transport: _Null, sessions: list[str]) -> dict[str, str]:
    transport.sent.clear()
    for s in sessions:
        client.log_interaction(
            session_id=s, user_input="q", response="a", model="m", experiment="prompt"
        )
    return {json.loads(v)["session_id"]: json.loads(v)["variant"] for v in transport.sent}


def test_the_client_serves_the_live_version_and_rollback_moves_every_session_back(
    tmp_path: Path,
) -> None:
    from feedbackloop.producers.assignment import Experiment

    transport = _Null()
    assert isinstance(transport, Transport)
    live = LiveConfig("app")
    client = FeedbackClient(
        Settings(app_id="app", data_dir=tmp_path),
        transport=transport,
        live_experiments=live,
        experiments=[Experiment("prompt", {"v1": 0.0, "v2": 1.0})],
    )
    sessions = SESSIONS[:2000]
    # before any live version: the code-defined experiment serves
    assert set(_variants(client, transport, sessions).values()) == {"v2"}
    cfg = apply(canary(), "ramp", changed_by="x", to=0.5)
    live.offer(None, cfg.model_dump_json().encode())
    served = _variants(client, transport, sessions)
    assert served == {s: cfg.experiment().assign(s) for s in sessions}
    live.offer(None, apply(cfg, "rollback", changed_by="x").model_dump_json().encode())
    assert set(_variants(client, transport, sessions).values()) == {"v1"}
    assert client.assign_variant("prompt", "s1") == "v1"


def test_a_client_on_its_kafka_transport_follows_live_config_by_default_without_waiting(
    tmp_path: Path,
) -> None:
    """No broker at all (a closed port): the client starts, serves its code-defined
    experiment, and closes; following runs in the background and never raises."""
    from feedbackloop.producers.assignment import Experiment

    dead = Settings(app_id="app", data_dir=tmp_path, bootstrap_servers="127.0.0.1:1")
    code = [Experiment("prompt", {"v1": 0.0, "v2": 1.0})]
    client = FeedbackClient(dead, experiments=code, spool_path=tmp_path / "spool")
    try:
        assert client.live_config is not None  # followed by default
        assert client.live_config.configs == {}
        assert client.assign_variant("prompt", "s1") == "v2"  # code-defined still serves
        iid = client.log_interaction(
            session_id="s1", user_input="q", response="a", model="m", experiment="prompt"
        )
        assert iid is not None
    finally:
        client.close(timeout=0)
    # off when the app or the settings say so, and for a client given its own transport
    off = [
        FeedbackClient(dead, live_experiments=False, spool_path=tmp_path / "s2"),
        FeedbackClient(
            dead.model_copy(update={"live_experiments": False}), spool_path=tmp_path / "s3"
        ),
        FeedbackClient(dead, transport=_Null()),
    ]
    for c in off:
        assert c.live_config is None
        c.close(timeout=0)


def test_a_code_defined_experiment_wins_only_when_the_app_says_so(tmp_path: Path) -> None:
    from feedbackloop.producers.assignment import Experiment

    transport = _Null()
    live = LiveConfig("app")
    live.offer(None, canary().model_dump_json().encode())
    client = FeedbackClient(
        Settings(app_id="app", data_dir=tmp_path),
        transport=transport,
        live_experiments=live,
        experiments=[Experiment("prompt", {"v1": 0.0, "v2": 1.0})],
        local_experiments_win=True,
    )
    assert set(_variants(client, transport, SESSIONS[:200]).values()) == {"v2"}


def _arm(up: int, down: int, per_session: int = 1) -> ArmStats:
    """``up`` and ``down`` thumbs from sessions of ``per_session`` votes each (all of a
    session's votes alike: the most correlated a session can be)."""
    arm = ArmStats()
    for i in range(up // per_session):
        arm.add(f"u{i}", votes=per_session, up=per_session, interactions=per_session)
    for i in range(down // per_session):
        arm.add(f"d{i}", votes=per_session, up=0, interactions=per_session)
    return arm


def test_a_significant_satisfaction_drop_is_a_breach_and_a_small_one_within_tolerance_is_not() -> (
    None
):
    g = Guardrail(metric="satisfaction", tolerance=0.0)
    drop = check_guardrail(g, _arm(7000, 3000), _arm(600, 400), alpha=0.05)
    assert drop.breached and drop.good_diff == pytest.approx(-0.1)
    same = check_guardrail(g, _arm(7000, 3000), _arm(700, 300), alpha=0.05)
    assert not same.breached
    tolerant = Guardrail(metric="satisfaction", tolerance=0.15)
    assert not check_guardrail(tolerant, _arm(7000, 3000), _arm(600, 400), alpha=0.05).breached
    better = check_guardrail(g, _arm(6000, 4000), _arm(800, 200), alpha=0.05)
    assert not better.breached  # a significant improvement is no breach


def test_votes_of_one_session_count_as_one_unit_so_chatty_sessions_do_not_fake_a_breach() -> None:
    g = Guardrail(metric="satisfaction", tolerance=0.0)
    # the same 10-point drop on 1,000 votes: from 1,000 sessions it is significant, from 20
    # chatty sessions of 50 votes each it is 20 units and proves nothing
    assert check_guardrail(g, _arm(7000, 3000), _arm(600, 400), alpha=0.05).breached
    chatty = check_guardrail(g, _arm(7000, 3000), _arm(600, 400, per_session=50), alpha=0.05)
    assert not chatty.breached and "too few sessions" in chatty.note
    few = check_guardrail(g, _arm(7000, 3000), _arm(1200, 800, per_session=50), alpha=0.05)
    assert few.n_treatment == 40 and not few.breached and few.p_value > 0.05


def test_the_running_sums_equal_the_ratio_statistics_of_the_sessions_totals() -> None:
    import random

    from feedbackloop.analysis.statistics.sufficient import RatioStats

    rng = random.Random(3)
    arm = ArmStats()
    totals: dict[str, list[float]] = {}
    for i in range(5000):
        sid = f"s{rng.randrange(300)}"
        lat, cost = rng.uniform(100, 3000), rng.choice([0.0011, 0.0011, 0.004])
        arm.add(
            sid, float(i), interactions=1, latency_n=1, latency_sum=lat, cost_n=1, cost_sum=cost
        )
        t = totals.setdefault(sid, [0.0, 0.0, 0.0])
        t[0], t[1], t[2] = t[0] + 1, t[1] + lat, t[2] + cost
        if i == 2500:
            arm.close_idle(2000.0)  # closed sessions keep their share; later events: new units
            for s in list(totals):
                if s not in arm.rows:
                    totals[f"closed-{s}"] = totals.pop(s)
    for metric, col in (("latency_ms", 1), ("cost_usd", 2)):
        ys = [t[col] for t in totals.values()]
        ds = [t[0] for t in totals.values()]
        want = RatioStats(
            len(ys),
            sum(ys),
            sum(ds),
            sum(y * y for y in ys),
            sum(d * d for d in ds),
            sum(y * d for y, d in zip(ys, ds, strict=True)),
        )
        for got in (arm.metric(metric), (arm.rebuild(), arm.metric(metric))[1]):
            assert got.n == want.n and got.ratio == pytest.approx(want.ratio, rel=1e-12)
            assert got.variance == pytest.approx(want.variance, rel=1e-9)


def _calls(n: int, latency: float, cost: float, error_every: int = 0) -> ArmStats:
    """``n`` sessions of 3 interactions with noisy latency and cost; every
    ``error_every``-th interaction failed."""
    import random

    rng = random.Random(n + int(latency))
    arm = ArmStats()
    k = 0
    for s in range(n):
        for _ in range(3):
            k += 1
            err = 1.0 if error_every and k % error_every == 0 else 0.0
            arm.add(
                f"s{s}",
                interactions=1,
                latency_n=1,
                latency_sum=rng.gauss(latency, 200),
                cost_n=1,
                cost_sum=max(0.0, rng.gauss(cost, cost / 4)),
                errors=err,
            )
    return arm


def test_latency_cost_and_errors_are_breaches_when_they_go_up_beyond_their_tolerance() -> None:
    base = _calls(3000, 800, 0.0010, error_every=50)
    slow = _calls(600, 900, 0.0010, error_every=50)
    pricey = _calls(600, 800, 0.0016, error_every=50)
    failing = _calls(600, 800, 0.0010, error_every=10)
    fine = _calls(600, 800, 0.0010, error_every=50)
    lat, cost, err = (
        Guardrail(metric="latency_ms", tolerance=10.0),
        Guardrail(metric="cost_usd", tolerance=0.0002),
        Guardrail(metric="error", tolerance=0.01),
    )
    assert check_guardrail(lat, base, slow, 0.05).breached
    assert check_guardrail(cost, base, pricey, 0.05).breached
    assert check_guardrail(err, base, failing, 0.05).breached
    for g in (lat, cost, err):
        assert not check_guardrail(g, base, fine, 0.05).breached
        assert not check_guardrail(g, slow if g is not lat else base, base, 0.05).breached
    # within its tolerance, a real but small rise in cost is no breach
    assert not check_guardrail(
        Guardrail(metric="cost_usd", tolerance=0.001), base, pricey, 0.05
    ).breached


def test_a_cost_that_never_varies_reads_as_not_varying_rather_than_a_verdict() -> None:
    const = ArmStats()
    for s in range(100):
        const.add(f"s{s}", interactions=2, cost_n=2, cost_sum=0.0022)
    check = check_guardrail(Guardrail(metric="cost_usd"), const, const, 0.05)
    assert not check.breached and check.note == "the metric does not vary between sessions"


def test_the_judge_holds_until_the_step_ran_long_enough_with_enough_samples_then_advances() -> None:
    cfg = canary(min_step_s=60, min_step_samples=100)
    assert cfg.canary is not None
    start = cfg.canary.step_started_at
    fine = (_arm(7000, 3000), _arm(70, 30))
    early = judge(cfg, fine, fine[1], start + dt.timedelta(seconds=30))
    assert early.action is None and "ran 30 of 60" in early.reason
    few = judge(cfg, fine, _arm(50, 20), start + dt.timedelta(seconds=90))
    assert few.action is None and "fewer than 100 treatment sessions" in few.reason
    assert judge(cfg, fine, fine[1], start + dt.timedelta(seconds=90)).action == "advance"
    bad = (_arm(7000, 3000), _arm(600, 400))
    verdict = judge(cfg, bad, bad[1], start + dt.timedelta(seconds=1))
    assert verdict.action == "rollback" and "satisfaction BREACHED" in verdict.reason
    last = apply(cfg, "ramp", changed_by="x", to=0.5)
    assert judge(last, fine, fine[1], start + dt.timedelta(hours=1)).action is None
