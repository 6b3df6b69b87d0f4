"""``feedbackloop demo --scenario canary``: two canaries on the live pipeline, one good and
one with a planted satisfaction drop, and the timeline of what the canary guard did.

Runs the embedded broker, the stream jobs (2 s windows, so the story takes about a minute)
and the canary guard in this process, and two SDK clients following the live config, which
send sessions of the two experiments: each session one interaction and one thumbs vote.
Control's thumbs-up rate is ``base``; the bad canary's treatment is ``drop`` lower, the good
one's is not. The guard ramps the good canary through its steps and rolls the bad one back;
the timeline prints every version with who, what and why.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from feedbackloop.config import Settings
from feedbackloop.control import ControlPlane, ExperimentConfig, Guardrail, Status, new_experiment

__all__ = ["CanaryDemo", "run_canary_demo"]

GOOD, BAD = "summary-prompt-v3", "support-prompt-v2"


@dataclass
class CanaryDemo:
    """What happened: every version published, with the seconds since the start."""

    timeline: list[tuple[float, ExperimentConfig]] = field(default_factory=list)
    sessions: int = 0
    finished: bool = False

    def final(self, name: str) -> ExperimentConfig | None:
        found = [cfg for _t, cfg in self.timeline if cfg.name == name]
        return max(found, key=lambda c: c.version) if found else None


def _traffic(
    clients: list, stop: threading.Event, drop: float, base: float, seed: int, demo: CanaryDemo
) -> None:
    rng = random.Random(seed)
    i = 0
    while not stop.is_set():
        for _ in range(300):
            i += 1
            client = clients[i % len(clients)]
            for name in (GOOD, BAD):
                if client.live_config.experiment(name) is None:
                    continue
                sid = f"{name}-{i}"
                variant = client.assign_variant(name, sid)
                iid = client.log_interaction(
                    session_id=sid,
                    user_input="q",
                    response="a",
                    model="m",
                    experiment=name,
                    variant=variant,
                )
                p = base - (drop if name == BAD and variant == "v2" else 0.0)
                client.thumbs(iid, rng.random() < p)
        demo.sessions = i
        time.sleep(0.1)


def run_canary_demo(
    settings: Settings,
    *,
    base: float = 0.70,
    drop: float = 0.10,
    timeout_s: float = 180.0,
    seed: int = 7,
    echo: Callable[[str], None] = print,
) -> CanaryDemo:
    """Run the scenario (see the module docstring); prints the timeline as it happens."""
    from feedbackloop.infra import EmbeddedBroker, ensure_topics
    from feedbackloop.producers import FeedbackClient
    from feedbackloop.schemas import Topics
    from feedbackloop.stream_jobs import StreamConfig, StreamJobs
    from feedbackloop.stream_jobs.canary import CanaryGuard

    demo = CanaryDemo()
    data = Path(settings.data_dir) / "canary-demo"
    with EmbeddedBroker(port=0, log_path=data / "broker.log") as broker:
        s = settings.model_copy(
            update={
                "bootstrap_servers": broker.bootstrap_servers,
                "topic_prefix": "canary-demo.",
                "app_id": "demo-app",
                "data_dir": data,
            }
        )
        ensure_topics(s.kafka_client_config(), Topics(s.topic_prefix).all(), s.topic_partitions)
        t0 = time.monotonic()

        def record(cfg: ExperimentConfig) -> None:
            t = time.monotonic() - t0
            demo.timeline.append((t, cfg))
            why = f": {cfg.reason}" if cfg.reason else ""
            serving = cfg.describe().split(": ", 1)[1]
            echo(
                f"  {t:6.1f}s  {cfg.name:<18} v{cfg.version} {cfg.action:<8} "
                f"by {cfg.changed_by:<12} -> {serving}{why}"
            )

        plane = ControlPlane(s)
        rails = (Guardrail(metric="satisfaction", tolerance=0.03),)
        echo(
            f"timeline (control satisfaction {base:.0%}; {BAD} has a planted "
            f"{drop * 100:.0f}-point drop):"
        )
        for name in (GOOD, BAD):
            record(
                plane.create(
                    new_experiment(
                        "demo-app",
                        name,
                        {"v1": 0.5, "v2": 0.5},
                        changed_by="you",
                        reason="canary of the new prompt",
                        canary_steps=(0.05, 0.25, 0.5),
                        guardrails=rails,
                        min_step_s=8,
                        min_step_samples=400,
                    )
                )
            )
        clients = [
            FeedbackClient(
                s.model_copy(update={"data_dir": data / f"app{i}"}), live_experiments=True
            )
            for i in range(2)
        ]
        for c in clients:
            assert c.live_config is not None
            c.live_config.wait_for(lambda lc: len(lc.configs) == 2, timeout=30)
        guard = CanaryGuard(s, interval_s=0.5, on_action=lambda a: record(a.config))
        stop = threading.Event()
        feeder = threading.Thread(
            target=_traffic, args=(clients, stop, drop, base, seed, demo), daemon=True
        )

        def done() -> bool:
            good, bad = demo.final(GOOD), demo.final(BAD)
            return (
                good is not None
                and good.canary is not None
                and good.canary.last_step
                and bad is not None
                and bad.status is Status.rolled_back
            )

        async def main() -> None:
            jobs = StreamJobs(
                s,
                StreamConfig(
                    window_s=2.0, allowed_lateness_s=0.5, grace_s=0.5, tick_s=0.25, idle_close_s=1.0
                ),
                data_dir=data / "faust",
            )
            async with jobs.running():
                await jobs.wait_assigned()
                feeder.start()
                with guard:
                    deadline = time.monotonic() + timeout_s
                    while not done() and time.monotonic() < deadline:
                        await asyncio.sleep(0.2)

        try:
            asyncio.run(main())
        finally:
            stop.set()
            feeder.join(timeout=10)
            for c in clients:
                c.close(timeout=5)
        demo.finished = done()
        treated = [f"{BAD}-{i}" for i in range(1, demo.sessions + 1)]
        served = {clients[0].assign_variant(BAD, sid) for sid in treated}
        echo(
            f"{demo.sessions:,} sessions per experiment; after the rollback every SDK serves "
            f"{', '.join(sorted(served))} to all {len(treated):,} sessions of {BAD}"
        )
        echo(
            "see it yourself: feedbackloop experiments show NAME   (audit trail: "
            "SELECT * FROM experiment_changes)"
        )
    return demo
