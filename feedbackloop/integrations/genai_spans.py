"""OpenTelemetry GenAI spans as interactions: the mapping behind the collector's ``/v1/traces``.

A span is a model call when its ``gen_ai.operation.name`` is ``chat``, ``text_completion`` or
``generate_content``, or when it names no operation but a ``gen_ai.request.model`` /
``gen_ai.response.model`` (older instrumentations). Every other span (HTTP, database, and
GenAI spans of other operations: embeddings, tools, agents) is ignored and counted.

From a model-call span (its own attributes, and those of its events):

==================  ==========================================================================
interaction field   taken from, first found
==================  ==========================================================================
model               ``gen_ai.response.model``, ``gen_ai.request.model``
input_tokens        ``gen_ai.usage.input_tokens``, ``gen_ai.usage.prompt_tokens``
output_tokens       ``gen_ai.usage.output_tokens``, ``gen_ai.usage.completion_tokens``
system_prompt       ``gen_ai.system_instructions``; system messages of the input
user_input          the last user message of ``gen_ai.input.messages`` (attribute, or the
                    ``gen_ai.client.inference.operation.details`` event); of ``gen_ai.prompt``
                    (JSON, on the span or a ``gen_ai.content.prompt`` event); of
                    ``gen_ai.user.message`` events; of ``gen_ai.prompt.<i>.role/content``
response            the first message of ``gen_ai.output.messages``; ``gen_ai.completion``;
                    ``gen_ai.choice`` events; ``gen_ai.completion.0.content``
session_id          ``feedbackloop.session_id``, ``gen_ai.conversation.id``, ``session.id``,
                    else the trace id (a trace is one session)
user_id             ``user.id``, ``enduser.id``
prompt_version      ``feedbackloop.prompt_version``
experiment/variant  ``feedbackloop.experiment`` / ``feedbackloop.variant``
interaction_id      ``feedbackloop.interaction_id`` (set it to attach feedback later), else
                    :func:`interaction_id_for` of the trace and span ids
app_id              ``feedbackloop.app_id`` (span or resource); else the key's app, or
                    ``service.name`` for a key that covers every app
occurred_at         the span's start; ``latency_ms`` its duration
cost_usd            :func:`feedbackloop.integrations.pricing.cost_usd`
==================  ==========================================================================

``feedbackloop.*`` attributes may sit on the span or on the resource. Ids derived from the
trace and span ids make a re-sent export idempotent (the event id is derived too).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from feedbackloop.integrations.pricing import cost_usd
from feedbackloop.schemas import MAX_TEXT_CHARS

__all__ = ["MODEL_CALLS", "Mapped", "interaction_id_for", "map_request"]

#: gen_ai.operation.name values that are one model call, i.e. one interaction.
MODEL_CALLS = frozenset({"chat", "text_completion", "generate_content"})
_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
_UINT32 = 2**32
_INDEXED = re.compile(r"^gen_ai\.(prompt|completion)\.(\d+)\.(role|content)$")


def interaction_id_for(trace_id: bytes, span_id: bytes) -> uuid.UUID:
    """The interaction id given to a span without ``feedbackloop.interaction_id``: the first
    16 bytes of BLAKE2b-256 over trace id and span id, as a version-4 UUID."""
    return _ids(trace_id, span_id)[0]


def _ids(trace_id: bytes, span_id: bytes) -> tuple[uuid.UUID, uuid.UUID]:
    """(interaction id, event id), both derived from one digest of the span's ids."""
    digest = hashlib.blake2b(trace_id + span_id, digest_size=32, person=b"feedbackloop").digest()
    return uuid.UUID(bytes=digest[:16], version=4), uuid.UUID(bytes=digest[16:], version=4)


@dataclass
class Mapped:
    """The interactions (as JSON-ready dicts for the collector) and how many spans were
    not model calls."""

    interactions: list[dict[str, Any]]
    ignored: int


