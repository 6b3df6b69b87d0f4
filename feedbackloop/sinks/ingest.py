"""Enriched messages parsed by ClickHouse itself: the writer's fast path on embedded chDB.

The Python path (:mod:`feedbackloop.sinks.rows`) turns every message into a row tuple and
clickhouse-connect serializes the rows column by column; both hold the GIL and together cost
more than the insert itself. Here Python only looks at bytes: :func:`route` finds the event
type (hence the table) and the ``enriched_at`` stamp, :func:`write_block` writes a batch's
messages of one table to a file, each wrapped as
``{"_o":<Kafka offset>,"_i":"<event id>","m":<message>}`` (the id scanned from the bytes for
the identity check, feedbackloop.sinks.event_keys, and checked against the parsed one),
and one ``INSERT … SELECT … FROM file(…, 'JSONEachRow', <structure>)`` (:func:`insert_sql`)
has ClickHouse parse the JSON into typed named tuples and map them to the columns, in C++
without the GIL.

Exactness: the rows must be the ones the Python path stores. The messages were validated by
the stream jobs, but they carry the client's original bytes, so a value may be in a form
pydantic's lax mode converts. The statement therefore refuses, with ``throwIf`` over every
row, anything whose conversion it cannot vouch for: an event type other than the table's,
times not in ``YYYY-MM-DDTHH:MM:SS[.ffffff](Z|±HH:MM)`` after 1970, narrow integers out of
their column's range (read as ``Decimal(38, 0)``, which fails on overflow where an integer
type wraps), missing fields whose Python default is not ClickHouse's, metadata floats (Python
prints them its own way) and metadata text whose JSON reading is not decided here (see
``tables.metadata_text``: values are read as ``Dynamic`` so each keeps its JSON type), an
``enriched_at`` Python did not convert (``_version`` comes from Python's milliseconds, passed
in the statement). The input settings keep ClickHouse from reading numbers, booleans or
objects as text. A
refused block (any error ClickHouse reports) takes the Python path whole, where bad rows
become dead letters with their reason; tests/integration/test_sink_json_path.py compares the
two paths with ``EXCEPT`` over the stream jobs' output and lax-form variants.

Only embedded chDB uses this path: the engine in this process reads the file. A ClickHouse
server keeps the Python path (``input()`` with the data in the request body would be the
equivalent there; chDB silently inserts nothing through ``input()``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from feedbackloop.schemas.events import SCHEMA_VERSION
from feedbackloop.sinks.event_keys import KEY_COLUMNS
from feedbackloop.sinks.tables import COLUMNS, RANK_ENRICHED, RANK_NO_CONTEXT, RANK_STEP
from feedbackloop.sinks.tables import epoch_ms as _ms

__all__ = [
    "INPUT_SETTINGS",
    "JSON_TABLES",
    "insert_sql",
    "keys_sql",
    "route",
    "remove_stale_blocks",
    "stamp_ms",
    "write_block",
]

_TABLE_OF = {
    b"interaction": "interactions",
    b"feedback": "feedback",
    b"implicit": "implicit",
    b"outcome": "outcomes",
}
_TYPE_OF = {t: et.decode() for et, t in _TABLE_OF.items()}
#: The stream jobs' ``enriched_at`` (``iso_now``): plain characters only, so the bytes are the
#: JSON string's value and a safe SQL literal.
_STAMP = re.compile(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
_stamp_ok = _STAMP.fullmatch
#: ``enriched_at`` -> the milliseconds the Python path puts into ``_version`` (few per run).
_STAMP_MS: dict[bytes, int] = {}


def stamp_ms(stamp: bytes) -> int | None:
    """``enriched_at``'s epoch milliseconds, as the Python path computes them, or ``None``."""
    ms = _STAMP_MS.get(stamp)
    if ms is None:
        if _stamp_ok(stamp) is None:
            return None
        ms = _ms(dt.datetime.fromisoformat(stamp.decode()))
        if len(_STAMP_MS) > 1024:
            _STAMP_MS.clear()
        _STAMP_MS[stamp] = ms
    return ms


