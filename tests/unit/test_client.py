"""FeedbackClient without a broker: validation, dead letters, never blocking, spooling."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from feedbackloop.config import Settings
from feedbackloop.errors import SchemaError
from feedbackloop.producers import Experiment, FeedbackClient
from feedbackloop.producers.spool import Spool
from feedbackloop.schemas import DeadLetter, Topics, decode


def _settings(tmp_path: Path) -> Settings:
    # Port 1 on loopback: nothing listens, so the broker is "down" from the first call.
    return Settings(
        bootstrap_servers="127.0.0.1:1",
        data_dir=tmp_path,
        app_id="unit",
        producer_message_timeout_ms=1000,
        close_timeout_s=1.0,
    )


def test_strict_mode_raises_a_readable_error(tmp_path: Path) -> None:
    client = FeedbackClient(_settings(tmp_path), strict=True)
    iid = client.log_interaction(session_id="s", user_input="q", response="a", model="m")
    with pytest.raises(
        SchemaError, match=r"feedback.rating: Input should be less than or equal to 5"
    ):
        client.rate(iid, 6)
    with pytest.raises(SchemaError, match="session_id is required"):
        client.thumbs(uuid.uuid4(), True)
    with pytest.raises(SchemaError, match="unexpected keyword argument"):
        client.thumbs(iid, True, sesion_id="typo")
    client.close(timeout=0)


def test_invalid_events_go_to_the_dead_letter_topic_not_into_the_app(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with FeedbackClient(settings) as client:
        iid = client.log_interaction(session_id="s", user_input="q", response="a", model="m")
        assert client.rate(iid, 0) is None
        assert client.outcome("Not Valid", session_id="s") is None
        stats = client.stats()
    assert (stats.enqueued, stats.invalid) == (1, 2)
    # the broker is down, so everything (1 event + 2 dead letters) waits in the spool
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    records = spool.head(10)
    topics = Topics(settings.topic_prefix)
    assert [r.topic for r in records].count(topics.dead_letters) == 2
    dead = [
        DeadLetter.from_message(r.value, r.key, r.headers)
        for r in records
        if r.topic == topics.dead_letters
    ]
    assert dead[0].reason == "validation_error" and dead[0].source == "sdk"
    assert "rating: Input should be greater than or equal to 1" in dead[0].error
    assert b'"rating": 0' in dead[0].payload


def test_broker_down_never_blocks_and_nothing_is_lost(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    client = FeedbackClient(settings, experiments=[Experiment("e", {"a": 0.5, "b": 0.5})])
    worst = 0.0
    ids = []
    for i in range(2000):
        t = time.perf_counter()
        iid = client.log_interaction(
            session_id=f"s{i % 50}", user_input="q", response="a", model="m", experiment="e"
        )
        client.thumbs(iid, i % 2 == 0)
        worst = max(worst, time.perf_counter() - t)
        ids.append(iid)
    closed_at = time.monotonic()
    stats = client.close(timeout=1.0)
    assert time.monotonic() - closed_at < 5
    assert worst < 0.25, f"a call blocked for {worst * 1000:.0f} ms"
    assert stats.enqueued == 4000
    assert stats.delivered == 0 and stats.dropped == 0 and stats.failed == 0
    assert stats.spool_pending == 4000
    # the spool holds every event, decodable, each interaction once
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    events = [decode(r.value) for r in spool.head(10_000)]
    assert len({e.event_id for e in events}) == 4000
    interactions = [e for e in events if e.event_type == "interaction"]
    assert {e.interaction_id for e in interactions} == set(ids)
    assert {e.variant for e in interactions} == {"a", "b"}


def test_a_full_spool_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(tmp_path).model_copy(update={"spool_max_bytes": 2048})
    client = FeedbackClient(settings)
    for _ in range(50):
        client.log_interaction(session_id="s", user_input="q" * 100, response="a", model="m")
    stats = client.close(timeout=0.5)
    assert stats.enqueued == 50
    assert stats.dropped > 0
    assert stats.spool_pending + stats.dropped == 50
    assert "is full" in caplog.text and "DROPPED" in caplog.text


def test_sessions_stay_sticky_when_weights_change(tmp_path: Path) -> None:
    client = FeedbackClient(_settings(tmp_path))
    client.register_experiment(Experiment("ramp", {"control": 1.0, "treatment": 0.0}))
    first = {s: client.assign_variant("ramp", s) for s in (f"s{i}" for i in range(200))}
    client.register_experiment(Experiment("ramp", {"control": 0.0, "treatment": 1.0}))
    assert {s: client.assign_variant("ramp", s) for s in first} == first
    assert client.assign_variant("ramp", "new-session") == "treatment"
    client.close(timeout=0)
