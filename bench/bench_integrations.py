"""What the integrations cost: provider wrappers per call, and OTLP ingestion per span.

1. **Wrappers.** The providers' own clients (openai, anthropic) answer from a mocked HTTP
   transport (canned bodies, no network), so a call costs only the SDK's own work: request
   building, the transport hop, response parsing. The same calls run bare and wrapped,
   interleaved in rounds so drift hits both alike; the wrapped client logs each call to a real
   :class:`FeedbackClient` producing to an embedded broker. Printed: median and p99 per call,
   bare beside wrapped, and the added microseconds.
2. **OTLP ingestion.** The same interactions reach a running collector (uvicorn, a real
   FeedbackClient into the broker) twice: as GenAI spans made by the OpenTelemetry SDK, posted
   as OTLP protobuf to ``/v1/traces``, and as our own JSON to ``/v1/events``, in batches of the
   same size. Printed: spans/s beside events/s, and the ratio.

    .venv/bin/python bench/bench_integrations.py [--calls 2000] [--spans 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2

from feedbackloop.config import Settings
from feedbackloop.infra import EmbeddedBroker, ensure_topics
from feedbackloop.producers import FeedbackClient
from feedbackloop.schemas import Topics

ANSWER = "Go to Settings, then Security, and choose Reset password."
MESSAGES = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "How do I reset my password?"},
]
_USAGE = {"prompt_tokens": 25, "completion_tokens": 14, "total_tokens": 39}
_CHAT = json.dumps(
    {
        "id": "c1",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ANSWER},
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    }
).encode()
_CHUNK = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini"}
_CHAT_STREAM = (
    "".join(
        "data: " + json.dumps({**_CHUNK, "choices": [{"index": 0, "delta": {"content": w + " "}}]})
        + "\n\n"
        for w in ANSWER.split()
    )
    + "data: " + json.dumps({**_CHUNK, "choices": [], "usage": _USAGE}) + "\n\ndata: [DONE]\n\n"
).encode()  # fmt: skip
_MESSAGE = {
    "id": "m1",
    "type": "message",
    "role": "assistant",
    "model": "claude-haiku-4-5-20251001",
    "content": [{"type": "text", "text": ANSWER}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 14},
}


def _sse(events: list[dict[str, Any]]) -> bytes:
    return "".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events).encode()


_MESSAGES_STREAM = _sse(
    [
        {"type": "message_start", "message": {**_MESSAGE, "content": [], "stop_reason": None}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
            for w in ANSWER.split()
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
         "usage": {"output_tokens": 14}},
        {"type": "message_stop"},
    ]
)  # fmt: skip


def _handler(request: httpx2.Request) -> httpx2.Response:
    stream = b'"stream":true' in request.content or b'"stream": true' in request.content
    sse = {"content-type": "text/event-stream"}
    js = {"content-type": "application/json"}
    if request.url.path.endswith("/chat/completions"):
        return httpx2.Response(
            200, content=_CHAT_STREAM if stream else _CHAT, headers=sse if stream else js
        )
    body = _MESSAGES_STREAM if stream else json.dumps(_MESSAGE).encode()
    return httpx2.Response(200, content=body, headers=sse if stream else js)  # fmt: skip


def _clients() -> tuple[Any, Any]:
    import anthropic
    import openai

    transport = httpx2.MockTransport(_handler)
    return (
        openai.OpenAI(api_key="sk", http_client=httpx2.Client(transport=transport), max_retries=0),
        anthropic.Anthropic(
            api_key="sk", http_client=httpx2.Client(transport=transport), max_retries=0
        ),
    )


def _calls(oa: Any, an: Any) -> dict[str, Callable[[], Any]]:
    def chat() -> Any:
        return oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    def chat_stream() -> Any:
        for _ in oa.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        ):
            pass

    def message() -> Any:
        return an.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES[1:])

    def message_stream() -> Any:
        for _ in an.messages.create(
            model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES[1:], stream=True
        ):
            pass

    return {
        "openai chat": chat,
        "openai chat, stream": chat_stream,
        "anthropic messages": message,
        "anthropic messages, stream": message_stream,
    }


def bench_wrappers(fc: FeedbackClient, calls: int) -> list[tuple[str, dict[str, list[int]]]]:
    """Per API: ``calls`` bare and ``calls`` wrapped latencies in ns, taken alternately (one
    bare call, then one wrapped) so that a noisy neighbour slows both sides alike."""
    from feedbackloop.integrations import anthropic as fl_anthropic
    from feedbackloop.integrations import openai as fl_openai

    bare = _calls(*_clients())
    oa, an = _clients()
    wrapped = _calls(fl_openai.wrap(oa, fc), fl_anthropic.wrap(an, fc))
    clock = time.perf_counter_ns
    out = []
    for name in bare:
        b, w = bare[name], wrapped[name]
        for _ in range(20):  # warm-up
            b()
            w()
        gc.collect()
        samples: dict[str, list[int]] = {"bare": [], "wrapped": [], "added": []}
        for _ in range(calls):
            t0 = clock()
            b()
            t1 = clock()
            w()
            t2 = clock()
            samples["bare"].append(t1 - t0)
            samples["wrapped"].append(t2 - t1)
            samples["added"].append((t2 - t1) - (t1 - t0))
        out.append((name, samples))
    return out


def bench_own_work(fc: FeedbackClient, n: int) -> dict[str, float]:
    """Microseconds per call of what a wrapper does besides the provider's call (read the
    request and the response, price it, log it to ``fc``), on a canned response: the same
    work as in :func:`bench_wrappers`, without the SDK's noise around it."""
    from feedbackloop.integrations import anthropic as fl_anthropic
    from feedbackloop.integrations import openai as fl_openai
    from feedbackloop.integrations.recording import Recorder

    oa, an = _clients()
    chat = oa.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    message = an.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES[1:])
    out = {}
    for name, provider, api, prepare, read, result, kwargs in (
        ("openai chat", "openai", "chat.completions", fl_openai._prepare_chat,
         fl_openai._read_chat, chat, {"model": "gpt-4o-mini", "messages": MESSAGES}),
        ("anthropic messages", "anthropic", "messages", fl_anthropic._prepare,
         fl_anthropic._read, message, {"model": "claude-haiku-4-5", "messages": MESSAGES[1:]}),
    ):  # fmt: skip
        recorder = Recorder(fc, provider)
        t = time.perf_counter()
        for _ in range(n):
            call = recorder.start(api, dict(kwargs))
            prepare(call, kwargs)
            read(call, result)
            recorder.finish(call, result)
        out[name] = (time.perf_counter() - t) / n * 1e6
    return out


