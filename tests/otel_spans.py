"""GenAI spans made by the real OpenTelemetry SDK, as instrumentations emit them."""

from __future__ import annotations

import json
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


def provider(service: str = "shop-assistant", **resource: Any) -> TracerProvider:
    return TracerProvider(resource=Resource.create({"service.name": service, **resource}))


def in_memory(tp: TracerProvider) -> InMemorySpanExporter:
    exporter = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


def chat_span(tp: TracerProvider, question: str, answer: str, **extra: Any) -> None:
    """One chat call in the current conventions: messages as JSON attributes."""
    tracer = tp.get_tracer("test.genai")
    with tracer.start_as_current_span("chat gpt-4o-mini") as span:
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.output_tokens": 20,
                "gen_ai.response.finish_reasons": ["stop"],
                "gen_ai.system_instructions": json.dumps(
                    [{"type": "text", "content": "You are a shop assistant."}]
                ),
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": question}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [
                        {
                            "role": "assistant",
                            "parts": [{"type": "text", "content": answer}],
                            "finish_reason": "stop",
                        }
                    ]
                ),
                **extra,
            }
        )


def legacy_span(tp: TracerProvider, question: str, answer: str) -> None:
    """An older instrumentation: no operation name, prompt and completion in span events."""
    tracer = tp.get_tracer("test.genai.legacy")
    with tracer.start_as_current_span("anthropic.messages") as span:
        span.set_attributes(
            {
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-haiku-4-5",
                "gen_ai.usage.prompt_tokens": 50,
                "gen_ai.usage.completion_tokens": 10,
                "session.id": "legacy-session",
            }
        )
        span.add_event(
            "gen_ai.content.prompt",
            {"gen_ai.prompt": json.dumps([{"role": "user", "content": question}])},
        )
        span.add_event(
            "gen_ai.content.completion",
            {"gen_ai.completion": json.dumps([{"role": "assistant", "content": answer}])},
        )


def other_spans(tp: TracerProvider, n: int = 2) -> None:
    """Spans an app emits anyway: an HTTP request, an embedding call."""
    tracer = tp.get_tracer("test.app")
    for _ in range(n):
        with tracer.start_as_current_span("GET /cart") as span:
            span.set_attribute("http.request.method", "GET")
    with tracer.start_as_current_span("embeddings") as span:
        span.set_attributes(
            {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "text-embed-3"}
        )