def route(value: bytes) -> tuple[str, bytes] | None:
    """``(table, enriched_at)`` of an enriched message as our stream jobs write it, else ``None``.

    Looks at bytes only (no parsing): ClickHouse checks that the event type it parses is the
    table's, so a message routed wrongly here fails its block instead of landing elsewhere.
    """
    i = value.find(b'"event_type":"')
    if i < 0 or value[-2:] != b'"}':
        return None
    i += 14
    j = value.find(b'"', i, i + 13)
    table = _TABLE_OF.get(value[i:j]) if j > 0 else None
    if table is None:
        return None
    k = value.rfind(b'"enriched_at":"', max(0, len(value) - 64))
    if k < 0:
        return None
    return table, value[k + 15 : -2]


# --- ClickHouse side ---------------------------------------------------------------------
# Integers whose column is narrower than the schema allows are read as Decimal(38, 0), which
# fails on overflow (a wider integer type would wrap silently), then range-checked. Times are
# read as text, checked against the canonical form and converted. Fields whose default on the
# Python path is not ClickHouse's default are read as Nullable and required.
_TIME_RE = (
    r"^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$"
)


def _quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


# A metadata string that json.loads reads as a number, true/false/null or NaN/Infinity is
# stored JSON-quoted (tables.metadata_text); these need no escaping, so '"' || s || '"'.
_JSON_LITERAL = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?|true|false|null|NaN|-?Infinity"
_LITERAL_RE = f"^({_JSON_LITERAL})$"
# Strings whose JSON reading this statement does not decide (JSON whitespace around a
# literal, or a string, array or object in the text): the block takes the Python path.
_UNDECIDED_RE = rf'^[ \t\n\r"\[{{]|^({_JSON_LITERAL})[ \t\n\r]+$'
# Metadata value types this statement stores as Python does: text, integers, booleans, null
# (a float could be printed differently by Python: 1.50, 1e5).
_META_TYPES = "('None', 'Bool', 'Int64', 'UInt64', 'String')"
_ENV = (
    "event_type String, event_id Nullable(UUID), occurred_at String, app_id String, "
    "session_id String, user_id Nullable(String), schema_version Nullable(UInt8)"
)
_U32 = "Nullable(Decimal(38, 0))"
_EVENT = {
    "interactions": "interaction_id Nullable(UUID), system_prompt String, user_input String, "
    "response String, model String, prompt_version Nullable(String), "
    "experiment Nullable(String), variant Nullable(String), latency_ms Nullable(Float64), "
    f"input_tokens {_U32}, output_tokens {_U32}, cost_usd Nullable(Float64), "
    "metadata Map(String, Dynamic), shadow Bool",
    "feedback": "interaction_id UUID, kind String, thumbs Nullable(Int8), "
    "rating Nullable(UInt8), text Nullable(String), category Nullable(String)",
    "implicit": "interaction_id UUID, signal String, edited_text Nullable(String), "
    f"edit_distance {_U32}, dwell_ms Nullable(Float64), copied_chars {_U32}",
    "outcomes": "interaction_id Nullable(UUID), outcome String, value Nullable(Float64), "
    "time_to_outcome_ms Nullable(Float64)",
}
_CTX = (
    "context Tuple(interaction_occurred_at Nullable(String), model Nullable(String), "
    "prompt_version Nullable(String), experiment Nullable(String), variant Nullable(String), "
    "shadow Bool, latency_ms Nullable(Float64))"
)
_DER = (
    "derived Tuple(input_language Nullable(String), input_has_code Nullable(Bool), "
    "response_has_code Nullable(Bool), input_chars Nullable(UInt32), "
    "response_chars Nullable(UInt32), input_length_bucket Nullable(String))"
)
_TAIL = "orphaned Bool, waited_ms Float64, enriched_at String"
_DER_CHECK = (
    "derived.input_language IS NOT NULL AND derived.input_has_code IS NOT NULL "
    "AND derived.response_has_code IS NOT NULL AND derived.input_chars IS NOT NULL "
    "AND derived.response_chars IS NOT NULL AND derived.input_length_bucket IS NOT NULL"
)


def _u32_ok(col: str) -> str:
    return f"({col} IS NULL OR ({col} >= 0 AND {col} < 4294967296))"


def _u32(col: str) -> str:
    return f"CAST({col}, 'Nullable(UInt32)')"


