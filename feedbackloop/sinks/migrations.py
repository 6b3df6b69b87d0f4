"""Versioned ClickHouse DDL, applied idempotently (``feedbackloop db migrate`` and at sink start).

Every migration is a numbered list of statements written with ``IF NOT EXISTS`` so that a
statement interrupted half-way can simply be run again. Applied versions are recorded in
``<db>.schema_migrations`` together with a checksum of their SQL; a recorded migration whose
SQL changed afterwards is reported, never silently re-applied. Migrations are append-only:
to change a table, add a new migration with an ``ALTER``, and change its columns in
:mod:`feedbackloop.sinks.tables`, which everything else reads them from
(tests/integration/test_migrated_tables.py holds the migrated tables equal to it).

The same DDL runs on embedded chDB and on a ClickHouse server (no ``ON CLUSTER``, no
Replicated engines; on a cluster, apply it per shard or swap engines in a later migration).

Table design (why these engines, keys and codecs) is explained in docs/ARCHITECTURE.md,
"Storage (ClickHouse)".
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from feedbackloop.errors import ClickHouseError, ConfigError
from feedbackloop.sinks.input_labels import INPUT_LABELS_DDL
from feedbackloop.sinks.interaction_signals import INTERACTION_SIGNALS_DDL, SIGNALS_TABLE
from feedbackloop.sinks.report_rows import (
    CHECKPOINTS_DDL,
    LOOKUPS,
    LOOKUPS_DDL,
    QUANTILE_BUCKETS_DDL,
    REPORT_ROWS_DDL,
    STATE_ENGINE_DDL,
)

__all__ = ["MIGRATIONS", "Migration", "applied_migrations", "migrate", "MIGRATIONS_TABLE"]

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "schema_migrations"


@dataclass(frozen=True)
class Migration:
    """One schema version: its number, a short name and the statements (``{db}`` templated)."""

    version: int
    name: str
    statements: tuple[str, ...]

    @property
    def checksum(self) -> str:
        return hashlib.sha256("\n;\n".join(self.statements).encode()).hexdigest()[:16]


# Columns every event table shares: the envelope, where the row came from in Kafka (for
# tracing and replay), and the dedup version. ``_version`` ranks how complete a row is
# (0 raw event, 1 enriched-topic row without context, 2 enriched with context; times
# 10**13, plus the enrichment time in ms) so that under ReplacingMergeTree the enriched copy
# of an event wins over a raw copy of the same event_id, whichever arrived first.
_ENVELOPE = """
    event_id UUID,
    occurred_at DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    app_id LowCardinality(String),
    session_id String CODEC(ZSTD(1)),
    user_id String CODEC(ZSTD(1)),
    schema_version UInt8"""

_TRACE = """
    kafka_topic LowCardinality(String),
    kafka_partition UInt16,
    kafka_offset UInt64 CODEC(Delta, ZSTD(1)),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3) CODEC(DoubleDelta, ZSTD(1)),
    _version UInt64"""

_TRACE_NO_VERSION = _TRACE.replace(",\n    _version UInt64", "")

# Request context copied onto feedback / implicit / outcome rows by the stream jobs'
# enrichment: the columns analysts slice satisfaction by, without a join. The long texts
# (input, response) stay in ``interactions`` only; join on interaction_id for them.
_CONTEXT = """
    enrichment LowCardinality(String),
    orphaned Bool,
    waited_ms Float64 CODEC(ZSTD(1)),
    interaction_occurred_at Nullable(DateTime64(3, 'UTC')),
    model LowCardinality(String),
    prompt_version LowCardinality(String),
    experiment LowCardinality(String),
    variant LowCardinality(String),
    shadow Bool,
    latency_ms Nullable(Float64),
    input_language LowCardinality(String),
    input_has_code Bool,
    response_has_code Bool,
    input_length_bucket LowCardinality(String)"""

# Insert-token dedup on a non-replicated MergeTree needs this window (ClickHouse keeps the
# hashes of the last N inserted blocks); 1000 covers ~15 min of one insert per second.
_REPLACING_SETTINGS = "SETTINGS non_replicated_deduplication_window = 1000"

_V1 = (
    "CREATE DATABASE IF NOT EXISTS {db}",
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.interactions
(
    {_ENVELOPE},
    interaction_id UUID,
    model LowCardinality(String),
    prompt_version LowCardinality(String),
    experiment LowCardinality(String),
    variant LowCardinality(String),
    system_prompt String CODEC(ZSTD(3)),
    user_input String CODEC(ZSTD(3)),
    response String CODEC(ZSTD(3)),
    latency_ms Nullable(Float64),
    input_tokens Nullable(UInt32),
    output_tokens Nullable(UInt32),
    cost_usd Nullable(Float64),
    metadata Map(LowCardinality(String), String),
    shadow Bool,
    input_language LowCardinality(String),
    input_has_code Bool,
    response_has_code Bool,
    input_chars UInt32,
    response_chars UInt32,
    input_length_bucket LowCardinality(String),
    {_TRACE},
    INDEX idx_interaction_id interaction_id TYPE bloom_filter GRANULARITY 4,
    INDEX idx_session_id session_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (app_id, prompt_version, experiment, variant, toStartOfHour(occurred_at), event_id)
{_REPLACING_SETTINGS}
""",
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.feedback
(
    {_ENVELOPE},
    interaction_id UUID,
    kind LowCardinality(String),
    thumbs Int8,
    rating Nullable(UInt8),
    text String CODEC(ZSTD(3)),
    category LowCardinality(String),
    {_CONTEXT},
    {_TRACE},
    INDEX idx_interaction_id interaction_id TYPE bloom_filter GRANULARITY 4,
    CONSTRAINT thumbs_is_sign CHECK thumbs IN (-1, 0, 1),
    CONSTRAINT rating_in_range CHECK rating IS NULL OR rating BETWEEN 1 AND 5
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (app_id, kind, toStartOfHour(occurred_at), event_id)
{_REPLACING_SETTINGS}
""",
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.implicit
(
    {_ENVELOPE},
    interaction_id UUID,
    signal LowCardinality(String),
    edited_text String CODEC(ZSTD(3)),
    edit_distance Nullable(UInt32),
    dwell_ms Nullable(Float64),
    copied_chars Nullable(UInt32),
    {_CONTEXT},
    {_TRACE},
    INDEX idx_interaction_id interaction_id TYPE bloom_filter GRANULARITY 4
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (app_id, signal, toStartOfHour(occurred_at), event_id)
{_REPLACING_SETTINGS}
""",
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.outcomes
(
    {_ENVELOPE},
    interaction_id Nullable(UUID),
    outcome LowCardinality(String),
    value Nullable(Float64),
    time_to_outcome_ms Nullable(Float64),
    {_CONTEXT},
    {_TRACE}
)
ENGINE = ReplacingMergeTree(_version)
PARTITION BY toYYYYMMDD(occurred_at)
ORDER BY (app_id, outcome, toStartOfHour(occurred_at), event_id)
{_REPLACING_SETTINGS}
""",
    # Window rows are full snapshots per (group, window, source partition); a higher
    # revision replaces a lower one (see feedbackloop.schemas.aggregates). Summing revisions
    # would count a window twice, so this is ReplacingMergeTree(revision), not Summing.
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.window_aggregates
(
    window_start DateTime64(3, 'UTC'),
    window_end DateTime64(3, 'UTC'),
    app_id LowCardinality(String),
    experiment LowCardinality(String),
    variant LowCardinality(String),
    prompt_version LowCardinality(String),
    model LowCardinality(String),
    source_partition UInt16,
    revision UInt64,
    emitted_at DateTime64(3, 'UTC'),
    interactions UInt64,
    shadow_interactions UInt64,
    latency_count UInt64,
    latency_sum Float64,
    latency_sum_squares Float64,
    input_tokens_sum UInt64,
    output_tokens_sum UInt64,
    cost_usd_sum Float64,
    thumbs_up UInt64,
    thumbs_down UInt64,
    rating_count UInt64,
    rating_sum UInt64,
    rating_sum_squares UInt64,
    corrections UInt64,
    comments UInt64,
    reports UInt64,
    implicit_copy UInt64,
    implicit_edit UInt64,
    implicit_follow_up UInt64,
    implicit_regenerate UInt64,
    implicit_abandon UInt64,
    implicit_dwell UInt64,
    dwell_ms_sum Float64,
    outcome_counts Map(LowCardinality(String), UInt64),
    outcome_value_sums Map(LowCardinality(String), Float64),
    orphaned UInt64,
    distinct_sessions UInt64,
    session_sketch Array(UInt64) CODEC(ZSTD(3)),
    {_TRACE_NO_VERSION}
)
ENGINE = ReplacingMergeTree(revision)
PARTITION BY toYYYYMMDD(window_start)
ORDER BY (app_id, experiment, variant, prompt_version, model, window_start, source_partition)
{_REPLACING_SETTINGS}
""",
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.alerts
(
    alert_id UUID,
    alert_type LowCardinality(String),
    metric LowCardinality(String),
    dimension LowCardinality(String),
    detector_key String,
    app_id LowCardinality(String),
    experiment LowCardinality(String),
    variant LowCardinality(String),
    prompt_version LowCardinality(String),
    baseline_rate Float64,
    baseline_n UInt64,
    recent_rate Float64,
    recent_n UInt64,
    recent_successes UInt64,
    since DateTime64(3, 'UTC'),
    detected_at DateTime64(3, 'UTC'),
    emitted_at DateTime64(3, 'UTC'),
    statistic Float64,
    threshold Float64,
    design_drop Float64,
    arl0_observations Float64,
    message String,
    {_TRACE_NO_VERSION}
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toYYYYMM(detected_at)
ORDER BY (app_id, dimension, detector_key, detected_at, alert_id)
""",
    # Dead letters from every stage. A replayed Kafka message yields the same
    # (source_topic, source_partition, source_offset, payload) and collapses; the sink stamps
    # its own dead letters with the message's Kafka timestamp, so replays are identical rows.
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.dead_letters
(
    failed_at DateTime64(3, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    reason LowCardinality(String),
    error String CODEC(ZSTD(3)),
    source LowCardinality(String),
    source_topic LowCardinality(String),
    source_partition Int32,
    source_offset Int64,
    key String CODEC(ZSTD(1)),
    payload String CODEC(ZSTD(3)),
    payload_hash UInt64 MATERIALIZED cityHash64(payload),
    {_TRACE_NO_VERSION}
)
ENGINE = ReplacingMergeTree(inserted_at)
PARTITION BY toYYYYMM(failed_at)
ORDER BY (source_topic, source_partition, source_offset, payload_hash)
{_REPLACING_SETTINGS}
""",
)

# Hourly rollups, maintained by materialized views at insert time. A view sees every
# inserted block, duplicates included, so every count here is a distinct count of event ids
# (uniqExact states): a redelivered event cannot be counted twice. Sums (cost, latency) are
# left out on purpose: a sum cannot be deduplicated at insert time; take them from the
# ReplacingMergeTree tables with FINAL, or from window_aggregates.
_V2 = (
    """
CREATE TABLE IF NOT EXISTS {db}.interactions_hourly
(
    hour DateTime('UTC'),
    app_id LowCardinality(String),
    experiment LowCardinality(String),
    variant LowCardinality(String),
    prompt_version LowCardinality(String),
    model LowCardinality(String),
    interactions AggregateFunction(uniqExact, UUID),
    sessions AggregateFunction(uniq, String),
    latency_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Nullable(Float64))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (app_id, experiment, variant, prompt_version, model, hour)
""",
    """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.interactions_hourly_mv TO {db}.interactions_hourly
AS SELECT
    toStartOfHour(occurred_at) AS hour,
    app_id, experiment, variant, prompt_version, model,
    uniqExactState(event_id) AS interactions,
    uniqState(session_id) AS sessions,
    quantilesTDigestState(0.5, 0.9, 0.99)(latency_ms) AS latency_ms
FROM {db}.interactions
WHERE NOT shadow
GROUP BY hour, app_id, experiment, variant, prompt_version, model
""",
    """
CREATE TABLE IF NOT EXISTS {db}.feedback_hourly
(
    hour DateTime('UTC'),
    app_id LowCardinality(String),
    experiment LowCardinality(String),
    variant LowCardinality(String),
    prompt_version LowCardinality(String),
    model LowCardinality(String),
    input_language LowCardinality(String),
    feedback AggregateFunction(uniqExact, UUID),
    thumbs_up AggregateFunction(uniqExact, Nullable(UUID)),
    thumbs_down AggregateFunction(uniqExact, Nullable(UUID)),
    rating_1 AggregateFunction(uniqExact, Nullable(UUID)),
    rating_2 AggregateFunction(uniqExact, Nullable(UUID)),
    rating_3 AggregateFunction(uniqExact, Nullable(UUID)),
    rating_4 AggregateFunction(uniqExact, Nullable(UUID)),
    rating_5 AggregateFunction(uniqExact, Nullable(UUID)),
    corrections AggregateFunction(uniqExact, Nullable(UUID)),
    reports AggregateFunction(uniqExact, Nullable(UUID))
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(hour)
ORDER BY (app_id, experiment, variant, prompt_version, model, input_language, hour)
""",
    # Only rows that carry their request context: a raw copy of the same event (sunk from
    # the raw topic) would otherwise be counted again under an empty variant.
    """
CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.feedback_hourly_mv TO {db}.feedback_hourly
AS SELECT
    toStartOfHour(occurred_at) AS hour,
    app_id, experiment, variant, prompt_version, model, input_language,
    uniqExactState(event_id) AS feedback,
    uniqExactState(if(thumbs = 1, event_id, NULL)) AS thumbs_up,
    uniqExactState(if(thumbs = -1, event_id, NULL)) AS thumbs_down,
    uniqExactState(if(rating = 1, event_id, NULL)) AS rating_1,
    uniqExactState(if(rating = 2, event_id, NULL)) AS rating_2,
    uniqExactState(if(rating = 3, event_id, NULL)) AS rating_3,
    uniqExactState(if(rating = 4, event_id, NULL)) AS rating_4,
    uniqExactState(if(rating = 5, event_id, NULL)) AS rating_5,
    uniqExactState(if(kind = 'correction', event_id, NULL)) AS corrections,
    uniqExactState(if(kind = 'report', event_id, NULL)) AS reports
FROM {db}.feedback
WHERE enrichment = 'enriched' AND NOT shadow
GROUP BY hour, app_id, experiment, variant, prompt_version, model, input_language
""",
)

# The prompt-version registry (feedbackloop.analysis.loop.prompts): the text behind each
# prompt_version, stored beside the events it produced. Versions are immutable (the writer
# refuses a changed text), so plain ReplacingMergeTree collapses only identical re-adds.
_V3 = (
    """
CREATE TABLE IF NOT EXISTS {db}.prompt_versions
(
    name LowCardinality(String),
    version String,
    text String CODEC(ZSTD(3)),
    text_sha256 String,
    parent_version String,
    note String,
    created_by String,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (name, version)
""",
)

# The experiment design registry (feedbackloop.analysis.designs): the rules an experiment is
# judged by, fixed before its data is seen. Designs are immutable (the writer refuses a
# different design for the same experiment); ReplacingMergeTree collapses identical re-adds.
_V4 = (
    """
CREATE TABLE IF NOT EXISTS {db}.experiment_designs
(
    experiment String,
    primary_metric String,
    guardrails Array(String),
    mde Nullable(Float64),
    mde_relative Bool,
    alpha Float64,
    power Float64,
    mode LowCardinality(String),
    baseline Nullable(Float64),
    sd Nullable(Float64),
    planned_sessions Nullable(UInt64),
    weights_json String,
    note String,
    created_by String,
    created_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY experiment
""",
)

# The live experiment control plane's audit trail (feedbackloop.control): every version of
# every experiment, copied by the sink from the compacted control topic (which keeps only
# the latest). One row per (app, experiment, version); a version published twice (two canary
# guards judging the same data) collapses to one.
_V5 = (
    f"""
CREATE TABLE IF NOT EXISTS {{db}}.experiment_changes
(
    app_id LowCardinality(String),
    name LowCardinality(String),
    version UInt32,
    action LowCardinality(String),
    status LowCardinality(String),
    serving_weights Map(String, Float64),
    canary_step Int16,
    changed_by String,
    reason String CODEC(ZSTD(3)),
    changed_at DateTime64(3, 'UTC'),
    config String CODEC(ZSTD(3)),
    {_TRACE_NO_VERSION}
)
ENGINE = ReplacingMergeTree
ORDER BY (app_id, name, version)
""",
)

# The audit trail keeps the *first* message of each version, as every reader of the control
# topic does (feedbackloop.control.plane: a later message of a version is a write that lost
# the compare-and-set). ReplacingMergeTree without a version column kept the last one, so a
# losing write replaced the winner's row at the next merge. ``first_rank`` is the row's
# offset turned around (all versions of an experiment share one partition), and the engine
# keeps its largest: the earliest message. Rebuilt from migration 5's statement, so the
# column list stays written once; existing rows are copied with their rank.
_V8_TABLE = "experiment_changes_first"
_V8 = (
    _V5[0]
    .replace(".experiment_changes\n", f".{_V8_TABLE}\n")
    .replace(
        "\n)\nENGINE = ReplacingMergeTree\n",
        ",\n    first_rank UInt64\n)\nENGINE = ReplacingMergeTree(first_rank)\n",
    ),
    f"INSERT INTO {{db}}.{_V8_TABLE} SELECT *, 18446744073709551615 - kafka_offset "
    "FROM {db}.experiment_changes",
    f"EXCHANGE TABLES {{db}}.experiment_changes AND {{db}}.{_V8_TABLE}",
    f"DROP TABLE IF EXISTS {{db}}.{_V8_TABLE}",
)

# Event identity (issue 13): which key each event id was first stored under, keyed by the id
# alone. The event tables' dedup key holds the key columns too (app_id, the slicing columns,
# the hour), so a resend whose key columns differ would land under another key and read as
# a second row under FINAL; the sink looks every batch's ids up here first and refuses such
# a resend with a dead letter (feedbackloop.sinks.event_keys). A materialized view per event
# table writes the rows, in the same INSERT statement as the event rows, on every path
# (Native and ClickHouse-parsed inserts alike). Identical keys collapse (ReplacingMergeTree);
# the existing rows are backfilled once (re-running the INSERT only adds copies that
# collapse). ``slice`` holds the table's slicing key columns in order (event_keys.KEY_COLUMNS).
# Small granules: the ids of a batch are random, each hits one granule of the primary index,
# so a lookup reads about (ids x granule) rows rather than the whole table (500 ids among 2M
# stored: 16 ms with 256-row granules, 56 ms with the default 8192).
_EVENT_KEY_SELECT = {
    "interactions": "[prompt_version, experiment, variant]",
    "feedback": "[kind]",
    "implicit": "[signal]",
    "outcomes": "[outcome]",
}


def _event_key_select(table: str) -> str:
    return (
        f"SELECT event_id, '{table}' AS event_table, app_id, "
        f"{_EVENT_KEY_SELECT[table]} AS slice, toStartOfHour(occurred_at) AS hour "
        f"FROM {{db}}.{table}"
    )


_V6 = (
    """
CREATE TABLE IF NOT EXISTS {db}.event_keys
(
    event_id UUID,
    event_table LowCardinality(String),
    app_id LowCardinality(String),
    slice Array(String),
    hour DateTime('UTC'),
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY (event_id, event_table, app_id, slice, hour)
SETTINGS index_granularity = 256
""",
    *(
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {{db}}.event_keys_{t}_mv TO {{db}}.event_keys "
        f"AS {_event_key_select(t)}"
        for t in _EVENT_KEY_SELECT
    ),
    *(
        f"INSERT INTO {{db}}.event_keys (event_id, event_table, app_id, slice, hour) "
        f"{_event_key_select(t)}"
        for t in _EVENT_KEY_SELECT
    ),
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "event, aggregate, alert and dead-letter tables", _V1),
    Migration(2, "hourly rollups (distinct-count materialized views)", _V2),
    Migration(3, "prompt version registry", _V3),
    Migration(4, "experiment design registry", _V4),
    Migration(5, "experiment change audit trail (live control plane)", _V5),
    Migration(6, "event identity: the key each event id was first stored under", _V6),
    # Per-session report rows and their totals (feedbackloop.sinks.report_rows): what the
    # experiment, impact and version reports read instead of re-joining every event.
    Migration(7, "per-session report rows", REPORT_ROWS_DDL),
    Migration(8, "the audit trail keeps the first message of each version", _V8),
    # Copies of the report statements' columns sorted by session / interaction, so a read
    # finds the events of the sessions changed since the last compaction by primary key.
    Migration(9, "report rows: lookup copies of the events by session", LOOKUPS_DDL),
    # Quantiles that read a few buckets' values instead of every distinct value.
    Migration(10, "report rows: value counts per quantile bucket", QUANTILE_BUCKETS_DDL),
    # Each input's language and code flag, computed once, so failure slices count in SQL.
    Migration(11, "input labels for the failure slices", INPUT_LABELS_DDL),
    # Which signals each interaction received, so failure slices read them by hour.
    Migration(12, "per-interaction signals for the failure slices", INTERACTION_SIGNALS_DDL),
    # Session rows that merges cannot bring back once cancelled; rebuilt from the events.
    Migration(13, "report rows: versioned collapsing, rebuilt from the events", STATE_ENGINE_DDL),
    # The moments the totals agree with the session rows, so a read never sees a round's
    # session rows without the totals its views derive from them.
    Migration(14, "report rows: checkpoints of agreeing inserts", CHECKPOINTS_DDL),
)

