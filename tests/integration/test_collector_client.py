"""The SDK over HTTP: simulated traffic through the real collector reaches Kafka."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka_reading import Recorder, read_topic

from feedbackloop.config import Settings
from feedbackloop.infra import ensure_topics
from feedbackloop.producers.collector_client import CollectorClient
from feedbackloop.schemas import Topics
from feedbackloop.simulator import Simulator, TrafficSpec

pytestmark = pytest.mark.integration


def test_simulated_traffic_through_the_collector_arrives_in_kafka(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    from feedbackloop.web import WebServer

    settings = Settings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix, data_dir=tmp_path, web_port=0
    )
    ensure_topics(settings.kafka_client_config(), Topics(topic_prefix).all(), 4)
    server = WebServer(settings, "127.0.0.1", 0)
    server.start()
    try:
        sent = Recorder()
        client = CollectorClient(
            server.url, None, settings, app_id="demo-app", on_event=sent, batch_size=200
        )
        result = Simulator(client, TrafficSpec(malformed_share=0)).run(sessions=200)
        stats = client.close(timeout=30)
    finally:
        server.stop()
    assert stats.delivered == len(sent) == sum(result.sent.values()) > 500
    assert stats.failed == stats.dropped == 0
    messages = read_topic(kafka_bootstrap, Topics(topic_prefix).events, expect=len(sent))
    from feedbackloop.schemas import decode

    assert {decode(m.value()).event_id for m in messages} == set(sent)
