"""What the printed verdict promises, measured: the tables of docs/STATISTICS.md, "Verdicts".

Simulated experiments with chatty sessions (1 + Poisson(2) rated interactions per session, a
per-session propensity ~ Beta, base rate 0.3) are looked at after every batch of sessions and
the report's headline verdict is read at each look (:mod:`feedbackloop.analysis.reports.
simulation`; its vectorised path is held word for word to ``build_report`` by a test). Beside
ours, from the same simulated data: the rule before issue 14 (significant once the always-valid
p <= alpha, or once the sessions reach a size computed from the observed effect, or from
``--mde``, and the fixed-horizon p <= alpha) and naive peeking (the fixed-horizon p at every
look). ``--chdb`` also stores A/A experiments in embedded ClickHouse and reads them through
``report_experiment`` (what ``ab report`` prints), look by look. Last, ``stats compare`` at
10^8 units per arm, beside Fisher's exact test (which used to run on every call).

    .venv/bin/python bench/bench_verdicts.py [--sims 2000] [--chdb 60]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import tempfile
import time
import tracemalloc

import numpy as np
from scipy import stats

from feedbackloop.analysis.reports.simulation import (
    Scenario,
    _cumulative,
    fast_verdicts,
    load_into_clickhouse,
    looks_every,
    per_session_sd,
    ratio_variance,
    sessions,
    simulate_designs,
)
from feedbackloop.analysis.statistics import (
    VERDICT_PROMISES,
    BinaryStats,
    ExperimentDesign,
    Verdict,
    compare_counts,
    fisher_exact_test,
    two_proportion_ztest,
)

ALPHA, MDE = 0.05, 0.03
SCENARIO = Scenario(base_rate=0.3)
Z = float(stats.norm.isf(ALPHA / 2)) + float(stats.norm.ppf(0.8))
SIG = (Verdict.SIGNIFICANT_IMPROVEMENT, Verdict.SIGNIFICANT_REGRESSION)


def _se(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-9) / n)


def _old_and_naive(
    c: tuple[np.ndarray, np.ndarray],
    t: tuple[np.ndarray, np.ndarray],
    looks: list[int],
    mde: float | None,
) -> tuple[bool, bool]:
    """Did the pre-issue rule / naive peeking print "significant" at some look?"""
    from feedbackloop.analysis.statistics.sequential import msprt_p_value

    rc, vc = ratio_variance(*_cumulative(*c, looks))
    rt, vt = ratio_variance(*_cumulative(*t, looks))
    n = np.asarray(looks, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (rt - rc) / np.sqrt(vc + vt)
        p = 2 * stats.norm.sf(np.abs(z))
        seq = msprt_p_value(z, n / 2)
        effect = np.abs(rt - rc) if mde is None else mde
        # Sessions "needed" per variant: 2 ((z_a/2 + z_b) sd / effect)^2, sd per session.
        needed = 2 * (Z * np.sqrt(vc * n) / effect) ** 2
    old = (seq <= ALPHA) | ((n >= needed) & (p <= ALPHA))
    return bool(np.nan_to_num(old).any()), bool((p <= ALPHA).any())


def aa_table(sims: int) -> None:
    sd = per_session_sd(SCENARIO)
    designs = {
        "sequential, no MDE": ExperimentDesign(),
        "sequential, MDE 0.03": ExperimentDesign(mde=MDE),
        "fixed horizon, MDE 0.03": ExperimentDesign(mode="fixed", mde=MDE, baseline=0.3, sd=sd),
    }
    print(f"\n### A/A: printed 'significant' at some look ({sims:,} experiments, alpha {ALPHA})\n")
    print("| looks | design | ours | ± SE | before issue 14 | naive peeking |")
    print("|---|---|---|---|---|---|")
    for label, looks in (
        ("every 100 sessions to 20,000 (200 looks)", looks_every(100, 20_000)),
        ("every 25 sessions to 5,000 (200 looks)", looks_every(25, 5_000)),
        ("every 100 sessions to 5,000 (50 looks)", looks_every(100, 5_000)),
    ):
        t0 = time.perf_counter()
        ours = simulate_designs(SCENARIO, designs, looks, sims, seed=2026)
        rng = np.random.default_rng(2026)  # the same experiments again, for the baselines
        old = {"sequential, no MDE": 0, "sequential, MDE 0.03": 0}
        naive = 0
        for _ in range(sims):
            c = sessions(rng, max(looks), 0.3, SCENARIO)
            t = sessions(rng, max(looks), 0.3, SCENARIO)
            o1, nv = _old_and_naive(c, t, looks, None)
            o2, _ = _old_and_naive(c, t, looks, MDE)
            old["sequential, no MDE"] += o1
            old["sequential, MDE 0.03"] += o2
            naive += nv
        for name, res in ours.items():
            before = f"{old[name] / sims:.3f}" if name in old else "n/a"
            print(
                f"| {label} | {name} | **{res.ever_significant:.3f}** | "
                f"{_se(res.ever_significant, sims):.3f} | {before} | {naive / sims:.3f} |"
            )
        print(f"<!-- {label}: {time.perf_counter() - t0:.0f} s -->")


def power_table(sims: int) -> None:
    sd = per_session_sd(SCENARIO)
    fixed = ExperimentDesign(mode="fixed", mde=MDE, baseline=0.3, sd=sd)
    n = fixed.planned_sessions
    assert n is not None
    designs = {"fixed horizon": fixed, "sequential": ExperimentDesign(mde=MDE)}
    print(
        f"\n### A/B, true effect = MDE 0.03: power of the printed verdict ({sims:,} experiments)\n"
    )
    print(f"Planned horizon for 80% power: {n:,} sessions per variant (per-session sd {sd:.4f}).\n")
    print("| design | significant by the planned horizon | by 3x the horizon | by 20,000 |")
    print("|---|---|---|---|")
    for name, design in designs.items():
        row = []
        for last in (n, 3 * n, 20_000):
            looks = [k for k in looks_every(100, last)] + ([last] if last % 100 else [])
            res = simulate_designs(Scenario(0.3, effect=MDE), {name: design}, looks, sims, 7)
            row.append(
                f"{res[name].ever_significant:.3f} ± {_se(res[name].ever_significant, sims):.3f}"
            )
        print(f"| {name} | " + " | ".join(row) + " |")
    print("\nDesigned power: 0.800.")


def futility_table(sims: int) -> None:
    design = ExperimentDesign(mde=MDE)
    looks = looks_every(100, 20_000)
    print(
        "\n### Futility: 'no difference as large as the MDE' "
        f"(sequential, MDE 0.03, {sims:,} experiments)\n"
    )
    print(
        "| true difference | futility printed by 5,000 | by 20,000 "
        "| median sessions at first futility | significant by 20,000 |"
    )
    print("|---|---|---|---|---|")
    for label, effect in (("0 (A/A)", 0.0), ("1/2 MDE (0.015)", MDE / 2), ("1 MDE (0.03)", MDE)):
        rng = np.random.default_rng(99)
        first: list[int] = []
        by5k = sig = 0
        for _ in range(sims):
            c = sessions(rng, 20_000, 0.3, SCENARIO)
            t = sessions(rng, 20_000, 0.3 + effect, SCENARIO)
            v = fast_verdicts(c, t, looks, design)
            if Verdict.NO_DIFFERENCE in v:
                i = v.index(Verdict.NO_DIFFERENCE)
                first.append(looks[i])
                by5k += looks[i] <= 5_000
            sig += any(x in SIG for x in v)
        med = f"{int(np.median(first)):,}" if first else "n/a"
        print(
            f"| {label} | {by5k / sims:.3f} | {len(first) / sims:.3f} | {med} | {sig / sims:.3f} |"
        )
    print(f"\nPromise: at a true difference of the MDE, at most alpha = {ALPHA}.")


def chdb_table(experiments: int) -> None:
    from feedbackloop.analysis.reads.scope import Scope
    from feedbackloop.analysis.reports.report import report_experiment
    from feedbackloop.infra import get_client
    from feedbackloop.sinks import migrate
    from feedbackloop.sinks.query import execute, readonly_client

    looks = looks_every(250, 2_000)
    start = dt.datetime(2026, 1, 5, tzinfo=dt.timezone.utc)
    with tempfile.TemporaryDirectory() as d:
        dsn = f"chdb:///{d}"
        admin = get_client(dsn)
        migrate(admin, "bench")
        rng = np.random.default_rng(4)
        data = {}
        for i in range(experiments):
            c, t = sessions(rng, 2_000, 0.3, SCENARIO), sessions(rng, 2_000, 0.3, SCENARIO)
            load_into_clickhouse(admin, "bench", f"aa-{i}", c, t, start)
            data[f"aa-{i}"] = (c, t)
        reader = readonly_client(dsn, "bench")
        t0 = time.perf_counter()
        same = significant = total = 0
        for name, (c, t) in data.items():
            want = fast_verdicts(c, t, looks, ExperimentDesign())
            got = []
            for look in looks:
                scope = Scope(experiment=name, until=start + dt.timedelta(seconds=2 * look))
                report = report_experiment(lambda sql: execute(reader, sql, 100_000), scope)
                got.append(report.decisions[0].decision.verdict)
            same += sum(a == b for a, b in zip(got, want, strict=True))
            total += len(looks)
            significant += any(v in SIG for v in got)
        took = time.perf_counter() - t0
        reader.close()
        admin.close()
    print(f"\n### Through `ab report` on embedded ClickHouse ({experiments} A/A experiments)\n")
    print("| looks | printed significant | verdicts equal to the pure function | reports/s |")
    print("|---|---|---|---|")
    print(
        f"| every 250 sessions to 2,000 | {significant}/{experiments} = "
        f"{significant / experiments:.3f} | {same}/{total} | {total / took:.1f} |"
    )


def compare_speed() -> None:
    n = 100_000_000
    tracemalloc.start()
    t0 = time.perf_counter()
    res = compare_counts((n // 2, n), (n // 2 + 10_000, n), mde=0.001)
    ours = time.perf_counter() - t0
    ours_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t0 = time.perf_counter()
    two_proportion_ztest(BinaryStats(n, n // 2), BinaryStats(n, n // 2 + 10_000))
    raw = time.perf_counter() - t0
    m = 1_000_000
    tracemalloc.start()
    t0 = time.perf_counter()
    fisher_exact_test(BinaryStats(m, m // 2), BinaryStats(m, m // 2 + 100))
    fisher = time.perf_counter() - t0
    fisher_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    print("\n### `stats compare` at 10^8 units per arm\n")
    print("| what | time | peak memory (Python allocations) |")
    print("|---|---|---|")
    print(
        f"| ours: compare_counts, 10^8 per arm (verdict: {res.decision.text}) "
        f"| {ours * 1000:.1f} ms | {ours_peak / 1e6:.2f} MB |"
    )
    print(f"| raw: the z-test alone, 10^8 per arm | {raw * 1000:.2f} ms | |")
    print(
        "| Fisher's exact test at 10^6 per arm (ran on every call before; linear in n) "
        f"| {fisher * 1000:.0f} ms | {fisher_peak / 1e6:.0f} MB |"
    )
    print(f"\nratio ours / raw z-test: {ours / raw:.0f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sims", type=int, default=2000)
    ap.add_argument("--chdb", type=int, default=0, help="A/A experiments through chDB (0: skip)")
    args = ap.parse_args()
    print("### Verdicts and what each promises\n")
    print("| verdict | promise |")
    print("|---|---|")
    for v, promise in VERDICT_PROMISES.items():
        print(f"| {v.value} | {promise} |")
    aa_table(args.sims)
    power_table(args.sims)
    futility_table(args.sims)
    if args.chdb:
        chdb_table(args.chdb)
    compare_speed()


if __name__ == "__main__":
    main()
