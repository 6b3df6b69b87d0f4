"""The satisfaction-drop detector: CUSUM arithmetic, false-alarm rate, detection delay."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("faust")

from feedbackloop.stream_jobs import (  # noqa: E402
    BernoulliCusum,
    SatisfactionDetector,
    StreamConfig,
    cusum_increment,
)

W = 60.0


def detector(arl0: float = 1e6, **kw) -> SatisfactionDetector:
    cfg = StreamConfig(alert_arl0=arl0)
    args = dict(
        key="variant:app|exp|a",
        dimension="variant",
        app_id="app",
        window_s=W,
        design_drop=cfg.alert_design_drop,
        threshold=cfg.alert_threshold,
        baseline_windows=cfg.alert_baseline_windows,
        baseline_lag_windows=cfg.alert_baseline_lag_windows,
        min_baseline_samples=cfg.alert_min_baseline_samples,
        min_samples=cfg.alert_min_samples,
        cooldown_s=cfg.alert_cooldown_s,
        experiment="exp",
        variant="a",
    )
    return SatisfactionDetector(**{**args, **kw})


def test_increment_is_the_binomial_log_likelihood_ratio():
    from scipy.stats import binom

    n, s, p0, p1 = 40, 25, 0.75, 0.65
    expected = binom.logpmf(s, n, p1) - binom.logpmf(s, n, p0)
    assert cusum_increment(n, s, p0, p1) == pytest.approx(expected, rel=1e-12)


def test_cusum_resets_at_zero_and_tracks_its_run():
    c = BernoulliCusum(threshold=5.0)
    c.update(10, 10, 0.75, 0.65, at=0)  # all up: evidence against a drop
    assert c.statistic == 0 and c.run_start is None
    c.update(10, 2, 0.75, 0.65, at=60)
    assert c.statistic > 0 and c.run_start == 60 and (c.run_n, c.run_successes) == (10, 2)


def test_threshold_is_log_arl0():
    assert StreamConfig(alert_arl0=1e6).alert_threshold == pytest.approx(math.log(1e6))


def run(det: SatisfactionDetector, rates: list[float], n: int, rng: np.random.Generator):
    alerts = []
    for i, p in enumerate(rates):
        a = det.observe(i * W, n, int(rng.binomial(n, p)))
        if a is not None:
            alerts.append((i, a))
    return alerts


def test_false_alarm_rate_on_stationary_data_is_within_the_documented_bound():
    # ARL0 = 1e5 observations: the documented bound allows, in expectation, at most
    # observations / 1e5 false alarms. Fixed seeds; 8 runs x 2000 windows x 200 votes.
    arl0, n, windows = 1e5, 200, 2000
    observations = alarms = 0
    for seed in range(8):
        rng = np.random.default_rng(seed)
        det = detector(arl0=arl0, cooldown_s=0)
        alarms += len(run(det, [0.75] * windows, n, rng))
        observations += n * windows
    bound = observations / arl0  # 32
    assert alarms <= bound, (alarms, bound)


def test_detects_a_drop_from_75_to_60_percent_within_a_few_windows():
    rng = np.random.default_rng(11)
    det = detector()
    rates = [0.75] * 120 + [0.60] * 30
    alerts = run(det, rates, 200, rng)
    assert alerts, "no alert on a 15-point drop"
    first, alert = alerts[0]
    assert 120 <= first <= 124  # h = ln(1e6) = 13.8 needs ~280 votes at 200 per window
    assert alert.baseline_rate == pytest.approx(0.75, abs=0.02)
    assert alert.recent_rate == pytest.approx(0.60, abs=0.06)
    assert alert.since.timestamp() >= 110 * W and alert.recent_n >= 50
    assert "dropped from" in alert.message and alert.variant == "a"
    assert len(alerts) == 1  # cool-down (30 min) holds the repeat back


def test_no_alert_before_the_baseline_has_enough_samples():
    rng = np.random.default_rng(5)
    det = detector(min_baseline_samples=10_000)
    assert run(det, [0.75] * 20 + [0.2] * 20, 100, rng) == []
