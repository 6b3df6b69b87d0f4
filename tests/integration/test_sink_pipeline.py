"""The sink against the real embedded broker and chDB: rows, duplicates, dead letters, outages."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from feedbackloop.errors import ClickHouseError
from feedbackloop.infra import get_client
from feedbackloop.schemas import DeadLetter, Interaction, Topics
from feedbackloop.sinks import ReadOnlyViolation, SinkConfig, migrate, run_query
from sink_helpers import (
    enrich,
    make_events,
    produce,
    running_worker,
    settings_for,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def ch(clickhouse_dsn: str, clickhouse_database: str) -> Any:
    client = get_client(clickhouse_dsn)
    migrate(client, clickhouse_database)
    yield client
    client.command(f"DROP DATABASE IF EXISTS {clickhouse_database}")
    client.close()


def scalar(ch: Any, db: str, sql: str) -> Any:
    return ch.query(sql.replace("{db}", db)).result_rows[0][0]


# The documented analyst queries (docs/ARCHITECTURE.md): each must count an event once.
DOCUMENTED = {
    "interactions_final": "SELECT count() FROM {db}.interactions FINAL",
    "interactions_distinct": "SELECT uniqExact(event_id) FROM {db}.interactions",
    "feedback_final": "SELECT count() FROM {db}.feedback FINAL",
    "thumbs_by_variant": (
        "SELECT sum(n) FROM (SELECT variant, countIf(thumbs != 0) AS n "
        "FROM {db}.feedback FINAL GROUP BY variant)"
    ),
    "rollup_interactions": "SELECT uniqExactMerge(interactions) FROM {db}.interactions_hourly",
    "rollup_feedback": "SELECT uniqExactMerge(feedback) FROM {db}.feedback_hourly",
}


def test_raw_and_enriched_duplicates_count_once(
    kafka_bootstrap: str, clickhouse_dsn: str, clickhouse_database: str, topic_prefix: str,
    tmp_path: Path, ch: Any,
) -> None:
    db = clickhouse_database
    topics = Topics(topic_prefix)
    events = make_events(300)
    interactions = {e.interaction_id: e for e in events if isinstance(e, Interaction)}
    n_inter = len(interactions)
    n_feedback = sum(1 for e in events if e.event_type == "feedback")
    # Every event twice on the raw topic (an SDK retry), and once more enriched.
    raw = events + events[::-1]
    enriched = [(e.partition_key, enrich(e, interactions)) for e in events]
    s = settings_for(kafka_bootstrap, clickhouse_dsn, db, topic_prefix, tmp_path)
    cfg = SinkConfig(raw=True, group_id=f"g-{uuid.uuid4().hex[:6]}", max_rows=500, max_age_s=0.2,
                     query_endpoint=False)
    with running_worker(s, cfg) as worker:
        produce(kafka_bootstrap, topics.events, raw)
        produce(kafka_bootstrap, topics.enriched, enriched)
        wait_until(lambda: worker.sink.stats.messages >= len(raw) + len(enriched))
        stored = dict(worker.sink.stats.rows)
    # Each feedback event was inserted three times (twice raw, once enriched) ...
    assert stored["feedback"] == 3 * n_feedback
    assert scalar(ch, db, DOCUMENTED["interactions_final"]) == n_inter
    assert scalar(ch, db, DOCUMENTED["interactions_distinct"]) == n_inter
    assert scalar(ch, db, DOCUMENTED["feedback_final"]) == n_feedback
    assert scalar(ch, db, DOCUMENTED["thumbs_by_variant"]) == n_inter
    assert scalar(ch, db, DOCUMENTED["rollup_interactions"]) == n_inter
    assert scalar(ch, db, DOCUMENTED["rollup_feedback"]) == n_feedback
    # ... yet FINAL keeps exactly one row per event, and it is the enriched copy.
    assert scalar(ch, db, "SELECT countIf(enrichment != 'enriched') FROM {db}.feedback FINAL") == 0
    assert scalar(ch, db, "SELECT countIf(variant = '') FROM {db}.feedback FINAL") == 0
    assert scalar(ch, db, "SELECT count() FROM {db}.dead_letters") == 0
