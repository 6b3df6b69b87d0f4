"""Experiment-verdict alerts say what the report says, once per change (issue 14)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import numpy as np

from feedbackloop.analysis.reads.queries import CORE_METRICS, ExperimentStats, VariantStats
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.analysis.reports.report import build_report
from feedbackloop.analysis.statistics import BinaryStats, ExperimentDesign, RatioStats, Verdict
from feedbackloop.schemas import Alert
from feedbackloop.stream_jobs.detector import VerdictWatch

SPECS = {m.name: m for m in CORE_METRICS}
AT = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


def _arm(name: str, n: int, p: float, latency: float, seed: int) -> VariantStats:
    rng = np.random.default_rng(seed)
    d = rng.poisson(2, n) + 1
    y = rng.binomial(d, p)
    lat = rng.normal(latency, 40, n) * d
    metrics = {
        "satisfaction": RatioStats.from_sessions(y, d),
        "latency_ms": RatioStats.from_sessions(lat, d),
    }
    return VariantStats(name, n, int(d.sum()), BinaryStats(int(d.sum()), int(y.sum())), metrics)


def _report(treatment_p: float, latency: float, sessions_t: int = 3000) -> object:
    arms = {
        "control": _arm("control", 3000, 0.5, 300.0, 1),
        "treatment": _arm("treatment", sessions_t, treatment_p, latency, 2),
    }
    data = ExperimentStats(Scope("exp"), arms, (SPECS["satisfaction"], SPECS["latency_ms"]))
    design = ExperimentDesign(
        experiment="exp", guardrails=("latency_ms",), mde=0.02, registered=True
    )
    return build_report(data, design=design, weights={"control": 1, "treatment": 1})


def test_a_guardrail_regression_alerts_once_with_the_reports_words() -> None:
    watch = VerdictWatch()
    report = _report(0.56, 340.0)
    (head,) = report.decisions  # type: ignore[attr-defined]
    assert head.decision.verdict is Verdict.SIGNIFICANT_IMPROVEMENT
    assert head.guardrails["latency_ms"].verdict is Verdict.SIGNIFICANT_REGRESSION
    (alert,) = watch.observe(report, AT)  # type: ignore[arg-type]
    assert alert.alert_type == "experiment_verdict" and alert.metric == "latency_ms"
    assert alert.detector_key == "verdict:exp|treatment|latency_ms"
    assert head.guardrails["latency_ms"].text in alert.message and "guardrail" in alert.message
    assert Alert.model_validate_json(alert.model_dump_json()) == alert
    # The same verdict at the next check: no new alert.
    assert watch.observe(report, AT) == []  # type: ignore[arg-type]


def test_a_sample_ratio_mismatch_alerts_with_the_srm_p_value() -> None:
    watch = VerdictWatch()
    assert watch.observe(_report(0.5, 300.0), AT) == []  # type: ignore[arg-type]
    broken = _report(0.5, 300.0, sessions_t=2500)
    alerts = watch.observe(broken, AT)  # type: ignore[arg-type]
    assert {a.metric for a in alerts} == {"satisfaction", "latency_ms"}
    srm = broken.srm  # type: ignore[attr-defined]
    assert all(a.statistic == srm.p_value and a.threshold == srm.threshold for a in alerts)
    assert all("do not trust" in a.message for a in alerts)
    # Back to normal and broken again: a new alert for the new change.
    watch.observe(_report(0.5, 300.0), AT)  # type: ignore[arg-type]
    assert len(watch.observe(replace(broken), AT)) == 2  # type: ignore[arg-type]
