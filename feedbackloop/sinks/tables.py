"""Every ClickHouse table's columns, declared once: name, type and how the row is read.

One :class:`Table` per table the migrations create, registered in :data:`TABLES`. The rest
takes its columns from here: the writer's insert contexts (names *and* types, so no
``DESCRIBE`` round trip), the statements in which ClickHouse parses enriched events itself
(:mod:`feedbackloop.sinks.ingest`), the Python row builders (:mod:`feedbackloop.sinks.rows`),
the prompt registry and the dashboard's SELECT lists.

The migrations (:mod:`feedbackloop.sinks.migrations`) are history and stay as they were
applied; tests/integration/test_migrated_tables.py migrates a fresh database and holds each table's
``DESCRIBE TABLE`` (name, type, default) equal to the declaration here. Changing a table is
therefore two edits that a test keeps together: a new migration, and its columns here.

A column's ``read`` is the reference definition of what the sink stores in it, from a
:class:`Source` (the decoded message and where it was read): :meth:`Table.row` builds a row
from those. The sink's hot paths build the same tuples by hand, flat (sinks/rows.py), or have
ClickHouse build them from the JSON (sinks/ingest.py); tests/unit/test_sinks.py and
tests/integration/test_sink_json_path.py hold each to :meth:`Table.row`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, NamedTuple

from feedbackloop.sinks.input_labels import CURSOR_COLUMNS, LABEL_COLUMNS
from feedbackloop.sinks.interaction_signals import SIGNALS_COLUMNS, SIGNALS_TABLE
from feedbackloop.sinks.report_rows import LOOKUPS, declared_columns

__all__ = [
    "COLUMNS",
    "RANK_ENRICHED",
    "RANK_NO_CONTEXT",
    "RANK_RAW",
    "RANK_STEP",
    "TABLES",
    "Column",
    "Source",
    "metadata_text",
    "Table",
    "epoch_ms",
    "row_version",
]


class Source(NamedTuple):
    """What one row is read from: the decoded message and where it was read in Kafka."""

    #: The event (for event tables), window aggregate, alert, dead letter or prompt version.
    item: Any
    #: The enriched event ``item`` came in (``None``: read from the raw topic).
    enriched: Any = None
    topic: str = ""
    partition: int = 0
    offset: int = 0


Read = Callable[[Source], Any]


@dataclass(frozen=True)
class Column:
    """One column: its name, its type as ``DESCRIBE TABLE`` prints it, and how it is read."""

    name: str
    type: str
    #: How the writer reads the value; ``None``: ClickHouse fills it (``default``, or a
    #: materialized view writes the table).
    read: Read | None = None
    #: ``DEFAULT …`` / ``MATERIALIZED …`` as ``DESCRIBE TABLE`` prints it, else "".
    default: str = ""


@dataclass(frozen=True)
class Table:
    """A table's columns in table order; :attr:`names` are the ones the writer inserts."""

    name: str
    columns: tuple[Column, ...]
    #: The columns the writer inserts, in row order (ClickHouse fills the others).
    inserted: tuple[Column, ...] = field(init=False, repr=False)
    names: tuple[str, ...] = field(init=False, repr=False)
    types: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        inserted = tuple(c for c in self.columns if c.read is not None)
        object.__setattr__(self, "inserted", inserted)
        object.__setattr__(self, "names", tuple(c.name for c in inserted))
        object.__setattr__(self, "types", tuple(c.type for c in inserted))

    def __getitem__(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def row(self, source: Source) -> tuple[Any, ...]:
        """The row of ``source``, read column by column (the reference the fast paths match)."""
        return tuple(c.read(source) for c in self.inserted)  # type: ignore[misc]

    def select(self, *names: str) -> str:
        """A SELECT list of these columns, for JSON: UUIDs as text (they do not serialize)."""
        return ", ".join(
            f"toString({c.name}) AS {c.name}" if c.type.endswith("UUID") else c.name
            for c in map(self.__getitem__, names)
        )


# --- how values are read -----------------------------------------------------------------


def _item(name: str) -> Read:
    return attrgetter(f"item.{name}")


def _text(name: str) -> Read:
    """An optional text, as its (non-Nullable) column keeps it: '' for None."""
    get = attrgetter(f"item.{name}")
    return lambda s: get(s) or ""


def _uuid(name: str) -> Read:
    # The UUID's 128-bit int: the form clickhouse-connect serializes without converting,
    # on every path, so a column never mixes types within one insert.
    get = attrgetter(f"item.{name}")
    return lambda s: None if (v := get(s)) is None else v.int


def _enum(name: str) -> Read:
    get = attrgetter(f"item.{name}")
    return lambda s: "" if (v := get(s)) is None else v.value


def epoch_ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


# ``_version`` = rank * 10**13 + enrichment time in ms (see migrations._ENVELOPE's comment):
# under ReplacingMergeTree the enriched copy of an event wins over its raw copy.
RANK_RAW, RANK_NO_CONTEXT, RANK_ENRICHED = 0, 1, 2
RANK_STEP = 10**13


def row_version(s: Source) -> int:
    x = s.enriched
    if x is None:
        return RANK_RAW * RANK_STEP
    has_context = x.context is not None or s.item.event_type == "interaction"
    return (RANK_ENRICHED if has_context else RANK_NO_CONTEXT) * RANK_STEP + epoch_ms(x.enriched_at)


# What can start a text that json.loads reads: JSON whitespace, a string, array or object,
# a number, true/false/null, and Python's NaN / Infinity.
_JSON_START = frozenset(' \t\n\r"[{-0123456789tfnNI')


def metadata_text(value: Any) -> str:
    """A metadata value as the ``metadata`` Map column stores it: its JSON text, except a
    string that would not read as JSON, which is stored as itself.

    So ``1`` -> ``1``, ``true`` -> ``true``, ``null`` -> ``null``, ``"web"`` -> ``web``, but
    ``"1"`` -> ``"1"`` and ``"true"`` -> ``"true"`` (quoted, as YAML quotes a string that
    would read as another type). Reading a value back is ``json.loads(text)`` if that parses,
    else ``text``: the type always comes back (docs/ARCHITECTURE.md, "Metadata values").
    """
    if type(value) is str:
        if not value or value[0] not in _JSON_START:
            return value
        try:
            json.loads(value)
        except ValueError:
            return value
        return json.dumps(value, ensure_ascii=False)
    if value is None or type(value) in (bool, int, float):
        return json.dumps(value)
    raise TypeError(f"metadata values are text, numbers, booleans or null, not {value!r}")


def _metadata(s: Source) -> dict[str, str]:
    return {k: metadata_text(v) for k, v in s.item.metadata.items()}


def _derived(name: str, default: Any) -> Read:
    """An interaction's derived attribute; ``default`` (or ``default(event)``) without one."""

    def read(s: Source) -> Any:
        d = None if s.enriched is None else s.enriched.derived
        if d is not None:
            return getattr(d, name)
        return default(s.item) if callable(default) else default

    return read


def _enrichment(s: Source) -> str:
    x = s.enriched
    if x is None:
        return "raw"
    return "enriched" if x.context is not None else "orphaned" if x.orphaned else "none"


def _enriched(name: str, default: Any) -> Read:
    return lambda s: default if s.enriched is None else getattr(s.enriched, name)


def _context(name: str, default: Any) -> Read:
    """The interaction's request context, copied onto feedback, signals and outcomes."""

    def read(s: Source) -> Any:
        c = None if s.enriched is None else s.enriched.context
        return default if c is None else getattr(c, name)

    return read


def _context_text(name: str) -> Read:
    read = _context(name, "")
    return lambda s: read(s) or ""


def _context_derived(name: str, default: Any) -> Read:
    """A derived attribute of the interaction, on rows that carry its context."""

    def read(s: Source) -> Any:
        x = s.enriched
        if x is None or x.context is None or x.derived is None:
            return default
        return getattr(x.derived, name)

    return read


def _empty_for_none(name: str) -> Read:
    get = attrgetter(f"item.{name}")
    return lambda s: "" if (v := get(s)) is None else v


# --- the declarations --------------------------------------------------------------------
_TIME = "DateTime64(3, 'UTC')"
_LC = "LowCardinality(String)"
_NOW = "DEFAULT now64(3)"

_ENVELOPE = (
    Column("event_id", "UUID", _uuid("event_id")),
    Column("occurred_at", _TIME, _item("occurred_at")),
    Column("app_id", _LC, _item("app_id")),
    Column("session_id", "String", _item("session_id")),
    Column("user_id", "String", _text("user_id")),
    Column("schema_version", "UInt8", _item("schema_version")),
)
_TRACE = (
    Column("kafka_topic", _LC, attrgetter("topic")),
    Column("kafka_partition", "UInt16", attrgetter("partition")),
    Column("kafka_offset", "UInt64", attrgetter("offset")),
    Column("inserted_at", _TIME, default=_NOW),
)
_VERSIONED_TRACE = (*_TRACE, Column("_version", "UInt64", row_version))
#: The request context copied onto feedback, implicit and outcome rows (migrations._CONTEXT).
CONTEXT = (
    Column("enrichment", _LC, _enrichment),
    Column("orphaned", "Bool", _enriched("orphaned", False)),
    Column("waited_ms", "Float64", _enriched("waited_ms", 0.0)),
    Column(
        "interaction_occurred_at", f"Nullable({_TIME})", _context("interaction_occurred_at", None)
    ),
    Column("model", _LC, _context_text("model")),
    Column("prompt_version", _LC, _context_text("prompt_version")),
    Column("experiment", _LC, _context_text("experiment")),
    Column("variant", _LC, _context_text("variant")),
    Column("shadow", "Bool", _context("shadow", False)),
    Column("latency_ms", "Nullable(Float64)", _context("latency_ms", None)),
    Column("input_language", _LC, _context_derived("input_language", "und")),
    Column("input_has_code", "Bool", _context_derived("input_has_code", False)),
    Column("response_has_code", "Bool", _context_derived("response_has_code", False)),
    Column("input_length_bucket", _LC, _context_derived("input_length_bucket", "")),
)

_INTERACTIONS = Table(
    "interactions",
    (
        *_ENVELOPE,
        Column("interaction_id", "UUID", _uuid("interaction_id")),
        Column("model", _LC, _item("model")),
        Column("prompt_version", _LC, _text("prompt_version")),
        Column("experiment", _LC, _text("experiment")),
        Column("variant", _LC, _text("variant")),
        Column("system_prompt", "String", _item("system_prompt")),
        Column("user_input", "String", _item("user_input")),
        Column("response", "String", _item("response")),
        Column("latency_ms", "Nullable(Float64)", _item("latency_ms")),
        Column("input_tokens", "Nullable(UInt32)", _item("input_tokens")),
        Column("output_tokens", "Nullable(UInt32)", _item("output_tokens")),
        Column("cost_usd", "Nullable(Float64)", _item("cost_usd")),
        Column("metadata", f"Map({_LC}, String)", _metadata),
        Column("shadow", "Bool", _item("shadow")),
        Column("input_language", _LC, _derived("input_language", "und")),
        Column("input_has_code", "Bool", _derived("input_has_code", False)),
        Column("response_has_code", "Bool", _derived("response_has_code", False)),
        Column("input_chars", "UInt32", _derived("input_chars", lambda e: len(e.user_input))),
        Column("response_chars", "UInt32", _derived("response_chars", lambda e: len(e.response))),
        Column("input_length_bucket", _LC, _derived("input_length_bucket", "")),
        *_VERSIONED_TRACE,
    ),
)
_FEEDBACK = Table(
    "feedback",
    (
        *_ENVELOPE,
        Column("interaction_id", "UUID", _uuid("interaction_id")),
        Column("kind", _LC, _enum("kind")),
        Column("thumbs", "Int8", lambda s: s.item.thumbs or 0),
        Column("rating", "Nullable(UInt8)", _item("rating")),
        Column("text", "String", _text("text")),
        Column("category", _LC, _enum("category")),
        *CONTEXT,
        *_VERSIONED_TRACE,
    ),
)
_IMPLICIT = Table(
    "implicit",
    (
        *_ENVELOPE,
        Column("interaction_id", "UUID", _uuid("interaction_id")),
        Column("signal", _LC, _enum("signal")),
        Column("edited_text", "String", _text("edited_text")),
        Column("edit_distance", "Nullable(UInt32)", _item("edit_distance")),
        Column("dwell_ms", "Nullable(Float64)", _item("dwell_ms")),
        Column("copied_chars", "Nullable(UInt32)", _item("copied_chars")),
        *CONTEXT,
        *_VERSIONED_TRACE,
    ),
)
_OUTCOMES = Table(
    "outcomes",
    (
        *_ENVELOPE,
        Column("interaction_id", "Nullable(UUID)", _uuid("interaction_id")),
        Column("outcome", _LC, _item("outcome")),
        Column("value", "Nullable(Float64)", _item("value")),
        Column("time_to_outcome_ms", "Nullable(Float64)", _item("time_to_outcome_ms")),
        *CONTEXT,
        *_VERSIONED_TRACE,
    ),
)


def _columns(
    spec: str, read: Callable[[str], Read | None] = _item, **defaults: str
) -> tuple[Column, ...]:
    """Columns from ``name Type`` lines, each read by ``read(name)`` (fields of the model)."""
    out = []
    for line in spec.strip().splitlines():
        name, type_ = line.strip().split(" ", 1)
        default = defaults.get(name, "")
        out.append(Column(name, type_, None if default else read(name), default))
    return tuple(out)


#: Fields of schemas.WindowAggregate (all but ``aggregate_schema_version``).
_WINDOW_AGGREGATES = Table(
    "window_aggregates",
    (
        *_columns(
            f"""
            window_start {_TIME}
            window_end {_TIME}
            app_id {_LC}
            experiment {_LC}
            variant {_LC}
            prompt_version {_LC}
            model {_LC}
            source_partition UInt16
            revision UInt64
            emitted_at {_TIME}
            interactions UInt64
            shadow_interactions UInt64
            latency_count UInt64
            latency_sum Float64
            latency_sum_squares Float64
            input_tokens_sum UInt64
            output_tokens_sum UInt64
            cost_usd_sum Float64
            thumbs_up UInt64
            thumbs_down UInt64
            rating_count UInt64
            rating_sum UInt64
            rating_sum_squares UInt64
            corrections UInt64
            comments UInt64
            reports UInt64
            implicit_copy UInt64
            implicit_edit UInt64
            implicit_follow_up UInt64
            implicit_regenerate UInt64
            implicit_abandon UInt64
            implicit_dwell UInt64
            dwell_ms_sum Float64
            outcome_counts Map({_LC}, UInt64)
            outcome_value_sums Map({_LC}, Float64)
            orphaned UInt64
            distinct_sessions UInt64
            session_sketch Array(UInt64)
            """
        ),
        *_TRACE,
    ),
)
#: Fields of schemas.Alert (all but ``alert_schema_version``); unset group keys are ''.
_ALERTS = Table(
    "alerts",
    (
        *_columns(
            f"""
            alert_id UUID
            alert_type {_LC}
            metric {_LC}
            dimension {_LC}
            detector_key String
            app_id {_LC}
            experiment {_LC}
            variant {_LC}
            prompt_version {_LC}
            baseline_rate Float64
            baseline_n UInt64
            recent_rate Float64
            recent_n UInt64
            recent_successes UInt64
            since {_TIME}
            detected_at {_TIME}
            emitted_at {_TIME}
            statistic Float64
            threshold Float64
            design_drop Float64
            arl0_observations Float64
            message String
            """,
            _empty_for_none,
        ),
        *_TRACE,
    ),
)
_DEAD_LETTERS = Table(
    "dead_letters",
    (
        Column(
            "failed_at",
            _TIME,
            lambda s: s.item.failed_at or dt.datetime.now(dt.timezone.utc),
        ),
        Column("reason", _LC, _item("reason")),
        Column("error", "String", _item("error")),
        Column("source", _LC, _item("source")),
        Column("source_topic", _LC, _text("source_topic")),
        Column("source_partition", "Int32", lambda s: _or_minus_one(s.item.source_partition)),
        Column("source_offset", "Int64", lambda s: _or_minus_one(s.item.source_offset)),
        Column("key", "String", lambda s: (s.item.key or b"").decode("utf-8", "replace")),
        Column("payload", "String", lambda s: s.item.payload.decode("utf-8", "replace")),
        Column("payload_hash", "UInt64", default="MATERIALIZED cityHash64(payload)"),
        *_TRACE,
    ),
)


def _or_minus_one(v: int | None) -> int:
    return -1 if v is None else v


#: The prompt registry (analysis.prompts.PromptVersion's fields).
_PROMPT_VERSIONS = Table(
    "prompt_versions",
    _columns(
        f"""
        name {_LC}
        version String
        text String
        text_sha256 String
        parent_version String
        note String
        created_by String
        created_at {_TIME}
        """,
        created_at=_NOW,
    ),
)

#: The experiment design registry (analysis.reads.designs; migration 4): one row per
#: experiment, read from the attributes of the row object designs.py builds.
_EXPERIMENT_DESIGNS = Table(
    "experiment_designs",
    _columns(
        f"""
        experiment String
        primary_metric String
        guardrails Array(String)
        mde Nullable(Float64)
        mde_relative Bool
        alpha Float64
        power Float64
        mode {_LC}
        baseline Nullable(Float64)
        sd Nullable(Float64)
        planned_sessions Nullable(UInt64)
        weights_json String
        note String
        created_by String
        created_at {_TIME}
        """,
        created_at=_NOW,
    ),
)

FIRST_RANK_TOP = (1 << 64) - 1

#: The control plane's audit trail (feedbackloop.control; migration 5): one row per version
#: of an experiment, read from its ExperimentConfig.
_EXPERIMENT_CHANGES = Table(
    "experiment_changes",
    (
        *_columns(f"app_id {_LC}\nname {_LC}\nversion UInt32\naction {_LC}"),
        Column("status", _LC, lambda s: s.item.status.value),
        Column("serving_weights", "Map(String, Float64)", lambda s: s.item.serving_weights()),
        Column(
            "canary_step", "Int16", lambda s: -1 if s.item.canary is None else s.item.canary.step
        ),
        *_columns(f"changed_by String\nreason String\nchanged_at {_TIME}"),
        Column("config", "String", lambda s: s.item.model_dump_json()),
        *_TRACE,
        # Migration 8: the engine keeps the largest rank, i.e. the earliest message of a
        # version (the one every reader of the control topic takes).
        Column("first_rank", "UInt64", lambda s: FIRST_RANK_TOP - s.offset),
    ),
)

# Hourly rollups: written by their materialized views (migration 2), never by us.
_GROUP = f"app_id {_LC}\nexperiment {_LC}\nvariant {_LC}\nprompt_version {_LC}\nmodel {_LC}"
_UNIQ = "AggregateFunction(uniqExact, Nullable(UUID))"


def _rollup(spec: str) -> tuple[Column, ...]:
    return _columns(spec, lambda name: None)


_INTERACTIONS_HOURLY = Table(
    "interactions_hourly",
    _rollup(
        f"""
        hour DateTime('UTC')
        {_GROUP}
        interactions AggregateFunction(uniqExact, UUID)
        sessions AggregateFunction(uniq, String)
        latency_ms AggregateFunction(quantilesTDigest(0.5, 0.9, 0.99), Nullable(Float64))
        """
    ),
)
_FEEDBACK_HOURLY = Table(
    "feedback_hourly",
    _rollup(
        f"""
        hour DateTime('UTC')
        {_GROUP}
        input_language {_LC}
        feedback AggregateFunction(uniqExact, UUID)
        thumbs_up {_UNIQ}
        thumbs_down {_UNIQ}
        rating_1 {_UNIQ}
        rating_2 {_UNIQ}
        rating_3 {_UNIQ}
        rating_4 {_UNIQ}
        rating_5 {_UNIQ}
        corrections {_UNIQ}
        reports {_UNIQ}
        """
    ),
)

#: Event identity (migration 6; feedbackloop.sinks.event_keys): the key each event id was
#: stored under, written by a materialized view per event table, read by the sink.
_EVENT_KEYS = Table(
    "event_keys",
    _columns(
        f"""
        event_id UUID
        event_table {_LC}
        app_id {_LC}
        slice Array(String)
        hour DateTime('UTC')
        inserted_at {_TIME}
        """,
        lambda name: None,
        inserted_at=_NOW,
    ),
)


# Per-session report rows (migration 7): written by the compactor and by their materialized
# views; their columns are declared with the SQL that fills them (sinks/report_rows.py).
_REPORT_ROWS = tuple(
    Table(name, tuple(Column(n, t, None, d) for n, t, d in cols))
    for name, cols in declared_columns().items()
)

# Their lookup copies (migration 9): the event tables' columns the report statements read,
# copied by the compactor (``CREATE TABLE … AS SELECT``, so the types are the source's).
_EVENTS = {t.name: t for t in (_INTERACTIONS, _FEEDBACK, _IMPLICIT, _OUTCOMES)}
_REPORT_LOOKUPS = tuple(
    Table(
        lk.table,
        (
            *(Column(c, _EVENTS[lk.source][c].type) for c in lk.copied),
            *(Column(n, t) for n, t, _ in lk.extra),
        ),
    )
    for lk in LOOKUPS
)

# The failure slices' input labels (migration 11) and per-interaction signals (migration 12),
# written by the compactor.
_INPUT_LABELS = (
    Table("report_input_labels", tuple(Column(n, t) for n, t in LABEL_COLUMNS)),
    Table("report_input_labels_cursor", tuple(Column(n, t, None, d) for n, t, d in CURSOR_COLUMNS)),
    Table(SIGNALS_TABLE, tuple(Column(n, t) for n, t in SIGNALS_COLUMNS)),
)

_SINK_TABLES = (
    _INTERACTIONS,
    _FEEDBACK,
    _IMPLICIT,
    _OUTCOMES,
    _WINDOW_AGGREGATES,
    _ALERTS,
    _DEAD_LETTERS,
    _EXPERIMENT_CHANGES,
)
#: Every table the migrations create (but their own ``schema_migrations``), by name.
TABLES: Mapping[str, Table] = {
    t.name: t
    for t in (
        *_SINK_TABLES,
        _PROMPT_VERSIONS,
        _EXPERIMENT_DESIGNS,
        _INTERACTIONS_HOURLY,
        _FEEDBACK_HOURLY,
        _EVENT_KEYS,
        *_REPORT_ROWS,
        *_REPORT_LOOKUPS,
        *_INPUT_LABELS,
    )
}
#: The columns the sink inserts into each of its tables, in row order (defaults fill the rest).
COLUMNS: Mapping[str, tuple[str, ...]] = {t.name: t.names for t in _SINK_TABLES}
