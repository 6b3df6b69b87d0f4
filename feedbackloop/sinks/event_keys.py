"""Event identity, one event id, one key: a resend under other key columns is refused.

The event tables are ReplacingMergeTree whose dedup key is the sorting key: ``app_id``, the
table's slicing columns (:data:`KEY_COLUMNS`), the hour of ``occurred_at`` (hence the day
partition) and ``event_id``. A resend of an event id whose key columns differ would land
under another key and read as a second row under ``FINAL``. So the sink refuses it: before
a batch is inserted, its event ids are looked up in ``event_keys`` (migration 6: keyed by
``event_id`` alone, written by a materialized view per event table in the same INSERT as
the event rows), and a message whose id is known under another key, or seen earlier in the
same batch under another key, becomes a dead letter with reason ``conflicting_resend``
instead of a row. The first key wins. An identical resend (same key) is inserted as before
and collapses (stored once); so does a resend with the same key and other content (the
higher ``_version`` wins, as before).

This module is pure but for :func:`lookup` (one query per batch); the sink
(feedbackloop.sinks.clickhouse) decides per message with :class:`IdentityCheck`. Where an
id comes from when a producer sent none is :mod:`feedbackloop.schemas.identity`'s business;
this module holds whatever id an event has to its first key.
"""

from __future__ import annotations

import binascii
import contextlib
import datetime as dt
import os
import tempfile
import uuid
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

from feedbackloop.sinks.tables import TABLES

__all__ = [
    "CONFLICTING_RESEND",
    "KEY_COLUMNS",
    "EVENT_TABLES",
    "EventKey",
    "IdentityCheck",
    "lookup",
    "row_key",
    "scan_event_id",
]

CONFLICTING_RESEND = "conflicting_resend"

#: Each event table's slicing key columns, in the order ``event_keys.slice`` holds them
#: (migration 6's ``_EVENT_KEY_SELECT``; tests/integration/test_event_identity.py holds the
#: two equal by resending every event identically).
KEY_COLUMNS: dict[str, tuple[str, ...]] = {
    "interactions": ("prompt_version", "experiment", "variant"),
    "feedback": ("kind",),
    "implicit": ("signal",),
    "outcomes": ("outcome",),
}
EVENT_TABLES = frozenset(KEY_COLUMNS)


class EventKey(NamedTuple):
    """Where an event's row lives: its table and the key columns before ``event_id``."""

    table: str
    app_id: str
    slice: tuple[str, ...]
    #: ``toStartOfHour(occurred_at)`` as Unix seconds (UTC).
    hour: int

    def describe(self) -> str:
        cols = ", ".join(
            f"{name}={value!r}"
            for name, value in zip(
                ("app_id", *KEY_COLUMNS[self.table]), (self.app_id, *self.slice), strict=True
            )
        )
        hour = dt.datetime.fromtimestamp(self.hour, dt.timezone.utc).strftime("%Y-%m-%dT%H:00Z")
        return f"{self.table} ({cols}, hour {hour})"


# Positions of the key columns in a row (rows hold tables.COLUMNS in order).
_POS = {
    t: (
        TABLES[t].names.index("event_id"),
        TABLES[t].names.index("occurred_at"),
        TABLES[t].names.index("app_id"),
        tuple(TABLES[t].names.index(c) for c in cols),
    )
    for t, cols in KEY_COLUMNS.items()
}


def row_key(table: str, row: tuple[Any, ...]) -> tuple[int, EventKey]:
    """``(event id as int, key)`` of a row of an event table."""
    i_id, i_at, i_app, i_slice = _POS[table]
    occurred: dt.datetime = row[i_at]
    hour = int(occurred.timestamp()) // 3600 * 3600
    return row[i_id], EventKey(table, row[i_app], tuple(row[i] for i in i_slice), hour)


