"""The main job end to end on embedded defaults: the stack starts and stops, the demo
accounts for every event and finds the planted effect."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedbackloop.config import Settings
from feedbackloop.demo import run_demo
from feedbackloop.infra.stack import Stack, default_services
from feedbackloop.simulator import ShadowPlan, TrafficSpec

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_accounts_for_every_event_and_finds_the_planted_effect(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_port=0)  # embedded broker, any free port
    spec = TrafficSpec(satisfaction={"control": 0.60, "treatment": 0.75}, seed=3)
    lines: list[str] = []
    demo = run_demo(settings, duration_s=4, rate=3000, spec=spec, echo=lines.append)
    sim = demo.simulation
    sent = sum(sim.sent.values())
    assert sent > 5000
    assert demo.sdk_stats["enqueued"] == demo.sdk_stats["delivered"] == sent
    assert demo.read_back == sent and demo.missing == 0
    assert demo.malformed_read == sim.malformed
    assert sum(demo.by_type.values()) == sent
    assert any("broker" in line and "ready" in line for line in lines)
    assert any("broker" in line and "stopped" in line for line in lines)

    from feedbackloop.analysis.statistics import compare_counts

    cmp = compare_counts(control=demo.thumbs["control"], treatment=demo.thumbs["treatment"])
    assert cmp.to_dict()["decision"]["verdict"] == "significant_improvement"
    up_c, n_c = demo.thumbs["control"]
    up_t, n_t = demo.thumbs["treatment"]
    assert up_c / n_c == pytest.approx(0.60, abs=0.04)
    assert up_t / n_t == pytest.approx(0.75, abs=0.04)


def test_stack_starts_services_reports_health_and_stops_them_cleanly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, broker_port=0)
    seen: list[tuple[str, str, str]] = []
    stack = Stack(
        settings,
        default_services(with_stream=False, with_web=False),
        on_status=lambda st: seen.append((st.name, st.state, st.detail)),
    )
    run = stack.start()
    try:
        assert run.bootstrap_servers and run.bootstrap_servers.startswith("127.0.0.1:")
        assert stack.healthy()
        # the durable default: the broker's log on the embedded S3 store, supervised too
        assert [st.name for st in stack.status()] == ["s3", "broker", "sink"]
    finally:
        stack.stop()
    ready = {name: detail for name, state, detail in seen if state == "ready"}
    assert ready["sink"].startswith("sink running") and "127.0.0.1:" in ready["broker"]
    assert ("broker", "stopped", "") in seen
    # the sink exited by itself on SIGTERM, after flushing, rather than being killed
    assert ("sink", "stopped", "exit code 0") in seen


def test_demo_through_the_whole_pipeline_accounts_for_every_event(tmp_path: Path) -> None:
    """`feedbackloop demo` as CI can afford it: broker, stream jobs, sink and web, a few
    seconds of traffic; every event is in ClickHouse, every malformed one a dead letter, and
    the report shows the planted effect."""
    from feedbackloop.infra.stack import default_services

    settings = Settings(data_dir=tmp_path, broker_port=0, web_port=0)
    spec = TrafficSpec(
        satisfaction={"control": 0.60, "treatment": 0.75},
        seed=5,
        malformed_share=0.01,
        shadow=ShadowPlan(),
    )
    demo = run_demo(
        settings,
        duration_s=5,
        rate=2000,
        spec=spec,
        services=default_services(),
        echo=lambda _: None,
    )
    sent = sum(demo.simulation.sent.values())
    assert sent > 5000 and demo.missing == 0
    assert demo.stored_events == sent
    assert demo.stored_dead_letters is not None
    assert demo.stored_dead_letters >= demo.simulation.malformed > 0
    assert "satisfaction" in demo.results, demo.results
    assert "significant improvement" in demo.results, demo.results
    assert "Top failure patterns" in demo.results
    # the planted shadow candidate's answers are stored and its report is printed
    assert demo.simulation.sent["shadow"] > 0
    assert "Shadow candidate v2.0-shadow" in demo.results and "Recommendation:" in demo.results
    assert any(st.name == "web" and "dashboard http://" in st.detail for st in demo.services)
