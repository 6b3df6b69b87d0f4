"""Canary releases through the real pipeline: SDK -> broker -> stream jobs -> canary guard
-> control topic -> SDK, on the embedded broker, with short windows.

A planted 10-point satisfaction drop on a 5% canary is rolled back by the guard on its own
(webhook alert, reason in the audit trail), after which every SDK serves control to the
sessions that had the treatment; a canary whose treatment costs more and fails more often
is rolled back on its cost and error guardrails; a good canary ramps through to its last
step. The guard judges sessions, read from the enriched topic.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import random
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("faust")

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.control import ControlPlane, Guardrail, Status, new_experiment  # noqa: E402
from feedbackloop.infra import ensure_topics  # noqa: E402
from feedbackloop.producers import FeedbackClient  # noqa: E402
from feedbackloop.schemas import Topics  # noqa: E402
from feedbackloop.stream_jobs import StreamConfig, StreamJobs  # noqa: E402
from feedbackloop.stream_jobs.canary import CanaryGuard  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

PARTITIONS = 2
FAST = dict(window_s=2.0, allowed_lateness_s=0.5, grace_s=0.5, tick_s=0.25, idle_close_s=1.0)
BASE_RATE = 0.7


class _Hook(http.server.BaseHTTPRequestHandler):
    posts: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.posts.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _traffic(clients: list[FeedbackClient], stop: threading.Event, drop: dict[str, float]) -> None:
    """Sessions, each one interaction and a thumbs vote; ``drop[experiment]`` lowers the
    treatment's thumbs-up rate."""
    rng = random.Random(7)
    i = 0
    while not stop.is_set():
        for _ in range(400):
            i += 1
            client = clients[i % len(clients)]
            for name in ("bad-prompt", "good-prompt", "pricey-prompt"):
                sid = f"{name}-s{i}"
                variant = (
                    client.assign_variant(name, sid)
                    if client.live_config.experiment(name)
                    else None
                )
                if variant is None:
                    continue
                pricey = name == "pricey-prompt" and variant == "v2"
                failed = rng.random() < (0.15 if pricey else 0.01)
                iid = client.log_interaction(
                    session_id=sid,
                    user_input="q",
                    response="a",
                    model="m",
                    experiment=name,
                    variant=variant,
                    cost_usd=(0.0016 if pricey else 0.0010) * rng.uniform(0.8, 1.2),
                    metadata={"error": "timeout"} if failed else {},
                )
                p = BASE_RATE - (drop.get(name, 0.0) if variant == "v2" else 0.0)
                client.thumbs(iid, rng.random() < p)
        time.sleep(0.1)


