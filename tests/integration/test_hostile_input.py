"""Hostile input against the real stack (issue 13): each reproduction, and what must happen.

HTTP → FeedbackClient → embedded broker → SinkWorker (raw) → ClickHouse (chDB), with public
and secret keys configured, as ``feedbackloop up`` runs it. Every test names the attack.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_reading import read_topic
from sink_helpers import running_worker, settings_for, wait_until

pytest.importorskip("fastapi", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx")

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.infra import ensure_topics  # noqa: E402
from feedbackloop.producers import FeedbackClient  # noqa: E402
from feedbackloop.producers.spool import Spool  # noqa: E402
from feedbackloop.schemas import DeadLetter, Topics  # noqa: E402
from feedbackloop.sinks import SinkConfig, run_query  # noqa: E402
from feedbackloop.web import WebServer  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.hostile]

PK, SK = "pk_hostile_public", "sk_hostile_secret"
APP = "shop"


class Stack:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=60)

    def post(self, path: str, body: Any, key: str = PK, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        if isinstance(body, (bytes, str)):
            return self.http.post(
                path, content=body, headers={"Content-Type": "application/json", **headers}
            )
        return self.http.post(path, json=body, headers=headers)

    def scalar(self, sql: str) -> Any:
        return run_query(self.settings, sql).rows[0][0]


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    prefix, db = f"h{uuid.uuid4().hex[:8]}.", f"flhostile_{uuid.uuid4().hex[:8]}"
    base = settings_for(
        kafka_bootstrap, clickhouse_dsn, db, prefix, tmp_path_factory.mktemp("hostile")
    )
    s = base.model_copy(
        update={
            "web_public_keys": {APP: PK},
            "web_secret_keys": {APP: SK},
            "producer_linger_ms": 5.0,
        }
    )
    cfg = SinkConfig(raw=True, group_id=f"g-{uuid.uuid4().hex[:6]}", max_age_s=0.2)
    with running_worker(s, cfg), WebServer(s, host="127.0.0.1", port=0) as web:
        st = Stack(s, web.url)
        yield st
        st.http.close()


def interaction(**kw: Any) -> dict[str, Any]:
    return {
        "event_type": "interaction",
        "event_id": str(uuid.uuid4()),
        "session_id": "s-1",
        "user_input": "hello",
        "response": "hi",
        "model": "m",
        **kw,
    }


def stored(stack: Stack, event_ids: list[str], table: str = "interactions") -> int:
    ids = ",".join(f"'{i}'" for i in event_ids)
    return int(stack.scalar(f"SELECT count() FROM {table} FINAL WHERE event_id IN ({ids})"))


def dead_letters(stack: Stack, marker: str) -> list[list[Any]]:
    return run_query(
        stack.settings,
        "SELECT reason, length(payload), error FROM dead_letters "
        f"WHERE source = 'collector' AND position(payload, '{marker}') > 0",
    ).rows


# ---------------------------------------------------------------- 1: the spool never blocks


def test_an_oversized_event_or_body_is_dead_lettered_bounded_and_later_events_still_flow(
    stack: Stack,
) -> None:
    marker = uuid.uuid4().hex
    huge = interaction(response=marker + "x" * 1_100_000)
    r = stack.post("/v1/events", [huge])
    assert r.status_code == 422, r.text
    garbage = (marker + "{" * 1_500_000).encode()
    r = stack.post("/v1/events", garbage)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    valid = [interaction() for _ in range(5)]
    assert stack.post("/v1/events", valid).status_code == 202
    ids = [e["event_id"] for e in valid]
    wait_until(lambda: stored(stack, ids) == 5, timeout=60)
    rows = wait_until(lambda: len(dead_letters(stack, marker)) == 2 and dead_letters(stack, marker))
    for _, length, error in rows:
        assert length <= 64 * 1024 and "payload truncated" in error and "sha256" in error
    assert {r[0] for r in rows} == {"validation_error", "invalid_json"}
    health = stack.http.get("/healthz").json()
    assert health["spool"] == {"pending": 0, "quarantined": 0} and health["status"] == "ok"


def test_a_spooled_record_the_broker_refuses_is_quarantined_and_the_rest_is_delivered(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"q{uuid.uuid4().hex[:8]}."
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, app_id=APP)
    ensure_topics(settings.kafka_client_config(), Topics(prefix).all(), 1)
    spool_path = tmp_path / "spool" / "sdk.sqlite3"
    # A spool left by an earlier run: good events around one record no broker will take.
    events_topic = Topics(prefix).events
    spool = Spool(spool_path, max_bytes=10_000_000)
    spool.append(events_topic, None, b'{"n":1}')
    spool.append(events_topic, None, b"p" * 1_200_000)
    spool.append(events_topic, None, b'{"n":2}')
    spool.close()
    client = FeedbackClient(settings, spool_path=spool_path)
    try:
        # The client starts lazily: any send opens the spool and starts the replay.
        client.send_dead_letter(DeadLetter(reason="x", error="y", payload=b"z"))
        wait_until(lambda: client.stats().spool_pending == 0, timeout=60)
        stats = client.stats()
        assert stats.spool_quarantined == 1 and stats.failed == 1
    finally:
        client.close()
    values = [m.value() for m in read_topic(kafka_bootstrap, events_topic, expect=2)]
    assert values == [b'{"n":1}', b'{"n":2}']
    kept = Spool(spool_path, max_bytes=10_000_000)
    [(record, reason)] = kept.quarantined_records()
    assert len(record.value) == 1_200_000 and "MSG_SIZE_TOO_LARGE" in reason
    kept.close()
