"""The HTTP collector: events from browsers, mobile apps and other languages, into Kafka.

``POST /v1/events`` takes a batch (a JSON array, or ``{"events": [...]}``) and answers per
event; ``POST /v1/feedback`` takes one feedback object. Both validate with the same contract
as the SDK and the stream jobs (:func:`feedbackloop.schemas.decode_dict`), and answer 202 only
once every accepted event is in librdkafka's queue or the SDK's on-disk spool
(:meth:`FeedbackClient.send`), so a 202 survives a broker outage and a restart of this server.

Per event, in order:

1. a key bound to one app may omit ``app_id`` (it is filled in) but may not name another
   app: that event is ``forbidden`` and dropped, not dead-lettered, because it is not this
   app's data (and a leaked public key must not be able to fill the dead-letter topic with
   another app's name on it);
2. an invalid event is ``rejected`` with the contract's reason and message, and goes to the
   dead-letter topic (source ``collector``) with its JSON, like any other invalid event;
3. a valid event is handed over: ``accepted``, or ``unavailable`` if the spool is full.

A batch is answered **per event**, never all-or-nothing: each valid event of a batch is
handed over whatever happens to its neighbours, and the answer lists what happened to each.
It is 202 if anything was accepted and nothing was unavailable; otherwise 503 (retry: resend
the whole batch, ``event_id`` makes that idempotent), 403 (something was forbidden) or 422
(everything was invalid), always with the per-event results. No event can make the request
fail as a whole: an item the contract cannot even look at (a ``event_type`` that is an
object, nesting too deep) is rejected like any other invalid event.

A body that is not JSON at all is a 400 ``invalid_json`` and goes to the dead-letter topic
whole (bounded, see :class:`~feedbackloop.schemas.DeadLetter`). JSON here means RFC 8259
in UTF-8 as parsed by orjson: nesting up to 1024 levels and integers within 64 bits (no
stored field is wider), no UTF-16 or UTF-32, no byte-order mark.

A retry is only idempotent if the client chose the ``event_id``; without one the collector
makes a new id per attempt, so clients that retry should set it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from feedbackloop.errors import SchemaError
from feedbackloop.infra.metrics import record_collector, record_dead_letter
from feedbackloop.schemas import DeadLetter, Envelope, decode_dict
from feedbackloop.web.auth import ALL_APPS, Principal
from feedbackloop.web.ratelimit import RateLimited
from feedbackloop.web.state import ApiError, WritePrincipal, error_responses, state_of

__all__ = [
    "BatchResponse",
    "Collector",
    "EventResult",
    "EventSink",
    "FeedbackResponse",
    "router",
]

log = logging.getLogger(__name__)

Status = Literal["accepted", "rejected", "forbidden", "unavailable"]
_JSON_TYPES = ("application/json", "text/plain")  # text/plain: navigator.sendBeacon


class EventSink(Protocol):
    """Where validated events go: :class:`~feedbackloop.producers.FeedbackClient` in
    production (tests may pass a recorder)."""

    def send(self, event: Envelope) -> bool: ...

    def send_dead_letter(self, letter: DeadLetter) -> bool: ...


class EventResult(BaseModel):
    """What happened to one event of a request."""

    index: int = Field(description="Position of the event in the request.")
    status: Status
    event_id: str | None = Field(default=None, description="Set when accepted.")
    reason: str | None = Field(
        default=None,
        description="Why not accepted: validation_error, unknown_event_type, "
        "unsupported_schema_version, oversized, forbidden_app_id, spool_full.",
    )
    error: str | None = Field(default=None, description="Human-readable detail.")


class BatchResponse(BaseModel):
    """The answer to a batch: counts and one result per event, in request order."""

    accepted: int
    rejected: int
    results: list[EventResult]


class FeedbackResponse(BaseModel):
    """The answer to a single feedback call."""

    status: Literal["accepted"]
    event_id: str


@dataclass
class Collector:
    """Validation, authorization per event, and hand-off; no HTTP in here (blocking: the
    routes call it in a worker thread, since spooling writes to disk)."""

    sink: EventSink
    max_batch_events: int = 1000

    def ingest(
        self, items: Sequence[Any], principal: Principal, default_type: str | None = None
    ) -> list[EventResult]:
        """Validate and hand over each item; one :class:`EventResult` per item."""
        results = [self._safe_one(i, item, principal, default_type) for i, item in enumerate(items)]
        record_collector((r.status, r.reason) for r in results)
        return results

    def dead_letter_body(self, body: bytes, reason: str, error: str) -> None:
        """A request body that is not even JSON still reaches the dead-letter topic."""
        record_dead_letter("collector", reason)
        self.sink.send_dead_letter(
            DeadLetter(reason=reason, error=error, payload=body, source="collector")
        )

    def _safe_one(
        self, index: int, item: Any, principal: Principal, default_type: str | None
    ) -> EventResult:
        try:
            return self._one(index, item, principal, default_type)
        except Exception as e:
            # A bug of ours must not fail the request after its neighbours were handed
            # over: this item is rejected (and dead-lettered) like an invalid one.
            log.exception("collector: unexpected error on event %d", index)
            return self._reject(
                index, item, SchemaError("validation_error", f"cannot process: {type(e).__name__}")
            )

    def _one(
        self, index: int, item: Any, principal: Principal, default_type: str | None
    ) -> EventResult:
        if isinstance(item, dict):
            if principal.app_id != ALL_APPS and "app_id" not in item:
                item = {**item, "app_id": principal.app_id}
            if default_type is not None and "event_type" not in item:
                item = {**item, "event_type": default_type}
            app_id = item.get("app_id")
            if isinstance(app_id, str) and not principal.may_write(app_id):
                return EventResult(
                    index=index,
                    status="forbidden",
                    reason="forbidden_app_id",
                    error=f"this key may only submit events for app_id {principal.app_id!r}",
                )
            if default_type is not None and item.get("event_type") != default_type:
                return self._reject(
                    index,
                    item,
                    SchemaError(
                        "validation_error",
                        f"this endpoint takes event_type {default_type!r}, "
                        f"got {item.get('event_type')!r}",
                    ),
                )
        try:
            event = decode_dict(item)
        except SchemaError as e:
            return self._reject(index, item, e)
        try:
            handed_over = self.sink.send(event)
        except SchemaError as e:  # oversized once encoded
            return self._reject(index, item, e)
        if not handed_over:
            return EventResult(
                index=index,
                status="unavailable",
                reason="spool_full",
                error="the broker is unreachable and the local spool is full; retry later",
            )
        return EventResult(index=index, status="accepted", event_id=str(event.event_id))

    def _reject(self, index: int, item: Any, err: SchemaError) -> EventResult:
        try:
            payload = orjson.dumps(item, default=str)
        except (TypeError, ValueError, RecursionError):
            payload = json.dumps(item, default=str).encode("utf-8", "replace")
        self.sink.send_dead_letter(
            DeadLetter(reason=err.reason, error=str(err), payload=payload, source="collector")
        )
        return EventResult(index=index, status="rejected", reason=err.reason, error=str(err))


def batch_status(results: Sequence[EventResult]) -> int:
    """202 if something was accepted and nothing must be retried, else 503 / 403 / 422."""
    statuses = {r.status for r in results}
    if "unavailable" in statuses:
        return 503
    if "accepted" in statuses:
        return 202
    if "forbidden" in statuses:
        return 403
    return 422


async def read_json_body(request: Request, limit: int) -> tuple[bytes, Any]:
    """The request body parsed as JSON, within ``limit`` bytes; :class:`ApiError` otherwise."""
    unknown = sorted(set(request.query_params) - {"key"})
    if unknown:  # the document lists only ``key``; anything else is a client's mistake
        raise ApiError(
            400, "unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)[:200]}"
        )
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype and ctype not in _JSON_TYPES and not ctype.endswith("+json"):
        raise ApiError(
            415, "unsupported_media_type", f"send JSON (application/json), not {ctype!r}"
        )
    if request.headers.get("content-encoding", "identity").lower() != "identity":
        raise ApiError(415, "unsupported_encoding", "compressed request bodies are not accepted")
    body = await receive_body(request, limit)
    if not body.strip():
        raise ApiError(400, "empty_body", "the request body is empty; send JSON")
    try:
        return body, parse_json(body)
    except ValueError as e:
        collector: Collector = state_of(request).collector
        await run_in_threadpool(collector.dead_letter_body, body, "invalid_json", str(e))
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8 JSON: {e}") from e


async def receive_body(request: Request, limit: int) -> bytes:
    """The raw request body: at most ``limit`` bytes (413), within ``web_read_timeout_s``
    (408); every route that reads a body reads it through here."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, "body_too_large", f"request body is {declared} bytes; the limit is {limit}"
        )
    chunks: list[bytes] = []
    size = 0
    timeout = state_of(request).settings.web_read_timeout_s

    async def receive() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked uploads declare no length: count as they arrive
                raise ApiError(
                    413, "body_too_large", f"request body exceeds the limit of {limit} bytes"
                )
            chunks.append(chunk)

    try:
        # A client that promises a body and sends it slowly (or never) must not hold a
        # connection and its buffers for longer than this.
        await asyncio.wait_for(receive(), timeout)
    except asyncio.TimeoutError as e:
        raise ApiError(
            408,
            "request_timeout",
            f"the request body did not arrive within {timeout:g} s",
            {"Connection": "close"},
        ) from e
    return b"".join(chunks)