def test_a_bad_canary_is_rolled_back_and_a_good_one_reaches_its_last_step(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        topic_partitions=PARTITIONS,
        app_id="shop",
        data_dir=tmp_path,
    )
    ensure_topics(settings.kafka_client_config(), Topics(topic_prefix).all(), PARTITIONS)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.posts = []
    hook = f"http://127.0.0.1:{server.server_address[1]}/hook"

    plane = ControlPlane(settings)
    rails = (Guardrail(metric="satisfaction", tolerance=0.03),)
    plane.create(
        new_experiment(
            "shop",
            "bad-prompt",
            {"v1": 0.5, "v2": 0.5},
            changed_by="alice",
            reason="try v2",
            canary_steps=(0.05, 0.25),
            guardrails=rails,
            min_step_s=3600,
            min_step_samples=100,
        )
    )
    plane.create(
        new_experiment(
            "shop",
            "good-prompt",
            {"v1": 0.5, "v2": 0.5},
            changed_by="alice",
            reason="try v2",
            canary_steps=(0.05, 0.25, 0.5),
            guardrails=rails,
            min_step_s=2,
            min_step_samples=100,
        )
    )
    plane.create(
        new_experiment(
            "shop",
            "pricey-prompt",
            {"v1": 0.5, "v2": 0.5},
            changed_by="alice",
            reason="try the bigger model",
            canary_steps=(0.05, 0.25),
            guardrails=(
                Guardrail(metric="cost_usd", tolerance=0.0002),
                Guardrail(metric="error", tolerance=0.02),
            ),
            min_step_s=3600,
            min_step_samples=100,
        )
    )
    clients = [
        FeedbackClient(
            settings.model_copy(update={"data_dir": tmp_path / f"app{i}"}), live_experiments=True
        )
        for i in range(2)
    ]
    for c in clients:
        assert c.live_config is not None
        assert c.live_config.wait_for(lambda lc: len(lc.configs) == 3, timeout=30)
    bad_sessions = [f"bad-prompt-s{i}" for i in range(20_000)]
    treated = [s for s in bad_sessions if clients[0].assign_variant("bad-prompt", s) == "v2"]
    assert 0.03 < len(treated) / len(bad_sessions) < 0.07  # the 5% canary

    stop = threading.Event()
    feeder = threading.Thread(
        target=_traffic, args=(clients, stop, {"bad-prompt": 0.10}), daemon=True
    )
    guard = CanaryGuard(settings, interval_s=0.5, webhook_url=hook)

    def done() -> bool:
        cur = {c.name: c for c in guard.configs.values()}
        bad, good = cur.get("bad-prompt"), cur.get("good-prompt")
        pricey = cur.get("pricey-prompt")
        return (
            bad is not None
            and bad.status is Status.rolled_back
            and pricey is not None
            and pricey.status is Status.rolled_back
            and good is not None
            and good.canary is not None
            and good.canary.last_step
        )

    async def main() -> None:
        jobs = StreamJobs(settings, StreamConfig(**FAST), data_dir=tmp_path / "faust")
        async with jobs.running():
            await jobs.wait_assigned()
            feeder.start()
            with guard:
                deadline = time.monotonic() + 180
                while not done():
                    assert time.monotonic() < deadline, guard.judgements
                    await asyncio.sleep(0.2)

    try:
        asyncio.run(main())
    finally:
        stop.set()
        feeder.join(timeout=10)

    rollback = {a.experiment: a for a in guard.actions if a.action == "rollback"}
    assert sorted(rollback) == ["bad-prompt", "pricey-prompt"]
    assert "satisfaction BREACHED" in rollback["bad-prompt"].reason
    assert "sessions" in rollback["bad-prompt"].reason  # judged per session
    pricey_reason = rollback["pricey-prompt"].reason
    assert "cost_usd BREACHED" in pricey_reason or "error BREACHED" in pricey_reason
    assert [a.action for a in guard.actions if a.experiment == "good-prompt"] == [
        "advance",
        "advance",
    ]
    # the alert went out, with the reason
    posted = sorted((p["alert"]["alert_type"], p["alert"]["experiment"]) for p in _Hook.posts)
    assert posted == [("canary_rollback", "bad-prompt"), ("canary_rollback", "pricey-prompt")]
    assert {p["alert"]["metric"] for p in _Hook.posts} <= {"satisfaction", "cost_usd", "error"}
    assert all("rolled back automatically" in p["text"] for p in _Hook.posts)
    # every SDK serves control to every session that had the treatment
    for c in clients:
        assert c.live_config is not None
        assert c.live_config.wait_for(
            lambda lc: lc.configs["bad-prompt"].status is Status.rolled_back, timeout=10
        )
        assert {c.assign_variant("bad-prompt", s) for s in treated} == {"v1"}
        assert c.live_config.wait_for(
            lambda lc: lc.configs["good-prompt"].serving_weights()["v2"] == 0.5, timeout=10
        )
    # the audit trail on the control topic: who, what, why, in order
    history = [h for h in plane.history() if h.name == "bad-prompt"]
    assert [(h.version, h.action, h.changed_by) for h in history] == [
        (1, "create", "alice"),
        (2, "rollback", "canary-guard"),
    ]
    for c in clients:
        c.close()
    server.shutdown()
