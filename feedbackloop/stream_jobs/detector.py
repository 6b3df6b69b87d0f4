"""Satisfaction-drop detection: a one-sided Bernoulli CUSUM against a trailing baseline.

Each observation is one thumbs vote (success = thumbs up). For a baseline rate ``p0`` and the
smallest drop worth an alert ``d`` (``p1 = p0 - d``), the CUSUM of the log-likelihood ratio

    S_t = max(0, S_{t-1} + x_t ln(p1/p0) + (1 - x_t) ln((1-p1)/(1-p0)))

signals when ``S_t >= h`` (Page 1954; the Bernoulli form is Reynolds & Stoumbos 1999). A
window's partial aggregate of ``n`` votes with ``s`` up adds ``s ln(p1/p0) + (n-s)
ln((1-p1)/(1-p0))`` at once (the binomial CUSUM, Gan 1993), so the detector needs only the
window aggregates.

False alarms: for a CUSUM of the true log-likelihood ratio, the in-control average run
length satisfies ARL0 >= e^h (Lorden 1971, Theorem 2; Siegmund 1985, ch. II). With
``h = ln(ARL0)`` the expected number of false alarms is at most one per ARL0 observations;
``tests/unit/test_stream_detector.py`` measures it on simulated stationary data.
Guards: no update until the baseline holds ``min_baseline_samples``; no alert before the run
holds ``min_samples``; after an alert the statistic resets and the detector stays quiet for
``cooldown_s``.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from feedbackloop.schemas.alerts import Alert, AlertDimension

if TYPE_CHECKING:
    from feedbackloop.analysis.reports.report import ExperimentReport

__all__ = [
    "BernoulliCusum",
    "CusumStep",
    "SatisfactionDetector",
    "VerdictWatch",
    "check_verdicts",
    "cusum_increment",
]


def cusum_increment(n: int, successes: int, p0: float, p1: float) -> float:
    """Log-likelihood ratio of H1 (rate p1) over H0 (rate p0) for ``successes`` of ``n``."""
    return successes * math.log(p1 / p0) + (n - successes) * math.log((1 - p1) / (1 - p0))


@dataclass
class CusumStep:
    statistic: float
    alarm: bool


@dataclass
class BernoulliCusum:
    """Page's CUSUM on batches of Bernoulli votes, with the run since the last zero."""

    threshold: float
    statistic: float = 0.0
    run_n: int = 0
    run_successes: int = 0
    run_start: float | None = None

    def update(self, n: int, successes: int, p0: float, p1: float, at: float) -> CusumStep:
        if n <= 0:
            return CusumStep(self.statistic, False)
        s = self.statistic + cusum_increment(n, successes, p0, p1)
        if s <= 0:
            self.statistic, self.run_n, self.run_successes, self.run_start = 0.0, 0, 0, None
        else:
            if self.run_start is None:
                self.run_start = at
            self.statistic = s
            self.run_n += n
            self.run_successes += successes
        return CusumStep(self.statistic, self.statistic >= self.threshold)

    def reset(self) -> None:
        self.statistic, self.run_n, self.run_successes, self.run_start = 0.0, 0, 0, None


