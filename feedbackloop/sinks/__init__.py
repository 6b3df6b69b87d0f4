"""ClickHouse sinks: the tables' columns, versioned DDL (migrations), the batching writer,
read-only analyst queries."""

from feedbackloop.sinks.base import BaseSink, BatchingSink, SinkBatch, TopicPartition, retry_delay
from feedbackloop.sinks.clickhouse import ClickHouseSink, SinkMessage, SinkStats, is_rejection
from feedbackloop.sinks.migrations import MIGRATIONS, Migration, applied_migrations, migrate
from feedbackloop.sinks.query import (
    QueryEndpoint,
    QueryResult,
    ReadOnlyViolation,
    check_read_only,
    format_result,
    run_query,
)
from feedbackloop.sinks.rows import TopicRouter
from feedbackloop.sinks.tables import COLUMNS, TABLES, Column, Table
from feedbackloop.sinks.worker import SinkConfig, SinkWorker, default_topics

__all__ = [
    "BaseSink",
    "BatchingSink",
    "COLUMNS",
    "ClickHouseSink",
    "Column",
    "MIGRATIONS",
    "Migration",
    "QueryEndpoint",
    "QueryResult",
    "ReadOnlyViolation",
    "SinkBatch",
    "SinkConfig",
    "SinkMessage",
    "SinkStats",
    "SinkWorker",
    "TABLES",
    "Table",
    "TopicPartition",
    "TopicRouter",
    "applied_migrations",
    "check_read_only",
    "default_topics",
    "format_result",
    "is_rejection",
    "migrate",
    "retry_delay",
    "run_query",
]
