"""The sink against the real embedded broker and chDB: rows, duplicates, dead letters, outages."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import (
    enrich,
    make_events,
    produce,
    running_worker,
    settings_for,
    wait_until,
)

from feedbackloop.errors import ClickHouseError
from feedbackloop.infra import get_client
from feedbackloop.schemas import DeadLetter, Interaction, Topics
from feedbackloop.sinks import ReadOnlyViolation, SinkConfig, migrate, run_query

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
    kafka_bootstrap: str,
    clickhouse_dsn: str,
    clickhouse_database: str,
    topic_prefix: str,
    tmp_path: Path,
    ch: Any,
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
    cfg = SinkConfig(
        raw=True,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        max_rows=500,
        max_age_s=0.2,
        query_endpoint=False,
    )
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


def test_rejected_and_undecodable_messages_become_dead_letters(
    kafka_bootstrap: str,
    clickhouse_dsn: str,
    clickhouse_database: str,
    topic_prefix: str,
    tmp_path: Path,
    ch: Any,
) -> None:
    import datetime as dt

    from feedbackloop.schemas import Alert, WindowAggregate

    db = clickhouse_database
    topics = Topics(topic_prefix)
    good = [e for e in make_events(40) if isinstance(e, Interaction)]
    # Valid for the contract but refused by ClickHouse: the contract now bounds every value
    # to its column (issue 13), so the test adds a table constraint the contract knows nothing
    # of (below) to keep the path for rows ClickHouse refuses covered.
    too_big = good[0].model_copy(update={"event_id": uuid.uuid4(), "app_id": "refused-app"})
    upstream = DeadLetter(
        reason="validation_error",
        error="feedback.rating: too big",
        payload=b'{"rating": 7}',
        source="stream",
        source_topic=topics.events,
        source_partition=1,
        source_offset=17,
    )
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    agg = {
        "window_start": now,
        "window_end": now + dt.timedelta(minutes=1),
        "app_id": "app1",
        "experiment": "exp",
        "variant": "a",
        "source_partition": 0,
        "emitted_at": now,
    }
    alert = Alert(
        dimension="variant",
        detector_key="variant:app1|exp|a",
        app_id="app1",
        experiment="exp",
        variant="a",
        baseline_rate=0.75,
        baseline_n=1000,
        recent_rate=0.6,
        recent_n=200,
        recent_successes=120,
        since=now,
        detected_at=now,
        statistic=5.1,
        threshold=5.0,
        design_drop=0.1,
        arl0_observations=150.0,
        message="satisfaction dropped",
    )
    s = settings_for(kafka_bootstrap, clickhouse_dsn, db, topic_prefix, tmp_path)
    cfg = SinkConfig(
        raw=True,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        max_rows=1000,
        max_age_s=0.2,
        query_endpoint=False,
    )
    from confluent_kafka import Producer

    with running_worker(s, cfg) as worker:
        ch.command(
            f"ALTER TABLE {db}.interactions ADD CONSTRAINT not_refused CHECK "
            "app_id != 'refused-app'"
        )
        produce(
            kafka_bootstrap,
            topics.events,
            [*good[:20], too_big, b"{not json", b'{"event_type": "nope"}', *good[20:]],
        )
        p = Producer({"bootstrap.servers": kafka_bootstrap})
        p.produce(topics.dead_letters, upstream.payload, key=b"k", headers=upstream.headers())
        for rev, up in ((1, 10), (2, 30), (1, 10)):  # a late revision 1 replay must not win
            wa = WindowAggregate(revision=rev, thumbs_up=up, thumbs_down=5, **agg)
            p.produce(topics.aggregates, wa.model_dump_json().encode(), key=b"app1|exp|a")
        p.produce(topics.alerts, alert.model_dump_json().encode(), key=b"k")
        p.produce(topics.alerts, alert.model_dump_json().encode(), key=b"k")
        assert p.flush(30) == 0
        wait_until(lambda: worker.sink.stats.messages >= len(good) + 3 + 1 + 3 + 2)
    assert scalar(ch, db, "SELECT count() FROM {db}.interactions FINAL") == len(good)
    reasons = dict(
        ch.query(f"SELECT reason, count() FROM {db}.dead_letters FINAL GROUP BY reason").result_rows
    )
    assert reasons == {
        "clickhouse_rejected": 1,
        "invalid_json": 1,
        "unknown_event_type": 1,
        "validation_error": 1,
    }
    row = ch.query(
        f"SELECT error, payload, source_topic, source FROM {db}.dead_letters "
        "WHERE reason = 'clickhouse_rejected'"
    ).result_rows[0]
    assert "interactions" in row[0] and str(too_big.event_id) in row[1]
    assert row[2] == topics.events and row[3] == "sink"
    assert ch.query(
        f"SELECT thumbs_up, revision FROM {db}.window_aggregates FINAL"
    ).result_rows == [(30, 2)]
    assert scalar(ch, db, "SELECT count() FROM {db}.alerts FINAL") == 1


class _Flaky:
    """Stands between the sink and chDB: while ``down`` is set, connecting and inserting fail."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.down = threading.Event()
        self.failures = 0

    def factory(self) -> Any:
        if self.down.is_set():
            self.failures += 1
            raise ClickHouseError("connection refused (injected)")
        return _FlakyClient(get_client(self.dsn), self)