@dataclass
class SatisfactionDetector:
    """One detector (an experiment arm or a prompt version): baseline, CUSUM, cool-down.

    ``observe`` takes the votes of one window (or a partial of it) in event-time order of
    windows; it returns an :class:`Alert` when the rule fires.
    """

    key: str
    dimension: AlertDimension
    app_id: str
    window_s: float
    design_drop: float
    threshold: float
    baseline_windows: int
    baseline_lag_windows: int
    min_baseline_samples: int
    min_samples: int
    cooldown_s: float
    experiment: str | None = None
    variant: str | None = None
    prompt_version: str | None = None
    #: window_start -> [n, successes]
    history: dict[float, list[int]] = field(default_factory=dict)
    cusum: BernoulliCusum | None = None
    quiet_until: float = -math.inf

    def __post_init__(self) -> None:
        if self.cusum is None:
            self.cusum = BernoulliCusum(self.threshold)

    def baseline(self, start: float) -> tuple[int, int]:
        """Pooled (n, successes) of the windows in [start - (lag+span)w, start - lag*w)."""
        hi = start - self.baseline_lag_windows * self.window_s
        lo = hi - self.baseline_windows * self.window_s
        n = s = 0
        for ws, (wn, wsucc) in self.history.items():
            if lo <= ws < hi:
                n += wn
                s += wsucc
        return n, s

    def observe(self, start: float, n: int, successes: int) -> Alert | None:
        assert self.cusum is not None
        slot = self.history.setdefault(start, [0, 0])
        slot[0] += n
        slot[1] += successes
        self._prune(start)
        bn, bs = self.baseline(start)
        if n <= 0 or bn < self.min_baseline_samples:
            return None
        # Keep p0 off 0 and 1 so the log-likelihood ratio stays finite.
        p0 = min(max(bs / bn, 1e-3), 1 - 1e-3)
        p1 = max(p0 - self.design_drop, p0 / 10)
        end = start + self.window_s
        step = self.cusum.update(n, successes, p0, p1, at=start)
        if not step.alarm or self.cusum.run_n < self.min_samples or end < self.quiet_until:
            return None
        alert = self._alert(p0, bn, end, step.statistic)
        self.cusum.reset()
        self.quiet_until = end + self.cooldown_s
        return alert

    def _prune(self, start: float) -> None:
        keep = (self.baseline_windows + self.baseline_lag_windows + 2) * self.window_s
        for ws in [ws for ws in self.history if ws < start - keep]:
            del self.history[ws]

    def _alert(self, p0: float, bn: int, end: float, statistic: float) -> Alert:
        c = self.cusum
        assert c is not None and c.run_start is not None
        recent = c.run_successes / c.run_n
        since = dt.datetime.fromtimestamp(c.run_start, dt.timezone.utc)
        what = (
            f"{self.experiment}/{self.variant}"
            if self.dimension == "variant"
            else f"prompt {self.prompt_version}"
        )
        msg = (
            f":warning: [{self.app_id}] satisfaction of {what} dropped from {p0:.1%} "
            f"(baseline, n={bn}) to {recent:.1%} (n={c.run_n}) since "
            f"{since:%Y-%m-%d %H:%M} UTC (CUSUM {statistic:.1f} >= {self.threshold:.1f})"
        )
        return Alert(
            dimension=self.dimension,
            detector_key=self.key,
            app_id=self.app_id,
            experiment=self.experiment,
            variant=self.variant,
            prompt_version=self.prompt_version,
            baseline_rate=p0,
            baseline_n=bn,
            recent_rate=recent,
            recent_n=c.run_n,
            recent_successes=c.run_successes,
            since=since,
            detected_at=dt.datetime.fromtimestamp(end, dt.timezone.utc),
            statistic=statistic,
            threshold=self.threshold,
            design_drop=self.design_drop,
            arl0_observations=math.exp(self.threshold),
            message=msg,
        )


def detector_keys(
    app_id: str, experiment: str, variant: str, prompt_version: str
) -> Iterable[tuple[str, AlertDimension]]:
    """The detectors a window aggregate feeds: its experiment arm and its prompt version."""
    if experiment:
        yield f"variant:{app_id}|{experiment}|{variant}", "variant"
    if prompt_version:
        yield f"prompt_version:{app_id}|{prompt_version}", "prompt_version"


# --- experiment verdicts ---------------------------------------------------------------
#
# The CUSUM above watches one arm against its own past. An experiment's verdict compares a
# treatment with its control under the experiment's registered design; the alert for it must
# say what `ab report` and the dashboard say, so it is read from the same report
# (feedbackloop.analysis.reports.report_experiment, whose verdicts all come from one
# decision function) instead of being recomputed from the interaction-level windows here.

#: Verdicts worth waking someone for.
_BAD_VERDICTS = ("significant_regression", "do_not_trust")


