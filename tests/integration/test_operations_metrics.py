"""The stack's one scrape target: events sent through the SDK, the HTTP collector and a
malformed raw payload show up in the web server's /metrics as stage counters (collector,
stream, sink), dead letters, consumer lag and sink batch latency."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from feedbackloop.config import Settings
from feedbackloop.infra.stack import Stack, default_services
from feedbackloop.producers import FeedbackClient
from feedbackloop.schemas import Topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]
httpx = pytest.importorskip("httpx")
parser = pytest.importorskip("prometheus_client.parser")


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(
        v
        for (n, ls), v in m.items()
        if n == name and all((k, val) in ls for k, val in labels.items())
    )


def test_metrics_endpoint_counts_what_was_sent(tmp_path: Path) -> None:
    n = 200
    settings = Settings(data_dir=tmp_path, broker_port=0, web_port=0, log_format="json")
    stack = Stack(settings, default_services())
    run = stack.start()
    try:
        web = next(st for st in stack.status() if st.name == "web")
        url = web.detail.split("dashboard ", 1)[1].split("/dashboard/", 1)[0]
        assert url.startswith("http://")

        client = FeedbackClient(run, spool_path=tmp_path / "spool" / "test.sqlite3")
        for i in range(n):
            iid = client.log_interaction(
                session_id=f"s{i}",
                user_input="hi",
                response="hello",
                model="m",
                experiment="e",
                variant="a",
            )
            client.thumbs(iid, i % 3 != 0)
        client.close()
        from confluent_kafka import Producer

        raw = Producer(run.kafka_client_config())
        raw.produce(Topics(run.topic_prefix).events, b"{not json")
        raw.flush(10)
        # and through the HTTP collector (loopback, no keys): one valid, one invalid
        r = httpx.post(
            f"{url}/v1/events",
            json=[
                {
                    "event_type": "interaction",
                    "app_id": "default",
                    "session_id": "h1",
                    "user_input": "x",
                    "response": "y",
                    "model": "m",
                },
                {"event_type": "feedback", "kind": "thumbs"},
            ],
            timeout=10,
        )
        assert r.status_code == 202, r.text

        sent = 2 * n + 1 + 1  # SDK events, the raw payload, the collector's valid event
        deadline = time.monotonic() + 45
        m = _scrape(url)
        while time.monotonic() < deadline:
            m = _scrape(url)
            if (
                _get(m, "feedbackloop_stream_events_total", kind="in") >= sent
                and _get(m, "feedbackloop_sink_rows_total", table="feedback") >= n
                and _get(m, "feedbackloop_sink_rows_total", table="dead_letters") >= 2
            ):
                break
            time.sleep(0.5)
        assert _get(m, "feedbackloop_stream_events_total", kind="in") == sent
        assert _get(m, "feedbackloop_stream_events_total", kind="valid") == sent - 1
        assert _get(m, "feedbackloop_stream_events_total", kind="dead_lettered") == 1
        assert _get(m, "feedbackloop_dead_letters_total", source="stream") == 1
        assert _get(m, "feedbackloop_collector_events_total", outcome="accepted") == 1
        assert _get(m, "feedbackloop_collector_events_total", outcome="rejected") == 1
        assert _get(m, "feedbackloop_dead_letters_total", source="collector") == 1
        assert _get(m, "feedbackloop_sink_rows_total", table="interactions") == n + 1
        assert _get(m, "feedbackloop_sink_rows_total", table="feedback") == n
        # the stream's dead letter and the collector's, stored by the sink
        assert _get(m, "feedbackloop_sink_rows_total", table="dead_letters") == 2
        assert _get(m, "feedbackloop_sink_batch_latency_seconds_count") > 0
        assert _get(m, "feedbackloop_service_up", service="stream") == 1
        assert _get(m, "feedbackloop_service_up", service="sink") == 1
        assert _get(m, "feedbackloop_service_up", service="web") == 1
        lag_series = [k for k in m if k[0] == "feedbackloop_consumer_lag"]
        groups = {dict(ls).get("group") for _, ls in lag_series}
        assert "feedbackloop-sink" in groups and any("stream" in (g or "") for g in groups)
        # all caught up
        assert _get(m, "feedbackloop_consumer_lag", group="feedbackloop-sink") <= 5
    finally:
        stack.stop()
    # the services logged JSON lines (log_format crossed to the children)
    line = next(
        ln for ln in (tmp_path / "logs" / "sink.log").read_text().splitlines() if ln.startswith("{")
    )
    assert '"service": "sink"' in line
