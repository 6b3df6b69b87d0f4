"""Monte Carlo of the *printed* verdict: what ``ab report`` says at every look.

A statistics claim about a verdict is only worth the simulation of that verdict. This module
generates experiments with chatty sessions (several rated interactions per session, with a
per-session propensity, so interactions within a session are correlated), looks at them on a
schedule (e.g. after every 100 sessions per variant), and at each look builds the report with
:func:`~feedbackloop.analysis.reports.report.build_report` exactly as the CLI and the dashboard do,
then reads its headline verdict. Used by ``tests/unit/test_verdict_simulation.py`` (small, in
CI) and ``bench/bench_verdicts.py`` (large; its output is in docs/STATISTICS.md).

Fixed-horizon designs are read as the report reads them from ClickHouse: the tests see the
first ``planned_sessions`` sessions per variant only, while the session counts (and so
"n of N") are all of them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from feedbackloop.analysis.reads.queries import CORE_METRICS, ExperimentStats, VariantStats
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.analysis.statistics.decision import Verdict
from feedbackloop.analysis.statistics.design import ExperimentDesign
from feedbackloop.analysis.statistics.sufficient import BinaryStats, RatioStats

__all__ = [
    "Scenario",
    "SimulationResult",
    "sessions",
    "per_session_sd",
    "looks_every",
    "printed_verdicts",
    "simulate",
]

_SATISFACTION = next(m for m in CORE_METRICS if m.name == "satisfaction")


@dataclass(frozen=True)
class Scenario:
    """Two variants of ``max_sessions`` sessions each.

    Per session: ``1 + Poisson(mean_events - 1)`` rated interactions, a propensity drawn from
    ``Beta(c p, c (1 - p))`` (``c = concentration``; intra-session correlation
    ``1 / (1 + c)``) with ``p`` the variant's rate, and that many Bernoulli(propensity)
    positives. Treatment's rate is ``base_rate + effect``.
    """

    base_rate: float = 0.3
    effect: float = 0.0
    mean_events: float = 3.0
    concentration: float = 4.0
    max_sessions: int = 20_000


def sessions(
    rng: np.random.Generator, n: int, rate: float, sc: Scenario
) -> tuple[np.ndarray, np.ndarray]:
    """Positives and rated interactions per session, in arrival order."""
    d = 1 + rng.poisson(sc.mean_events - 1.0, n)
    c = sc.concentration
    propensity = rng.beta(c * rate, c * (1.0 - rate), n)
    return rng.binomial(d, propensity).astype(float), d.astype(float)


def per_session_sd(sc: Scenario, seed: int = 7, n: int = 400_000) -> float:
    """The per-session standard deviation of the linearised satisfaction, from a large pilot
    (what a team would estimate from earlier traffic to plan a fixed horizon)."""
    y, d = sessions(np.random.default_rng(seed), n, sc.base_rate, sc)
    r = RatioStats.from_sessions(y, d)
    return math.sqrt(r.variance * r.n)


def looks_every(step: int, last: int) -> list[int]:
    """Sessions per variant at each look: ``step, 2 step, ..., last``."""
    return list(range(step, last + 1, step))


def _prefix_stats(y: np.ndarray, d: np.ndarray, ends: Sequence[int]) -> list[RatioStats]:
    cy, cd = np.cumsum(y), np.cumsum(d)
    cyy, cdd, cyd = np.cumsum(y * y), np.cumsum(d * d), np.cumsum(y * d)
    out = []
    for e in ends:
        i = e - 1
        out.append(
            RatioStats(e, float(cy[i]), float(cd[i]), float(cyy[i]), float(cdd[i]), float(cyd[i]))
        )
    return out


def _variant(name: str, sessions_seen: int, sat: RatioStats) -> VariantStats:
    rated = BinaryStats(int(sat.sum_den), int(sat.sum_num))
    return VariantStats(name, sessions_seen, rated.n, rated, {"satisfaction": sat})


def printed_verdicts(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    looks: Sequence[int],
    design: ExperimentDesign,
    *,
    stop_at_significant: bool = True,
) -> list[Verdict]:
    """The headline verdict ``build_report`` prints at each look (sessions per variant).

    With ``stop_at_significant`` the looks after the first significant verdict are not
    evaluated (that experiment already printed a significant verdict; the list is shorter).
    """
    from feedbackloop.analysis.reports.report import build_report

    horizon = design.planned_sessions if design.mode == "fixed" else None
    seen = [min(n, horizon) if horizon else n for n in looks]
    stats_c = _prefix_stats(*control, seen)
    stats_t = _prefix_stats(*treatment, seen)
    out: list[Verdict] = []
    previous: tuple[int, Verdict] | None = None
    for n, m, sc, st in zip(looks, seen, stats_c, stats_t, strict=True):
        if previous is not None and horizon and m == horizon and previous[0] >= horizon:
            out.append(previous[1])  # past the horizon the tests see the same sessions
            continue
        data = ExperimentStats(
            Scope("simulated"),
            {"control": _variant("control", n, sc), "treatment": _variant("treatment", n, st)},
            (_SATISFACTION,),
            horizon=horizon,
        )
        report = build_report(data, design=design, weights={"control": 1, "treatment": 1})
        v = report.decisions[0].decision.verdict
        out.append(v)
        previous = (n, v)
        if stop_at_significant and v in (
            Verdict.SIGNIFICANT_IMPROVEMENT,
            Verdict.SIGNIFICANT_REGRESSION,
        ):
            break
    return out


@dataclass(frozen=True)
class SimulationResult:
    """Shares of experiments whose printed verdict was ... at some look (``ever_*``) or at the
    last look (``final``), with their Monte Carlo standard errors."""

    sims: int
    looks: int
    ever_significant: float
    ever_improvement: float
    ever_futility: float
    futility_before_significant: float
    final: dict[str, float] = field(default_factory=dict)

    def se(self, share: float) -> float:
        return math.sqrt(max(share * (1.0 - share), 1e-12) / self.sims)


def simulate(
    scenario: Scenario,
    design: ExperimentDesign,
    looks: Sequence[int],
    sims: int,
    seed: int,
) -> SimulationResult:
    """Run ``sims`` experiments of ``scenario`` under ``design``, read at ``looks``."""
    rng = np.random.default_rng(seed)
    last = max(looks)
    sig = imp = fut = fut_first = 0
    final: dict[str, int] = {}
    for _ in range(sims):
        c = sessions(rng, last, scenario.base_rate, scenario)
        t = sessions(rng, last, scenario.base_rate + scenario.effect, scenario)
        verdicts = printed_verdicts(c, t, looks, design, stop_at_significant=False)
        significant = [
            v in (Verdict.SIGNIFICANT_IMPROVEMENT, Verdict.SIGNIFICANT_REGRESSION) for v in verdicts
        ]
        futile = [v is Verdict.NO_DIFFERENCE for v in verdicts]
        sig += any(significant)
        imp += Verdict.SIGNIFICANT_IMPROVEMENT in verdicts
        fut += any(futile)
        if any(futile):
            first_fut = futile.index(True)
            fut_first += not any(significant[:first_fut])
        final[verdicts[-1].value] = final.get(verdicts[-1].value, 0) + 1
    return SimulationResult(
        sims,
        len(looks),
        sig / sims,
        imp / sims,
        fut / sims,
        fut_first / sims,
        {k: v / sims for k, v in sorted(final.items())},
    )
