"""Monte Carlo of the *printed* verdict: what ``ab report`` says at every look.

A statistics claim about a verdict is only worth the simulation of that verdict. This module
generates experiments with chatty sessions (several rated interactions per session, with a
per-session propensity, so interactions within a session are correlated), looks at them on a
schedule (e.g. after every 100 sessions per variant) and reads the headline verdict at each
look, two ways:

* :func:`printed_verdicts` builds the report with
  :func:`~feedbackloop.analysis.reports.report.build_report`, exactly as the CLI and the
  dashboard do (about 2 ms a look);
* :func:`fast_verdicts` computes the same evidence for every look at once with numpy (the
  vectorised mSPRT and confidence-sequence functions the report's tests call) and passes
  each look through the same :func:`~feedbackloop.analysis.statistics.decision.decide` with
  the same :func:`~feedbackloop.analysis.reports.report.metric_rules` (about 20 us a look).
  A parity test holds the two equal, verdict, words and reason.

Used by ``tests/unit/test_verdict_simulation.py`` (small, in CI),
``tests/integration/test_verdict_pipeline.py`` (through ClickHouse) and
``bench/bench_verdicts.py`` (large; its output is in docs/STATISTICS.md).

Fixed-horizon designs are read as the report reads them from ClickHouse: the tests see the
first ``planned_sessions`` sessions per variant only, while the session counts (and so
"n of N") are all of them.
"""

from __future__ import annotations

import datetime as dt
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from feedbackloop.analysis.reads.queries import CORE_METRICS, ExperimentStats, VariantStats
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.analysis.statistics.decision import Decision, Evidence, Verdict, decide
from feedbackloop.analysis.statistics.design import ExperimentDesign
from feedbackloop.analysis.statistics.sequential import (
    DEFAULT_TAU,
    confidence_sequence_halfwidth,
    msprt_p_value,
)
from feedbackloop.analysis.statistics.sufficient import BinaryStats, RatioStats

