"""What every route shares: the app's state, the error shape, and the key checks.

Every error the web server answers has the same JSON body, ``{"error": <reason code>,
"message": <sentence>}``, whether it comes from a key check, a size limit, the rate limiter,
FastAPI's own parameter validation or an unknown path, so a client handles one shape.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, APIKeyQuery, HTTPBearer
from pydantic import BaseModel

from feedbackloop.config import Settings
from feedbackloop.sinks.query import QueryResult
from feedbackloop.web.auth import AuthError, KeyRing, Principal
from feedbackloop.web.ratelimit import RateLimited, RateLimiter

__all__ = [
    "ApiError",
    "ErrorBody",
    "QueryFn",
    "WebState",
    "ReadPrincipal",
    "WritePrincipal",
    "read_principal",
    "write_principal",
    "error_responses",
]

#: Runs one read-only SQL statement (default: :func:`feedbackloop.sinks.run_query`).
QueryFn = Callable[[str], QueryResult]


class ErrorBody(BaseModel):
    """The body of every 4xx / 5xx answer."""

    error: str
    message: str


class ApiError(Exception):
    """An HTTP error with a machine-readable ``reason`` and a human-readable message."""

    def __init__(
        self, status: int, reason: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}

    @classmethod
    def from_auth(cls, e: AuthError) -> ApiError:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
        return cls(e.status, e.reason, str(e), headers)

    @classmethod
    def from_rate(cls, e: RateLimited) -> ApiError:
        retry = max(1, math.ceil(e.retry_after))
        return cls(429, "rate_limited", str(e), {"Retry-After": str(retry)})


@dataclass
class WebState:
    """Shared by all requests of one app (``app.state.web``)."""

    settings: Settings
    keys: KeyRing
    limiter: RateLimiter
    #: failed authentications per client address (a key guesser is slowed down)
    auth_failures: RateLimiter
    query: QueryFn
    collector: Any  # feedbackloop.web.collector.Collector (kept loose: no import cycle)
    dashboard: Any  # feedbackloop.web.dashboard.DashboardQueries (same)


def state_of(request: Request) -> WebState:
    state = request.app.state.web
    assert isinstance(state, WebState)
    return state


# Declared for the OpenAPI document (so clients and schemathesis know how to authenticate);
# the checks themselves are ours, in KeyRing, so that every failure has our error shape.
_bearer = HTTPBearer(auto_error=False, description="A public or secret project key.")
_header_key = APIKeyHeader(name="X-API-Key", auto_error=False)
_query_key = APIKeyQuery(
    name="key", auto_error=False, description="Public keys only (for navigator.sendBeacon)."
)


def _authenticate(request: Request, *, allow_query: bool) -> Principal:
    state = state_of(request)
    host = request.client.host if request.client else None
    address = f"addr:{host}"
    # Checked before the key: once an address has failed too often, a right guess must not
    # be told apart from a wrong one.
    wait = state.auth_failures.retry_after(address)
    if wait > 0:
        raise ApiError(
            429,
            "too_many_failed_authentications",
            "too many requests with a missing or unknown key from this address; "
            f"retry in {math.ceil(wait)} s",
            {"Retry-After": str(max(1, math.ceil(wait)))},
        )
    try:
        return state.keys.authenticate(
            authorization=request.headers.get("authorization"),
            api_key=request.headers.get("x-api-key"),
            query_key=request.query_params.get("key") if allow_query else None,
            client_host=host,
        )
    except AuthError as e:
        if e.status == 401:
            with contextlib.suppress(RateLimited):
                state.auth_failures.acquire(address)
        raise ApiError.from_auth(e) from e


def write_principal(
    request: Request,
    _bearer_cred: Annotated[Any, Security(_bearer)] = None,
    _header: Annotated[Any, Security(_header_key)] = None,
    _query: Annotated[Any, Security(_query_key)] = None,
) -> Principal:
    """Any valid key (public or secret), or a loopback client in local mode."""
    return _authenticate(request, allow_query=True)


def read_principal(
    request: Request,
    _bearer_cred: Annotated[Any, Security(_bearer)] = None,
    _header: Annotated[Any, Security(_header_key)] = None,
) -> Principal:
    """A secret key (or a loopback client in local mode); one rate-limit token per request."""
    principal = _authenticate(request, allow_query=False)
    if not principal.can_read:
        raise ApiError(
            403, "write_only_key", "public keys are write-only; reading needs the secret key"
        )
    try:
        state_of(request).limiter.acquire(principal.rate_key, 1)
    except RateLimited as e:
        raise ApiError.from_rate(e) from e
    return principal


#: Route parameter types: the caller, checked for writing / for reading.
WritePrincipal = Annotated[Principal, Depends(write_principal)]
ReadPrincipal = Annotated[Principal, Depends(read_principal)]


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for error statuses, all with :class:`ErrorBody`."""
    what = {
        400: "Malformed request (not JSON, wrong shape, empty batch).",
        401: "Missing or unknown API key.",
        403: "The key may not do this (public key reading, or another app's events).",
        404: "Not found.",
        409: "Refused: the change does not apply, or another change of the experiment came "
        "first (nothing was changed).",
        412: "If-Match names another version than the experiment's current one (nothing was "
        "changed; the ETag header carries the current version).",
        413: "Request body or batch too large.",
        415: "Unsupported content type.",
        408: "The request body did not arrive within web_read_timeout_s.",
        422: "Invalid parameters or events.",
        429: "Rate limit exceeded, or too many failed authentications from this address; "
        "see Retry-After.",
        503: "Events could not be handed to Kafka nor spooled, or the query backend is "
        "unavailable; retry after Retry-After.",
    }
    return {s: {"model": ErrorBody, "description": what.get(s, "Error.")} for s in statuses}
