"""Fixed-seed simulation of the canary guard's decision (``feedbackloop.control.guardrails.judge``,
the function the stream job runs) on sessions, chatty ones included: false-rollback rate on
A/A canaries and time to rollback of planted satisfaction drops, at 1k and 10k interactions
per minute.

Sessions arrive every minute; each makes one interaction a minute until it ends. 95 % of
sessions are short (geometric, mean 2.5 interactions), 5 % are chatty (20 to 80
interactions, so about half of all interactions come from chatty sessions). Each session
has its own satisfaction ``p_s ~ Beta`` (mean 0.70, concentration 2: users differ a lot, so
the votes of one session are strongly correlated); 30 % of interactions get a thumbs vote,
up with probability ``p_s`` (the treatment's: ``p_s - drop``). A session keeps the variant
it got when it arrived (the ramp assigns new sessions by the current step's weight).

Each canary ramps 1% -> 5% -> 25% -> 50% (each step >= 10 min and >= 200 treatment
sessions with a vote), guarded on satisfaction (tolerance 0, alpha 0.05). After every
minute (one look, as the guard looks at least that often) the guard's own ``judge`` reads
the per-session sums (the ``RatioStats`` the guard's :class:`ArmStats` keeps). A canary not
rolled back within the horizon counts as not rolled back. For comparison, the same data is
also judged per vote (each vote an independent unit, the guard's test before it counted
sessions); that column only records whether the per-vote test would have rolled back.

    .venv/bin/python scripts/canary_simulation.py [--runs 400] [--hours 6] [--rates 1000,10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import statistics
import sys
from dataclasses import dataclass

import numpy as np

from feedbackloop.analysis.statistics.sequential import sequential_test_proportions
from feedbackloop.analysis.statistics.sufficient import BinaryStats, RatioStats
from feedbackloop.control import Guardrail, apply, new_experiment
from feedbackloop.control.guardrails import judge

BASE = 0.70
CONCENTRATION = 2.0
VOTE_SHARE = 0.3
CHATTY_SHARE = 0.05
SHORT_MEAN = 2.5
CHATTY_RANGE = (20, 80)
#: The seed of a row is 1000 * rate + this (drop -> offset).
ROW_SEEDS = {0.0: 0, 0.05: 1, 0.10: 2, 0.20: 3}


@dataclass
class _Arm:
    """The guard's view of one arm: the six sums of :class:`RatioStats` for satisfaction."""

    sums: np.ndarray

    def metric(self, name: str) -> RatioStats:
        assert name == "satisfaction"
        n, sy, sd, syy, sdd, syd = (float(x) for x in self.sums)
        return RatioStats(int(n), sy, sd, syy, sdd, syd)


def _contrib(y: np.ndarray, d: np.ndarray, arm: np.ndarray) -> np.ndarray:
    """Per-arm sums (n, y, d, y², d², yd) of sessions with at least one vote."""
    has = d > 0
    out = np.zeros((2, 6))
    for a in (0, 1):
        m = has & (arm == a)
        yy, dd = y[m], d[m]
        out[a] = (m.sum(), yy.sum(), dd.sum(), (yy * yy).sum(), (dd * dd).sum(), (yy * dd).sum())
    return out


def _canary(alpha: float, t0: dt.datetime):  # type: ignore[no-untyped-def]
    cfg = new_experiment(
        "sim",
        "canary",
        {"v1": 0.5, "v2": 0.5},
        changed_by="sim",
        canary_steps=(0.01, 0.05, 0.25, 0.5),
        guardrails=(Guardrail(metric="satisfaction", tolerance=0.0),),
        min_step_s=600,
        min_step_samples=200,
        alpha=alpha,
    )
    assert cfg.canary is not None
    return cfg.model_copy(
        update={"canary": cfg.canary.model_copy(update={"started_at": t0, "step_started_at": t0})}
    )