__all__ = [
    "Scenario",
    "SimulationResult",
    "sessions",
    "per_session_sd",
    "looks_every",
    "printed_verdicts",
    "printed_decisions",
    "fast_decisions",
    "fast_verdicts",
    "ratio_variance",
    "simulate",
    "simulate_designs",
    "load_into_clickhouse",
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


def printed_decisions(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    looks: Sequence[int],
    design: ExperimentDesign,
) -> list[Decision]:
    """The headline decision ``build_report`` prints at each look (sessions per variant)."""
    from feedbackloop.analysis.reports.report import build_report

    horizon = design.planned_sessions if design.mode == "fixed" else None
    seen = [min(n, horizon) if horizon else n for n in looks]
    out: list[Decision] = []
    for n, sc, st in zip(
        looks, _prefix_stats(*control, seen), _prefix_stats(*treatment, seen), strict=True
    ):
        data = ExperimentStats(
            Scope("simulated"),
            {"control": _variant("control", n, sc), "treatment": _variant("treatment", n, st)},
            (_SATISFACTION,),
            horizon=horizon,
        )
        report = build_report(data, design=design, weights={"control": 1, "treatment": 1})
        out.append(report.decisions[0].decision)
    return out


def printed_verdicts(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    looks: Sequence[int],
    design: ExperimentDesign,
) -> list[Verdict]:
    return [d.verdict for d in printed_decisions(control, treatment, looks, design)]


_FLOOR = 1e-12  # RatioStats.variance's relative cancellation floor


def ratio_variance(
    n: np.ndarray, sy: np.ndarray, sd: np.ndarray, syy: np.ndarray, sdd: np.ndarray, syd: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """:attr:`RatioStats.variance` and ``ratio`` for arrays of sufficient statistics (the
    vectorised twin; ``tests/unit/test_verdict_simulation.py`` holds them equal)."""
    r = sy / sd
    m = n - 1.0
    s_yy = (syy - sy * sy / n) / m
    s_nn = (sdd - sd * sd / n) / m
    s_yn = (syd - sy * sd / n) / m
    spread = s_yy - 2.0 * r * s_yn + r * r * s_nn
    raw = (syy + r * r * sdd) / m
    mean_den = sd / n
    var = np.where(spread <= _FLOOR * raw, 0.0, spread / (n * mean_den * mean_den))
    return r, var


def _cumulative(y: np.ndarray, d: np.ndarray, ends: Sequence[int]) -> tuple[np.ndarray, ...]:
    idx = np.asarray(ends) - 1
    return (
        np.asarray(ends, dtype=float),
        np.cumsum(y)[idx],
        np.cumsum(d)[idx],
        np.cumsum(y * y)[idx],
        np.cumsum(d * d)[idx],
        np.cumsum(y * d)[idx],
    )


def fast_decisions(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    looks: Sequence[int],
    design: ExperimentDesign,
    tau: float = DEFAULT_TAU,
) -> list[Decision]:
    """The same decisions as :func:`printed_decisions`, with the evidence computed for all
    looks at once (one treatment, equal split, so no SRM and no multiplicity adjustment)."""
    from feedbackloop.analysis.reports.report import metric_rules

    horizon = design.planned_sessions if design.mode == "fixed" else None
    seen = [min(n, horizon) if horizon else n for n in looks]
    rc, vc = ratio_variance(*_cumulative(*control, seen))
    rt, vt = ratio_variance(*_cumulative(*treatment, seen))
    n = np.asarray(seen, dtype=float)
    var = vc + vt
    diff = rt - rc
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(var)
        z = diff / se
        fixed_p = 2.0 * stats.norm.sf(np.abs(z))
        n_eff = n / 2.0
        seq_p = msprt_p_value(z, n_eff, tau)
        half = confidence_sequence_halfwidth(se, n_eff, design.alpha, tau)
    out = []
    for i, looked in enumerate(looks):
        mde = design.absolute_mde(float(rc[i]))
        ok = var[i] > 0
        evidence = Evidence(
            estimate=float(diff[i]),
            sequential_p=float(seq_p[i]) if ok else math.nan,
            cs_lower=float(diff[i] - half[i]) if ok else math.nan,
            cs_upper=float(diff[i] + half[i]) if ok else math.nan,
            fixed_p=float(fixed_p[i]) if ok else math.nan,
            n_smallest=int(looked),
            fixed_method="delta-method z-test",
            srm_p=1.0,
            error=None if ok else "the metric does not vary between sessions",
        )
        out.append(decide(evidence, metric_rules(design, _SATISFACTION, mde)))
    return out


def fast_verdicts(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    looks: Sequence[int],
    design: ExperimentDesign,
) -> list[Verdict]:
    return [d.verdict for d in fast_decisions(control, treatment, looks, design)]


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


def simulate_designs(
    scenario: Scenario,
    designs: Mapping[str, ExperimentDesign],
    looks: Sequence[int],
    sims: int,
    seed: int,
) -> dict[str, SimulationResult]:
    """Run ``sims`` experiments of ``scenario``, each read at ``looks`` under every design
    (the same data for all designs, so they differ only by their rules). The printed
    verdict comes from :func:`fast_verdicts`."""
    rng = np.random.default_rng(seed)
    # Past a fixed horizon the tests see no new sessions: generate only what some design reads.
    needed = max(
        min(n, d.planned_sessions) if d.mode == "fixed" and d.planned_sessions else n
        for n in looks
        for d in designs.values()
    )
    counts = {k: dict.fromkeys(("sig", "imp", "fut", "fut_first"), 0) for k in designs}
    final: dict[str, dict[str, int]] = {k: {} for k in designs}
    for _ in range(sims):
        c = sessions(rng, needed, scenario.base_rate, scenario)
        t = sessions(rng, needed, scenario.base_rate + scenario.effect, scenario)
        for name, design in designs.items():
            verdicts = fast_verdicts(c, t, looks, design)
            significant = [
                v in (Verdict.SIGNIFICANT_IMPROVEMENT, Verdict.SIGNIFICANT_REGRESSION)
                for v in verdicts
            ]
            futile = [v is Verdict.NO_DIFFERENCE for v in verdicts]
            k = counts[name]
            k["sig"] += any(significant)
            k["imp"] += Verdict.SIGNIFICANT_IMPROVEMENT in verdicts
            k["fut"] += any(futile)
            if any(futile):
                k["fut_first"] += not any(significant[: futile.index(True)])
            last = verdicts[-1].value
            final[name][last] = final[name].get(last, 0) + 1
    return {
        name: SimulationResult(
            sims,
            len(looks),
            k["sig"] / sims,
            k["imp"] / sims,
            k["fut"] / sims,
            k["fut_first"] / sims,
            {v: n / sims for v, n in sorted(final[name].items())},
        )
        for name, k in counts.items()
    }


def simulate(
    scenario: Scenario,
    design: ExperimentDesign,
    looks: Sequence[int],
    sims: int,
    seed: int,
) -> SimulationResult:
    """:func:`simulate_designs` for one design."""
    return simulate_designs(scenario, {"design": design}, looks, sims, seed)["design"]


def load_into_clickhouse(
    client: Any,
    database: str,
    experiment: str,
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    start: dt.datetime,
    app_id: str = "sim",
) -> None:
    """Store simulated sessions as ``interactions`` and ``feedback`` rows (thumbs).

    Session ``s`` of variant ``a`` (0 control, 1 treatment) starts at ``start + 2s + a``
    seconds, so the look "after L sessions per variant" is ``Scope(until=start + 2L s)``.
    Its ``d`` interactions are 1 ms apart; the first ``y`` get a thumbs up, the rest a thumbs
    down. ``client`` is a clickhouse-connect client able to write (tests, benchmarks).
    """
    cols: dict[str, list[Any]] = {
        k: [] for k in ("event_id", "occurred_at", "session_id", "interaction_id", "variant")
    }
    fb: dict[str, list[Any]] = {
        k: [] for k in ("event_id", "occurred_at", "session_id", "interaction_id", "thumbs")
    }
    base = uuid.uuid4().int & ~((1 << 40) - 1)
    serial = 0
    for arm, (name, (y, d)) in enumerate((("control", control), ("treatment", treatment))):
        for s, (pos, n) in enumerate(zip(y.astype(int), d.astype(int), strict=True)):
            sid = f"{experiment}-{name}-{s}"
            t0 = start + dt.timedelta(seconds=2 * s + arm)
            for k in range(n):
                at = t0 + dt.timedelta(milliseconds=k)
                iid = uuid.UUID(int=base + serial)
                cols["event_id"].append(uuid.UUID(int=base + serial + 1))
                cols["occurred_at"].append(at)
                cols["session_id"].append(sid)
                cols["interaction_id"].append(iid)
                cols["variant"].append(name)
                fb["event_id"].append(uuid.UUID(int=base + serial + 2))
                fb["occurred_at"].append(at + dt.timedelta(milliseconds=500))
                fb["session_id"].append(sid)
                fb["interaction_id"].append(iid)
                fb["thumbs"].append(1 if k < pos else -1)
                serial += 3
    rows = len(cols["event_id"])
    interactions = {
        **cols,
        "app_id": [app_id] * rows,
        "experiment": [experiment] * rows,
        "shadow": [False] * rows,
    }
    client.insert(
        "interactions",
        list(interactions.values()),
        column_names=list(interactions),
        database=database,
        column_oriented=True,
    )
    feedback = {**fb, "app_id": [app_id] * rows, "kind": ["thumbs"] * rows}
    client.insert(
        "feedback",
        list(feedback.values()),
        column_names=list(feedback),
        database=database,
        column_oriented=True,
    )