class _FlakyClient:
    def __init__(self, client: Any, owner: _Flaky) -> None:
        self._client, self._owner = client, owner

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self._owner.down.is_set():
            self._owner.failures += 1
            from clickhouse_connect.driver.exceptions import OperationalError

            raise OperationalError("Connection refused (injected)")
        return self._client.insert(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@pytest.mark.fault
def test_clickhouse_outage_loses_nothing(
    kafka_bootstrap: str,
    clickhouse_dsn: str,
    clickhouse_database: str,
    topic_prefix: str,
    tmp_path: Path,
    ch: Any,
) -> None:
    import time

    db = clickhouse_database
    topics = Topics(topic_prefix)
    events = [e for e in make_events(900) if isinstance(e, Interaction)]
    flaky = _Flaky(clickhouse_dsn)
    s = settings_for(kafka_bootstrap, clickhouse_dsn, db, topic_prefix, tmp_path)
    cfg = SinkConfig(
        raw=True,
        group_id=f"g-{uuid.uuid4().hex[:6]}",
        max_rows=200,
        max_age_s=0.2,
        query_endpoint=False,
    )
    count = f"SELECT count() FROM {db}.interactions FINAL"
    with running_worker(s, cfg, client_factory=flaky.factory) as worker:
        produce(kafka_bootstrap, topics.events, events[:300])
        wait_until(lambda: ch.query(count).result_rows[0][0] == 300)
        flaky.down.set()  # ClickHouse goes away: inserts and reconnects fail
        produce(kafka_bootstrap, topics.events, events[300:600])
        wait_until(lambda: flaky.failures >= 3)
        time.sleep(1.0)
        assert ch.query(count).result_rows[0][0] == 300
        flaky.down.clear()  # ... and comes back
        wait_until(lambda: ch.query(count).result_rows[0][0] == 600, timeout=30)
        # A closed client (e.g. chDB handle closed under us) is replaced, not fatal.
        worker.sink.client.close()
        produce(kafka_bootstrap, topics.events, events[600:])
        wait_until(lambda: ch.query(count).result_rows[0][0] == len(events), timeout=30)
        assert worker.sink.stats.transient_errors >= 1
    assert scalar(ch, db, "SELECT uniqExact(event_id) FROM {db}.interactions") == len(events)
    assert scalar(ch, db, "SELECT count() FROM {db}.dead_letters") == 0


def test_sql_goes_through_the_running_worker_and_refuses_writes(
    kafka_bootstrap: str,
    clickhouse_dsn: str,
    clickhouse_database: str,
    topic_prefix: str,
    tmp_path: Path,
    ch: Any,
) -> None:
    from feedbackloop.sinks.query import discovery_path, execute, readonly_client

    db = clickhouse_database
    events = [e for e in make_events(50) if isinstance(e, Interaction)]
    s = settings_for(kafka_bootstrap, clickhouse_dsn, db, topic_prefix, tmp_path)
    cfg = SinkConfig(raw=True, group_id=f"g-{uuid.uuid4().hex[:6]}", max_age_s=0.2)
    with running_worker(s, cfg):
        assert discovery_path(s).exists()
        produce(kafka_bootstrap, Topics(topic_prefix).events, events)
        res = wait_until(
            lambda: (
                (r := run_query(s, "SELECT count() AS n FROM interactions FINAL")).rows[0][0]
                == len(events)
                and r
            )
        )
        assert res.columns == ["n"]
        for bad in (
            f"INSERT INTO {db}.interactions (app_id) VALUES ('x')",
            f"DROP TABLE {db}.interactions",
            "SELECT 1; DROP TABLE interactions",
            f"ALTER TABLE {db}.feedback DELETE WHERE 1",
        ):
            with pytest.raises(ReadOnlyViolation):
                run_query(s, bad)
        # Behind the statement check, the session itself is read-only.
        ro = readonly_client(clickhouse_dsn, db)
        with pytest.raises(Exception, match="readonly|READONLY"):
            ro.command(f"DROP TABLE {db}.interactions")
        with pytest.raises((ClickHouseError, ReadOnlyViolation), match="READONLY|readonly"):
            execute(ro, "SELECT 1 SETTINGS readonly = 0")
        ro.close()
    assert not discovery_path(s).exists()
    assert scalar(ch, db, "SELECT count() FROM {db}.interactions FINAL") == len(events)


def test_migrations_are_idempotent_and_incremental(
    clickhouse_dsn: str, clickhouse_database: str
) -> None:
    from feedbackloop.sinks import MIGRATIONS, applied_migrations

    ch = get_client(clickhouse_dsn)
    db = clickhouse_database
    try:
        assert migrate(ch, db, target=1) == [1]  # an "older database"
        assert applied_migrations(ch, db).keys() == {1}
        tables = {r[0] for r in ch.query(f"SHOW TABLES FROM {db}").result_rows}
        assert "interactions" in tables and "feedback_hourly" not in tables
        latest = max(m.version for m in MIGRATIONS)
        assert migrate(ch, db) == list(range(2, latest + 1))  # the newer one applies
        assert migrate(ch, db) == []  # and again: a no-op
        assert migrate(ch, db, ttl_days=0) == []  # no TTL yet: removing none is no error
        assert migrate(ch, db, ttl_days=30) == []
        # The report rows' lookup copies of the events expire with them.
        for table in ("interactions", "report_lookup_interactions", "report_lookup_outcomes"):
            assert "TTL" in str(ch.command(f"SHOW CREATE TABLE {db}.{table}")), table
        assert migrate(ch, db, ttl_days=0) == []  # and removing it
        for table in ("interactions", "report_lookup_units"):
            assert "TTL" not in str(ch.command(f"SHOW CREATE TABLE {db}.{table}")), table
        assert scalar(ch, db, "SELECT count() FROM {db}.schema_migrations FINAL") == latest
    finally:
        ch.command(f"DROP DATABASE IF EXISTS {db}")
        ch.close()
