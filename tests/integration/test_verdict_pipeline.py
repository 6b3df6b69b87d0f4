"""The printed verdict of ``ab report`` on data in ClickHouse, look by look (issue 14).

Simulated experiments with chatty sessions are stored as ``interactions`` and ``feedback``
rows in a real ClickHouse engine (embedded chDB by default); the report is read the way the
CLI and the dashboard read it (:func:`report_experiment`: registered design, per-session
statistics computed in ClickHouse, capped at the horizon in fixed mode) after every 200
sessions per variant. Each printed verdict must be the pure function's verdict on the same
sessions, so the simulation tables of the pure function (tests/unit/test_verdict_simulation.py,
docs/STATISTICS.md) describe what ``ab report`` prints. Sized for CI; ``bench/bench_verdicts.py
--chdb`` runs it larger.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from feedbackloop.analysis.reads.designs import register_design
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.analysis.reports.report import report_experiment
from feedbackloop.analysis.reports.simulation import (
    Scenario,
    fast_decisions,
    load_into_clickhouse,
    looks_every,
    sessions,
)
from feedbackloop.analysis.statistics.decision import Verdict
from feedbackloop.analysis.statistics.design import ExperimentDesign
from feedbackloop.cli import cli
from feedbackloop.config import Settings
from feedbackloop.infra import get_client
from feedbackloop.sinks import migrate
from feedbackloop.sinks.query import execute, readonly_client
from feedbackloop.stream_jobs.detector import VerdictWatch, check_verdicts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SESSIONS = 800
LOOKS = looks_every(200, SESSIONS)
SCENARIO = Scenario(base_rate=0.3)
START = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)


@pytest.fixture
def store(clickhouse_dsn: str, clickhouse_database: str) -> Iterator[tuple[Any, Settings]]:
    admin = get_client(clickhouse_dsn)
    migrate(admin, clickhouse_database)
    reader = readonly_client(clickhouse_dsn, clickhouse_database)
    settings = Settings(clickhouse_url=clickhouse_dsn, clickhouse_database=clickhouse_database)
    yield admin, reader, settings
    reader.close()
    admin.command(f"DROP DATABASE IF EXISTS {clickhouse_database}")
    admin.close()


def test_ab_report_prints_the_pure_verdict_at_every_look(store: Any, tmp_path: Any) -> None:
    admin, reader, settings = store
    db = settings.clickhouse_database
    rng = np.random.default_rng(1414)
    fixed = ExperimentDesign(
        experiment="fixed-aa", mode="fixed", mde=0.05, planned_sessions=600, registered=True
    )
    experiments: dict[str, tuple[ExperimentDesign, float, bool]] = {}
    for i in range(4):
        experiments[f"aa-{i}"] = (ExperimentDesign(experiment=f"aa-{i}"), 0.0, False)
    for i in range(2):
        d = ExperimentDesign(experiment=f"aa-mde-{i}", mde=0.05, registered=True)
        experiments[f"aa-mde-{i}"] = (d, 0.0, True)
    experiments["fixed-aa"] = (fixed, 0.0, True)
    for i in range(2):
        d = ExperimentDesign(experiment=f"ab-{i}", mde=0.05, registered=True)
        experiments[f"ab-{i}"] = (d, 0.12, True)
    worse = ExperimentDesign(experiment="ab-worse", mde=0.05, registered=True)
    experiments["ab-worse"] = (worse, -0.12, True)

    data = {}
    for name, (design, effect, registered) in experiments.items():
        c = sessions(rng, SESSIONS, SCENARIO.base_rate, SCENARIO)
        t = sessions(rng, SESSIONS, SCENARIO.base_rate + effect, SCENARIO)
        load_into_clickhouse(admin, db, name, c, t, START)
        if registered:
            stored, new = register_design(settings, design, client=admin)
            assert new and stored.registered and stored.created_at
        data[name] = (c, t)

    def run(sql: str) -> Any:
        return execute(reader, sql, 100_000)

    printed: dict[str, list[Verdict]] = {}
    for name, (design, _, _) in experiments.items():
        c, t = data[name]
        pure = fast_decisions(c, t, LOOKS, design)
        printed[name] = []
        for look, want in zip(LOOKS, pure, strict=True):
            scope = Scope(experiment=name, until=START + dt.timedelta(seconds=2 * look))
            report = report_experiment(run, scope)
            assert report.design.registered == experiments[name][2]
            (head,) = report.decisions
            assert [v.sessions for v in report.variants] == [look, look]
            assert (head.decision.verdict, head.decision.text) == (want.verdict, want.text), (
                name,
                look,
            )
            printed[name].append(head.decision.verdict)

    significant = {Verdict.SIGNIFICANT_IMPROVEMENT, Verdict.SIGNIFICANT_REGRESSION}
    aa = [n for n in printed if n.startswith("aa") or n == "fixed-aa"]
    false_positives = sum(any(v in significant for v in printed[n]) for n in aa)
    print(f"\nA/A through ab report on chDB: {false_positives} of {len(aa)} printed significant")
    assert false_positives <= 1  # expected ~0.1 (always-valid p-values, alpha 0.05)
    # The fixed horizon: "keep running (n of 600)" before it, then one verdict that later
    # looks (more sessions in ClickHouse) cannot change.
    f = printed["fixed-aa"]
    assert f[:2] == [Verdict.KEEP_RUNNING] * 2 and len(set(f[2:])) == 1
    assert all(Verdict.SIGNIFICANT_IMPROVEMENT in printed[f"ab-{i}"] for i in range(2))

    assert Verdict.SIGNIFICANT_REGRESSION in printed["ab-worse"]

    # The alerts judge the registered experiments the same way: one alert, for ab-worse.
    watch = VerdictWatch()
    (alert,) = check_verdicts(settings, watch, runner=run)
    assert alert.experiment == "ab-worse" and alert.alert_type == "experiment_verdict"
    assert alert.app_id == "sim"  # the app its interactions come from: shown on its dashboard
    assert "significant regression" in alert.message
    assert check_verdicts(settings, watch, runner=run) == []  # once per change

    # The CLI prints the same, with the registered design.
    env = {
        "FEEDBACKLOOP_CLICKHOUSE_URL": settings.clickhouse_dsn,
        "FEEDBACKLOOP_CLICKHOUSE_DATABASE": db,
        "FEEDBACKLOOP_DATA_DIR": str(tmp_path),
    }
    res = CliRunner().invoke(cli, ["ab", "report", "-e", "fixed-aa"], env=env)
    assert res.exit_code == 0, res.output
    assert "Design (registered " in res.output and "fixed horizon at 600 sessions" in res.output
    assert f"treatment: {fixed_text(printed['fixed-aa'][-1])}" in res.output
    res = CliRunner().invoke(cli, ["ab", "report", "-e", "aa-0"], env=env)
    assert "no design registered for this experiment; assumed:" in res.output
    res = CliRunner().invoke(cli, ["ab", "report", "-e", "fixed-aa", "--mde", "0.1"], env=env)
    assert res.exit_code == 1 and "has a registered design" in res.output


def fixed_text(v: Verdict) -> str:
    return {
        Verdict.NO_DIFFERENCE: "no difference as large as the MDE",
        Verdict.SIGNIFICANT_IMPROVEMENT: "significant improvement",
        Verdict.SIGNIFICANT_REGRESSION: "significant regression",
    }[v]
