"""ClickHouse literals for the SQL this package writes.

The read-only query path (the sink worker's endpoint, :func:`feedbackloop.sinks.run_query`)
takes plain SQL text and no bound parameters, so every value a query carries is written as
a literal here, escaped in one place.
"""

from __future__ import annotations

import datetime as dt

__all__ = ["datetime_literal", "quote"]


def quote(value: str) -> str:
    """A ClickHouse string literal: ``'`` and ``\\`` escaped with a backslash."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def datetime_literal(t: dt.datetime) -> str:
    """``t`` as a ``DateTime64(3, 'UTC')`` literal; a naive ``t`` is taken as UTC."""
    t = t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
    utc = t.astimezone(dt.timezone.utc)
    return f"toDateTime64({quote(utc.strftime('%Y-%m-%d %H:%M:%S.%f')[:-3])}, 3, 'UTC')"
