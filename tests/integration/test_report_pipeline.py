"""Experiment reports end to end: SDK -> broker -> SinkWorker -> ClickHouse -> report / CLI.

Two simulated experiments go through the real pipeline: one correctly assigned with a planted
satisfaction effect (and faster outcomes in treatment), one whose treatment lost a third of
its sessions (a broken assignment). Half the feedback of the first also arrives as enriched
copies, so the queries are exercised on raw rows, enriched rows and their deduplication at
once. Every number the report and impact commands print is checked against values computed
here in Python from the exact events the SDK sent (captured with its ``on_event`` tap).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from sink_helpers import enrich, produce, running_worker, settings_for, wait_until

from feedbackloop.analysis.reads import (
    Scope,
    fetch_experiment,
    fetch_impact,
    fetch_version_totals,
    fetch_versions,
    parse_since,
    settings_runner,
)
from feedbackloop.analysis.reports.impact import build_impact
from feedbackloop.analysis.reports.report import build_report
from feedbackloop.analysis.statistics.decision import Verdict
from feedbackloop.cli import cli
from feedbackloop.producers import Experiment, FeedbackClient
from feedbackloop.schemas import Envelope, Feedback, Implicit, Interaction, Outcome, Topics
from feedbackloop.sinks import SinkConfig
from feedbackloop.sinks.query import discovery_path

pytestmark = pytest.mark.integration

GOOD, BROKEN = "exp-good", "exp-broken"
SATISFACTION = {"control": 0.50, "treatment": 0.70}
# Mean per-session time to ticket resolution: treatment saves ~30 s per session.
TICKET_MS = {"control": 90_000.0, "treatment": 60_000.0}


def simulate(
    client: FeedbackClient, exp: Experiment, sessions: int, seed: int, drop_treatment: float = 0.0
) -> None:
    """Sessions of 1-4 interactions with thumbs, ratings, implicit signals and outcomes.

    ``drop_treatment`` loses that share of treatment sessions before they are logged: the
    signature of a broken assignment or logging path that the SRM check must catch.
    """
    rng = random.Random(seed)
    base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    for s in range(sessions):
        sid = f"{exp.name}-s{s}"
        v = exp.assign(sid)
        if v == "treatment" and rng.random() < drop_treatment:
            continue
        t = base + dt.timedelta(seconds=s)
        # A per-session mood makes interactions within a session correlated, as in real use.
        p = min(1.0, max(0.0, SATISFACTION[v] + rng.gauss(0.0, 0.1)))
        for k in range(rng.randint(1, 4)):
            ti = t + dt.timedelta(milliseconds=100 * k)
            iid = client.log_interaction(
                session_id=sid,
                user_input=f"q{s}-{k}",
                response=f"r{s}-{k}",
                model="m1",
                prompt_version="v1" if s % 3 else "v2",
                experiment=exp.name,
                variant=v,
                latency_ms=rng.uniform(200, 400) * (0.9 if v == "treatment" else 1.0),
                cost_usd=round(rng.uniform(0.001, 0.003), 6),
                occurred_at=ti,
            )
            if rng.random() < 0.8:
                client.thumbs(iid, rng.random() < p, occurred_at=ti + dt.timedelta(seconds=1))
            if rng.random() < 0.3:
                # Later than the thumbs: when both exist, the rating is the user's last word.
                rating = rng.randint(4, 5) if rng.random() < p else rng.randint(1, 3)
                client.rate(iid, rating, occurred_at=ti + dt.timedelta(seconds=2))
            if rng.random() < (0.3 if v == "treatment" else 0.2):
                client.implicit(
                    iid, "copy", copied_chars=10, occurred_at=ti + dt.timedelta(seconds=3)
                )
            if rng.random() < 0.1:
                client.implicit(iid, "regenerate", occurred_at=ti + dt.timedelta(seconds=3))
            if rng.random() < 0.4:
                accepted = rng.random() < (0.6 if v == "treatment" else 0.5)
                client.outcome(
                    "code_accepted",
                    interaction_id=iid,
                    time_to_outcome_ms=rng.expovariate(1 / 20_000),
                    occurred_at=ti + dt.timedelta(seconds=4),
                )
                if not accepted:  # accepted, then deleted: not kept
                    client.outcome(
                        "code_rejected",
                        interaction_id=iid,
                        time_to_outcome_ms=rng.expovariate(1 / 30_000),
                        occurred_at=ti + dt.timedelta(seconds=5),
                    )
            if rng.random() < 0.2:
                client.outcome(
                    "original_opened", interaction_id=iid, occurred_at=ti + dt.timedelta(seconds=4)
                )
        if rng.random() < 0.6:  # a session-level outcome: no interaction_id
            name = "ticket_resolved" if rng.random() < 0.8 else "ticket_escalated"
            client.outcome(
                name,
                session_id=sid,
                time_to_outcome_ms=rng.expovariate(1 / TICKET_MS[v]),
                occurred_at=t + dt.timedelta(seconds=30),
            )


# --- ground truth, computed from the captured events -----------------------------------------


class Truth:
    def __init__(self, events: list[Envelope], experiment: str) -> None:
        self.inter = {
            e.interaction_id: e
            for e in events
            if isinstance(e, Interaction) and e.experiment == experiment
        }
        sessions = {e.session_id for e in self.inter.values()}
        self.variant_of_session = {e.session_id: e.variant for e in self.inter.values()}
        self.feedback = [
            e for e in events if isinstance(e, Feedback) and e.interaction_id in self.inter
        ]
        self.implicit = [
            e for e in events if isinstance(e, Implicit) and e.interaction_id in self.inter
        ]
        self.outcomes = [
            e
            for e in events
            if isinstance(e, Outcome)
            and (
                e.interaction_id in self.inter
                or (e.interaction_id is None and e.session_id in sessions)
            )
        ]

    def variants(self) -> list[str]:
        return sorted({e.variant for e in self.inter.values()})  # type: ignore[type-var]

    def sessions(self, v: str) -> set[str]:
        return {e.session_id for e in self.inter.values() if e.variant == v}

    def positive_by_interaction(self) -> dict[uuid.UUID, bool]:
        last: dict[uuid.UUID, Feedback] = {}
        for f in self.feedback:
            if f.kind.value in ("thumbs", "rating"):
                cur = last.get(f.interaction_id)
                if cur is None or f.occurred_at > cur.occurred_at:
                    last[f.interaction_id] = f
        return {
            iid: (f.thumbs == 1 if f.kind.value == "thumbs" else (f.rating or 0) >= 4)
            for iid, f in last.items()
        }

    def session_ratio(
        self, v: str, num: dict[uuid.UUID, float], den: dict[uuid.UUID, float]
    ) -> tuple[int, float, float, float, float, float]:
        per: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for iid, e in self.inter.items():
            if e.variant != v:
                continue
            per[e.session_id][0] += num.get(iid, 0.0)
            per[e.session_id][1] += den.get(iid, 0.0)
        y = np.array([a for a, _ in per.values()])
        d = np.array([b for _, b in per.values()])
        return (len(per), y.sum(), d.sum(), (y * y).sum(), (d * d).sum(), (y * d).sum())

    def session_of(self, o: Outcome) -> str:
        return self.inter[o.interaction_id].session_id if o.interaction_id else o.session_id

    def variant_of(self, o: Outcome) -> str:
        return self.variant_of_session[self.session_of(o)]  # type: ignore[return-value]


def ratio_tuple(r: Any) -> tuple[int, float, float, float, float, float]:
    return (r.n, r.sum_num, r.sum_den, r.sum_num_sq, r.sum_den_sq, r.sum_num_den)


def close(a: float, b: float, rel: float = 1e-9) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


# --- the test -----------------------------------------------------------------------------------


def test_reports_through_the_real_pipeline(
    kafka_bootstrap: str,
    clickhouse_dsn: str,
    clickhouse_database: str,
    topic_prefix: str,
    tmp_path: Path,
    artifacts_dir: Path,
) -> None:
    db = clickhouse_database
    s = settings_for(kafka_bootstrap, clickhouse_dsn, db, topic_prefix, tmp_path)
    sent: list[Envelope] = []
    cfg = SinkConfig(raw=True, group_id=f"g-{uuid.uuid4().hex[:6]}", max_age_s=0.2)
    good = Experiment(GOOD, {"control": 0.5, "treatment": 0.5})
    broken = Experiment(BROKEN, {"control": 0.5, "treatment": 0.5})
    with running_worker(s, cfg) as worker:
        assert discovery_path(s).exists()  # every query below goes through the worker
        client = FeedbackClient(
            s, spool_path=tmp_path / "spool.sqlite3", on_event=lambda e, _payload: sent.append(e)
        )
        simulate(client, good, 500, seed=1)
        simulate(client, broken, 400, seed=2, drop_treatment=0.35)
        assert client.flush(60) == 0
        client.close()
        # Half the feedback of the good experiment also arrives enriched (as if the stream
        # jobs ran for part of the time): FINAL must keep one row per event either way.
        inter = {e.interaction_id: e for e in sent if isinstance(e, Interaction)}
        enriched = [
            (e.partition_key, enrich(e, inter))
            for e in sent
            if isinstance(e, Feedback)
            and inter[e.interaction_id].experiment == GOOD
            and e.event_id.int % 2
        ]
        produce(kafka_bootstrap, Topics(topic_prefix).enriched, enriched)
        wait_until(lambda: worker.sink.stats.messages >= len(sent) + len(enriched), timeout=90)

        run = settings_runner(s)
        scope = Scope(GOOD, since=parse_since("1d"))
        check_report(run, scope, Truth(sent, GOOD))
        check_broken(run, Truth(sent, BROKEN))
        check_impact(run, scope, Truth(sent, GOOD))
        check_versions(run, Truth(sent, GOOD))
        check_cli(s, tmp_path, Truth(sent, GOOD), artifacts_dir)


def check_report(run: Any, scope: Scope, truth: Truth) -> None:
    data = fetch_experiment(run, scope)
    assert list(data.variants) == truth.variants() == ["control", "treatment"]
    assert data.cross_variant_sessions == 0
    positive = truth.positive_by_interaction()
    rated = {iid: 1.0 for iid in positive}
    pos = {iid: float(p) for iid, p in positive.items()}
    ones = {iid: 1.0 for iid in truth.inter}
    copy = {f.interaction_id: 1.0 for f in truth.implicit if f.signal.value == "copy"}
    latency = {iid: e.latency_ms or 0.0 for iid, e in truth.inter.items()}
    for v, st in data.variants.items():
        assert st.sessions == len(truth.sessions(v))
        assert st.interactions == sum(1 for e in truth.inter.values() if e.variant == v)
        assert st.rated.n == sum(1 for i in rated if truth.inter[i].variant == v)
        assert st.rated.successes == sum(
            1 for i, p in positive.items() if p and truth.inter[i].variant == v
        )
        for metric, num, den in (
            ("satisfaction", pos, rated),
            ("implicit.copy", copy, ones),
            ("latency_ms", latency, ones),
        ):
            got, want = ratio_tuple(st.metrics[metric]), truth.session_ratio(v, num, den)
            assert got[0] == want[0], metric
            assert all(close(a, b) for a, b in zip(got[1:], want[1:], strict=True)), metric

    report = build_report(data, weights={"control": 1, "treatment": 1})
    assert not report.srm.mismatch and report.srm.p_value > 0.001
    (d,) = report.decisions
    assert d.treatment == "treatment"
    assert d.decision.verdict is Verdict.SIGNIFICANT_IMPROVEMENT, d.decision
    assert d.difference.lower > 0
    # The planted effect (+20 pp) lies inside the interval.
    assert d.difference.contains(SATISFACTION["treatment"] - SATISFACTION["control"])
    text = report.to_text()
    assert "significant improvement" in text and "DO NOT TRUST" not in text


def check_broken(run: Any, truth: Truth) -> None:
    report = build_report(
        fetch_experiment(run, Scope(BROKEN)), weights={"control": 50, "treatment": 50}
    )
    counts = [len(truth.sessions(v)) for v in ("control", "treatment")]
    assert report.srm.observed == tuple(counts)
    assert report.srm.mismatch, report.srm
    assert all(c.decision.verdict is Verdict.DO_NOT_TRUST for c in report.comparisons)
    assert report.decisions[0].decision.verdict is Verdict.DO_NOT_TRUST
    assert report.to_text().splitlines()[2].startswith("!! SAMPLE-RATIO MISMATCH")


def check_impact(run: Any, scope: Scope, truth: Truth) -> None:
    report = build_impact(fetch_impact(run, scope))
    by_variant = {v.variant: v for v in report.variants}
    names = defaultdict(set)  # (variant, outcome) -> interactions / sessions with it
    for o in truth.outcomes:
        key = o.interaction_id if o.interaction_id else o.session_id
        names[(truth.variant_of(o), o.outcome)].add(key)
    for v in ("control", "treatment"):
        row = by_variant[v]
        n_inter = sum(1 for e in truth.inter.values() if e.variant == v)
        acc, rej = names[(v, "code_accepted")], names[(v, "code_rejected")]
        res, esc = names[(v, "ticket_resolved")], names[(v, "ticket_escalated")]
        rates = {r.name: r for r in row.rates}
        kept = rates["code accepted (kept)"]
        assert (kept.successes, kept.n) == (len(acc - rej), len(acc | rej))
        resolved = rates["resolved without escalation"]
        assert (resolved.successes, resolved.n) == (len(res - esc), len(res | esc))
        opened = rates["original opened"]
        assert (opened.successes, opened.n) == (len(names[(v, "original_opened")]), n_inter)
        for o in row.outcomes:
            times = np.array(
                [
                    x.time_to_outcome_ms
                    for x in truth.outcomes
                    if x.outcome == o.outcome
                    and truth.variant_of(x) == v
                    and x.time_to_outcome_ms is not None
                ]
            )
            assert o.events == sum(
                1 for x in truth.outcomes if x.outcome == o.outcome and truth.variant_of(x) == v
            )
            assert o.time_n == times.size
            if times.size:
                assert close(o.time_mean_ms, times.mean(), 1e-9)
                want_q = np.quantile(times, [0.1, 0.25, 0.5, 0.75, 0.9])
                got_q = [o.time_quantiles[k] for k in ("p10", "p25", "p50", "p75", "p90")]
                assert np.allclose(got_q, want_q, rtol=1e-9), o.outcome

    # Time per session: the sum of its timed outcomes; saved = control mean - treatment mean.
    per_session: dict[str, dict[str, float]] = {
        "control": defaultdict(float),
        "treatment": defaultdict(float),
    }
    for o in truth.outcomes:
        if o.time_to_outcome_ms is not None:
            per_session[truth.variant_of(o)][truth.session_of(o)] += o.time_to_outcome_ms
    c = np.array(list(per_session["control"].values()))
    t = np.array(list(per_session["treatment"].values()))
    saved = by_variant["treatment"].time_saved
    assert saved is not None
    assert (saved.sessions_control, saved.sessions_treatment) == (c.size, t.size)
    assert close(saved.saved_ms.value, c.mean() - t.mean(), 1e-9)
    welch = stats.ttest_ind(t, c, equal_var=False)
    assert close(saved.test.p_value, float(welch.pvalue), 1e-6)
    ci = welch.confidence_interval(0.95)  # treatment - control; a saving flips the sign
    assert close(saved.saved_ms.lower, -ci.high, 1e-6)
    assert close(saved.saved_ms.upper, -ci.low, 1e-6)


def check_versions(run: Any, truth: Truth) -> None:
    scope = Scope(GOOD)
    totals = {t.prompt_version: t for t in fetch_version_totals(run, scope)}
    buckets = fetch_versions(run, scope)
    positive = truth.positive_by_interaction()
    for version in ("v1", "v2"):
        ids = [i for i, e in truth.inter.items() if e.prompt_version == version]
        want = (sum(1 for i in ids if i in positive), sum(1 for i in ids if positive.get(i)))
        got = totals[version].satisfaction
        assert (got.n, got.successes) == want
        day = [b for b in buckets if b.prompt_version == version]
        assert sum(b.satisfaction.n for b in day) == want[0]
        assert sum(b.interactions for b in day) == len(ids)


def check_cli(s: Any, data_dir: Path, truth: Truth, artifacts: Path) -> None:
    env = {
        "FEEDBACKLOOP_CLICKHOUSE_URL": s.clickhouse_url,
        "FEEDBACKLOOP_CLICKHOUSE_DATABASE": s.clickhouse_database,
        "FEEDBACKLOOP_DATA_DIR": str(data_dir),  # where the running worker advertises itself
    }
    runner = CliRunner()

    def invoke(*args: str) -> str:
        res = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        assert res.exit_code == 0, res.output
        if "--json" not in args:  # kept for humans: what the commands print on this data
            name = "_".join(a.lstrip("-") for a in args if a not in ("-e", "--experiment"))
            (artifacts / f"{name}.txt").write_text(res.output)
        return res.output

    out = json.loads(
        invoke(
            "ab",
            "report",
            "--experiment",
            GOOD,
            "--since",
            "1d",
            "--weights",
            "control=50,treatment=50",
            "--json",
        )
    )
    assert out["trustworthy"] is True
    assert out["decisions"][0]["decision"]["verdict"] == "significant_improvement"
    sessions = {v["variant"]: v["sessions"] for v in out["variants"]}
    assert sessions == {v: len(truth.sessions(v)) for v in ("control", "treatment")}
    assert "significant improvement" in invoke("ab", "report", "-e", GOOD)

    text = invoke("ab", "report", "--experiment", BROKEN)
    assert "SAMPLE-RATIO MISMATCH: DO NOT TRUST" in text

    impact = json.loads(invoke("impact", "--experiment", GOOD, "--json"))
    assert [v["variant"] for v in impact["variants"]] == ["control", "treatment"]
    assert impact["variants"][1]["time_saved"]["saved_ms"]["value"] > 0
    assert "Time per session" in invoke("impact", "-e", GOOD)

    versions = json.loads(invoke("ab", "versions", "--experiment", GOOD, "--json"))
    assert {v["prompt_version"] for v in versions["versions"]} == {"v1", "v2"}
    assert "Satisfaction by prompt version" in invoke("ab", "versions")

    res = runner.invoke(cli, ["ab", "report", "--experiment", "no-such-experiment"], env=env)
    assert res.exit_code == 1 and "no interactions found" in res.output
