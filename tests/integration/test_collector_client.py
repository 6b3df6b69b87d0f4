"""The SDK over HTTP: simulated traffic through the real collector reaches Kafka."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_reading import Recorder, read_topic

from feedbackloop.config import Settings
from feedbackloop.infra import ensure_topics
from feedbackloop.producers.collector_client import CollectorClient
from feedbackloop.schemas import Topics, decode
from feedbackloop.simulator import Simulator, TrafficSpec

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def collector(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path, **overrides: Any
) -> Iterator[tuple[Any, Settings]]:
    """A real collector on a free port in front of the test broker."""
    from feedbackloop.web import WebServer

    settings = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        data_dir=tmp_path,
        web_port=0,
        **overrides,
    )
    ensure_topics(settings.kafka_client_config(), Topics(topic_prefix).all(), 4)
    server = WebServer(settings, "127.0.0.1", 0)
    server.start()
    try:
        yield server, settings
    finally:
        server.stop()


def test_simulated_traffic_through_the_collector_arrives_in_kafka(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    sent = Recorder()
    with collector(kafka_bootstrap, topic_prefix, tmp_path) as (server, settings):
        client = CollectorClient(
            server.url, None, settings, app_id="demo-app", on_event=sent, batch_size=200
        )
        result = Simulator(client, TrafficSpec(malformed_share=0)).run(sessions=200)
        stats = client.close(timeout=30)
    assert stats.delivered == len(sent) == sum(result.sent.values()) > 500
    assert stats.failed == stats.dropped == 0
    messages = read_topic(kafka_bootstrap, Topics(topic_prefix).events, expect=len(sent))
    assert {decode(m.value()).event_id for m in messages} == set(sent)


def test_a_batch_over_the_collectors_limit_is_split_and_only_the_oversized_event_fails(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    limited = collector(kafka_bootstrap, topic_prefix, tmp_path, web_max_body_bytes=4096)
    with limited as (server, settings):
        client = CollectorClient(server.url, None, settings, app_id="demo-app", batch_size=100)
        ids = []
        for i in range(40):  # ~400 bytes each: 40 in one post is ~16 KB, four times the limit
            if i == 17:
                huge = client.log_interaction(
                    session_id="s-huge", user_input="q", response="x" * 6000, model="m"
                )
            ids.append(
                client.log_interaction(
                    session_id=f"s-{i}", user_input=f"question {i}", response="answer", model="m"
                )
            )
        stats = client.close(timeout=30)
    # Before: the whole 41-event batch was counted failed on the 413 and nothing arrived.
    assert (stats.delivered, stats.failed, stats.dropped) == (40, 1, 0)
    messages = read_topic(kafka_bootstrap, Topics(topic_prefix).events, expect=40)
    arrived = [decode(m.value()).interaction_id for m in messages]
    assert sorted(arrived) == sorted(ids) and huge not in arrived
