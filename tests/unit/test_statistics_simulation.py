"""Monte Carlo checks of the properties the decisions rely on, with fixed seeds.

Each simulation states its tolerance in Monte Carlo standard errors (SE). Figures are printed
(run with ``-s`` to see them) and recorded in docs/STATISTICS.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from feedbackloop.analysis.statistics import (
    DEFAULT_TAU,
    BinaryStats,
    RatioStats,
    always_valid_p_values,
    confidence_sequence_halfwidth,
    msprt_p_value,
    ratio_ztest,
    required_sample_size_proportions,
    sample_ratio_mismatch,
    sequential_test_proportions,
    two_proportion_ztest,
)

ALPHA = 0.05
Z_CRIT = float(stats.norm.isf(ALPHA / 2))


def _mc_se(p: float, sims: int) -> float:
    return math.sqrt(p * (1 - p) / sims)


def _cumulative_z(x: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Pooled two-proportion z at every look; ``x[..., 0]`` control, ``x[..., 1]`` treatment."""
    pooled = (x[..., 0] + x[..., 1]) / (2 * n)
    se = np.sqrt(pooled * (1 - pooled) * 2 / n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x[..., 1] - x[..., 0]) / n / se
    return np.nan_to_num(z)  # 0/0 at a look with no successes yet: no evidence


# --- A/A under continuous peeking ------------------------------------------------------------


@pytest.mark.parametrize(
    "rate,batch",
    [(0.2, 200), (0.05, 100), (0.5, 50)],
)
def test_aa_sequential_stays_below_alpha_while_naive_peeking_does_not(
    rate: float, batch: int
) -> None:
    """2,000 A/A experiments, 50 looks each (after every batch of ``batch`` units per arm).

    Sequential (mSPRT): P(p <= alpha at ANY look) must be <= alpha; no tolerance added, the
    measured rate is ~4 SE below it. Naive z-test at every look: must exceed 2 * alpha
    (it is ~0.32, i.e. more than six times alpha).
    """
    sims, looks = 2000, 50
    rng = np.random.default_rng(20240502)
    x = rng.binomial(batch, rate, size=(sims, looks, 2)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)[None, :]
    z = _cumulative_z(x, n)

    naive_fpr = float((np.abs(z) >= Z_CRIT).any(axis=1).mean())
    p_seq = always_valid_p_values(msprt_p_value(z, n / 2, DEFAULT_TAU))
    seq_fpr = float((p_seq[:, -1] <= ALPHA).mean())
    final_fpr = float((np.abs(z[:, -1]) >= Z_CRIT).mean())
    print(
        f"\nA/A rate={rate} batch={batch} looks={looks} sims={sims}: "
        f"sequential FPR={seq_fpr:.4f}  naive peeking FPR={naive_fpr:.4f}  "
        f"single look at the end={final_fpr:.4f}  (alpha={ALPHA})"
    )
    assert seq_fpr <= ALPHA
    assert naive_fpr > 2 * ALPHA
    # A single fixed-horizon look is fine: within 3 SE of alpha.
    assert abs(final_fpr - ALPHA) <= 3 * _mc_se(ALPHA, sims)


def test_vectorised_path_equals_the_typed_api() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n_c, n_t = (int(v) for v in rng.integers(50, 5000, size=2))
        c = BinaryStats(n_c, int(rng.binomial(n_c, 0.3)))
        t = BinaryStats(n_t, int(rng.binomial(n_t, 0.32)))
        res = sequential_test_proportions(c, t, ALPHA)
        z = two_proportion_ztest(c, t).statistic
        n_eff = 1 / (1 / n_c + 1 / n_t)
        assert res.p_value == pytest.approx(float(msprt_p_value(z, n_eff)), rel=1e-12)


# --- A/B with a true effect ------------------------------------------------------------------


def test_ab_power_matches_design_and_confidence_sequence_covers() -> None:
    """Baseline 20%, true lift +3 points, planned at 80% power.

    Fixed-horizon z-test at the planned size: rejection rate within 0.025 (~4 SE) of 0.80.
    The sequential test run to 3x the planned size with a look every 1/10 of the plan rejects
    at least as often as the plan's 0.80 minus 0.10 (it pays for peeking with a larger sample);
    its confidence sequence must contain the true difference at every look in >= 95% of runs.
    """
    base, lift, power = 0.2, 0.03, 0.8
    planned = required_sample_size_proportions(base, lift, ALPHA, power).per_variant
    assert planned is not None
    sims = 4000
    rng = np.random.default_rng(20240503)
    xc = rng.binomial(planned, base, sims)
    xt = rng.binomial(planned, base + lift, sims)
    z = _cumulative_z(np.stack([xc, xt], axis=-1)[:, None, :], np.array([[planned]]))[:, 0]
    fixed_power = float((np.abs(z) >= Z_CRIT).mean())

    batch, looks = planned // 10, 30
    x = rng.binomial(batch, [base, base + lift], size=(sims, looks, 2)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)[None, :]
    zs = _cumulative_z(x, n)
    seq_power = float((msprt_p_value(zs, n / 2) <= ALPHA).any(axis=1).mean())
    seq_at_plan = float((msprt_p_value(zs[:, 9], n[:, 9] / 2) <= ALPHA).mean())
    rates = x / n[..., None]
    diff = rates[..., 1] - rates[..., 0]
    se = np.sqrt((rates * (1 - rates)).sum(axis=-1) / n)
    half = confidence_sequence_halfwidth(se, n / 2, ALPHA)
    coverage = float((np.abs(diff - lift) <= half).all(axis=1).mean())
    print(
        f"\nA/B base={base} lift=+{lift} planned n={planned}/arm sims={sims}: "
        f"fixed-horizon power={fixed_power:.4f} (design {power}); sequential power at plan="
        f"{seq_at_plan:.4f}, by 3x plan={seq_power:.4f}; CS coverage over all looks="
        f"{coverage:.4f}"
    )
    assert abs(fixed_power - power) <= 0.025
    assert seq_power >= power - 0.10
    assert coverage >= 1 - ALPHA


