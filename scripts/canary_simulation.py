"""Fixed-seed simulation of the canary guard's decision (``feedbackloop.control.guardrails.judge``,
the function the stream job runs): false-rollback rate on A/A canaries and time to rollback
of planted satisfaction drops, at 1k and 10k interactions per minute.

Each simulated canary ramps 1% -> 5% -> 25% -> 50% (each step >= 10 min and >= 500 treatment
votes), guarded on satisfaction (tolerance 0, alpha 0.05). Every minute (one stream window)
``votes_per_min = interactions_per_min * vote_share`` thumbs arrive, split by the current
step's weight; control's up-rate is 0.70, the treatment's 0.70 - drop. The guard looks
after every window, as the stream job does. A canary not rolled back within the horizon
counts as not rolled back.

    .venv/bin/python scripts/canary_simulation.py [--runs 400] [--hours 12]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys

import numpy as np

from feedbackloop.control import Guardrail, apply, new_experiment
from feedbackloop.control.guardrails import ArmStats, judge

BASE = 0.70
VOTE_SHARE = 0.3


def simulate(
    rate_per_min: int, drop: float, runs: int, hours: float, seed: int, alpha: float = 0.05
) -> list[float | None]:
    """Minutes to rollback per run (None: not rolled back within ``hours``)."""
    rng = np.random.default_rng(seed)
    votes = int(rate_per_min * VOTE_SHARE)
    out: list[float | None] = []
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    for _ in range(runs):
        cfg = new_experiment(
            "sim",
            "canary",
            {"v1": 0.5, "v2": 0.5},
            changed_by="sim",
            canary_steps=(0.01, 0.05, 0.25, 0.5),
            guardrails=(Guardrail(metric="satisfaction", tolerance=0.0),),
            min_step_s=600,
            min_step_samples=500,
            alpha=alpha,
        )
        assert cfg.canary is not None
        cfg = cfg.model_copy(
            update={
                "canary": cfg.canary.model_copy(update={"started_at": t0, "step_started_at": t0})
            }
        )
        total_c, total_t = ArmStats(), ArmStats()
        step_t = ArmStats()
        rolled: float | None = None
        for minute in range(1, int(hours * 60) + 1):
            assert cfg.canary is not None
            w = cfg.canary.weight
            n_t = int(rng.binomial(votes, w))
            n_c = votes - n_t
            up_t = int(rng.binomial(n_t, BASE - drop))
            up_c = int(rng.binomial(n_c, BASE))
            c = ArmStats(thumbs_up=up_c, thumbs_down=n_c - up_c)
            t = ArmStats(thumbs_up=up_t, thumbs_down=n_t - up_t)
            total_c += c
            total_t += t
            step_t += t
            now = t0 + dt.timedelta(minutes=minute)
            verdict = judge(cfg, (total_c, total_t), (ArmStats(), step_t), now)
            if verdict.action == "rollback":
                rolled = float(minute)
                break
            if verdict.action == "advance":
                cfg = apply(cfg, "advance", changed_by="sim")
                assert cfg.canary is not None
                cfg = cfg.model_copy(
                    update={"canary": cfg.canary.model_copy(update={"step_started_at": now})}
                )
                step_t = ArmStats()
        out.append(rolled)
    return out


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--hours", type=float, default=12.0)
    args = parser.parse_args()
    print(
        f"canary guard simulation: {args.runs} canaries per row, {args.hours:g} h horizon, "
        f"satisfaction {BASE:.0%}, {VOTE_SHARE:.0%} of interactions voted, ramp 1/5/25/50%, "
        "alpha 0.05, tolerance 0"
    )
    print()
    print("| interactions/min | drop | rolled back | median min to rollback | p90 min |")
    print("|---:|---:|---:|---:|---:|")
    for rate in (1_000, 10_000):
        for i, drop in enumerate((0.0, 0.05, 0.10, 0.20)):
            res = simulate(rate, drop, args.runs, args.hours, seed=1000 * rate + i)
            hit = [r for r in res if r is not None]
            share = len(hit) / len(res)
            med = f"{statistics.median(hit):.0f}" if hit else "-"
            p90 = f"{_q(hit, 0.9):.0f}" if hit else "-"
            label = "0 (A/A)" if drop == 0 else f"{drop * 100:.0f} pt"
            print(f"| {rate:,} | {label} | {share:.1%} | {med} | {p90} |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
