"""OTLP/HTTP trace ingestion: ``POST /v1/traces``, where an OpenTelemetry exporter can point.

Takes an ``ExportTraceServiceRequest`` as binary protobuf (``application/x-protobuf``) or as
OTLP's JSON encoding (``application/json``: hex trace and span ids, camelCase or snake_case
keys), optionally gzip-compressed (``Content-Encoding: gzip``, as exporters send with
``OTEL_EXPORTER_OTLP_COMPRESSION=gzip``). Keys, rate limits and body limits are the
collector's: the key goes in ``Authorization: Bearer`` (``OTEL_EXPORTER_OTLP_HEADERS``).

GenAI model-call spans become interactions (:mod:`feedbackloop.integrations.genai_spans`)
and go through the collector's own per-event path (authorization per app, validation,
dead letters, hand-off); other spans are ignored and counted (the
``feedbackloop_otlp_spans`` metric and the ``X-Feedbackloop-Spans-Ignored`` header).

Answers follow the OTLP/HTTP specification: 200 with an ``ExportTraceServiceResponse`` in
the request's encoding, whose ``partial_success`` counts the spans refused (invalid, or
another app's) with the first reasons; 503 with ``Retry-After`` when an interaction could not
be handed over (the exporter retries; ids derived from the span make that idempotent). A
payload that is not OTLP gets a 400 with our usual error body.
"""

from __future__ import annotations

import base64
import zlib
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from feedbackloop.infra.metrics import record_otlp_spans
from feedbackloop.web.auth import ALL_APPS
from feedbackloop.web.collector import receive_body
from feedbackloop.web.ratelimit import RateLimited
from feedbackloop.web.state import ApiError, WritePrincipal, error_responses, state_of

__all__ = ["router"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = (PROTOBUF, "application/protobuf")
_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_MAX_REASONS = 5


def _messages() -> tuple[Any, Any]:
    try:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )
    except ImportError as e:  # the integrations extra is not installed
        raise ApiError(
            501,
            "not_installed",
            "OTLP ingestion needs opentelemetry-proto: pip install 'feedbackloop[integrations]'",
        ) from e
    return ExportTraceServiceRequest, ExportTraceServiceResponse


async def _read_body(request: Request, limit: int) -> tuple[str, bytes]:
    """(media type, uncompressed body), each within ``limit`` bytes (the collector's
    :func:`receive_body`: size limit and read timeout)."""
    unknown = sorted(set(request.query_params) - {"key"})
    if unknown:  # as on the other collector routes: the document lists only ``key``
        raise ApiError(
            400, "unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)[:200]}"
        )
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype in _PROTOBUF_TYPES:
        ctype = PROTOBUF
    elif ctype != JSON:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send OTLP as {PROTOBUF} or {JSON}, not {ctype or 'no Content-Type'!r}",
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r}: use gzip")
    body = await receive_body(request, limit)
    if encoding == "gzip":
        body = _gunzip(body, limit)
    if not body.strip() and ctype == JSON:
        raise ApiError(400, "empty_body", "the request body is empty; send an OTLP request")
    return ctype, body


