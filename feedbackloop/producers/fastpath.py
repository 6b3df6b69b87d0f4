"""The SDK's hot path: event ids, timestamps and JSON for events whose arguments are plainly
valid, without building a pydantic model.

The pydantic models in :mod:`feedbackloop.schemas.events` stay *the* contract. Every encoder
here is a filter in front of them: it accepts only arguments it can prove valid with cheap
exact-type checks, and then writes the very bytes ``encode(Model(**fields))`` would write
(same field order, same JSON formatting: pydantic-core and orjson agree on strings and floats,
and timestamps are written in pydantic's format). For anything else (a subclass, a coercible
value such as ``"5"`` or ``True`` for an int, a non-finite float, a violated rule, an explicit
``occurred_at``) it returns ``None`` and the caller takes the model path, so acceptance,
coercion and error messages are the model's own. ``tests/unit/test_fastpath.py`` checks this
equivalence on randomised input.

Thread safety (CPython with the GIL, which is what the SDK supports): the id pool hands out
each id from a list iterator, whose ``next`` is one C call; the clock caches an immutable
tuple in one attribute. Neither needs a lock.
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from feedbackloop.schemas.events import (
    MAX_COUNT,
    MAX_METADATA_KEYS,
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    FeedbackKind,
    ImplicitSignal,
    ReportCategory,
)

__all__ = ["EventIds", "EVENT_IDS", "FastEncoder", "uuid_from_str", "utc_timestamp"]

_dumps = orjson.dumps
_UUID = uuid.UUID
# Largest int both orjson (i64/u64) and a float field (exactly representable) handle alike.
_MAX_INT = 2**53

# ------------------------------------------------------------------ event ids

# The variant nibble keeps its two low random bits and gets the RFC 4122 bits "10".
_VARIANT_NIBBLE = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_new_object = object.__new__
_set_attr = object.__setattr__
_SAFE_UNKNOWN = uuid.SafeUUID.unknown


class EventIds:
    """Random (version 4) UUID strings, made in batches from one ``os.urandom`` call.

    Same 122 random bits per id as :func:`uuid.uuid4`, from the same OS CSPRNG, at a quarter
    of the cost (one syscall per ``batch`` ids instead of one per id). Never a seeded PRNG:
    forked workers would repeat each other's ids. For the same reason the pool is emptied in
    a forked child (``os.register_at_fork``), so parent and child never share unused ids.
    """

    def __init__(self, batch: int = 512) -> None:
        self._batch = batch
        self._it: Any = iter(())
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._it = iter(())

    def _refill(self) -> list[str]:
        h = os.urandom(16 * self._batch).hex()
        v = _VARIANT_NIBBLE
        return [
            f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-4{h[i + 13 : i + 16]}"
            f"-{v[h[i + 16]]}{h[i + 17 : i + 20]}-{h[i + 20 : i + 32]}"
            for i in range(0, 32 * self._batch, 32)
        ]

    def next(self) -> str:
        """A new id in canonical form (``xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx``)."""
        s: str | None = next(self._it, None)
        if s is None:
            # Two threads may refill at once; each takes from its own fresh batch.
            it = iter(self._refill())
            self._it = it
            s = next(it)
        return s


EVENT_IDS = EventIds()


def uuid_from_str(s: str) -> uuid.UUID:
    """``uuid.UUID(s)`` for a canonical string we made, without re-parsing its format."""
    u = _new_object(_UUID)
    _set_attr(u, "int", int(s.replace("-", ""), 16))
    _set_attr(u, "is_safe", _SAFE_UNKNOWN)
    return u


# ------------------------------------------------------------------ timestamps

_second: tuple[int, str] = (-1, "")


def utc_timestamp() -> str:
    """Now, as pydantic writes an aware UTC datetime: ``2024-05-01T12:00:00.123456Z`` (no
    fraction when the microseconds are zero). Same clock and resolution as ``utcnow()``."""
    global _second
    sec, us = divmod(time.time_ns() // 1000, 1_000_000)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{us:06d}Z" if us else f"{cached[1]}Z"


# ------------------------------------------------------------------ cheap, exact checks
# Each returns True only if the model would accept the value unchanged (no coercion).


def _text(v: object) -> bool:
    return type(v) is str and len(v) <= MAX_TEXT_CHARS


def _opt_text(v: object) -> bool:
    return v is None or (type(v) is str and len(v) <= MAX_TEXT_CHARS)


def _sized(v: object, hi: int) -> bool:
    return type(v) is str and 0 < len(v) <= hi


def _opt_sized(v: object, hi: int) -> bool:
    return v is None or (type(v) is str and 0 < len(v) <= hi)


def _opt_count(v: object) -> bool:
    """``Count | None``: an int in 0..MAX_COUNT (UInt32)."""
    return v is None or (type(v) is int and 0 <= v <= MAX_COUNT)


def _float(v: object, nonneg: bool) -> float | None | bool:
    """A ``float | None`` field: the float pydantic stores, or ``False`` if not certain."""
    if v is None:
        return None
    t = type(v)
    if t is float:
        if not math.isfinite(v):  # type: ignore[arg-type]
            return False
    elif t is int and -_MAX_INT < v < _MAX_INT:  # type: ignore[operator]
        v = float(v)  # type: ignore[arg-type]
    else:
        return False
    if nonneg and not v >= 0:  # type: ignore[operator]
        return False
    return v  # type: ignore[return-value]


def _metadata(m: object) -> bool:
    if type(m) is not dict or len(m) > MAX_METADATA_KEYS:
        return False
    for k, v in m.items():
        if type(k) is not str or len(k) > 64:
            return False
        t = type(v)
        if t is str or t is bool or v is None:
            continue
        if t is int:
            if not -_MAX_INT < v < _MAX_INT:
                return False
        elif t is float:
            if not math.isfinite(v):
                return False
        else:
            return False
    return True


def _pattern_cache(pattern: str, limit: int = 4096) -> Callable[[object], bool]:
    """A memoised full-match (Rust's ``^...$`` matches like Python's ``fullmatch``)."""
    fullmatch = re.compile(pattern).fullmatch
    known: dict[str, bool] = {}

    def check(v: object) -> bool:
        if type(v) is not str:
            return False
        ok = known.get(v)
        if ok is None:
            ok = fullmatch(v) is not None
            if len(known) < limit:  # a bounded memo; past it, match each time
                known[v] = ok
        return ok

    return check


_identifier = _pattern_cache(r"[A-Za-z0-9][A-Za-z0-9._:\-]*")
_outcome_name = _pattern_cache(r"[a-z][a-z0-9_]{0,63}")


def _is_identifier(v: object) -> bool:
    return _identifier(v) and len(v) <= 128  # type: ignore[arg-type]


_REPORT_CATEGORIES = {c.value: c.value for c in ReportCategory} | {
    c: c.value for c in ReportCategory
}
_SIGNALS = {s.value: s.value for s in ImplicitSignal} | {s: s.value for s in ImplicitSignal}


def _enum_value(table: dict[Any, str], enum: type, v: object) -> str | None:
    t = type(v)
    return table.get(v) if t is str or t is enum else None


# ------------------------------------------------------------------ encoders


class FastEncoder:
    """Encoders for one client's ``app_id``; each returns the event's JSON bytes, or ``None``
    when the model must decide. Ids and timestamps are passed in as canonical strings."""

    def __init__(self, app_id: object) -> None:
        # app_id is fixed per client: check it once. If the model would reject it, every
        # event takes the model path and gets the model's error.
        self.enabled = _is_identifier(app_id)
        self.app_id = app_id

    def interaction(
        self,
        event_id: str,
        occurred_at: str,
        interaction_id: str,
        session_id: object,
        user_id: object,
        system_prompt: object,
        user_input: object,
        response: object,
        model: object,
        prompt_version: object,
        experiment: object,
        variant: object,
        latency_ms: object,
        input_tokens: object,
        output_tokens: object,
        cost_usd: object,
        metadata: object,
        shadow: object,
    ) -> bytes | None:
        if not (
            _sized(session_id, 256)
            and _opt_sized(user_id, 256)
            and _text(system_prompt)
            and _text(user_input)
            and _text(response)
            and _sized(model, 200)
            and _opt_sized(prompt_version, 200)
            and _opt_count(input_tokens)
            and _opt_count(output_tokens)
            and type(shadow) is bool
        ):
            return None
        if experiment is None:
            if variant is not None:
                return None
        elif not (_is_identifier(experiment) and _is_identifier(variant)):
            return None
        latency = _float(latency_ms, True)
        cost = _float(cost_usd, True)
        if latency is False or cost is False:
            return None
        if metadata is None:
            metadata = {}
        elif not _metadata(metadata):
            return None
        try:
            return _dumps(
                {
                    "event_id": event_id,
                    "event_type": "interaction",
                    "schema_version": SCHEMA_VERSION,
                    "occurred_at": occurred_at,
                    "app_id": self.app_id,
                    "session_id": session_id,
                    "user_id": user_id,
                    "interaction_id": interaction_id,
                    "system_prompt": system_prompt,
                    "user_input": user_input,
                    "response": response,
                    "model": model,
                    "prompt_version": prompt_version,
                    "experiment": experiment,
                    "variant": variant,
                    "latency_ms": latency,
                    "input_tokens": input_tokens,
                    "output_tokens": output_tokens,
                    "cost_usd": cost,
                    "metadata": metadata,
                    "shadow": shadow,
                }
            )
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: let the model path report it
            return None

    def feedback(
        self,
        event_id: str,
        occurred_at: str,
        interaction_id: str,
        session_id: object,
        user_id: object,
        kind: FeedbackKind,
        thumbs: object = None,
        rating: object = None,
        text: object = None,
        category: object = None,
    ) -> bytes | None:
        if not (_sized(session_id, 256) and _opt_sized(user_id, 256)):
            return None
        # the rules of Feedback._fields_match_kind, for the arguments each method passes
        if kind is FeedbackKind.thumbs:
            if not (type(thumbs) is int and (thumbs == 1 or thumbs == -1)):
                return None
        elif kind is FeedbackKind.rating:
            if not (type(rating) is int and 1 <= rating <= 5):  # type: ignore[operator]
                return None
        elif kind is FeedbackKind.report:
            category = _enum_value(_REPORT_CATEGORIES, ReportCategory, category)
            if category is None or not _opt_text(text):
                return None
        elif not (type(text) is str and 0 < len(text) <= MAX_TEXT_CHARS):
            return None  # correction / comment need a non-empty text
        try:
            return _dumps(
                {
                    "event_id": event_id,
                    "event_type": "feedback",
                    "schema_version": SCHEMA_VERSION,
                    "occurred_at": occurred_at,
                    "app_id": self.app_id,
                    "session_id": session_id,
                    "user_id": user_id,
                    "interaction_id": interaction_id,
                    "kind": kind.value,
                    "thumbs": thumbs,
                    "rating": rating,
                    "text": text,
                    "category": category,
                }
            )
        except orjson.JSONEncodeError:
            return None

    def implicit(
        self,
        event_id: str,
        occurred_at: str,
        interaction_id: str,
        session_id: object,
        user_id: object,
        signal: object,
        edited_text: object,
        edit_distance: object,
        dwell_ms: object,
        copied_chars: object,
    ) -> bytes | None:
        value = _enum_value(_SIGNALS, ImplicitSignal, signal)
        if value is None or not (
            _sized(session_id, 256)
            and _opt_sized(user_id, 256)
            and _opt_text(edited_text)
            and _opt_count(edit_distance)
            and _opt_count(copied_chars)
        ):
            return None
        dwell = _float(dwell_ms, True)
        if dwell is False:
            return None
        # the rules of Implicit._fields_match_signal
        if value == "dwell" and dwell is None:
            return None
        if value != "edit" and (edited_text is not None or edit_distance is not None):
            return None
        try:
            return _dumps(
                {
                    "event_id": event_id,
                    "event_type": "implicit",
                    "schema_version": SCHEMA_VERSION,
                    "occurred_at": occurred_at,
                    "app_id": self.app_id,
                    "session_id": session_id,
                    "user_id": user_id,
                    "interaction_id": interaction_id,
                    "signal": value,
                    "edited_text": edited_text,
                    "edit_distance": edit_distance,
                    "dwell_ms": dwell,
                    "copied_chars": copied_chars,
                }
            )
        except orjson.JSONEncodeError:
            return None

    def outcome(
        self,
        event_id: str,
        occurred_at: str,
        interaction_id: str | None,
        session_id: object,
        user_id: object,
        outcome: object,
        value: object,
        time_to_outcome_ms: object,
    ) -> bytes | None:
        if not (_sized(session_id, 256) and _opt_sized(user_id, 256) and _outcome_name(outcome)):
            return None
        val = _float(value, False)
        tto = _float(time_to_outcome_ms, True)
        if val is False or tto is False:
            return None
        try:
            return _dumps(
                {
                    "event_id": event_id,
                    "event_type": "outcome",
                    "schema_version": SCHEMA_VERSION,
                    "occurred_at": occurred_at,
                    "app_id": self.app_id,
                    "session_id": session_id,
                    "user_id": user_id,
                    "interaction_id": interaction_id,
                    "outcome": outcome,
                    "value": val,
                    "time_to_outcome_ms": tto,
                }
            )
        except orjson.JSONEncodeError:
            return None
