"""Report, impact and release-cycle assembly over fixed sufficient statistics (no database)."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats
from statsmodels.stats.multitest import multipletests

from feedbackloop.analysis.reads import (
    CORE_METRICS,
    ExperimentStats,
    ImpactStats,
    MetricSpec,
    OutcomeDistribution,
    SatisfactionBucket,
    Scope,
    VariantImpact,
    VariantStats,
    VersionBucket,
    VersionTotals,
    experiment_sql,
    fetch_experiment,
    fetch_satisfaction_over_time,
    impact_sql,
    parse_since,
    quote,
    satisfaction_over_time_sql,
    versions_sql,
)
from feedbackloop.analysis.reports.impact import build_impact, format_impact
from feedbackloop.analysis.reports.report import build_report, format_report, pick_control
from feedbackloop.analysis.reports.versions import build_versions, format_versions
from feedbackloop.analysis.statistics.decision import Verdict
from feedbackloop.analysis.statistics.design import ExperimentDesign
from feedbackloop.analysis.statistics.power import required_sample_size
from feedbackloop.analysis.statistics.ratio_metrics import ratio_ztest
from feedbackloop.analysis.statistics.sequential import sequential_test_ratios
from feedbackloop.analysis.statistics.sufficient import BinaryStats, MeanStats, RatioStats
from feedbackloop.cli import cli
from feedbackloop.errors import ConfigError

SPECS = {m.name: m for m in CORE_METRICS}
REGISTERED = ExperimentDesign(experiment="exp", registered=True)


def sessions(seed: int, n: int, p: float, mean_len: float = 3.0) -> tuple[RatioStats, BinaryStats]:
    """Per-session positives / rated for ``n`` sessions at true rate ``p`` (fixed seed)."""
    rng = np.random.default_rng(seed)
    d = rng.poisson(mean_len - 1, n) + 1
    y = rng.binomial(d, p)
    return RatioStats.from_sessions(y, d), BinaryStats(int(d.sum()), int(y.sum()))


def variant(name: str, seed: int, n: int, p: float, copy_p: float = 0.2) -> VariantStats:
    sat, rated = sessions(seed, n, p)
    copy, _ = sessions(seed + 100, n, copy_p)
    return VariantStats(name, n, int(rated.n), rated, {"satisfaction": sat, "implicit.copy": copy})


def experiment(*variants: VariantStats, cross: int = 0) -> ExperimentStats:
    specs = (SPECS["satisfaction"], SPECS["implicit.copy"])
    return ExperimentStats(Scope("exp"), {v.variant: v for v in variants}, specs, cross)


@pytest.fixture
def two() -> ExperimentStats:
    return experiment(variant("control", 1, 2000, 0.50), variant("treatment", 2, 2000, 0.56))


def test_planted_effect_is_a_significant_improvement(two: ExperimentStats) -> None:
    r = build_report(two, weights={"control": 1, "treatment": 1})
    assert r.control == "control" and not r.srm.mismatch and r.trustworthy
    (d,) = r.decisions
    assert d.decision.verdict is Verdict.SIGNIFICANT_IMPROVEMENT
    # The numbers are exactly those of the pure functions on the same statistics.
    c, t = (
        two.variants["control"].metrics["satisfaction"],
        two.variants["treatment"].metrics["satisfaction"],
    )
    comp, seq = ratio_ztest(c, t), sequential_test_ratios(c, t)
    sat = next(x for x in r.comparisons if x.metric == "satisfaction")
    assert sat.difference == comp.difference and sat.fixed == comp.test
    assert sat.sequential.p_value == seq.p_value
    assert math.isclose(sat.lift, t.ratio / c.ratio - 1)
    assert r.variants[0].satisfaction.method == "Wilson"


def test_adjusted_p_values_match_statsmodels(two: ExperimentStats) -> None:
    three = experiment(*two.variants.values(), variant("t2", 3, 2000, 0.51))
    r = build_report(three)
    raw = [c.fixed.p_value for c in r.comparisons]
    assert len(raw) == 4  # 2 treatments x 2 metrics
    assert np.allclose([c.p_holm for c in r.comparisons], multipletests(raw, method="holm")[1])
    assert np.allclose([c.p_bh for c in r.comparisons], multipletests(raw, method="fdr_bh")[1])
    seq = [c.sequential.p_value for c in r.comparisons]
    assert np.allclose([c.seq_p_bh for c in r.comparisons], multipletests(seq, method="fdr_bh")[1])
    # Headline: the primary metric, Holm across the two treatments only.
    prim = [c.fixed.p_value for c in r.comparisons if c.metric == "satisfaction"]
    want = multipletests(prim, method="holm")[1]
    assert np.allclose([d.p_value for d in r.decisions], want)
    assert [d.treatment for d in r.decisions] == ["treatment", "t2"]


def test_srm_overrides_every_verdict(two: ExperimentStats) -> None:
    lost = replace(two.variants["treatment"], sessions=1700)
    r = build_report(
        experiment(two.variants["control"], lost), weights={"control": 50, "treatment": 50}
    )
    assert r.srm.mismatch and not r.trustworthy
    assert {c.decision.verdict for c in r.comparisons} == {Verdict.DO_NOT_TRUST}
    assert r.decisions[0].decision.verdict is Verdict.DO_NOT_TRUST
    text = format_report(r)
    assert text.splitlines()[2] == "!! SAMPLE-RATIO MISMATCH: DO NOT TRUST THIS EXPERIMENT !!"
    assert r.to_dict()["trustworthy"] is False


def test_no_srm_for_the_configured_unequal_split() -> None:
    r = build_report(
        experiment(variant("control", 1, 9000, 0.5), variant("treatment", 2, 1000, 0.5)),
        weights={"control": 0.9, "treatment": 0.1},
        design=REGISTERED,
    )
    assert not r.srm.mismatch and not r.warnings
    assert build_report(
        experiment(variant("control", 1, 9000, 0.5), variant("treatment", 2, 1000, 0.5))
    ).srm.mismatch


def test_weights_name_variants_without_data_and_omit_variants_with_data(
    two: ExperimentStats,
) -> None:
    r = build_report(two, weights={"control": 1, "treatment": 1, "t2": 1})
    assert r.srm.observed == (2000, 2000, 0) and r.srm.mismatch
    r = build_report(two, weights={"control": 1})  # treatment configured at weight 0
    assert r.srm.mismatch and "weight 0" in r.srm.message


def test_cross_variant_sessions_are_a_warning(two: ExperimentStats) -> None:
    r = build_report(replace(two, cross_variant_sessions=7))
    assert any("7 session(s) appear in more than one variant" in w for w in r.warnings)


def test_power_status_counts_sessions_and_uses_the_mde(two: ExperimentStats) -> None:
    r = build_report(two, design=ExperimentDesign(mde=0.01))
    sat = next(c for c in r.comparisons if c.metric == "satisfaction")
    c = two.variants["control"].metrics["satisfaction"]
    want = required_sample_size(0.01 / math.sqrt(c.variance * c.n))
    assert sat.required.per_variant == want.per_variant
    assert sat.power.smallest_variant == 2000 and not sat.power.reached
    assert r.decisions[0].decision.verdict is Verdict.SIGNIFICANT_IMPROVEMENT  # sequential


def test_small_experiment_keeps_running() -> None:
    r = build_report(experiment(variant("control", 1, 60, 0.50), variant("treatment", 2, 60, 0.53)))
    assert r.decisions[0].decision.verdict is Verdict.KEEP_RUNNING
    assert r.decisions[0].decision.text == "keep running"
    fixed = ExperimentDesign(mode="fixed", mde=0.05, planned_sessions=800)
    small = experiment(variant("control", 1, 60, 0.50), variant("treatment", 2, 60, 0.53))
    r = build_report(replace(small, horizon=800), design=fixed)
    assert r.decisions[0].decision.text == "keep running (60 of 800)"


def test_neutral_metric_reports_an_increase_not_an_improvement() -> None:
    edit = MetricSpec("implicit.edit", "edit rate", "proportion", None)
    c, t = (
        variant("control", 1, 3000, 0.5, copy_p=0.2),
        variant("treatment", 2, 3000, 0.5, copy_p=0.3),
    )
    c = replace(c, metrics={**c.metrics, "implicit.edit": c.metrics["implicit.copy"]})
    t = replace(t, metrics={**t.metrics, "implicit.edit": t.metrics["implicit.copy"]})
    data = ExperimentStats(
        Scope("exp"), {"control": c, "treatment": t}, (SPECS["satisfaction"], edit)
    )
    row = next(x for x in build_report(data).comparisons if x.metric == "implicit.edit")
    assert row.decision.text == "significant increase"


def test_lower_is_better_metric_regression() -> None:
    lat = SPECS["latency_ms"]
    c, t = variant("control", 1, 500, 0.5), variant("treatment", 2, 500, 0.5)
    rng = np.random.default_rng(0)
    for v, mean in ((c, 300.0), (t, 330.0)):
        d = rng.poisson(2, 500) + 1
        v.metrics["latency_ms"] = RatioStats.from_sessions(rng.normal(mean, 30, 500) * d, d)
    data = ExperimentStats(
        Scope("exp"), {"control": c, "treatment": t}, (SPECS["satisfaction"], lat)
    )
    row = next(x for x in build_report(data).comparisons if x.metric == "latency_ms")
    assert row.decision.verdict is Verdict.SIGNIFICANT_REGRESSION


def test_degenerate_metrics_do_not_raise_and_json_is_strict() -> None:
    zero = RatioStats(
        n=50, sum_num=0.0, sum_den=100.0, sum_num_sq=0.0, sum_den_sq=200.0, sum_num_den=0.0
    )
    c, t = variant("control", 1, 50, 0.5), variant("treatment", 2, 50, 0.5)
    c.metrics["implicit.copy"] = t.metrics["implicit.copy"] = zero
    data = experiment(c, t)
    r = build_report(data)
    copy = next(x for x in r.comparisons if x.metric == "implicit.copy")
    assert copy.decision.verdict is Verdict.CANNOT_DECIDE and not copy.fixed.ok
    assert copy.decision.text == "cannot decide: the metric does not vary between sessions"
    json.dumps(r.to_dict(), allow_nan=False)
    only_control = experiment(variant("control", 1, 50, 0.5))
    assert build_report(only_control).decisions == []


def test_control_and_primary_choices(two: ExperimentStats) -> None:
    assert pick_control(["a", "control"]) == "control"
    assert pick_control(["b", "a"]) == "b"
    with pytest.raises(ConfigError, match="has no data"):
        pick_control(["a", "b"], "c")
    r = build_report(two, control="treatment", design=ExperimentDesign(primary="implicit.copy"))
    assert r.control == "treatment" and r.decisions[0].metric == "implicit.copy"
    with pytest.raises(ConfigError, match="primary metric"):
        build_report(two, design=ExperimentDesign(primary="nope"))
    # A registered primary metric without events yet is no error: no verdict, and why.
    later = ExperimentDesign(primary="outcome.code_accepted", registered=True)
    r = build_report(two, design=later)
    assert r.decisions == [] and any("has no data yet" in w for w in r.warnings)
    with pytest.raises(ConfigError, match="no interactions found"):
        build_report(ExperimentStats(Scope("exp"), {}, ()))


def test_text_report_sections(two: ExperimentStats) -> None:
    text = format_report(build_report(two))
    for part in (
        "Sample ratio: no evidence of mismatch (p = ",
        "warning: no design registered for this experiment; assumed: primary satisfaction",
        "Variants",
        "Metrics per variant",
        "Differences vs control",
        "Decision (primary metric: satisfaction",
        "treatment: significant improvement",
        "P(beats control)",
    ):
        assert part in text, part


# --- impact ----------------------------------------------------------------------------------


def impact_variant(name: str, times: np.ndarray) -> VariantImpact:
    dist = OutcomeDistribution(
        "ticket_resolved",
        len(times),
        0,
        len(times),
        0.0,
        MeanStats.from_values(times),
        (1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
    )
    return VariantImpact(
        name,
        100,
        300,
        BinaryStats(80, 40),
        BinaryStats(50, 40),
        BinaryStats(300, 30),
        MeanStats.from_values(times),
        {"ticket_resolved": dist},
    )


def test_time_saved_matches_scipy_welch() -> None:
    rng = np.random.default_rng(3)
    c, t = rng.exponential(90_000, 150), rng.exponential(60_000, 140)
    data = ImpactStats(
        Scope("exp"),
        {"treatment": impact_variant("treatment", t), "control": impact_variant("control", c)},
        None,
    )
    r = build_impact(data)
    assert [v.variant for v in r.variants] == ["control", "treatment"]
    saved = r.variants[1].time_saved
    assert saved is not None and r.variants[0].time_saved is None
    welch = stats.ttest_ind(t, c, equal_var=False)
    ci = welch.confidence_interval(0.95)
    assert math.isclose(saved.saved_ms.value, c.mean() - t.mean(), rel_tol=1e-9)
    assert math.isclose(saved.saved_ms.lower, -ci.high, rel_tol=1e-9)
    assert math.isclose(saved.saved_ms.upper, -ci.low, rel_tol=1e-9)
    assert math.isclose(saved.test.p_value, welch.pvalue, rel_tol=1e-9)
    rates = {x.name: x for x in r.variants[1].rates}
    assert rates["code accepted (kept)"].rate.value == 0.5
    assert rates["resolved without escalation"].difference is not None
    assert r.variants[1].outcomes[0].time_quantiles["p50"] == 3.0
    assert "Time per session" in format_impact(r)
    json.dumps(r.to_dict(), allow_nan=False)


# --- release cycles --------------------------------------------------------------------------


def test_versions_compare_each_version_with_the_previous() -> None:
    a, ab = sessions(1, 800, 0.55)
    b, bb = sessions(2, 800, 0.62)
    totals = [
        VersionTotals("v1", "2024-01-01", "2024-01-07", 2400, ab, a),
        VersionTotals("v2", "2024-01-08", "2024-01-14", 2400, bb, b),
    ]
    buckets = [
        VersionBucket("v2", "2024-01-08", 100, 40, BinaryStats(80, 50), "2024-01-08"),
        VersionBucket("v1", "2024-01-02", 100, 40, BinaryStats(80, 44), "2024-01-01"),
        VersionBucket("v1", "2024-01-01", 100, 40, BinaryStats(80, 40), "2024-01-01"),
    ]
    r = build_versions(buckets, totals)
    v1, v2 = r.versions
    assert v1.change is None and v2.previous == "v1"
    assert v2.change == ratio_ztest(a, b).difference
    assert [b.bucket for b in v1.buckets] == ["2024-01-01", "2024-01-02"]
    assert v1.buckets[0].satisfaction.value == 0.5
    assert "vs previous" in format_versions(r)
    json.dumps(r.to_dict(), allow_nan=False)


# --- query text and parsing ------------------------------------------------------------------


def test_parse_since() -> None:
    now = dt.datetime(2024, 5, 10, 12, tzinfo=dt.timezone.utc)
    assert parse_since("7d", now) == now - dt.timedelta(days=7)
    assert parse_since("36h", now) == now - dt.timedelta(hours=36)
    assert parse_since("2w", now) == now - dt.timedelta(weeks=2)
    assert parse_since("2024-05-01", now) == dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    assert parse_since("2024-05-01T10:00:00+02:00").hour == 10
    with pytest.raises(ConfigError, match="--since"):
        parse_since("last tuesday", now)


def test_sql_quotes_and_reads_every_table_with_final() -> None:
    assert quote("it's \\ odd") == "'it\\'s \\\\ odd'"
    scope = Scope("x'; DROP TABLE t --", since=dt.datetime(2024, 1, 1), app_id="app")
    texts = [
        *experiment_sql(scope).values(),
        *impact_sql(scope, ["a"]).values(),
        versions_sql(scope),
        satisfaction_over_time_sql(scope, 60),
    ]
    for sql in texts:
        assert "experiment = 'x\\'; DROP TABLE t --'" in sql
        for table in ("interactions", "feedback", "implicit", "outcomes"):
            for pos in [i for i in range(len(sql)) if sql.startswith(f"FROM {table}", i)]:
                assert sql[pos:].split()[2] == "FINAL", (table, sql[pos : pos + 60])
    with pytest.raises(ConfigError):
        versions_sql(scope, "month")


def test_fetch_experiment_maps_rows_and_drops_unseen_signals() -> None:
    def ratio_cols(prefix: str, y: float, d: float) -> dict[str, float]:
        return {
            f"{prefix}__y": y,
            f"{prefix}__d": d,
            f"{prefix}__yy": y,
            f"{prefix}__dd": d * 2,
            f"{prefix}__yd": y * 1.5,
        }

    metric_row: dict[str, Any] = {
        "variant": "control",
        "sessions": 10,
        "interactions_total": 30,
        "rated_total": 20,
        "positive_total": 12,
        "n_sq": 100.0,
    }
    for m in CORE_METRICS:
        metric_row.update(ratio_cols(m.name.replace(".", "_"), 0.0, 30.0))
    metric_row.update(ratio_cols("satisfaction", 12.0, 20.0))
    metric_row.update(ratio_cols("implicit_copy", 5.0, 30.0))
    tables = {
        "metrics": [metric_row],
        "assignment": [
            {
                "variant": "control",
                "sessions": 10,
                "interactions": 30,
                "latency_q": [1, 2, 3, 4, 5, 6],
                "cost_total": 0.5,
                "cross_variant": 2,
            }
        ],
        "outcomes": [
            {
                "level": "session",
                "variant": "control",
                "outcome": "ticket_resolved",
                "y": 4.0,
                "yy": 4.0,
                "yd": 4.0,
            }
        ],
    }
    sql = experiment_sql(Scope("exp"))

    def runner(text: str) -> Any:
        name = next(k for k, v in sql.items() if v == text)
        rows = tables[name]
        cols = list(rows[0])
        return SimpleNamespace(columns=cols, rows=[[r[c] for c in cols] for r in rows])

    data = fetch_experiment(runner, Scope("exp"), exact=True)
    assert [m.name for m in data.metrics] == [
        "satisfaction",
        "implicit.copy",
        "outcome.ticket_resolved.session",
    ]
    v = data.variants["control"]
    assert v.rated == BinaryStats(20, 12) and data.cross_variant_sessions == 2
    assert v.metrics["satisfaction"] == RatioStats(10, 12.0, 20.0, 12.0, 40.0, 18.0)
    assert v.metrics["outcome.ticket_resolved.session"] == RatioStats(10, 4, 10, 4, 10, 4)
    assert v.latency_quantiles == (1, 2, 3, 4, 5, 6)


def test_satisfaction_over_time_sql_uses_the_report_definition() -> None:
    scope = Scope("exp", since=dt.datetime(2024, 1, 1), app_id="app")
    sql = satisfaction_over_time_sql(scope, 300)
    # The report's satisfaction: the same units and latest-thumbs-or-rating CTEs, verbatim.
    report_sql = experiment_sql(scope)["metrics"]
    units = sql[sql.index("units AS") : sql.index("fb AS")]
    fb = sql[sql.index("fb AS") : sql.index("SELECT u.variant")]
    assert units in report_sql and fb.rstrip() in report_sql
    assert "toStartOfInterval(u.occurred_at, INTERVAL 300 SECOND)" in sql
    assert "INNER JOIN fb ON u.interaction_id = fb.interaction_id" in sql
    assert "GROUP BY variant, t" in sql
    for bad in (0, -60, 1.5, True):
        with pytest.raises(ConfigError):
            satisfaction_over_time_sql(scope, bad)  # type: ignore[arg-type]


def test_fetch_satisfaction_over_time_accumulates_per_variant_in_time_order() -> None:
    rows = [  # out of order on purpose; None from the JSON endpoint counts as 0
        ("treatment", 120, 4, 3),
        ("control", 60, 10, 5),
        ("control", 0, 2, 2),
        ("treatment", 0, 3, None),
        ("control", 180, 1, 0),
    ]
    seen: list[str] = []

    def runner(text: str) -> Any:
        seen.append(text)
        return SimpleNamespace(
            columns=["variant", "t", "rated", "positive"], rows=[list(r) for r in rows]
        )

    scope = Scope("exp")
    got = fetch_satisfaction_over_time(runner, scope, 60, exact=True)
    assert seen == [satisfaction_over_time_sql(scope, 60)]
    assert list(got) == ["control", "treatment"]
    assert got["control"] == [
        SatisfactionBucket("control", 0, BinaryStats(2, 2), BinaryStats(2, 2)),
        SatisfactionBucket("control", 60, BinaryStats(10, 5), BinaryStats(12, 7)),
        SatisfactionBucket("control", 180, BinaryStats(1, 0), BinaryStats(13, 7)),
    ]
    assert [b.cumulative for b in got["treatment"]] == [BinaryStats(3, 0), BinaryStats(7, 3)]
    assert (
        fetch_satisfaction_over_time(
            lambda _: SimpleNamespace(columns=["variant", "t", "rated", "positive"], rows=[]),
            scope,
            60,
            exact=True,
        )
        == {}
    )


def test_cli_rejects_bad_weights_and_since_before_querying() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["ab", "report", "-e", "x", "--weights", "50/50"])
    assert res.exit_code == 2 and "VARIANT=WEIGHT" in res.output
    res = runner.invoke(cli, ["ab", "report", "-e", "x", "--since", "yesterday-ish"])
    assert res.exit_code == 1 and "error: --since" in res.output