def parse_json(body: bytes) -> Any:
    """``body`` as JSON (see the module docstring); ValueError with a reason otherwise."""
    if body[:3] == b"\xef\xbb\xbf" or body[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise ValueError("byte-order mark: send UTF-8 without a BOM")
    return orjson.loads(body)  # orjson.JSONDecodeError is a ValueError


def _charge(request: Request, principal: Principal, cost: int) -> None:
    try:
        state_of(request).limiter.acquire(principal.rate_key, cost)
    except RateLimited as e:
        raise ApiError.from_rate(e) from e


def _event_schema_ref(name: str = "Event") -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_BATCH_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {"type": "array", "items": _event_schema_ref(), "minItems": 1},
                    {
                        "type": "object",
                        "properties": {
                            "events": {"type": "array", "items": _event_schema_ref(), "minItems": 1}
                        },
                        "required": ["events"],
                    },
                ]
            }
        }
    },
}

_FEEDBACK_BODY = {
    "required": True,
    "content": {"application/json": {"schema": _event_schema_ref("FeedbackCall")}},
}


def router() -> APIRouter:
    """The collector's routes (``/v1``)."""
    r = APIRouter(prefix="/v1", tags=["collector"])

    @r.post(
        "/events",
        status_code=202,
        response_model=BatchResponse,
        summary="Submit a batch of events",
        description='A JSON array of events, or an object {"events": [...]}; any mix of '
        "interaction, feedback, implicit and outcome events. Answers per event (see "
        "BatchResponse). A key bound to one app may omit app_id.",
        openapi_extra={"requestBody": _BATCH_BODY},
        responses={
            **error_responses(400, 401, 408, 413, 415, 429),
            403: {"model": BatchResponse, "description": "No event accepted; some forbidden."},
            422: {"model": BatchResponse, "description": "Every event was invalid."},
            503: {
                "model": BatchResponse,
                "description": "Some events could not be handed "
                "over (spool full); resend the batch after Retry-After.",
            },
        },
    )
    async def post_events(request: Request, principal: WritePrincipal) -> JSONResponse:
        state = state_of(request)
        _, data = await read_json_body(request, state.settings.web_max_body_bytes)
        if isinstance(data, dict) and "events" in data:
            data = data["events"]
        if not isinstance(data, list):
            raise ApiError(
                400,
                "bad_shape",
                'expected a JSON array of events or an object {"events": [...]}, '
                f"got a JSON {type(data).__name__}",
            )
        if not data:
            raise ApiError(400, "empty_batch", "the batch contains no events")
        if len(data) > state.collector.max_batch_events:
            raise ApiError(
                413,
                "too_many_events",
                f"the batch has {len(data)} events; the limit is "
                f"{state.collector.max_batch_events} per request",
            )
        _charge(request, principal, len(data))
        results = await run_in_threadpool(state.collector.ingest, data, principal)
        accepted = sum(1 for x in results if x.status == "accepted")
        body = BatchResponse(accepted=accepted, rejected=len(results) - accepted, results=results)
        status = batch_status(results)
        headers = {"Retry-After": "5"} if status == 503 else None
        return JSONResponse(body.model_dump(), status_code=status, headers=headers)

    @r.post(
        "/feedback",
        status_code=202,
        response_model=FeedbackResponse,
        summary="Submit one feedback event",
        description="One feedback object (thumbs, rating, correction, comment or report); "
        "event_type may be omitted. A key bound to one app may omit app_id.",
        openapi_extra={"requestBody": _FEEDBACK_BODY},
        responses=error_responses(400, 401, 403, 408, 413, 415, 422, 429, 503),
    )
    async def post_feedback(request: Request, principal: WritePrincipal) -> FeedbackResponse:
        state = state_of(request)
        _, data = await read_json_body(request, state.settings.web_max_body_bytes)
        if not isinstance(data, dict):
            raise ApiError(
                400, "bad_shape", f"expected one JSON object, got a JSON {type(data).__name__}"
            )
        _charge(request, principal, 1)
        (result,) = await run_in_threadpool(state.collector.ingest, [data], principal, "feedback")
        if result.status == "accepted":
            assert result.event_id is not None
            return FeedbackResponse(status="accepted", event_id=result.event_id)
        status = {"forbidden": 403, "rejected": 422, "unavailable": 503}[result.status]
        headers = {"Retry-After": "5"} if status == 503 else None
        raise ApiError(status, result.reason or result.status, result.error or "", headers)

    return r
