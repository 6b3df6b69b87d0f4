"""``POST /v1/traces``: OpenTelemetry GenAI spans from the real SDK become interactions;
other spans are ignored and counted; what is not OTLP gets a clear 400."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed")
pytest.importorskip("opentelemetry.sdk", reason="the dev extra is not installed")

import otel_spans as spans  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (  # noqa: E402
    ExportTraceServiceResponse,
)

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.integrations.genai_spans import interaction_id_for  # noqa: E402
from feedbackloop.schemas import DeadLetter, Envelope, Interaction  # noqa: E402
from feedbackloop.web import WebServer, create_app  # noqa: E402

PK, SK, OPS = "pk_shop_123", "sk_shop_456", "sk_ops_789"
PROTOBUF = {"Authorization": f"Bearer {PK}", "Content-Type": "application/x-protobuf"}
JSON = {"Authorization": f"Bearer {PK}", "Content-Type": "application/json"}


class Sink:
    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.dead: list[DeadLetter] = []
        self.accept = True

    def send(self, event: Envelope) -> bool:
        if self.accept:
            self.events.append(event)
        return self.accept

    def send_dead_letter(self, letter: DeadLetter) -> bool:
        self.dead.append(letter)
        return True

    @property
    def interactions(self) -> list[Interaction]:
        return [e for e in self.events if isinstance(e, Interaction)]


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path,
        web_public_keys={"shop": PK},
        web_secret_keys={"shop": SK, "*": OPS},
        web_max_body_bytes=200_000,
        web_rate_limit_per_s=0,
    )


@pytest.fixture
def sink() -> Sink:
    return Sink()


@pytest.fixture
def client(tmp_path: Path, sink: Sink) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path), client=sink)) as c:
        yield c


def _request(**chat_extra: Any) -> Any:
    tp = spans.provider(**{"feedbackloop.prompt_version": "v3"})
    memory = spans.in_memory(tp)
    spans.chat_span(
        tp,
        "Where is my order?",
        "It ships today.",
        **{
            "gen_ai.conversation.id": "conv-1",
            "user.id": "u-1",
            "feedbackloop.experiment": "tone",
            "feedbackloop.variant": "short",
            **chat_extra,
        },
    )
    spans.legacy_span(tp, "Old question", "Old answer")
    spans.other_spans(tp, n=2)
    return encode_spans(memory.get_finished_spans())


def _otlp_json(request: Any) -> dict[str, Any]:
    """OTLP's JSON encoding: protobuf's JSON mapping, but ids in hex."""
    data = json_format.MessageToDict(request)

    def hexify(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: (
                    base64.b64decode(v).hex()
                    if k in ("traceId", "spanId", "parentSpanId")
                    else hexify(v)
                )
                for k, v in node.items()
            }
        if isinstance(node, list):
            return [hexify(v) for v in node]
        return node

    return hexify(data)  # type: ignore[no-any-return]


def test_genai_spans_become_interactions_with_every_mapped_field(
    client: TestClient, sink: Sink
) -> None:
    request = _request()
    r = client.post("/v1/traces", content=request.SerializeToString(), headers=PROTOBUF)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_spans == 0
    assert r.headers["x-feedbackloop-spans-accepted"] == "2"
    assert r.headers["x-feedbackloop-spans-ignored"] == "3"  # 2 HTTP spans + 1 embeddings
    chat, legacy = sorted(sink.interactions, key=lambda i: i.model)[::-1]
    assert (chat.app_id, chat.session_id, chat.user_id) == ("shop", "conv-1", "u-1")
    assert chat.system_prompt == "You are a shop assistant."
    assert (chat.user_input, chat.response) == ("Where is my order?", "It ships today.")
    assert (chat.model, chat.input_tokens, chat.output_tokens) == (
        "gpt-4o-mini-2024-07-18",
        100,
        20,
    )
    assert chat.cost_usd == pytest.approx((100 * 0.15 + 20 * 0.60) / 1e6)
    assert (chat.prompt_version, chat.experiment, chat.variant) == ("v3", "tone", "short")
    assert chat.metadata["provider"] == "openai" and chat.metadata["finish_reason"] == "stop"
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert chat.interaction_id == interaction_id_for(span.trace_id, span.span_id)
    assert chat.latency_ms == pytest.approx(
        (span.end_time_unix_nano - span.start_time_unix_nano) / 1e6
    )
    assert (legacy.user_input, legacy.response, legacy.session_id) == (
        "Old question",
        "Old answer",
        "legacy-session",
    )
    assert (legacy.input_tokens, legacy.output_tokens) == (50, 10)


def test_the_same_spans_as_otlp_json_and_gzip_give_the_same_interactions(
    client: TestClient, sink: Sink
) -> None:
    request = _request()
    assert client.post("/v1/traces", content=request.SerializeToString(), headers=PROTOBUF)
    body = json.dumps(_otlp_json(request)).encode()
    r = client.post("/v1/traces", content=body, headers=JSON)
    assert r.status_code == 200, r.text
    assert r.json() == {}  # an ExportTraceServiceResponse with nothing to report
    zipped = gzip.compress(request.SerializeToString())
    r = client.post("/v1/traces", content=zipped, headers={**PROTOBUF, "Content-Encoding": "gzip"})
    assert r.status_code == 200, r.text
    dumped = [i.model_dump(exclude={"event_id"}) for i in sink.interactions]
    assert dumped[0:2] == dumped[2:4] == dumped[4:6]
    # The ids are derived from the spans: a re-sent export carries the same event ids.
    assert len({e.event_id for e in sink.events}) == 2


def test_an_invalid_span_is_refused_in_partial_success_and_dead_lettered(
    client: TestClient, sink: Sink
) -> None:
    # experiment without variant breaks the contract
    request = _request(**{"feedbackloop.variant": ""})
    r = client.post("/v1/traces", content=request.SerializeToString(), headers=PROTOBUF)
    assert r.status_code == 200
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_spans == 1
    assert "validation_error" in answer.partial_success.error_message
    assert len(sink.interactions) == 1 and len(sink.dead) == 1


def test_a_span_naming_another_app_is_refused(client: TestClient, sink: Sink) -> None:
    request = _request(**{"feedbackloop.app_id": "someone-else"})
    r = client.post("/v1/traces", content=request.SerializeToString(), headers=PROTOBUF)
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert answer.partial_success.rejected_spans == 1
    assert "forbidden_app_id" in answer.partial_success.error_message
    assert [i.app_id for i in sink.interactions] == ["shop"]


def test_an_operator_key_takes_the_app_from_service_name(client: TestClient, sink: Sink) -> None:
    request = _request()
    headers = {**PROTOBUF, "Authorization": f"Bearer {OPS}"}
    assert client.post("/v1/traces", content=request.SerializeToString(), headers=headers)
    assert {i.app_id for i in sink.interactions} == {"shop-assistant"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (b"\xff\xff\xff", PROTOBUF, 400, "invalid_otlp"),
        (b"{not json", JSON, 400, "invalid_json"),
        ('{"resourceSpans": []}'.encode("utf-16"), JSON, 400, "invalid_json"),
        (b"[1, 2]", JSON, 400, "invalid_otlp"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', JSON, 400,
         "invalid_otlp"),
        (b'{"resourceSpans": "nope"}', JSON, 400, "invalid_otlp"),
        (b'{"resourceSpans": ["x"]}', JSON, 400, "invalid_otlp"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": ["x"]}]}]}', JSON, 400, "invalid_otlp"),
        (b"not gzip", {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "invalid_gzip"),
        (gzip.compress(b"\0" * 300_000), {**PROTOBUF, "Content-Encoding": "gzip"}, 413,
         "body_too_large"),
        (b"x", {**PROTOBUF, "Content-Type": "text/csv"}, 415, "unsupported_media_type"),
        (b"x", {**PROTOBUF, "Content-Encoding": "br"}, 415, "unsupported_encoding"),
        (b"", {"Content-Type": "application/x-protobuf"}, 401, "missing_key"),
    ],
)  # fmt: skip
def test_malformed_payloads_get_a_clear_error_and_nothing_is_sent(
    client: TestClient, sink: Sink, body: bytes, headers: dict[str, str], status: int, reason: str
) -> None:
    r = client.post("/v1/traces", content=body, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason and r.json()["message"]
    assert sink.events == []


def test_a_full_spool_answers_503_so_the_exporter_retries(client: TestClient, sink: Sink) -> None:
    sink.accept = False
    r = client.post("/v1/traces", content=_request().SerializeToString(), headers=PROTOBUF)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"


def test_the_openapi_document_describes_v1_traces(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/v1/traces"]["post"]
    assert set(op["requestBody"]["content"]) == {"application/x-protobuf", "application/json"}
    assert set(op["responses"]["200"]["content"]) == {"application/x-protobuf", "application/json"}
    assert {"200", "400", "401", "413", "415", "429", "503"} <= set(op["responses"])
    assert op["security"]  # the collector's keys


def test_the_real_otlp_exporter_delivers_to_the_collector(tmp_path: Path, sink: Sink) -> None:
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult

    with WebServer(_settings(tmp_path), "127.0.0.1", 0, client=sink) as web:
        for compression in (Compression.NoCompression, Compression.Gzip):
            exporter = OTLPSpanExporter(
                endpoint=f"{web.url}/v1/traces",
                headers={"Authorization": f"Bearer {PK}"},
                compression=compression,
            )
            tp = spans.provider()
            tp.add_span_processor(BatchSpanProcessor(exporter))
            spans.chat_span(tp, f"Q {compression.value}", "A")
            spans.other_spans(tp)
            assert tp.force_flush(10_000)
            tp.shutdown()
        tp = spans.provider()
        memory = spans.in_memory(tp)
        spans.chat_span(tp, "Q refused", "A")
        bad = OTLPSpanExporter(
            endpoint=f"{web.url}/v1/traces", headers={"Authorization": "Bearer wrong"}
        )
        assert bad.export(memory.get_finished_spans()) is SpanExportResult.FAILURE
    assert sorted(i.user_input for i in sink.interactions) == ["Q gzip", "Q none"]


def test_the_rate_limit_counts_model_calls_and_every_request(tmp_path: Path, sink: Sink) -> None:
    settings = _settings(tmp_path).model_copy(
        update={"web_rate_limit_per_s": 0.01, "web_rate_limit_burst": 3}
    )
    with TestClient(create_app(settings, client=sink)) as http:
        body = _request().SerializeToString()  # two model calls: two tokens
        assert http.post("/v1/traces", content=body, headers=PROTOBUF).status_code == 200
        tp = spans.provider()
        memory = spans.in_memory(tp)
        spans.other_spans(tp)
        ignored_only = encode_spans(memory.get_finished_spans()).SerializeToString()
        assert http.post("/v1/traces", content=ignored_only, headers=PROTOBUF).status_code == 200
        r = http.post("/v1/traces", content=ignored_only, headers=PROTOBUF)
        assert r.status_code == 429 and r.headers["retry-after"]


def test_the_exporter_configured_by_environment_as_the_readme_says(
    tmp_path: Path, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    with WebServer(_settings(tmp_path), "127.0.0.1", 0, client=sink) as web:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{web.url}/v1/traces")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{PK}")
        tp = spans.provider()
        memory = spans.in_memory(tp)
        spans.chat_span(tp, "from the environment", "A")
        assert OTLPSpanExporter().export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
    assert [i.user_input for i in sink.interactions] == ["from the environment"]


def test_ignored_spans_are_counted_in_the_metrics(client: TestClient) -> None:
    from feedbackloop.infra.metrics import families

    counter = families().otlp_spans

    def count(outcome: str) -> float:
        return float(counter.labels(outcome)._value.get())

    before = count("ignored"), count("interaction")
    client.post("/v1/traces", content=_request().SerializeToString(), headers=PROTOBUF)
    assert (count("ignored") - before[0], count("interaction") - before[1]) == (3, 2)


@pytest.mark.parametrize("depth", [20, 40, 300])
def test_deeply_nested_payloads_are_a_400_not_a_crash(
    client: TestClient, sink: Sink, depth: int
) -> None:
    value = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth
    value += '{"stringValue": "x"}' + "}]}}" * depth
    span = f'{{"traceId": "{"01" * 16}", "spanId": "{"02" * 8}", "attributes": '
    span += '[{"key": "gen_ai.request.model", "value": {"stringValue": "m"}}, '
    span += f'{{"key": "deep", "value": {value}}}]}}'
    body = '{"resourceSpans": [{"scopeSpans": [{"spans": [' + span + "]}]}]}"
    r = client.post("/v1/traces", content=body, headers=JSON)
    # protobuf's JSON parser allows 100 message levels (3 per level here), orjson 255
    ok = depth * 3 + 6 < 100
    assert r.status_code == (200 if ok else 400), r.text
    # the same nesting in protobuf: refused by the parser's own depth limit
    request = _request()
    attr = request.resource_spans[0].scope_spans[0].spans[0].attributes.add(key="deep")
    cur = attr.value
    for _ in range(depth):  # built from the outside in: no copies of deep messages
        cur = cur.kvlist_value.values.add(key="k").value
    cur.string_value = "x"
    r = client.post("/v1/traces", content=request.SerializeToString(), headers=PROTOBUF)
    assert r.status_code == (200 if ok else 400), r.text


def test_a_stalled_body_is_answered_408_as_on_the_other_routes(tmp_path: Path, sink: Sink) -> None:
    import socket
    import time

    settings = _settings(tmp_path).model_copy(update={"web_read_timeout_s": 1.0})
    with WebServer(settings, "127.0.0.1", 0, client=sink) as web:
        host, port = web.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                + f"Authorization: Bearer {PK}\r\nContent-Length: 100000\r\n\r\n\x0a".encode()
            )
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
            waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer[:200]
    assert waited < 10