def _pct(samples: list[int], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(len(s) * q))] / 1000


def _spans(n: int) -> tuple[list[bytes], list[bytes], int]:
    """``n`` GenAI spans from the OpenTelemetry SDK as OTLP protobuf bodies, and the same
    interactions as our JSON batch bodies (what the collector maps the spans to)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from feedbackloop.integrations.genai_spans import map_request

    tp = TracerProvider(resource=Resource.create({"service.name": "bench-app"}))
    memory = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(memory))
    tracer = tp.get_tracer("bench")
    for i in range(n):
        with tracer.start_as_current_span("chat gpt-4o-mini") as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.usage.input_tokens": 25,
                    "gen_ai.usage.output_tokens": 14,
                    "gen_ai.conversation.id": f"s{i % 1000}",
                    "feedbackloop.prompt_version": "v1.1",
                    "gen_ai.input.messages": json.dumps(
                        [{"role": "user", "parts": [{"type": "text", "content": f"Q{i}?"}]}]
                    ),
                    "gen_ai.output.messages": json.dumps(
                        [{"role": "assistant", "parts": [{"type": "text", "content": ANSWER}]}]
                    ),
                }
            )
    finished = list(memory.get_finished_spans())
    batch = 500
    protobuf, ours = [], []
    for i in range(0, len(finished), batch):
        request = encode_spans(finished[i : i + batch])
        protobuf.append(request.SerializeToString())
        ours.append(
            json.dumps(map_request(request, default_app_id="bench-app").interactions).encode()
        )
    return protobuf, ours, len(finished)


def bench_ingest(url: str, bodies: list[bytes], path: str, ctype: str) -> float:
    """Seconds to post every body, one request at a time from 4 concurrent senders."""

    async def run() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            queue = list(bodies)

            async def sender() -> None:
                while queue:
                    body = queue.pop()
                    r = await http.post(path, content=body, headers={"Content-Type": ctype})
                    assert r.status_code in (200, 202), r.text

            await asyncio.gather(*(sender() for _ in range(4)))

    t = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per API and side")
    parser.add_argument("--spans", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            topic_prefix="bench.",
            data_dir=Path(tmp),
            app_id="bench-app",
            web_rate_limit_per_s=0,
        )
        ensure_topics(settings.kafka_client_config(), Topics("bench.").all(), 4)
        fc = FeedbackClient(settings, spool_path=Path(tmp) / "wrappers.sqlite3")
        results = bench_wrappers(fc, args.calls)
        own = bench_own_work(fc, 5 * args.calls)
        stats = fc.close(timeout=60)
        print(f"wrapper overhead, {args.calls:,} calls per API and side (mocked transport)")
        print(
            f"{'':28}{'bare p50':>10}{'wrapped':>10}{'added':>9}{'ratio':>7}"
            f"{'bare p99':>10}{'wrapped':>10}"
        )
        for name, s in results:
            b50, w50 = _pct(s["bare"], 0.5), _pct(s["wrapped"], 0.5)
            b99, w99 = _pct(s["bare"], 0.99), _pct(s["wrapped"], 0.99)
            added = statistics.median(s["added"]) / 1000  # median of the paired differences
            print(
                f"{name:28}{b50:>8.0f}us{w50:>8.0f}us{added:>7.0f}us{w50 / b50:>7.2f}"
                f"{b99:>8.0f}us{w99:>8.0f}us"
            )
        bare_p50 = {name: _pct(s["bare"], 0.5) for name, s in results}
        for name, us in own.items():
            print(
                f"{name}: the wrapper's own work (request, response, price, log_interaction) "
                f"{us:.1f}us per call = {us / bare_p50[name]:.1%} of the bare call's p50"
            )
        print(f"interactions logged: {stats.enqueued:,}, delivered {stats.delivered:,}, "
              f"failed {stats.failed}, dropped {stats.dropped}")  # fmt: skip

        from feedbackloop.web import WebServer

        protobuf, ours, n = _spans(args.spans)
        with WebServer(settings, "127.0.0.1", 0) as web:
            # warm-up: the first requests import and compile what the routes use
            bench_ingest(web.url, protobuf[:1], "/v1/traces", "application/x-protobuf")
            bench_ingest(web.url, ours[:1], "/v1/events", "application/json")
            otlp_s = bench_ingest(web.url, protobuf, "/v1/traces", "application/x-protobuf")
            json_s = bench_ingest(web.url, ours, "/v1/events", "application/json")
        otlp_rate, json_rate = n / otlp_s, n / json_s
        print(f"collector ingest, {n:,} interactions in batches of 500, 4 concurrent senders")
        print(f"  OTLP protobuf spans /v1/traces : {otlp_rate:>10,.0f} spans/s")
        print(f"  our JSON events    /v1/events  : {json_rate:>10,.0f} events/s")
        print(f"  ratio OTLP / JSON              : {otlp_rate / json_rate:>10.2f}")
        print(f"  bytes per interaction          : OTLP {sum(map(len, protobuf)) / n:,.0f}, "
              f"JSON {sum(map(len, ours)) / n:,.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
