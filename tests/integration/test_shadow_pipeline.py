"""Shadow deployments through the real pipeline: SDK -> broker -> stream jobs -> sink (enriched
topic) -> ClickHouse -> shadow report.

Three planted candidates shadow the same live traffic (an experiment with two variants):

* ``cand-copy`` answers what the users later wrote as their correction (an oracle);
* ``cand-twin`` answers exactly what the live model answered;
* ``cand-slice`` is the oracle on prose inputs but answers nonsense on inputs with code.

A quarter of the corrections arrive in a second wave, after the shadow answers are stored
(late feedback), and some shadow answers are sent before their live interaction (the stream
jobs hold them, then join). The report must find what was planted, and the live experiment's
numbers must be exactly those of the live events sent, whatever the shadows did.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("faust")

from sink_helpers import running_worker, settings_for  # noqa: E402

from feedbackloop.analysis.reads import Scope, fetch_experiment, settings_runner  # noqa: E402
from feedbackloop.analysis.reads.shadow import (  # noqa: E402
    ShadowScope,
    fetch_shadow_candidates,
    fetch_shadow_pairs,
    fetch_shadow_totals,
)
from feedbackloop.analysis.reports.shadow import build_shadow_report  # noqa: E402
from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.producers import Experiment, FeedbackClient  # noqa: E402
from feedbackloop.schemas import SHADOW_OF, EnrichedEvent, Topics  # noqa: E402
from feedbackloop.sinks import SinkConfig, run_query  # noqa: E402
from feedbackloop.stream_jobs import StreamConfig, StreamJobs  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EXP = Experiment("shadow-exp", {"control": 0.5, "treatment": 0.5})
FAST = dict(window_s=10.0, allowed_lateness_s=2.0, grace_s=5.0, tick_s=0.25, idle_close_s=1.0)
N_SESSIONS = 110

PROSE_INPUT = "How do I reset my password for account {k}?"
CODE_INPUT = "Why does this fail?\n```python\nfor i in range(len(xs)): xs.remove(xs[i])\n```"
ANSWERS = {
    # kind -> (good live answer, bad live answer, the correction users write)
    "prose": (
        "Open Settings, then Security, and choose Reset password.",
        "You can try restarting the application and clearing the cache.",
        "Open Settings, then Security, and choose Reset password to reset it.",
    ),
    "code": (
        "Build a new list: xs = [x for x in xs if keep(x)] instead of removing in the loop.",
        "Try calling xs.clear() before the loop starts.",
        "Build a new list with a comprehension: xs = [x for x in xs if keep(x)].",
    ),
}
NONSENSE = "Entschuldigung, dazu kann ich leider nichts sagen."


@dataclass
class Sent:
    """Ground truth of the live experiment, from the live events sent."""

    sessions: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    interactions: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    rated: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    positive: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    corrected: int = 0
    #: Live answers users rejected (thumbs down or a report).
    rejected: int = 0
    events: int = 0
    #: Live interactions whose shadow answers were sent before them.
    early: set[str] = field(default_factory=set)


@dataclass
class Data:
    settings: Settings
    sent: Sent


def _shadow_answers(kind: str, corrected: bool, live_answer: str) -> dict[str, str]:
    correction = ANSWERS[kind][2]
    oracle = correction if corrected else live_answer
    return {
        "cand-copy": oracle,
        "cand-twin": live_answer,
        "cand-slice": NONSENSE if kind == "code" else oracle,
    }


def _traffic(client: FeedbackClient, sent: Sent, seed: int = 17) -> list[tuple[uuid.UUID, str]]:
    """Live sessions with their feedback and the three candidates' shadows; returns the
    corrections held back for the second wave."""
    rng = random.Random(seed)
    base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=30)
    later: list[tuple[uuid.UUID, str]] = []
    for s in range(N_SESSIONS):
        sid = f"shadow-s{s}"
        variant = client.assign_variant(EXP.name, sid)
        sent.sessions[variant].add(sid)
        for k in range(3):
            t = base + dt.timedelta(seconds=10 * s + k)
            kind = "code" if rng.random() < 0.3 else "prose"
            bad = rng.random() < 0.5
            corrected = bad and rng.random() < 0.6
            answer = ANSWERS[kind][1] if bad else ANSWERS[kind][0]
            iid = uuid.uuid4()
            shadows = _shadow_answers(kind, corrected, answer)
            early = s % 10 == 0 and k == 0  # the shadow answers before their live one
            if early:
                sent.early.add(str(iid))
                for cand, text in shadows.items():
                    client.shadow(
                        iid,
                        response=text,
                        model="m2",
                        prompt_version=cand,
                        session_id=sid,
                        latency_ms=90.0,
                        input_tokens=40,
                        output_tokens=60,
                        cost_usd=0.001,
                        occurred_at=t,
                    )
            client.log_interaction(
                session_id=sid,
                interaction_id=iid,
                user_input=CODE_INPUT if kind == "code" else PROSE_INPUT.format(k=s),
                response=answer,
                model="m1",
                prompt_version="v1",
                experiment=EXP.name,
                variant=variant,
                latency_ms=120.0 + k,
                input_tokens=40,
                output_tokens=80,
                cost_usd=0.002,
                occurred_at=t,
            )
            sent.interactions[variant] += 1
            if not early:
                for cand, text in shadows.items():
                    client.shadow(
                        iid,
                        response=text,
                        model="m2",
                        prompt_version=cand,
                        latency_ms=90.0 + rng.random() * 10,
                        input_tokens=40,
                        output_tokens=60,
                        cost_usd=0.001,
                        occurred_at=t + dt.timedelta(milliseconds=500),
                    )
            fb_t = t + dt.timedelta(seconds=2)
            if bad and not corrected and rng.random() < 0.3:
                # rejected by a report alone: no thumbs, no rating
                client.report(iid, "incorrect", occurred_at=fb_t)
                sent.rejected += 1
            elif bad:
                client.thumbs(iid, False, occurred_at=fb_t)
                sent.rated[variant] += 1
                sent.rejected += 1
                if corrected:
                    sent.corrected += 1
                    if rng.random() < 0.25:
                        later.append((iid, ANSWERS[kind][2]))
                    else:
                        client.correct(iid, ANSWERS[kind][2], occurred_at=fb_t)
                elif rng.random() < 0.5:
                    client.implicit(iid, "regenerate", occurred_at=fb_t)
            else:
                if rng.random() < 0.7:
                    client.thumbs(iid, True, occurred_at=fb_t)
                    sent.rated[variant] += 1
                    sent.positive[variant] += 1
                else:
                    client.implicit(iid, "copy", copied_chars=30, occurred_at=fb_t)
    # The worst a misbehaving app can do: a shadow answer logged inside the experiment, and
    # a thumbs up given to the shadow answer itself.
    sid = "shadow-s0"
    live_iid = uuid.uuid4()
    rogue = client.log_interaction(
        session_id=sid,
        user_input="q",
        response="rogue",
        model="m2",
        prompt_version="rogue",
        experiment=EXP.name,
        variant="treatment",
        latency_ms=9_999.0,
        shadow=True,
        metadata={SHADOW_OF: str(live_iid)},
    )
    client.thumbs(rogue, True)
    return later


def _stored(settings: Settings) -> int:
    db = settings.clickhouse_database
    sql = " + ".join(
        f"(SELECT count() FROM {db}.{t} FINAL)" for t in ("interactions", "feedback", "implicit")
    )
    return int(run_query(settings, f"SELECT {sql}").rows[0][0])


@pytest.fixture(scope="module")
def data(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Data]:
    prefix, db = f"sh{uuid.uuid4().hex[:8]}.", f"flshadow_{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("shadow")
    settings = settings_for(kafka_bootstrap, clickhouse_dsn, db, prefix, tmp)
    settings = settings.model_copy(update={"producer_linger_ms": 5.0})
    sent = Sent()
    counted: list[int] = []

    def tap(event: Any, payload: bytes) -> None:
        counted.append(1)

    cfg = SinkConfig(group_id=f"g-{uuid.uuid4().hex[:6]}", max_age_s=0.2)
    with running_worker(settings, cfg):

        async def main() -> None:
            jobs = StreamJobs(settings, StreamConfig(**FAST), data_dir=tmp / "faust")
            async with jobs.running():
                await jobs.wait_assigned()
                client = FeedbackClient(
                    settings, experiments=[EXP], spool_path=tmp / "spool.sqlite3", on_event=tap
                )
                later = _traffic(client, sent)
                assert client.flush(30) == 0
                first_wave = len(counted)
                await _until(lambda: _stored(settings) >= first_wave, "the first wave stored")
                for iid, text in later:  # late feedback: after the shadow answers landed
                    client.correct(iid, text)
                client.close()
                sent.events = len(counted)
                await _until(lambda: _stored(settings) >= sent.events, "the late corrections")

        asyncio.run(main())
        yield Data(settings, sent)


async def _until(pred: Any, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        ok = await asyncio.get_running_loop().run_in_executor(None, pred)
        if ok:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


def _report(data: Data, candidate: str, **kw: Any):
    runner = settings_runner(data.settings)
    scope = ShadowScope(candidate=candidate, **kw)
    pairs = fetch_shadow_pairs(runner, scope)
    totals = fetch_shadow_totals(runner, scope)
    return pairs, build_shadow_report(
        pairs, scope, shadows=totals["shadows"], linked=totals["linked"]
    )


def test_a_candidate_copying_the_users_corrections_wins_on_corrected_interactions(
    data: Data,
) -> None:
    pairs, rep = _report(data, "cand-copy")
    live = sum(data.sent.interactions.values())
    assert rep.pairs == len(pairs) == live  # early ones joined too
    # every correction counts, the late wave included
    assert rep.corrected.n == data.sent.corrected
    r = rep.corrected.result
    assert r.counts.losses == 0
    assert r.net.lower > 0 and r.win_rate > 0.9
    assert rep.recommendation == "promote to canary", rep.reason
    assert rep.accepted.n > 0 and rep.accepted.departs.value == 0.0


def test_a_candidate_equal_to_live_comes_out_even(data: Data) -> None:
    _, rep = _report(data, "cand-twin")
    r = rep.corrected.result
    assert r.counts.ties == r.n == data.sent.corrected
    assert r.net.value == 0.0 and r.net.lower < 0 < r.net.upper
    assert rep.judged.net.lower < 0 < rep.judged.net.upper
    assert rep.recommendation == "no difference shown", rep.reason
    assert rep.rejected.n == data.sent.rejected and rep.rejected.differs.value == 0.0
    assert rep.loses_most == () or not any(s.significant for s in rep.loses_most)


def test_a_planted_slice_level_loss_is_found(data: Data) -> None:
    _, rep = _report(data, "cand-slice")
    worst = rep.loses_most[0]
    assert worst.slice == "has_code=yes" and worst.significant and worst.result.net.upper < 0
    assert rep.recommendation == "hold" and "has_code=yes" in rep.reason
    assert any(s.slice == "has_code=no" for s in rep.wins_most)


def test_cost_deltas_are_paired_and_the_candidates_are_listed(data: Data) -> None:
    _, rep = _report(data, "cand-copy")
    lat = {d.metric: d for d in rep.deltas}
    # live 120-122 ms, shadow 90-100 ms: about 25 ms faster, an interval around it
    assert -32 < lat["latency_ms"].difference.lower < lat["latency_ms"].difference.upper < -18
    assert lat["tokens"].difference.value == pytest.approx(-20.0)
    assert lat["cost_usd"].difference.value == pytest.approx(-0.001)
    names = {c.candidate: c for c in fetch_shadow_candidates(settings_runner(data.settings))}
    assert {"cand-copy", "cand-twin", "cand-slice", "rogue"} <= set(names)
    assert names["cand-copy"].linked == names["cand-copy"].shadows


def test_against_a_live_version_that_did_not_run_pairs_nothing(data: Data) -> None:
    _, rep = _report(data, "cand-copy", against="v-never")
    assert rep.pairs == 0 and rep.recommendation == "keep shadowing"
    assert any("outside --against" in n for n in rep.notes)


def test_shadow_interactions_never_change_the_live_experiments_numbers(data: Data) -> None:
    stats = fetch_experiment(settings_runner(data.settings), Scope(experiment=EXP.name))
    sent = data.sent
    assert set(stats.variants) == set(sent.interactions)
    for name, v in stats.variants.items():
        assert v.sessions == len(sent.sessions[name])
        assert v.interactions == sent.interactions[name]
        assert (v.rated.n, v.rated.successes) == (sent.rated[name], sent.positive[name])
        # latencies are the live ones (120-122 ms); the rogue shadow's 9,999 ms is not there
        assert max(v.latency_quantiles) < 123
    # the shadow rows are stored, just never counted
    db = data.settings.clickhouse_database
    shadows = run_query(
        data.settings, f"SELECT count() FROM {db}.interactions FINAL WHERE shadow"
    ).rows[0][0]
    assert int(shadows) == 3 * sum(sent.interactions.values()) + 1
    # the report JSON is plain data
    _, rep = _report(data, "cand-copy")
    assert json.loads(json.dumps(rep.to_dict()))["candidate"] == "cand-copy"


def _enriched_shadows(settings: Settings) -> list[EnrichedEvent]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": settings.bootstrap_servers,
            "group.id": "unused",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    topic = Topics(settings.topic_prefix).enriched
    c.assign([TopicPartition(topic, p, 0) for p in range(settings.topic_partitions)])
    out, idle = [], time.monotonic()
    try:
        while time.monotonic() - idle < 3.0:
            m = c.poll(0.2)
            if m is None or m.error() is not None:
                continue
            idle = time.monotonic()
            e = EnrichedEvent.model_validate_json(m.value())
            if e.event.event_type == "interaction" and e.event.shadow:  # type: ignore[union-attr]
                out.append(e)
    finally:
        c.close()
    return out


def test_the_stream_jobs_join_each_shadow_answer_to_its_live_answer(data: Data) -> None:
    shadows = _enriched_shadows(data.settings)
    live = sum(data.sent.interactions.values())
    joined = [e for e in shadows if e.context is not None]
    assert len({e.event.event_id for e in joined}) == 3 * live
    for e in joined:
        assert e.context is not None and not e.context.shadow and e.context.model == "m1"
        assert str(e.context.interaction_id) == e.event.metadata[SHADOW_OF]  # type: ignore[union-attr]
    # the shadows sent before their live interaction (earlier offsets of the same partition)
    # were held until it came, then joined
    early = [e for e in joined if e.event.metadata[SHADOW_OF] in data.sent.early]  # type: ignore[union-attr]
    assert len(early) == 3 * len(data.sent.early) > 0
    # the rogue one names a live interaction that never came: orphaned, still delivered
    orphans = [e for e in shadows if e.orphaned]
    assert [e.event.prompt_version for e in orphans] == ["rogue"]  # type: ignore[union-attr]


def test_the_shadow_commands_print_the_report_and_promote_only_a_recommended_candidate(
    data: Data, artifacts_dir: Path
) -> None:
    from click.testing import CliRunner

    from feedbackloop.cli import cli

    s = data.settings
    env = {
        "FEEDBACKLOOP_CLICKHOUSE_URL": s.clickhouse_url or "",
        "FEEDBACKLOOP_CLICKHOUSE_DATABASE": s.clickhouse_database,
        "FEEDBACKLOOP_DATA_DIR": str(s.data_dir),  # where the running sink advertises itself
    }
    runner = CliRunner()
    for cand in ("cand-copy", "cand-twin", "cand-slice"):
        res = runner.invoke(cli, ["shadow", "report", "--candidate", cand], env=env)
        assert res.exit_code == 0, res.output
        (artifacts_dir / f"shadow_report_{cand}.txt").write_text(res.output)
    assert "Recommendation: hold (loses on has_code=yes" in res.output
    res = runner.invoke(cli, ["shadow", "report", "--candidate", "cand-copy", "--json"], env=env)
    assert json.loads(res.output)["recommendation"] == "promote to canary"
    # --promote acts only on "promote to canary", and then through the live control plane
    env["FEEDBACKLOOP_BOOTSTRAP_SERVERS"] = s.bootstrap_servers or ""
    env["FEEDBACKLOOP_TOPIC_PREFIX"] = s.topic_prefix
    promote = ["shadow", "report", "--promote", "--candidate"]
    res = runner.invoke(cli, [*promote, "cand-slice"], env=env)
    assert res.exit_code == 1 and "error: not promoted: the recommendation is 'hold'" in res.output
    res = runner.invoke(cli, [*promote, "cand-copy"], env=env)
    assert res.exit_code == 0, res.output
    assert "canary 'canary-cand-copy' created" in res.output
    from feedbackloop.control import ControlPlane

    (live,) = [c for c in ControlPlane(s).current().values() if c.name == "canary-cand-copy"]
    assert live.canary is not None and live.canary.treatment == "cand-copy"
    assert live.serving_weights() == {"live": 0.99, "cand-copy": 0.01}
    assert live.reason.startswith("promoted from shadow: closer to users' corrections")
    res = runner.invoke(
        cli, ["shadow", "report", "--candidate", "cand-copy", "--since", "1d", "--json"], env=env
    )
    assert json.loads(res.output)["pairs"] == sum(data.sent.interactions.values())
    # a hostile name is a literal, not SQL: no pairs, no error
    res = runner.invoke(cli, ["shadow", "report", "--candidate", "x' OR '1'='1"], env=env)
    assert res.exit_code == 0 and "0 paired" in res.output, res.output
    res = runner.invoke(cli, ["shadow", "list"], env=env)
    assert (
        res.exit_code == 0 and "cand-slice" in res.output and "without shadow_of" not in res.output
    )