#: Tables with an ``occurred_at`` column that an optional TTL applies to.
_TTL_TABLES = ("interactions", "feedback", "implicit", "outcomes")
#: Copies of their rows that must expire with them (a report would count an expired event).
_TTL_COPIES = (*(lk.table for lk in LOOKUPS), "report_input_labels", SIGNALS_TABLE)


def _check_identifier(name: str) -> str:
    if not name or not all(c.isalnum() or c == "_" for c in name) or name[0].isdigit():
        raise ConfigError(f"invalid ClickHouse database name {name!r}: use letters, digits, _")
    return name


def applied_migrations(client: Any, database: str) -> dict[int, str]:
    """Version → checksum of every migration recorded in ``database`` (empty if none)."""
    db = _check_identifier(database)
    try:
        exists = client.command(
            "SELECT count() FROM system.tables WHERE database = {d:String} AND name = {t:String}",
            parameters={"d": db, "t": MIGRATIONS_TABLE},
        )
        if not int(exists):
            return {}
        rows = client.query(
            f"SELECT version, argMax(checksum, applied_at) FROM {db}.{MIGRATIONS_TABLE} "
            "GROUP BY version"
        ).result_rows
    except Exception as e:
        raise _wrap(e, "cannot read applied migrations") from e
    return {int(v): str(c) for v, c in rows}


