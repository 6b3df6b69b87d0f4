"""The audit trail in ClickHouse: the sink copies every version from the control topic into
experiment_changes (one row per version, who/what/why), and dead-letters a malformed one."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import running_worker, settings_for, wait_until

from feedbackloop.control import ControlPlane, apply, new_experiment
from feedbackloop.infra import ensure_topics, get_client
from feedbackloop.schemas import Topics
from feedbackloop.sinks import SinkConfig, migrate

pytestmark = pytest.mark.integration


def test_every_version_lands_in_the_audit_table_and_a_malformed_one_is_a_dead_letter(
    kafka_bootstrap: str,
    clickhouse_dsn: str,
    clickhouse_database: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    db = clickhouse_database
    ch: Any = get_client(clickhouse_dsn)
    migrate(ch, db)
    s = settings_for(kafka_bootstrap, clickhouse_dsn, db, topic_prefix, tmp_path)
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    plane = ControlPlane(s)
    v1 = new_experiment(
        "shop",
        "prompt",
        {"v1": 0.5, "v2": 0.5},
        changed_by="alice",
        reason="start",
        canary_steps=(0.05, 0.5),
    )
    v2 = apply(v1, "advance", changed_by="canary-guard", reason="step 1 held")
    v3 = apply(v2, "rollback", changed_by="canary-guard", reason="satisfaction BREACHED")
    # A write that lost the compare-and-set: a second v2 published after the first. Every
    # reader of the topic serves the first; so must the audit table, also after its merges.
    lost = apply(v1, "pause", changed_by="bob", reason="lost the race")
    for v in (v1, v2, lost, v3):
        plane.publish(v)
    plane.publish(v3)  # a second guard publishing the same version
    plane.publish_raw(b"shop|prompt", b'{"name": "prompt", "version": 4}')
    cfg = SinkConfig(
        group_id=f"g-{uuid.uuid4().hex[:6]}", max_rows=100, max_age_s=0.2, query_endpoint=False
    )
    try:
        with running_worker(s, cfg) as worker:
            wait_until(lambda: worker.sink.stats.messages >= 6)
        ch.command(f"OPTIMIZE TABLE {db}.experiment_changes FINAL")  # merge as time would
        rows = ch.query(
            f"SELECT version, action, status, changed_by, reason, serving_weights['v2'], "
            f"canary_step FROM {db}.experiment_changes FINAL ORDER BY version"
        ).result_rows
        assert [tuple(r) for r in rows] == [
            (1, "create", "running", "alice", "start", 0.05, 0),
            (2, "advance", "running", "canary-guard", "step 1 held", 0.5, 1),
            (3, "rollback", "rolled_back", "canary-guard", "satisfaction BREACHED", 0.0, 1),
        ]
        config = ch.query(f"SELECT config FROM {db}.experiment_changes FINAL WHERE version = 3")
        assert json.loads(config.result_rows[0][0])["status"] == "rolled_back"
        dead = ch.query(f"SELECT reason, source_topic FROM {db}.dead_letters").result_rows
        assert [tuple(r) for r in dead] == [("invalid_config", Topics(topic_prefix).control)]
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {db}")
        ch.close()