# --- sample-ratio mismatch -------------------------------------------------------------------


def _assign(rng: np.random.Generator, units: int, weights: tuple[float, float]) -> np.ndarray:
    return (rng.random(units) >= weights[0] / sum(weights)).astype(int)


def test_srm_detects_broken_assignment() -> None:
    """Two real bugs, 200 seeds each, 100,000 units: detection rate >= 0.99 at p < 0.001.

    * treatment crashes before logging 5% of its sessions;
    * returning users are re-bucketed into control 5% of the time.
    """
    rng = np.random.default_rng(20240504)
    units, seeds = 100_000, 200
    detected = {"lost treatment sessions": 0, "re-bucketed into control": 0}
    for _ in range(seeds):
        arm = _assign(rng, units, (50, 50))
        logged = (arm == 0) | (rng.random(units) >= 0.05)
        counts = np.bincount(arm[logged], minlength=2)
        detected["lost treatment sessions"] += sample_ratio_mismatch(counts.tolist()).mismatch
        arm = np.where((arm == 1) & (rng.random(units) < 0.05), 0, arm)
        counts = np.bincount(arm, minlength=2)
        detected["re-bucketed into control"] += sample_ratio_mismatch(counts.tolist()).mismatch
    print("\nSRM detection:", {k: v / seeds for k, v in detected.items()})
    assert all(v / seeds >= 0.99 for v in detected.values())


def test_srm_false_alarm_rate_matches_threshold() -> None:
    """Correct 50/50 and 90/10 assignment over 4,000 seeds each.

    At threshold 0.05 the false-alarm rate is within 3 SE of 0.05; at the default 0.001 it is
    at most 0.003 (the expected ~4 false alarms in 4,000, plus slack for Poisson noise).
    """
    rng = np.random.default_rng(20240505)
    seeds, units = 4000, 20_000
    for weights in ((50.0, 50.0), (90.0, 10.0)):
        treated = rng.binomial(units, weights[1] / sum(weights), size=seeds)
        results = [
            sample_ratio_mismatch([units - int(t), int(t)], weights, threshold=0.05)
            for t in treated
        ]
        at_05 = float(np.mean([r.mismatch for r in results]))
        at_default = float(np.mean([r.p_value < 0.001 for r in results]))
        print(f"\nSRM false alarms {weights}: {at_05:.4f} at 0.05, {at_default:.4f} at 0.001")
        assert abs(at_05 - 0.05) <= 3 * _mc_se(0.05, seeds)
        assert at_default <= 0.003


def test_srm_flags_a_split_that_ignores_configured_weights() -> None:
    res = sample_ratio_mismatch([5000, 5000], weights=[90, 10])
    assert res.mismatch and res.p_value < 1e-10
    assert "do not trust" in res.message


# --- many events per session -----------------------------------------------------------------


def test_session_level_delta_method_is_not_inflated_by_chatty_sessions() -> None:
    """A/A: 200 sessions per arm, ~10 rated interactions each, strong within-session
    correlation (session propensity ~ Beta(1.2, 0.8): intra-class correlation 1/3).

    Over 2,000 simulations the event-level z-test (events treated as independent) rejects far
    more than alpha (> 0.2); the delta-method test with sessions as units is within 3 SE of
    alpha.
    """
    rng = np.random.default_rng(20240506)
    sims, sessions = 2000, 200
    events = 1 + rng.poisson(9, size=(sims, 2, sessions))
    propensity = rng.beta(1.2, 0.8, size=(sims, 2, sessions))
    positive = rng.binomial(events, propensity)
    naive = session = 0
    for i in range(sims):
        c, t = (RatioStats.from_sessions(positive[i, j], events[i, j]) for j in (0, 1))
        session += ratio_ztest(c, t).test.p_value <= ALPHA
        bc, bt = (BinaryStats(int(events[i, j].sum()), int(positive[i, j].sum())) for j in (0, 1))
        naive += two_proportion_ztest(bc, bt).p_value <= ALPHA
    naive_fpr, session_fpr = naive / sims, session / sims
    print(
        f"\nclustered A/A sims={sims}: event-level naive FPR={naive_fpr:.4f}, "
        f"session-level delta-method FPR={session_fpr:.4f} (alpha={ALPHA})"
    )
    assert naive_fpr > 0.2
    assert abs(session_fpr - ALPHA) <= 3 * _mc_se(ALPHA, sims)


def test_from_events_aggregates_to_sessions() -> None:
    ids = np.array(["a", "a", "b", "c", "c", "c"])
    values = np.array([1, 0, 1, 1, 1, 0])
    s = RatioStats.from_events(ids, values)
    assert (s.n, s.sum_num, s.sum_den) == (3, 4.0, 6.0)
    assert s.sum_num_sq == 1 + 1 + 4 and s.sum_den_sq == 4 + 1 + 9
    assert s.sum_num_den == 1 * 2 + 1 * 1 + 2 * 3