def simulate(
    rate_per_min: int,
    drop: float,
    runs: int,
    hours: float,
    seed: int,
    alpha: float = 0.05,
    chatty_share: float = CHATTY_SHARE,
) -> list[tuple[float | None, bool]]:
    """Per run: (minutes to rollback or None, whether the per-vote test would have rolled
    back by then)."""
    rng = np.random.default_rng(seed)
    mean = (1 - chatty_share) * SHORT_MEAN + chatty_share * sum(CHATTY_RANGE) / 2
    arrivals = rate_per_min / mean
    a, b = BASE * CONCENTRATION, (1 - BASE) * CONCENTRATION
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    out: list[tuple[float | None, bool]] = []
    for _ in range(runs):
        cfg = _canary(alpha, t0)
        # active sessions: arm (0 control, 1 treatment), p, interactions left, y, d, voted
        # at this step
        arm = np.zeros(0, dtype=np.int8)
        p = np.zeros(0)
        left = np.zeros(0, dtype=np.int64)
        y = np.zeros(0)
        d = np.zeros(0)
        at_step = np.zeros(0, dtype=bool)
        sums = np.zeros((2, 6))  # per arm, of every session (active or ended)
        votes = np.zeros((2, 2))  # per arm: votes, ups (the per-vote test)
        step_sessions = 0
        rolled: float | None = None
        per_vote = False
        for minute in range(1, int(hours * 60) + 1):
            assert cfg.canary is not None
            k = int(rng.poisson(arrivals))
            chatty = rng.random(k) < chatty_share
            n_new = np.where(
                chatty,
                rng.integers(CHATTY_RANGE[0], CHATTY_RANGE[1] + 1, k),
                rng.geometric(1 / SHORT_MEAN, k),
            )
            new_arm = (rng.random(k) < cfg.canary.weight).astype(np.int8)
            ps = rng.beta(a, b, k)
            ps = np.where(new_arm == 1, np.clip(ps - drop, 0.0, 1.0), ps)
            arm = np.concatenate([arm, new_arm])
            p = np.concatenate([p, ps])
            left = np.concatenate([left, n_new])
            y = np.concatenate([y, np.zeros(k)])
            d = np.concatenate([d, np.zeros(k)])
            at_step = np.concatenate([at_step, np.zeros(k, dtype=bool)])
            # one interaction of every active session this minute
            voted = rng.random(arm.size) < VOTE_SHARE
            up = voted & (rng.random(arm.size) < p)
            changed = voted
            before = _contrib(y[changed], d[changed], arm[changed])
            y[changed] += up[changed]
            d[changed] += 1
            sums += _contrib(y[changed], d[changed], arm[changed]) - before
            for g in (0, 1):
                m = arm == g
                votes[g] += (voted[m].sum(), up[m].sum())
            newly = voted & (arm == 1) & ~at_step
            step_sessions += int(newly.sum())
            at_step |= newly
            left -= 1
            keep = left > 0
            arm, p, left, y, d, at_step = (x[keep] for x in (arm, p, left, y, d, at_step))
            now = t0 + dt.timedelta(minutes=minute)
            if not per_vote:
                c = BinaryStats(int(votes[0, 0]), int(votes[0, 1]))
                t = BinaryStats(int(votes[1, 0]), int(votes[1, 1]))
                if c.n and t.n:
                    pv = sequential_test_proportions(c, t, alpha)
                    per_vote = pv.ok and pv.p_value <= alpha and pv.estimate < 0
            step = _Arm(np.array([step_sessions, 0, 1, 0, 0, 0]))
            verdict = judge(cfg, (_Arm(sums[0]), _Arm(sums[1])), step, now)  # type: ignore[arg-type]
            if verdict.action == "rollback":
                rolled = float(minute)
                break
            if verdict.action == "advance":
                cfg = apply(cfg, "advance", changed_by="sim")
                assert cfg.canary is not None
                cfg = cfg.model_copy(
                    update={"canary": cfg.canary.model_copy(update={"step_started_at": now})}
                )
                at_step[:] = False
                step_sessions = 0
        out.append((rolled, per_vote))
    return out


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--rates", default="1000,10000")
    parser.add_argument("--drops", default="0,0.05,0.10,0.20")
    parser.add_argument("--chatty", type=float, default=CHATTY_SHARE, help="chatty session share")
    args = parser.parse_args()
    print(
        f"canary guard simulation: {args.runs} canaries per row, {args.hours:g} h horizon, "
        f"satisfaction {BASE:.0%} (per-session Beta, concentration {CONCENTRATION:g}), "
        f"{VOTE_SHARE:.0%} of interactions voted, {args.chatty:.0%} chatty sessions "
        f"({CHATTY_RANGE[0]}-{CHATTY_RANGE[1]} interactions), ramp 1/5/25/50%, alpha 0.05, "
        "tolerance 0"
    )
    print()
    print(
        "| interactions/min | drop | rolled back (per session) | median min to rollback "
        "| p90 min | per-vote test would have |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for rate in (int(r) for r in args.rates.split(",")):
        for drop in (float(d) for d in args.drops.split(",")):
            # each row's seed depends on its rate and drop only, so rows can run apart
            i = ROW_SEEDS.get(drop, round(drop * 1000))
            res = simulate(
                rate, drop, args.runs, args.hours, seed=1000 * rate + i, chatty_share=args.chatty
            )
            hit = [r for r, _ in res if r is not None]
            share = len(hit) / len(res)
            per_vote = sum(v for _, v in res) / len(res)
            se = math.sqrt(max(share * (1 - share), 1e-9) / len(res))
            med = f"{statistics.median(hit):.0f}" if hit else "-"
            p90 = f"{_q(hit, 0.9):.0f}" if hit else "-"
            label = "0 (A/A)" if drop == 0 else f"{drop * 100:.0f} pt"
            print(
                f"| {rate:,} | {label} | {share:.1%} (±{se:.1%}) | {med} | {p90} | {per_vote:.1%} |"
            )
            sys.stdout.flush()


if __name__ == "__main__":
    main()