def migrate(
    client: Any,
    database: str,
    *,
    target: int | None = None,
    ttl_days: int | None = None,
    migrations: tuple[Migration, ...] = MIGRATIONS,
) -> list[int]:
    """Apply every migration newer than the database's, up to ``target``; return those applied.

    Running it again is a no-op. ``ttl_days`` (optional) sets a TTL on the event tables so
    partitions older than that many days are dropped; ``0`` removes the TTL again.
    """
    db = _check_identifier(database)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        client.command(
            f"CREATE TABLE IF NOT EXISTS {db}.{MIGRATIONS_TABLE} "
            "(version UInt32, name String, checksum String, "
            "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree(applied_at) ORDER BY version"
        )
    except Exception as e:
        raise _wrap(e, f"cannot create database {db}") from e
    done = applied_migrations(client, db)
    applied: list[int] = []
    for m in sorted(migrations, key=lambda m: m.version):
        if target is not None and m.version > target:
            break
        if m.version in done:
            if done[m.version] != m.checksum:
                log.warning(
                    "migration %d (%s) changed after it was applied to %s; not re-applying. "
                    "Add a new migration instead of editing an applied one.",
                    m.version,
                    m.name,
                    db,
                )
            continue
        for stmt in m.statements:
            try:
                client.command(stmt.replace("{db}", db))
            except Exception as e:
                raise _wrap(e, f"migration {m.version} ({m.name}) failed") from e
        client.insert(
            MIGRATIONS_TABLE,
            [[m.version, m.name, m.checksum]],
            database=db,
            column_names=["version", "name", "checksum"],
        )
        log.info("applied migration %d: %s", m.version, m.name)
        applied.append(m.version)
    if ttl_days is not None:
        for table in _TTL_TABLES + _TTL_COPIES:
            engine = _engine(client, db, table)
            if engine is None:
                continue  # a copy whose migration is beyond ``target``
            if ttl_days == 0 and " TTL " not in f" {engine} ":
                continue  # nothing to remove: ClickHouse refuses REMOVE TTL without one
            stmt = (
                f"ALTER TABLE {db}.{table} REMOVE TTL"
                if ttl_days == 0
                else f"ALTER TABLE {db}.{table} MODIFY TTL "
                f"toDateTime(occurred_at) + INTERVAL {int(ttl_days)} DAY"
            )
            try:
                client.command(stmt)
            except Exception as e:
                raise _wrap(e, f"cannot set TTL on {db}.{table}") from e
    return applied


def _engine(client: Any, db: str, table: str) -> str | None:
    """The table's full engine clause (``None``: no such table)."""
    rows = client.query(
        "SELECT engine_full FROM system.tables WHERE database = {db:String} AND name = {t:String}",
        parameters={"db": db, "t": table},
    ).result_rows
    return str(rows[0][0]) if rows else None


def _wrap(e: Exception, what: str) -> ClickHouseError:
    if isinstance(e, ClickHouseError):
        return e
    return ClickHouseError.from_driver(e, f"{what}: {e}")