_HAS = "(context.model IS NOT NULL)"
# What each inserted column is SELECTed as, by column name: insert_sql lists them in the
# declared order (sinks/tables.py); the trace columns and _version are added per statement.
_ENV_SELECT = {
    "event_id": "assumeNotNull(event.event_id)",
    "occurred_at": "parseDateTime64BestEffort(event.occurred_at, 3, 'UTC')",
    "app_id": "event.app_id",
    "session_id": "event.session_id",
    "user_id": "ifNull(event.user_id, '')",
    "schema_version": f"ifNull(event.schema_version, {SCHEMA_VERSION})",
}
_CTX_SELECT = {
    "enrichment": f"if({_HAS}, 'enriched', if(orphaned, 'orphaned', 'none'))",
    "orphaned": "orphaned",
    "waited_ms": "waited_ms",
    "interaction_occurred_at": f"if({_HAS}, parseDateTime64BestEffort("
    "assumeNotNull(context.interaction_occurred_at), 3, 'UTC'), NULL)",
    "model": "ifNull(context.model, '')",
    "prompt_version": f"if({_HAS}, ifNull(context.prompt_version, ''), '')",
    "experiment": f"if({_HAS}, ifNull(context.experiment, ''), '')",
    "variant": f"if({_HAS}, ifNull(context.variant, ''), '')",
    "shadow": f"if({_HAS}, context.shadow, false)",
    "latency_ms": f"if({_HAS}, context.latency_ms, NULL)",
    "input_language": f"if({_HAS}, assumeNotNull(derived.input_language), 'und')",
    "input_has_code": f"if({_HAS}, assumeNotNull(derived.input_has_code), false)",
    "response_has_code": f"if({_HAS}, assumeNotNull(derived.response_has_code), false)",
    "input_length_bucket": f"if({_HAS}, assumeNotNull(derived.input_length_bucket), '')",
}
_SELECT: dict[str, dict[str, str]] = {
    "interactions": {
        **_ENV_SELECT,
        "interaction_id": "assumeNotNull(event.interaction_id)",
        "model": "event.model",
        "prompt_version": "ifNull(event.prompt_version, '')",
        "experiment": "ifNull(event.experiment, '')",
        "variant": "ifNull(event.variant, '')",
        "system_prompt": "event.system_prompt",
        "user_input": "event.user_input",
        "response": "event.response",
        "latency_ms": "event.latency_ms",
        "input_tokens": _u32("event.input_tokens"),
        "output_tokens": _u32("event.output_tokens"),
        "cost_usd": "event.cost_usd",
        "metadata": "mapApply((k, v) -> (k, multiIf(dynamicType(v) = 'None', 'null', "
        f"dynamicType(v) = 'String' AND match(toString(v), {_quote(_LITERAL_RE)}), "
        "concat('\"', toString(v), '\"'), toString(v))), event.metadata)",
        "shadow": "event.shadow",
        "input_language": "assumeNotNull(derived.input_language)",
        "input_has_code": "assumeNotNull(derived.input_has_code)",
        "response_has_code": "assumeNotNull(derived.response_has_code)",
        "input_chars": "assumeNotNull(derived.input_chars)",
        "response_chars": "assumeNotNull(derived.response_chars)",
        "input_length_bucket": "assumeNotNull(derived.input_length_bucket)",
    },
    "feedback": {
        **_ENV_SELECT,
        "interaction_id": "event.interaction_id",
        "kind": "event.kind",
        "thumbs": "ifNull(event.thumbs, 0)",
        "rating": "event.rating",
        "text": "ifNull(event.text, '')",
        "category": "ifNull(event.category, '')",
        **_CTX_SELECT,
    },
    "implicit": {
        **_ENV_SELECT,
        "interaction_id": "event.interaction_id",
        "signal": "event.signal",
        "edited_text": "ifNull(event.edited_text, '')",
        "edit_distance": _u32("event.edit_distance"),
        "dwell_ms": "event.dwell_ms",
        "copied_chars": _u32("event.copied_chars"),
        **_CTX_SELECT,
    },
    "outcomes": {
        **_ENV_SELECT,
        "interaction_id": "event.interaction_id",
        "outcome": "event.outcome",
        "value": "event.value",
        "time_to_outcome_ms": "event.time_to_outcome_ms",
        **_CTX_SELECT,
    },
}
_CHECK = {
    "interactions": (
        "event.interaction_id IS NOT NULL",
        _DER_CHECK,
        # Metadata values keep their JSON type (tables.metadata_text): see _META_TYPES and
        # _UNDECIDED_RE for what is left to the Python path.
        f"NOT arrayExists(v -> dynamicType(v) NOT IN {_META_TYPES} OR (dynamicType(v) = "
        f"'String' AND match(toString(v), {_quote(_UNDECIDED_RE)})), mapValues(event.metadata))",
        _u32_ok("event.input_tokens"),
        _u32_ok("event.output_tokens"),
    ),
    "feedback": (),
    "implicit": (_u32_ok("event.edit_distance"), _u32_ok("event.copied_chars")),
    "outcomes": (),
}
JSON_TABLES = frozenset(_SELECT)