@dataclass
class VerdictWatch:
    """Alerts when an experiment's verdict on its primary metric or a guardrail *turns*
    "significant regression" or "do not trust" (once per change, not at every check)."""

    #: "experiment|treatment|metric" -> the verdict seen at the last check.
    last: dict[str, str] = field(default_factory=dict)

    def observe(
        self, report: ExperimentReport, at: dt.datetime | None = None, app_id: str = ""
    ) -> list[Alert]:
        """``app_id``: the app the experiment runs in ("" when it spans several), so the
        alert shows on that app's dashboard."""
        at = at or dt.datetime.now(dt.timezone.utc)
        control = next((v for v in report.variants if v.variant == report.control), None)
        out = []
        for d in report.decisions:
            treated = next((v for v in report.variants if v.variant == d.treatment), None)
            judged = [(report.primary, d.decision), *d.guardrails.items()]
            for metric, decision in judged:
                key = f"{report.experiment}|{d.treatment}|{metric}"
                verdict = decision.verdict.value
                before, self.last[key] = self.last.get(key), verdict
                if verdict not in _BAD_VERDICTS or before == verdict:
                    continue
                comp = next(
                    (
                        c
                        for c in report.comparisons
                        if c.treatment == d.treatment and c.metric == metric
                    ),
                    None,
                )
                role = "primary metric" if metric == report.primary else "guardrail"
                out.append(
                    Alert(
                        alert_type="experiment_verdict",
                        metric=metric,
                        dimension="experiment",
                        detector_key=f"verdict:{key}",
                        app_id=app_id,
                        experiment=report.experiment,
                        variant=d.treatment,
                        baseline_rate=_finite(comp.control_value if comp else math.nan),
                        baseline_n=control.sessions if control else 0,
                        recent_rate=_finite(comp.treatment_value if comp else math.nan),
                        recent_n=treated.sessions if treated else 0,
                        recent_successes=0,
                        since=at,
                        detected_at=at,
                        statistic=_finite(
                            report.srm.p_value
                            if decision.basis == "srm"
                            else _deciding_p(report, d.treatment, metric, decision.basis)
                        ),
                        threshold=report.srm.threshold if decision.basis == "srm" else report.alpha,
                        design_drop=report.design.mde or 0.0,
                        arl0_observations=0.0,
                        message=(
                            f":rotating_light: experiment {report.experiment}: {d.treatment} vs "
                            f"{report.control} on {metric} ({role}): {decision.text} "
                            f"({decision.reason})"
                        ),
                    )
                )
        return out


def _finite(x: float) -> float:
    # Alerts travel as JSON, where nan has no spelling; 0 marks "not available".
    return x if math.isfinite(x) else 0.0


def _deciding_p(report: ExperimentReport, treatment: str, metric: str, basis: str) -> float:
    for d in report.decisions:
        if d.treatment == treatment and metric == report.primary:
            return d.p_value if basis == "fixed-horizon" else d.sequential_p_value
    comp = next(
        (c for c in report.comparisons if c.treatment == treatment and c.metric == metric), None
    )
    if comp is None:
        return math.nan
    return comp.fixed.p_value if basis == "fixed-horizon" else comp.sequential.p_value


def check_verdicts(settings: Any, watch: VerdictWatch, runner: Any = None) -> list[Alert]:
    """Judge every experiment with a registered design (as ``ab report`` does) and return
    the alerts of the verdicts that turned bad since the last check. Needs the ``analysis``
    extra; reads go through :func:`feedbackloop.sinks.run_query` (the sink worker's endpoint
    while it holds embedded chDB), or through ``runner`` when given."""
    from feedbackloop.analysis.reads import Scope, settings_runner
    from feedbackloop.analysis.reads.designs import experiment_app, registered_experiments
    from feedbackloop.analysis.reads.writes import worker_holding
    from feedbackloop.analysis.reports.report import report_experiment
    from feedbackloop.errors import ConfigError
    from feedbackloop.infra.clickhouse import is_embedded

    if runner is None:
        if is_embedded(settings.clickhouse_dsn) and worker_holding(settings) is None:
            # Opening embedded chDB here would hold its directory and lock the sink out:
            # read only through a running sink worker's endpoint.
            return []
        runner = settings_runner(settings)
    run = runner
    alerts: list[Alert] = []
    for name in registered_experiments(run):
        try:
            report = report_experiment(run, Scope(experiment=name))
        except ConfigError:  # registered, but no data yet
            continue
        alerts += watch.observe(report, app_id=experiment_app(run, name))
    return alerts