def map_request(
    request: Any, *, default_app_id: str | None = None, bound_app_id: str | None = None
) -> Mapped:
    """Map an ``ExportTraceServiceRequest``. ``bound_app_id``: the app of the caller's key
    (then app_id is left to the collector unless a span names one); ``default_app_id``: for
    a key covering every app, when neither the span nor ``service.name`` gives one."""
    out: list[dict[str, Any]] = []
    ignored = 0
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                attrs = _attributes(span.attributes)
                if not _is_model_call(attrs):
                    ignored += 1
                    continue
                out.append(_interaction(span, attrs, resource, default_app_id, bound_app_id))
    return Mapped(out, ignored)


def _is_model_call(attrs: Mapping[str, Any]) -> bool:
    operation = attrs.get("gen_ai.operation.name")
    if operation is not None:
        return operation in MODEL_CALLS
    return "gen_ai.request.model" in attrs or "gen_ai.response.model" in attrs


def _interaction(
    span: Any,
    attrs: dict[str, Any],
    resource: Mapping[str, Any],
    default_app_id: str | None,
    bound_app_id: str | None,
) -> dict[str, Any]:
    events = [(e.name, _attributes(e.attributes)) for e in span.events]
    ours = {**{k: v for k, v in resource.items() if k.startswith("feedbackloop.")}, **attrs}
    for _, event_attrs in events:  # the operation-details event carries the same keys
        for key, value in event_attrs.items():
            attrs.setdefault(key, value)
    system, user, response = _texts(attrs, events)
    model = _first_str(attrs, "gen_ai.response.model", "gen_ai.request.model") or "unknown"
    input_tokens = _first_int(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens = _first_int(
        attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens"
    )
    cached = _first_int(attrs, "gen_ai.usage.cache_read.input_tokens") or 0
    trace_hex, span_hex = span.trace_id.hex(), span.span_id.hex()
    metadata: dict[str, Any] = {"source": "otlp", "trace_id": trace_hex, "span_id": span_hex}
    provider = _first_str(attrs, "gen_ai.provider.name", "gen_ai.system")
    if provider:
        metadata["provider"] = provider
    operation = attrs.get("gen_ai.operation.name")
    if isinstance(operation, str):
        metadata["operation"] = operation
    reasons = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list) and reasons:
        metadata["finish_reason"] = str(reasons[0])
    ttfc = attrs.get("gen_ai.response.time_to_first_chunk")  # seconds
    if isinstance(ttfc, (int, float)) and not isinstance(ttfc, bool):
        metadata["ttft_ms"] = round(ttfc * 1000, 3)
    derived_iid, event_id = _ids(span.trace_id, span.span_id)
    iid = ours.get("feedbackloop.interaction_id") or str(derived_iid)
    item: dict[str, Any] = {
        "event_type": "interaction",
        "event_id": str(event_id),
        "interaction_id": iid,
        "occurred_at": _time(span.start_time_unix_nano),
        "session_id": _first_str(
            ours, "feedbackloop.session_id", "gen_ai.conversation.id", "session.id"
        )
        or trace_hex,
        "system_prompt": system[:MAX_TEXT_CHARS],
        "user_input": user[:MAX_TEXT_CHARS],
        "response": response[:MAX_TEXT_CHARS],
        "model": model,
        "latency_ms": max(0, span.end_time_unix_nano - span.start_time_unix_nano) / 1e6,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost_usd(model, input_tokens, output_tokens, cached_input_tokens=cached),
        "metadata": metadata,
    }
    user_id = _first_str(ours, "user.id", "enduser.id")
    if user_id:
        item["user_id"] = user_id
    for ours_key, field in (
        ("feedbackloop.prompt_version", "prompt_version"),
        ("feedbackloop.experiment", "experiment"),
        ("feedbackloop.variant", "variant"),
    ):
        if ours.get(ours_key) is not None:
            item[field] = ours[ours_key]
    app_id = ours.get("feedbackloop.app_id")
    if app_id is None and bound_app_id is None:
        service = resource.get("service.name")
        app_id = (
            service if isinstance(service, str) and _IDENTIFIER.match(service) else default_app_id
        )
    if app_id is not None:
        item["app_id"] = app_id
    return item