def scan_event_id(value: bytes) -> bytes | None:
    """The ``event_id`` text of an enriched message by bytes only (canonical form), or None.

    Not trusted: the ClickHouse-parsed insert checks that the id it parses equals this one
    (sinks/ingest.py), so a message that hides its real id fails its block instead.
    """
    i = value.find(b'"event_id":"')
    if i < 0:
        return None
    i += 12
    text = value[i : i + 36].lower()
    # Four dashes in place and 32 hex digits (deleting the digits leaves the dashes alone).
    if value[i + 36 : i + 37] != b'"' or text[8:24:5] != b"----":
        return None
    if text.translate(None, b"0123456789abcdef") != b"----":
        return None
    return text


def id_of_text(text: bytes) -> int:
    """The 128-bit int of an id scanned by :func:`scan_event_id`."""
    return int(text.replace(b"-", b""), 16)


def text_of_id(event_id: int) -> bytes:
    """The canonical text of an id, as :func:`scan_event_id` returns it."""
    h = b"%032x" % event_id
    return b"-".join((h[:8], h[8:12], h[12:16], h[16:20], h[20:]))


class IdentityCheck:
    """What one batch knows of its event ids: their stored keys and their first key here.

    ``known`` starts as :func:`lookup`'s answer; :meth:`conflict` adds every key it admits,
    so a later message of the same id in the batch is held to the first one.
    """

    def __init__(self, known: dict[int, set[EventKey]] | None = None) -> None:
        self.known: dict[int, set[EventKey]] = known or {}

    def conflict(self, event_id: int, key: EventKey) -> EventKey | None:
        """The key ``event_id`` already has, if it is not ``key`` (refuse); else None (admit)."""
        stored = self.known.get(event_id)
        if stored is None:
            self.known[event_id] = {key}
            return None
        if key in stored:
            return None
        return min(stored)

    def add(self, answer: dict[int, set[EventKey]]) -> None:
        for event_id, keys in answer.items():
            self.known.setdefault(event_id, set()).update(keys)


def error_text(event_id: int, first: EventKey, resent: EventKey) -> str:
    return (
        f"event id {uuid.UUID(int=event_id)} was first stored in {first.describe()}; "
        f"this resend has {resent.describe()}: refused, an event id keeps its first key "
        "(docs/SECURITY.md, Event identity)"
    )


def lookup(
    client: Any,
    database: str,
    embedded: bool,
    texts: Collection[bytes] = (),
    ids: Iterable[int] = (),
) -> dict[int, set[EventKey]]:
    """The stored keys of the ids that ``event_keys`` knows (one query).

    ``texts``: ids scanned by :func:`scan_event_id` (checked hex), ``ids``: ints. They
    travel as 16 big-endian bytes each, made by C loops (unhexlify of the joined texts,
    ``int.to_bytes``; the RowBinary UUID layout needed a Python shift per id, and the dashed
    text a Python format per int): on embedded chDB in a file the engine reads (a literal
    ``IN`` list of 50,000 ids took ~3 s to parse), on a server as external data.
    """
    data = binascii.unhexlify(b"".join(texts).replace(b"-", b""))
    data += b"".join(i.to_bytes(16, "big") for i in ids)
    if not data:
        return {}
    select = (
        "SELECT event_id, event_table, app_id, slice, toUInt32(hour) "
        f"FROM `{database}`.event_keys "
        "WHERE event_id IN (SELECT toUUID(UUIDNumToString(id)) FROM {source})"
    )
    if embedded:
        fd, path = tempfile.mkstemp(prefix="feedbackloop-ids-", suffix=".bin")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            rows = client.query(
                select.replace("{source}", f"file('{path}', 'RowBinary', 'id FixedString(16)')")
            ).result_rows
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
    else:
        from clickhouse_connect.driver.external import ExternalData

        ext = ExternalData(
            file_name="ids", data=data, fmt="RowBinary", structure="id FixedString(16)"
        )
        rows = client.query(select.replace("{source}", "ids"), external_data=ext).result_rows
    out: dict[int, set[EventKey]] = {}
    for event_id, table, app_id, slice_, hour in rows:
        eid = event_id.int if isinstance(event_id, uuid.UUID) else int(event_id)
        out.setdefault(eid, set()).add(EventKey(table, app_id, tuple(slice_), int(hour)))
    return out