def _gunzip(body: bytes, limit: int) -> bytes:
    # Bounded: a small gzip body may expand to gigabytes.
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise ApiError(400, "invalid_gzip", f"the body is not valid gzip: {e}") from e
    if len(out) > limit or inflater.unconsumed_tail:
        raise ApiError(413, "body_too_large", f"the uncompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise ApiError(400, "invalid_gzip", "the gzip body is truncated")
    return out


def _parse(ctype: str, body: bytes) -> Any:
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError

    request_type, _ = _messages()
    if ctype == PROTOBUF:
        try:
            return request_type.FromString(body)
        except DecodeError as e:
            raise ApiError(
                400, "invalid_otlp", f"the body is not an OTLP ExportTraceServiceRequest: {e}"
            ) from e
    try:
        # orjson: UTF-8 only (not the UTF-16/32 that json.loads guesses), nesting bounded.
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8 JSON: {e}") from e
    if not isinstance(data, dict):
        raise ApiError(
            400, "invalid_otlp", f"expected an OTLP JSON object, got a JSON {type(data).__name__}"
        )
    try:
        return json_format.ParseDict(_hex_ids_to_base64(data), request_type(), True)
    except (json_format.ParseError, ValueError, TypeError, AttributeError, RecursionError) as e:
        raise ApiError(400, "invalid_otlp", f"not an OTLP ExportTraceServiceRequest: {e}") from e


def _mapped(ctype: str, body: bytes, default_app_id: str, bound_app_id: str | None) -> Any:
    from feedbackloop.integrations.genai_spans import map_request

    return map_request(
        _parse(ctype, body), default_app_id=default_app_id, bound_app_id=bound_app_id
    )


def _hex_ids_to_base64(data: dict[str, Any]) -> dict[str, Any]:
    """OTLP's JSON writes trace and span ids in hex, protobuf's JSON mapping in base64.

    Only where ids live (spans and their links), in place: attribute values are the app's
    and keep their text, whatever their keys are called. On the way, every level down to
    the links must be a list of objects: protobuf's parser would read a string as an empty
    message.
    """
    for i, resource in enumerate(_objects(data, "resourceSpans", "resource_spans")):
        for j, scope in enumerate(_objects(resource, "scopeSpans", "scope_spans", i)):
            for span in _objects(scope, "spans", "spans", i, j):
                _hex_keys(span)
                for link in _objects(span, "links", "links", i, j):
                    _hex_keys(link)
    return data


def _objects(node: dict[str, Any], camel: str, snake: str, *where: int) -> list[dict[str, Any]]:
    key = camel if camel in node else snake
    value = node.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        path = "".join(f"[{i}]" for i in where)
        raise ApiError(400, "invalid_otlp", f"{key}{path}: expected a list of objects")
    return value


def _hex_keys(node: dict[str, Any]) -> None:
    for key in _ID_KEYS & node.keys():
        value = node[key]
        if isinstance(value, str):
            try:
                node[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError as e:
                raise ApiError(400, "invalid_otlp", f"{key} {value[:64]!r} is not hex") from e


def _answer(ctype: str, rejected: int, reasons: list[str], headers: dict[str, str]) -> Response:
    _, response_type = _messages()
    answer = response_type()
    if rejected:
        answer.partial_success.rejected_spans = rejected
        answer.partial_success.error_message = "; ".join(reasons)
    if ctype == PROTOBUF:
        return Response(answer.SerializeToString(), 200, headers, media_type=PROTOBUF)
    from google.protobuf import json_format

    body = json_format.MessageToJson(answer, indent=None).encode()
    return Response(body, 200, headers, media_type=JSON)


_BODY = {
    "required": True,
    "content": {
        PROTOBUF: {
            "schema": {
                "type": "string",
                "format": "binary",
                "description": "opentelemetry.proto.collector.trace.v1."
                "ExportTraceServiceRequest, binary protobuf.",
            }
        },
        JSON: {
            "schema": {
                "type": "object",
                "description": "ExportTraceServiceRequest in OTLP's JSON encoding "
                "(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding).",
                # proto3's JSON mapping reads null as the empty default
                "properties": {
                    "resourceSpans": {"type": ["array", "null"], "items": {"type": "object"}}
                },
            }
        },
    },
}

_RESPONSE = {
    "description": "Processed. ExportTraceServiceResponse in the request's encoding; its "
    "partialSuccess counts the GenAI spans refused (invalid, or another app's) and why.",
    "headers": {
        "X-Feedbackloop-Spans-Accepted": {
            "description": "Spans handed on as interactions.",
            "schema": {"type": "integer"},
        },
        "X-Feedbackloop-Spans-Ignored": {
            "description": "Spans that are not GenAI model calls.",
            "schema": {"type": "integer"},
        },
    },
    "content": {
        PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        JSON: {
            "schema": {
                "type": "object",
                "properties": {
                    "partialSuccess": {
                        "type": "object",
                        "properties": {
                            "rejectedSpans": {"type": ["string", "integer"]},
                            "errorMessage": {"type": "string"},
                        },
                    }
                },
            }
        },
    },
}


def router() -> APIRouter:
    """The OTLP/HTTP traces route (``/v1/traces``)."""
    r = APIRouter(prefix="/v1", tags=["collector"])

    @r.post(
        "/traces",
        summary="Ingest OpenTelemetry traces (OTLP/HTTP)",
        description="An OTLP ExportTraceServiceRequest (protobuf or JSON, optionally gzip). "
        "GenAI model-call spans (gen_ai.* semantic conventions) become interactions; other "
        "spans are ignored and counted. Point an OTLP exporter's traces endpoint here.",
        openapi_extra={"requestBody": _BODY},
        responses={
            200: _RESPONSE,
            **error_responses(400, 401, 408, 413, 415, 429, 501, 503),
        },
        response_class=Response,
    )
    async def post_traces(request: Request, principal: WritePrincipal) -> Response:
        state = state_of(request)
        ctype, body = await _read_body(request, state.settings.web_max_body_bytes)
        bound = None if principal.app_id == ALL_APPS else principal.app_id
        mapped = await run_in_threadpool(_mapped, ctype, body, state.settings.app_id, bound)
        record_otlp_spans(len(mapped.interactions), mapped.ignored)
        try:
            # One token per interaction, and one per request at least: a stream of requests
            # holding only ignored spans still costs parsing.
            state.limiter.acquire(principal.rate_key, max(1, len(mapped.interactions)))
        except RateLimited as e:
            raise ApiError.from_rate(e) from e
        results = []
        if mapped.interactions:
            results = await run_in_threadpool(
                state.collector.ingest, mapped.interactions, principal
            )
        if any(x.status == "unavailable" for x in results):
            raise ApiError(
                503,
                "spool_full",
                "the broker is unreachable and the local spool is full; retry later",
                {"Retry-After": "5"},
            )
        refused = [x for x in results if x.status != "accepted"]
        reasons = [
            f"model-call span {x.index}: {x.reason}: {x.error}" for x in refused[:_MAX_REASONS]
        ]
        headers = {
            "X-Feedbackloop-Spans-Accepted": str(len(results) - len(refused)),
            "X-Feedbackloop-Spans-Ignored": str(mapped.ignored),
        }
        return _answer(ctype, len(refused), reasons, headers)

    return r
