"""The mapping of GenAI spans to interactions, per convention: the current one (structured
messages, also as OTLP maps and arrays rather than JSON strings, also on the operation-details
event), the older event-based ones, and OpenLLMetry's flattened attributes."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

pytest.importorskip("opentelemetry.proto", reason="the integrations extra is not installed")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402

from feedbackloop.integrations.genai_spans import interaction_id_for, map_request  # noqa: E402
from feedbackloop.schemas import Interaction  # noqa: E402

START = 1_764_400_000_000_000_000  # 2025-11-29, in ns


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    out = AnyValue()
    out.kvlist_value.values.extend(_kvs(value))
    return out


def _kvs(attrs: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=_any(v)) for k, v in attrs.items()]


def _request(
    attrs: dict[str, Any],
    events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    resource: dict[str, Any] | None = None,
) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(_kvs(resource or {"service.name": "svc"}))
    span = rs.scope_spans.add().spans.add()
    span.trace_id, span.span_id, span.name = b"\x01" * 16, b"\x02" * 8, "chat"
    span.start_time_unix_nano, span.end_time_unix_nano = START, START + 250_000_000
    span.attributes.extend(_kvs(attrs))
    for name, event_attrs in events:
        ev = span.events.add()
        ev.name, ev.time_unix_nano = name, START
        ev.attributes.extend(_kvs(event_attrs))
    return req


def _one(req: ExportTraceServiceRequest, **kw: Any) -> Interaction:
    mapped = map_request(req, default_app_id="fallback", **kw)
    assert mapped.ignored == 0 and len(mapped.interactions) == 1
    return Interaction.model_validate(mapped.interactions[0])


MESSAGES_IN = [
    {"role": "system", "parts": [{"type": "text", "content": "Sys A."}]},
    {"role": "user", "parts": [{"type": "text", "content": "First?"}]},
    {"role": "assistant", "parts": [{"type": "text", "content": "Earlier answer."}]},
    {"role": "user", "parts": [{"type": "text", "content": "Second?"}, {"type": "image"}]},
]
MESSAGES_OUT = [{"role": "assistant", "parts": [{"type": "text", "content": "Yes."}]}]
CHAT = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}


@pytest.mark.parametrize("encoding", ["json string", "otlp structure"])
def test_current_conventions_as_json_strings_or_structured_values(encoding: str) -> None:
    enc = json.dumps if encoding == "json string" else (lambda v: v)
    it = _one(
        _request(
            {
                **CHAT,
                "gen_ai.input.messages": enc(MESSAGES_IN),
                "gen_ai.output.messages": enc(MESSAGES_OUT),
                "gen_ai.usage.input_tokens": 1000,
                "gen_ai.usage.output_tokens": 100,
                "gen_ai.usage.cache_read.input_tokens": 400,
                "gen_ai.response.time_to_first_chunk": 0.125,
            }
        )
    )
    assert (it.system_prompt, it.user_input, it.response) == ("Sys A.", "Second?", "Yes.")
    assert it.latency_ms == 250.0 and it.metadata["ttft_ms"] == 125.0
    assert it.occurred_at.timestamp() == pytest.approx(START / 1e9)
    assert it.cost_usd == pytest.approx((600 * 2.5 + 400 * 1.25 + 100 * 10.0) / 1e6)
    assert it.session_id == (b"\x01" * 16).hex()  # no session attribute: the trace
    assert it.interaction_id == interaction_id_for(b"\x01" * 16, b"\x02" * 8)
    assert it.app_id == "svc"


def test_system_instructions_win_and_the_details_event_is_read() -> None:
    details = {
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be terse."}]),
        "gen_ai.input.messages": json.dumps(MESSAGES_IN[1:2]),
        "gen_ai.output.messages": json.dumps(MESSAGES_OUT),
    }
    it = _one(_request(CHAT, [("gen_ai.client.inference.operation.details", details)]))
    assert (it.system_prompt, it.user_input, it.response) == ("Be terse.", "First?", "Yes.")


def test_older_event_conventions() -> None:
    events = [
        ("gen_ai.system.message", {"content": "Old system."}),
        ("gen_ai.user.message", {"content": "Old question?"}),
        ("gen_ai.choice", {"message": json.dumps({"role": "assistant", "content": "Old answer."})}),
    ]
    it = _one(_request({"gen_ai.system": "openai", "gen_ai.request.model": "m"}, events))
    assert (it.system_prompt, it.user_input, it.response) == (
        "Old system.",
        "Old question?",
        "Old answer.",
    )
    assert it.metadata["provider"] == "openai"


def test_openllmetry_flattened_attributes() -> None:
    it = _one(
        _request(
            {
                "gen_ai.system": "Anthropic",
                "gen_ai.request.model": "claude-haiku-4-5",
                "gen_ai.prompt.0.role": "system",
                "gen_ai.prompt.0.content": "Flat system.",
                "gen_ai.prompt.1.role": "user",
                "gen_ai.prompt.1.content": "Flat question?",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "Flat answer.",
                "gen_ai.usage.prompt_tokens": 10,
                "gen_ai.usage.completion_tokens": 2,
            }
        )
    )
    assert (it.system_prompt, it.user_input, it.response) == (
        "Flat system.",
        "Flat question?",
        "Flat answer.",
    )
    assert (it.input_tokens, it.output_tokens) == (10, 2)


def test_our_attributes_from_span_or_resource_and_the_session_and_user() -> None:
    iid = uuid.uuid4()
    it = _one(
        _request(
            {
                **CHAT,
                "session.id": "sess-9",
                "enduser.id": "user-9",
                "feedbackloop.variant": "b",
                "feedbackloop.interaction_id": str(iid),
            },
            resource={
                "service.name": "svc",
                "feedbackloop.experiment": "exp-1",
                "feedbackloop.prompt_version": "pv-3",
                "feedbackloop.app_id": "named-app",
            },
        )
    )
    assert (it.session_id, it.user_id, it.interaction_id) == ("sess-9", "user-9", iid)
    assert (it.experiment, it.variant, it.prompt_version) == ("exp-1", "b", "pv-3")
    assert it.app_id == "named-app"


def test_a_key_bound_to_an_app_leaves_the_app_to_the_collector() -> None:
    mapped = map_request(_request(CHAT), default_app_id="fallback", bound_app_id="shop")
    assert "app_id" not in mapped.interactions[0]
    odd = _request(CHAT, resource={"service.name": "not a valid id!"})
    assert map_request(odd, default_app_id="fallback").interactions[0]["app_id"] == "fallback"


@pytest.mark.parametrize(
    "attrs",
    [
        {},
        {"http.request.method": "GET"},
        {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "e"},
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "gpt-4o"},
    ],
)
def test_spans_that_are_not_model_calls_are_ignored_and_counted(attrs: dict[str, Any]) -> None:
    mapped = map_request(_request(attrs))
    assert (mapped.interactions, mapped.ignored) == ([], 1)


def test_texts_longer_than_the_contract_allows_are_cut_not_refused() -> None:
    long = "x" * 150_000
    it = _one(
        _request({**CHAT, "gen_ai.input.messages": json.dumps([{"role": "user", "content": long}])})
    )
    assert len(it.user_input) == 100_000


def test_token_counts_that_cannot_be_stored_are_left_out() -> None:
    it = _one(
        _request({**CHAT, "gen_ai.usage.input_tokens": 2**40, "gen_ai.usage.output_tokens": -3})
    )
    assert (it.input_tokens, it.output_tokens, it.cost_usd) == (None, None, None)