#: Input settings: strict where ClickHouse would otherwise convert a value's form.
INPUT_SETTINGS: dict[str, Any] = {
    "input_format_skip_unknown_fields": 1,
    "input_format_json_ignore_unknown_keys_in_named_tuple": 1,
    "input_format_json_named_tuples_as_objects": 1,
    "input_format_json_defaults_for_missing_elements_in_named_tuple": 1,
    "input_format_null_as_default": 1,
    # Metadata values are read as Dynamic, which keeps each value's JSON type; nothing is
    # read as text from a number or boolean, or inferred from a string's content.
    "input_format_json_read_numbers_as_strings": 0,
    "input_format_json_read_bools_as_strings": 0,
    "input_format_try_infer_dates": 0,
    "input_format_try_infer_datetimes": 0,
    "input_format_json_read_bools_as_numbers": 0,
    "input_format_json_read_objects_as_strings": 0,
    "input_format_json_read_arrays_as_strings": 0,
    "input_format_json_try_infer_numbers_from_strings": 0,
    "input_format_json_empty_as_default": 0,
    "input_format_allow_errors_num": 0,
    "input_format_allow_errors_ratio": 0,
    # One parsing thread: on two cores the parallel parser's threads compete with the
    # consumer thread (interleaved A/B in bench/bench_sink.py's setup: ~+15 % rows/s).
    "input_format_parallel_parsing": 0,
}


def insert_sql(
    database: str,
    table: str,
    path: str,
    topic: str,
    partition: int,
    stamps: dict[bytes, int],
    settings: dict[str, Any],
    exclude: Collection[int] = (),
) -> str:
    """``INSERT … SELECT`` of one block file of ``table`` (lines from :func:`write_block`).

    Lines whose offset is in ``exclude`` are not inserted (refused by the identity check,
    feedbackloop.sinks.event_keys, or taken on the Python path). Every
    line's parsed event id must equal the id the sink scanned from its bytes (``_i``), or the
    block is refused: the identity lookup was made with the scanned ids.

    ``stamps`` maps each ``enriched_at`` in the block to its milliseconds (:func:`stamp_ms`);
    ``settings`` (with :data:`INPUT_SETTINGS`) go into the statement's ``SETTINGS`` clause,
    which applies to the insert and to reading the file (passing them to the client instead
    makes chDB's client SET and restore each one around the statement: ~40 extra queries).
    """
    if table == "interactions":
        rank = f"{RANK_ENRICHED * RANK_STEP}"
    else:
        rank = f"if({_HAS}, {RANK_ENRICHED * RANK_STEP}, {RANK_NO_CONTEXT * RANK_STEP})"
    keys = ", ".join(_quote(s.decode()) for s in stamps)
    values = ", ".join(str(int(v)) for v in stamps.values())
    stamp = f"transform(enriched_at, [{keys}], [{values}]::Array(UInt64), 0::UInt64)"
    checks = [
        f"event.event_type = {_quote(_TYPE_OF[table])}",
        "event.event_id IS NOT NULL",
        "event.event_id = _i",
        f"match(event.occurred_at, {_quote(_TIME_RE)})",
        f"{stamp} > 0",
        *_CHECK[table],
    ]
    if table != "interactions":
        checks += [
            "(context.model IS NULL) = (context.interaction_occurred_at IS NULL)",
            f"NOT {_HAS} OR (match(assumeNotNull(context.interaction_occurred_at), "
            f"{_quote(_TIME_RE)}) AND {_DER_CHECK})",
        ]
    condition = " AND ".join(f"({c})" for c in checks)
    skip = f" AND _o NOT IN ({', '.join(str(int(o)) for o in sorted(exclude))})" if exclude else ""
    exprs = {
        **_SELECT[table],
        "kafka_topic": _quote(topic),
        "kafka_partition": str(int(partition)),
        "kafka_offset": "_o",
        "_version": f"{rank} + {stamp}",
    }
    select = ", ".join(exprs[c] for c in COLUMNS[table])
    columns = ", ".join(f"`{c}`" for c in COLUMNS[table])
    return (
        f"INSERT INTO `{database}`.`{table}` ({columns}) SELECT {select} "
        f"FROM {_from_file(table, path)} "
        f"WHERE throwIf(NOT ({condition}), 'feedbackloop: a message not in the strict form') = 0"
        f"{skip} "
        f"SETTINGS {_settings({**INPUT_SETTINGS, **settings})}"
    )


