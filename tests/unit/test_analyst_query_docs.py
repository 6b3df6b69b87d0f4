"""The documented analyst queries: one source (the module), the docs kept equal to it."""

from __future__ import annotations

from pathlib import Path

import pytest

from feedbackloop.analysis.reads.analyst_queries import (
    ANALYST_QUERIES,
    analyst_query,
    render_examples,
)
from feedbackloop.errors import ConfigError
from feedbackloop.sinks.query import check_read_only

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"


def test_docs_show_exactly_the_module_queries() -> None:
    text = DOCS.read_text()
    start = text.index("```sql\n", text.index("Example queries")) + len("```sql\n")
    assert text[start : text.index("```", start)].strip() == render_examples()


def test_every_example_passes_the_read_only_check_and_has_a_unique_name() -> None:
    names = [q.name for q in ANALYST_QUERIES]
    assert len(names) == len(set(names))
    for q in ANALYST_QUERIES:
        assert check_read_only(q.sql)
        assert analyst_query(q.name) is q


def test_unknown_name_lists_the_examples() -> None:
    with pytest.raises(ConfigError, match="satisfaction-by-day"):
        analyst_query("satisfaction")
