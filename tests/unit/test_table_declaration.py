"""The tables' column declaration (sinks/tables.py) against the code it is not derived in.

The migrated DDL is held to it by tests/integration/test_migrated_tables.py; the row builders by
tests/unit/test_sinks.py; here: the pydantic models whose fields become columns, the input
structure of the ClickHouse-parsed ingest statements, and the SELECT lists built from it.
"""

from __future__ import annotations

import dataclasses

import pytest

from feedbackloop.schemas import (
    Alert,
    DerivedAttributes,
    Feedback,
    Implicit,
    Interaction,
    Outcome,
    RequestContext,
    WindowAggregate,
)
from feedbackloop.sinks import COLUMNS, TABLES, ingest
from feedbackloop.sinks.tables import CONTEXT

_TRACE = {"kafka_topic", "kafka_partition", "kafka_offset", "_version"}
_EVENT_MODELS = {
    "interactions": Interaction,
    "feedback": Feedback,
    "implicit": Implicit,
    "outcomes": Outcome,
}


def _names(structure: str) -> list[str]:
    """Field names of a ClickHouse structure ``a T, b Tuple(x U, y V), …`` (top level)."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(structure + ","):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            names.append(structure[start:i].strip().split(" ", 1)[0])
            start = i + 1
    return names


def _inner(structure: str) -> str:
    """``x Tuple(a T, …)`` -> ``a T, …``."""
    return structure[structure.index("(") + 1 : structure.rindex(")")]


@pytest.mark.parametrize(
    ("table", "model", "not_stored"),
    [
        ("window_aggregates", WindowAggregate, {"aggregate_schema_version"}),
        ("alerts", Alert, {"alert_schema_version"}),
    ],
)
def test_model_tables_have_one_column_per_field_in_field_order(
    table: str, model: type, not_stored: set[str]
) -> None:
    fields = [n for n in model.model_fields if n not in not_stored]  # type: ignore[attr-defined]
    assert [n for n in COLUMNS[table] if n not in _TRACE] == fields


@pytest.mark.parametrize("table", sorted(_EVENT_MODELS))
def test_every_event_field_has_a_column_in_its_table(table: str) -> None:
    fields = set(_EVENT_MODELS[table].model_fields) - {"event_type"}
    assert fields <= set(COLUMNS[table])


def test_context_columns_come_from_the_request_context_and_derived_attributes() -> None:
    sources = {*RequestContext.model_fields, *DerivedAttributes.model_fields}
    names = {c.name for c in CONTEXT} - {"enrichment", "orphaned", "waited_ms"}
    assert names <= sources


def test_prompt_registry_columns_are_the_prompt_version_fields() -> None:
    from feedbackloop.analysis.loop.prompts import PromptVersion

    fields = [f.name for f in dataclasses.fields(PromptVersion)]
    assert [c.name for c in TABLES["prompt_versions"].columns] == fields
    assert TABLES["prompt_versions"].names == tuple(fields[:-1])  # created_at: DEFAULT


@pytest.mark.parametrize("table", sorted(ingest.JSON_TABLES))
def test_parsed_ingest_selects_every_inserted_column_and_nothing_else(table: str) -> None:
    assert set(ingest._SELECT[table]) | _TRACE == set(COLUMNS[table])
    assert not set(ingest._SELECT[table]) & _TRACE


@pytest.mark.parametrize("table", sorted(ingest.JSON_TABLES))
def test_parsed_ingest_reads_only_fields_the_event_schemas_have(table: str) -> None:
    event = set(_EVENT_MODELS[table].model_fields)
    assert set(_names(ingest._ENV)) <= event
    assert set(_names(ingest._EVENT[table])) <= event
    assert set(_names(_inner(ingest._CTX))) <= set(RequestContext.model_fields)
    assert set(_names(_inner(ingest._DER))) == set(DerivedAttributes.model_fields)


def test_select_lists_check_names_and_render_uuids_as_text() -> None:
    alerts = TABLES["alerts"]
    assert alerts.select("alert_id", "message") == "toString(alert_id) AS alert_id, message"
    with pytest.raises(KeyError, match="no column 'mesage'"):
        alerts.select("mesage")


def test_only_columns_clickhouse_fills_are_left_out_of_inserts() -> None:
    for table in TABLES.values():
        for column in table.columns:
            filled = column.read is None
            assert filled == (column.name not in table.names)
            if column.default:
                assert filled