def _from_file(table: str, path: str) -> str:
    """The block file of ``table`` as a subquery: ``_o``, ``_i`` and the message's fields."""
    structure = f"event Tuple({_ENV}, {_EVENT[table]}), "
    if table == "interactions":
        structure += f"{_DER}, {_TAIL}"
    else:
        structure += f"{_CTX}, {_DER}, {_TAIL}"
    fields = [f.split(" ", 1)[0] for f in _TAIL.split(", ")]
    fields += ["event", "derived"] + ([] if table == "interactions" else ["context"])
    unwrap = ", ".join(f"m.{f} AS {f}" for f in fields)
    return (
        f"(SELECT _o, _i, {unwrap} FROM file({_quote(path)}, 'JSONEachRow', "
        f"{_quote('_o UInt64, _i UUID, m Tuple(' + structure + ')')}))"
    )


def keys_sql(table: str, path: str, offsets: Collection[int]) -> str:
    """The identity key (feedbackloop.sinks.event_keys) of the lines at ``offsets`` of a block.

    Rows of ``(offset, event_id, app_id, slice, hour)``, read with the same expressions as
    :func:`insert_sql` stores, so the key is the one the row will have. Only run for lines
    whose event id is already stored or repeated in the batch (resends: rare).
    """
    sel = _SELECT[table]
    slice_ = ", ".join(sel[c] for c in KEY_COLUMNS[table])
    return (
        f"SELECT _o, {sel['event_id']}, {sel['app_id']}, [{slice_}], "
        f"intDiv(toUnixTimestamp({sel['occurred_at']}), 3600) * 3600 "
        f"FROM {_from_file(table, path)} "
        f"WHERE _o IN ({', '.join(str(int(o)) for o in sorted(offsets))}) "
        f"SETTINGS {_settings(INPUT_SETTINGS)}"
    )


def _settings(settings: dict[str, Any]) -> str:
    out = []
    for k, v in settings.items():
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", k):
            raise ValueError(f"not a setting name: {k!r}")
        out.append(f"{k} = {int(v) if isinstance(v, (bool, int)) else _quote(str(v))}")
    return ", ".join(out)


def write_block(lines: list[tuple[bytes, int, int, bytes]]) -> str:
    """Write ``(message, offset, index, event id)`` as ``{"_o":<offset>,"_i":"<event id>",
    "m":<message>}`` lines to a temp file.

    Returns its path; the caller removes it. Wrapping the message (rather than splicing the
    offset into it) leaves its bytes as they are: they are copied once, into the file.
    """
    parts: list[bytes] = []
    add = parts.append
    for value, offset, _, event_id in lines:
        add(b'{"_o":%d,"_i":"%s","m":' % (offset, event_id))
        add(value)
        add(b"}\n")
    fd, path = tempfile.mkstemp(prefix=f"{_PREFIX}{os.getpid()}-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            f.writelines(parts)
    except BaseException:
        os.unlink(path)
        raise
    return path


_PREFIX = "feedbackloop-sink-"


def remove_stale_blocks(directory: str | None = None) -> int:
    """Remove block files left by sink processes that died (SIGKILL) before removing them."""
    directory = directory or tempfile.gettempdir()
    removed = 0
    for path in Path(directory).glob(f"{_PREFIX}*-*.jsonl"):
        pid = path.name[len(_PREFIX) :].split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
