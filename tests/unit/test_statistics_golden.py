"""Every test and interval against an independent implementation, over many random cases.

statsmodels and scipy are the references (statsmodels is a test-only dependency). Tolerance
is 1e-6 absolute (p-values, rates, intervals) or relative (statistics, sample sizes): tighter
than the 5 decimals the issue asks for.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, optimize, stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from feedbackloop.analysis.statistics import (
    BinaryStats,
    MeanStats,
    RatioStats,
    benjamini_hochberg,
    beta_binomial,
    chi_square_test,
    cohens_h,
    confidence_sequence_halfwidth,
    expected_loss,
    fisher_exact_power,
    fisher_exact_test,
    holm,
    mann_whitney,
    msprt_p_value,
    newcombe_interval,
    power_two_sample,
    prob_beta_greater,
    ratio_ztest,
    relative_lift_interval,
    required_sample_size,
    required_sample_size_proportions,
    required_sample_size_proportions_exact,
    sample_ratio_mismatch,
    two_proportion_ztest,
    welch_ttest,
    wilson_interval,
)

TOL = 1e-6
SEED = 20240501


def approx(x: float) -> object:
    return pytest.approx(x, abs=TOL, rel=TOL)


def _random_pairs(
    count: int, low: int = 20, high: int = 5000
) -> list[tuple[BinaryStats, BinaryStats]]:
    rng = np.random.default_rng(SEED)
    out = []
    for _ in range(count):
        nc, nt = rng.integers(low, high, size=2)
        pc, pt = rng.uniform(0.02, 0.98, size=2)
        if rng.random() < 0.5:  # half the cases near the null, where decisions are close
            pt = pc + rng.normal(0, 0.03)
            pt = min(0.99, max(0.01, pt))
        xc, xt = rng.binomial(nc, pc), rng.binomial(nt, pt)
        out.append((BinaryStats(int(nc), int(xc)), BinaryStats(int(nt), int(xt))))
    return out


PAIRS = _random_pairs(200)


# --- literal golden values for the example (computed once with statsmodels) --------


def test_example_literal_values() -> None:
    c, t = BinaryStats(1000, 540), BinaryStats(1010, 580)
    z = two_proportion_ztest(c, t)
    assert z.statistic == pytest.approx(1.546000, abs=1e-5)
    assert z.p_value == pytest.approx(0.122105, abs=1e-5)
    w = wilson_interval(c)
    assert (w.lower, w.upper) == (
        pytest.approx(0.509015, abs=1e-5),
        pytest.approx(0.570679, abs=1e-5),
    )
    d = newcombe_interval(c, t)
    assert (d.lower, d.upper) == (
        pytest.approx(-0.009157, abs=1e-5),
        pytest.approx(0.077494, abs=1e-5),
    )


# --- binary metrics -------------------------------------------------------------------------


@pytest.mark.parametrize("case", range(len(PAIRS)))
def test_proportions_against_statsmodels(case: int) -> None:
    c, t = PAIRS[case]
    z = two_proportion_ztest(c, t)
    z_ref, p_ref = proportions_ztest([t.successes, c.successes], [t.n, c.n])
    assert z.statistic == approx(z_ref)
    assert z.p_value == approx(p_ref)

    for variant in (c, t):
        lo, hi = proportion_confint(variant.successes, variant.n, alpha=0.05, method="wilson")
        w = wilson_interval(variant, 0.05)
        assert (w.lower, w.upper) == (approx(lo), approx(hi))

    lo, hi = confint_proportions_2indep(
        t.successes, t.n, c.successes, c.n, method="newcomb", compare="diff", alpha=0.05
    )
    d = newcombe_interval(c, t, 0.05)
    assert d.value == approx(t.rate - c.rate)
    assert (d.lower, d.upper) == (approx(lo), approx(hi))

    if c.successes and t.successes:
        lo, hi = confint_proportions_2indep(
            t.successes, t.n, c.successes, c.n, method="log", compare="ratio", alpha=0.05
        )
        lift = relative_lift_interval(c, t, 0.05)
        assert (lift.lower + 1, lift.upper + 1) == (approx(lo), approx(hi))


@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_intervals_other_alpha(alpha: float) -> None:
    for c, t in PAIRS[:40]:
        lo, hi = proportion_confint(c.successes, c.n, alpha=alpha, method="wilson")
        w = wilson_interval(c, alpha)
        assert (w.lower, w.upper) == (approx(lo), approx(hi))
        lo, hi = confint_proportions_2indep(
            t.successes, t.n, c.successes, c.n, method="newcomb", compare="diff", alpha=alpha
        )
        d = newcombe_interval(c, t, alpha)
        assert (d.lower, d.upper) == (approx(lo), approx(hi))


def test_chi_square_and_fisher_against_scipy() -> None:
    small = _random_pairs(150, low=3, high=60)
    for c, t in PAIRS + small:
        table = [[c.successes, c.failures], [t.successes, t.failures]]
        chi = chi_square_test(c, t)
        if chi.ok:
            ref = stats.chi2_contingency(table, correction=False)
            assert chi.statistic == approx(ref.statistic)
            assert chi.p_value == approx(ref.pvalue)
    for c, t in small:
        table = [[c.successes, c.failures], [t.successes, t.failures]]
        f = fisher_exact_test(c, t)
        ref = stats.fisher_exact(table)
        assert f.p_value == approx(ref.pvalue)
        if math.isfinite(ref.statistic) and math.isfinite(f.statistic):
            assert f.statistic == approx(ref.statistic)


# --- numeric metrics ------------------------------------------------------------------------


def test_welch_against_statsmodels() -> None:
    rng = np.random.default_rng(SEED)
    for _ in range(150):
        nc, nt = rng.integers(2, 400, size=2)
        xc = rng.lognormal(rng.normal(), rng.uniform(0.1, 1.5), size=nc)
        xt = rng.lognormal(rng.normal(), rng.uniform(0.1, 1.5), size=nt)
        res = welch_ttest(MeanStats.from_values(xc), MeanStats.from_values(xt), 0.05)
        t_ref, p_ref, df_ref = ttest_ind(xt, xc, usevar="unequal")
        assert res.test.statistic == approx(t_ref)
        assert res.test.p_value == approx(p_ref)
        assert res.test.df == approx(df_ref)
        lo, hi = CompareMeans(DescrStatsW(xt), DescrStatsW(xc)).tconfint_diff(
            alpha=0.05, usevar="unequal"
        )
        assert (res.difference.lower, res.difference.upper) == (approx(lo), approx(hi))


def test_mann_whitney_against_scipy() -> None:
    rng = np.random.default_rng(SEED)
    for i in range(100):
        nc, nt = rng.integers(1, 300, size=2)
        xc = rng.exponential(1.0, size=nc)
        xt = rng.exponential(rng.uniform(0.7, 1.4), size=nt)
        if i % 2:  # ties: latencies are often rounded to whole milliseconds
            xc, xt = np.round(xc * 5), np.round(xt * 5)
        res = mann_whitney(xc, xt)
        ref = stats.mannwhitneyu(
            xt, xc, alternative="two-sided", method="asymptotic", use_continuity=True
        )
        if not res.test.ok:
            assert np.isnan(ref.pvalue) or np.ptp(np.concatenate([xc, xt])) == 0
            continue
        assert res.u_statistic == approx(ref.statistic)
        assert res.test.p_value == approx(ref.pvalue)


# --- power ----------------------------------------------------------------------------------


def test_power_and_sample_size_against_statsmodels() -> None:
    rng = np.random.default_rng(SEED)
    solver = NormalIndPower()
    for _ in range(60):
        baseline = rng.uniform(0.02, 0.9)
        mde = rng.uniform(0.005, 0.08) * rng.choice([-1, 1])
        if not 0 < baseline + mde < 1:
            continue
        alpha, power, ratio = rng.choice([0.01, 0.05, 0.1]), rng.uniform(0.6, 0.95), 1.0
        h = cohens_h(baseline, baseline + mde)
        assert h == approx(proportion_effectsize(baseline + mde, baseline))
        ours = required_sample_size_proportions(baseline, mde, alpha, power, ratio)
        ref = solver.solve_power(effect_size=h, alpha=alpha, power=power, ratio=ratio)
        # statsmodels' solver stops at ~1e-8 relative; both must give the requested power.
        assert ours.control == pytest.approx(ref, rel=1e-6)
        assert solver.power(h, ours.control, alpha, ratio) == approx(power)
        n = float(rng.integers(10, 20000))
        ratio = rng.uniform(0.5, 2.0)
        assert power_two_sample(h, n, alpha, ratio) == approx(solver.power(h, n, alpha, ratio))


def test_required_sample_size_unequal_ratio() -> None:
    ours = required_sample_size(0.1, 0.05, 0.8, ratio=2.0)
    ref = NormalIndPower().solve_power(effect_size=0.1, alpha=0.05, power=0.8, ratio=2.0)
    assert ours.control == pytest.approx(ref, rel=1e-6)
    assert ours.treatment == pytest.approx(2 * ref, rel=1e-6)


# --- SRM and multiple testing ---------------------------------------------------------------


def test_srm_against_scipy_chisquare() -> None:
    rng = np.random.default_rng(SEED)
    for _ in range(100):
        k = int(rng.integers(2, 6))
        w = rng.uniform(0.1, 1.0, size=k)
        counts = rng.multinomial(int(rng.integers(10, 100000)), w / w.sum())
        res = sample_ratio_mismatch(counts.tolist(), w.tolist())
        ref = stats.chisquare(counts, f_exp=counts.sum() * w / w.sum())
        assert res.statistic == approx(ref.statistic)
        assert res.p_value == approx(ref.pvalue)


@pytest.mark.parametrize("method,ours", [("holm", holm), ("fdr_bh", benjamini_hochberg)])
def test_multiple_testing_against_statsmodels(method: str, ours: object) -> None:
    rng = np.random.default_rng(SEED)
    for _ in range(60):  # statsmodels' multipletests costs ~35 ms a call
        m = int(rng.integers(1, 30))
        p = np.where(rng.random(m) < 0.3, rng.uniform(0, 0.01, m), rng.uniform(0, 1, m))
        alpha = float(rng.choice([0.01, 0.05, 0.1]))
        res = ours(p.tolist(), alpha)  # type: ignore[operator]
        rej, adj, _, _ = multipletests(p, alpha=alpha, method=method)
        np.testing.assert_allclose(res.adjusted, adj, atol=TOL, rtol=TOL)
        assert list(res.rejected) == rej.tolist()


# --- Bayesian -------------------------------------------------------------------------------


def _by_quadrature(a: float, b: float, c: float, d: float) -> tuple[float, float]:
    """P(X > Y) = int f_Y S_X, E[(X - Y)^+] = int F_Y S_X, by numerical integration."""
    x, y = stats.beta(a, b), stats.beta(c, d)
    # Integrate over where both densities have mass, so quad sees the peak.
    lo = min(x.ppf(1e-12), y.ppf(1e-12))
    hi = max(x.isf(1e-12), y.isf(1e-12))
    kw = {"epsabs": 1e-12, "epsrel": 1e-10, "limit": 200}
    prob = integrate.quad(lambda s: y.pdf(s) * x.sf(s), lo, hi, **kw)[0]
    loss = integrate.quad(lambda s: y.cdf(s) * x.sf(s), lo, hi, **kw)[0]
    return prob, loss


def test_beta_binomial_against_quadrature() -> None:
    for c, t in PAIRS[:60] + _random_pairs(20, low=1, high=30):
        res = beta_binomial(c, t)
        at, bt = res.posterior_treatment
        ac, bc = res.posterior_control
        prob, loss_keep = _by_quadrature(at, bt, ac, bc)
        _, loss_ship = _by_quadrature(ac, bc, at, bt)
        assert res.prob_treatment_beats_control == approx(prob)
        assert res.expected_loss_control == approx(loss_keep)
        assert res.expected_loss_treatment == approx(loss_ship)


def test_every_form_of_millers_sum_agrees() -> None:
    # Non-integer parameters force the other forms; all must agree with the integral.
    for a, b, c, d in [(30, 70, 25, 75), (30.5, 70, 25, 75), (30.5, 70.5, 25.5, 75)]:
        prob, method = prob_beta_greater(a, b, c, d)
        assert method.startswith("closed form")
        assert prob == approx(_by_quadrature(a, b, c, d)[0])
        assert expected_loss(a, b, c, d) == approx(_by_quadrature(a, b, c, d)[1])


def test_non_integer_prior_against_monte_carlo() -> None:
    """No integral parameter: the library integrates numerically; check by Monte Carlo.

    1e6 draws with a fixed seed: standard error < 5e-4, tolerance 2.5e-3 (5 SE).
    """
    a, b, c, d = 30.5, 70.5, 25.5, 75.5
    prob, method = prob_beta_greater(a, b, c, d)
    assert method == "numerical integration"
    rng = np.random.default_rng(SEED)
    x, y = rng.beta(a, b, 1_000_000), rng.beta(c, d, 1_000_000)
    assert prob == pytest.approx((x > y).mean(), abs=2.5e-3)
    assert expected_loss(a, b, c, d) == pytest.approx(np.maximum(x - y, 0).mean(), abs=2.5e-4)


def test_bayesian_large_counts_use_normal_approximation() -> None:
    c, t = BinaryStats(10_000_000, 5_000_000), BinaryStats(10_000_000, 5_004_000)
    res = beta_binomial(c, t)
    assert res.method == "normal approximation"
    ref = stats.norm.sf(0, 0.0004, math.sqrt(2 * 0.25 / 10_000_000))
    assert res.prob_treatment_beats_control == pytest.approx(ref, abs=1e-4)


# --- sequential -----------------------------------------------------------------------------


def _mixture_lr_by_quadrature(z: float, r: float) -> float:
    """Lambda = int N(theta_hat; theta, V) / N(theta_hat; 0, V) dN(theta; 0, tau^2), V = 1."""
    tau = math.sqrt(r)
    return integrate.quad(
        lambda th: math.exp(th * z - th * th / 2.0) * stats.norm.pdf(th, 0.0, tau),
        -np.inf,
        np.inf,
        epsabs=1e-13,
        epsrel=1e-11,
    )[0]


def test_msprt_p_value_against_quadrature() -> None:
    rng = np.random.default_rng(SEED)
    for _ in range(100):
        z, n_eff = rng.normal(0, 2.5), rng.uniform(5, 20000)
        r = 0.1**2 * n_eff
        lam = _mixture_lr_by_quadrature(z, r)
        assert float(msprt_p_value(z, n_eff, 0.1)) == approx(min(1.0, 1.0 / lam))


def test_confidence_sequence_inverts_the_test() -> None:
    """The CS boundary is exactly where the mSPRT p-value for H0: theta = theta0 hits alpha."""
    rng = np.random.default_rng(SEED)
    for _ in range(50):
        se, n_eff, alpha = rng.uniform(0.001, 1.0), rng.uniform(5, 20000), 0.05
        half = float(confidence_sequence_halfwidth(se, n_eff, alpha, 0.1))
        edge = optimize.brentq(
            lambda d, se=se, n_eff=n_eff, alpha=alpha: (
                float(msprt_p_value(d / se, n_eff, 0.1)) - alpha
            ),
            0.0,
            100 * se,
            xtol=1e-14,
        )
        assert half == pytest.approx(edge, rel=1e-8)


# --- ratio metrics (delta method) -----------------------------------------------------------


def test_delta_method_equals_cluster_robust_regression() -> None:
    """Delta-method variance of a ratio == CR0 cluster-robust variance of the event mean."""
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(SEED)
    for _ in range(20):
        sessions = int(rng.integers(5, 200))
        sizes = 1 + rng.poisson(rng.uniform(0.5, 8), size=sessions)
        p_session = rng.beta(2, 2, size=sessions)
        ids = np.repeat(np.arange(sessions), sizes)
        y = rng.random(ids.size) < p_session[ids]
        stats_ = RatioStats.from_events(ids, y)
        fit = sm.OLS(y.astype(float), np.ones((ids.size, 1))).fit(
            cov_type="cluster", cov_kwds={"groups": ids, "use_correction": False}
        )
        assert stats_.ratio == approx(fit.params[0])
        # The delta method uses sample (ddof=1) variances: CR0 times G / (G - 1).
        assert stats_.variance == pytest.approx(
            fit.cov_params()[0, 0] * sessions / (sessions - 1), rel=1e-9
        )


def test_ratio_ztest_matches_welch_when_every_session_has_one_event() -> None:
    """With one event per session the delta method reduces to a normal two-sample test."""
    rng = np.random.default_rng(SEED)
    yc, yt = rng.normal(0, 1, 500), rng.normal(0.1, 1.3, 400)
    res = ratio_ztest(
        RatioStats.from_sessions(yc, np.ones_like(yc)),
        RatioStats.from_sessions(yt, np.ones_like(yt)),
    )
    se = math.sqrt(yc.var(ddof=1) / yc.size + yt.var(ddof=1) / yt.size)
    z = (yt.mean() - yc.mean()) / se
    assert res.test.statistic == approx(z)
    assert res.test.p_value == approx(2 * stats.norm.sf(abs(z)))


# --- exact power of Fisher's test ----------------------------------------------------------


def _fisher_power_by_enumeration(pc: float, pt: float, nc: int, nt: int, alpha: float) -> float:
    total = 0.0
    for x in range(nc + 1):
        for y in range(nt + 1):
            if stats.fisher_exact([[x, nc - x], [y, nt - y]]).pvalue <= alpha:
                total += stats.binom.pmf(x, nc, pc) * stats.binom.pmf(y, nt, pt)
    return total


@pytest.mark.parametrize(
    "pc,pt,nc,nt,alpha",
    [
        (0.0, 0.2, 20, 20, 0.05),
        (0.1, 0.3, 25, 30, 0.05),
        (0.5, 0.55, 40, 40, 0.1),
        (0.02, 0.25, 12, 9, 0.05),
    ],
)
def test_fisher_exact_power_equals_enumeration_with_scipy(
    pc: float, pt: float, nc: int, nt: int, alpha: float
) -> None:
    want = _fisher_power_by_enumeration(pc, pt, nc, nt, alpha)
    assert fisher_exact_power(pc, pt, nc, nt, alpha) == pytest.approx(want, abs=1e-10)


def test_exact_plan_is_the_first_size_whose_exact_power_reaches_the_target() -> None:
    for base, mde in ((0.02, 0.2), (0.0, 0.2), (0.9, 0.09)):
        n = required_sample_size_proportions_exact(base, mde, 0.05, 0.8).per_variant
        assert n is not None
        assert fisher_exact_power(base, base + mde, n, n) >= 0.8
        assert fisher_exact_power(base, base + mde, n - 1, n - 1) < 0.8
    # Away from small counts the plan is the z-test's.
    big = required_sample_size_proportions_exact(0.3, 0.03)
    assert big.per_variant == required_sample_size_proportions(0.3, 0.03).per_variant