# ------------------------------------------------------------------------------ texts


def _texts(
    attrs: Mapping[str, Any], events: list[tuple[str, dict[str, Any]]]
) -> tuple[str, str, str]:
    """(system prompt, last user message, first output message), from whichever convention
    the instrumentation followed."""
    inputs = _messages(attrs.get("gen_ai.input.messages"))
    if not inputs:
        inputs = _messages(attrs.get("gen_ai.prompt"))
    if not inputs:
        inputs = [
            {"role": name.split(".")[1], "content": _event_content(a)}
            for name, a in events
            if name in ("gen_ai.system.message", "gen_ai.user.message")
        ]
    if not inputs:
        inputs = _indexed(attrs, "prompt")
    outputs = _messages(attrs.get("gen_ai.output.messages"))
    if not outputs:
        outputs = _messages(attrs.get("gen_ai.completion"))
    if not outputs:
        outputs = [
            {"role": "assistant", "content": _event_content(a)}
            for name, a in events
            if name == "gen_ai.choice"
        ]
    if not outputs:
        outputs = _indexed(attrs, "completion")
    system = [_text(m) for m in inputs if m.get("role") in ("system", "developer")]
    instructions = attrs.get("gen_ai.system_instructions")
    if instructions is not None:
        decoded = _decoded(instructions)
        system = [decoded if isinstance(decoded, str) else _text(decoded)]
    users = [m for m in inputs if m.get("role") == "user"]
    return (
        "\n\n".join(s for s in system if s),
        _text(users[-1]) if users else "",
        _text(outputs[0]) if outputs else "",
    )


def _decoded(value: Any) -> Any:
    """Structured values arrive either as OTLP arrays/maps or as a JSON string."""
    if isinstance(value, str):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    value = _decoded(value)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        return []
    return [m for m in value if isinstance(m, dict)]


def _indexed(attrs: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    """OpenLLMetry's flattened ``gen_ai.prompt.<i>.role`` / ``.content`` attributes."""
    found: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        m = _INDEXED.match(key)
        if m and m.group(1) == kind:
            found.setdefault(int(m.group(2)), {})[m.group(3)] = value
    return [found[i] for i in sorted(found)]


def _event_content(attrs: Mapping[str, Any]) -> Any:
    if "content" in attrs:
        return attrs["content"]
    message = _decoded(attrs.get("message"))
    return message.get("content") if isinstance(message, dict) else message


def _text(message: Any) -> str:
    """The text of a message: its ``parts`` (current conventions: ``{"type": "text",
    "content": ...}``) or its ``content`` (a string, or a list of parts)."""
    if isinstance(message, str):
        return message
    if isinstance(message, list):
        return "\n".join(t for t in (_part_text(p) for p in message) if t)
    if not isinstance(message, dict):
        return ""
    if "parts" in message:
        return _text(message["parts"]) if isinstance(message["parts"], list) else ""
    content = _decoded(message.get("content"))
    if isinstance(content, (str, list)):
        return _text(content)
    return ""


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict) or part.get("type", "text") not in ("text", "input_text"):
        return ""
    for key in ("content", "text"):
        if isinstance(part.get(key), str):
            return str(part[key])
    return ""


# ------------------------------------------------------------------------------ values


def _attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def _first_str(attrs: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = attrs.get(key)
        if type(value) is str and value:
            return value
    return None


def _first_int(attrs: Mapping[str, Any], *keys: str) -> int | None:
    """A token count: a non-negative int that fits the stored UInt32 (else absent)."""
    for key in keys:
        value = attrs.get(key)
        if type(value) is int and 0 <= value < _UINT32:
            return value
    return None


def _time(unix_nano: int) -> str:
    if not unix_nano:
        return dt.datetime.now(dt.timezone.utc).isoformat()
    return dt.datetime.fromtimestamp(unix_nano / 1e9, dt.timezone.utc).isoformat()
