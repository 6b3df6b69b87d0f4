"""The control plane over HTTP (``/v1/experiments``): SDKs poll the live configuration of
their app with ``If-None-Match``; secret keys change it (an operator key, app ``*``, any
app's). Every change is published through :class:`~feedbackloop.control.ControlPlane`, so it
is versioned and audited exactly like one made from the CLI; ``changed_by`` records the
``by`` the caller gives and the key kind and app it used.

Reading needs any key of the app, public keys included (a browser or mobile app assigns
variants too); a public key gets the configuration without who changed it and why.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import threading
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from feedbackloop.errors import ConfigError, VersionConflict
from feedbackloop.web.auth import ALL_APPS, KeyKind, Principal
from feedbackloop.web.collector import parse_json, receive_body
from feedbackloop.web.state import (
    ApiError,
    ReadPrincipal,
    WritePrincipal,
    error_responses,
    state_of,
)

__all__ = ["ControlView", "body_schemas", "router"]

#: A config change is a few hundred bytes; its body is read within this limit and the
#: collector's read timeout (``receive_body``), like every body the server reads.
BODY_LIMIT_BYTES = 64 * 1024

_ACTIONS = ("weights", "ramp", "pause", "resume", "stop", "rollback")
_IF_MATCH = re.compile(r'^(?:W/)?"?v?(\d{1,9})"?$')


def version_etag(version: int) -> str:
    """The entity tag of one experiment's version: what ``If-Match`` takes back."""
    return f'"v{version}"'


def _if_match(request: Request) -> int | None:
    """The version an ``If-Match`` header expects (``"v3"``, ``v3`` or ``3``); None
    without one or for ``*`` (any version)."""
    raw = request.headers.get("if-match")
    if raw is None or raw.strip() == "*":
        return None
    m = _IF_MATCH.match(raw.strip())
    if m is None:
        raise ApiError(400, "invalid_if_match", 'If-Match takes one experiment version, e.g. "v3"')
    return int(m.group(1))


class ControlView:
    """Every app's latest experiment versions, followed from the control topic."""

    def __init__(self, settings: Any) -> None:
        from feedbackloop.control.live import KafkaSource

        self.configs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._source = KafkaSource(settings)
        self._source.start(self._offer)

    def _offer(self, key: bytes | None, value: bytes | None) -> bool:
        from feedbackloop.control.config import decode_config
        from feedbackloop.control.plane import latest
        from feedbackloop.errors import SchemaError

        try:
            cfg = decode_config(value)
        except SchemaError:
            return False  # the sink dead-letters it; the last good version stays
        with self._lock:
            if latest(self.configs.get(cfg.key), cfg):
                self.configs[cfg.key] = cfg
        return True

    def of(self, app_id: str | None) -> list[Any]:
        with self._lock:
            found = [c for c in self.configs.values() if app_id is None or c.app_id == app_id]
        return sorted(found, key=lambda c: (c.app_id, c.name))

    def close(self) -> None:
        self._source.close()


def _view(request: Request) -> ControlView:
    app_state = request.app.state
    view = getattr(app_state, "control_view", None)
    if view is None:
        settings = state_of(request).settings
        if settings.bootstrap_servers is None:
            raise ApiError(503, "no_broker", "no broker configured: live experiments are off")
        with _VIEW_LOCK:
            view = getattr(app_state, "control_view", None)
            if view is None:
                view = app_state.control_view = ControlView(settings)
    return view  # type: ignore[no-any-return]


_VIEW_LOCK = threading.Lock()


def _plane(request: Request) -> Any:
    from feedbackloop.control import ControlPlane

    settings = state_of(request).settings
    if settings.bootstrap_servers is None:
        raise ApiError(503, "no_broker", "no broker configured: live experiments are off")
    return ControlPlane(settings)


def _known_params(request: Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:  # as on the collector's routes: anything not documented is a mistake
        raise ApiError(
            400, "unknown_parameter", f"unknown query parameter(s): {', '.join(unknown)[:200]}"
        )


def _app_of(principal: Principal, app_id: str | None) -> str | None:
    if principal.app_id == ALL_APPS:
        return app_id
    if app_id is not None and app_id != principal.app_id:
        raise ApiError(403, "other_app", f"this key belongs to app {principal.app_id!r}")
    return principal.app_id


_Body = TypeVar("_Body", bound=BaseModel)


class GuardrailBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    tolerance: float = 0.0


class CanaryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: list[float] = Field(default_factory=lambda: [0.01, 0.05, 0.25, 0.5])
    guardrails: list[GuardrailBody] = Field(default_factory=list)
    min_step_s: float | None = None
    min_step_samples: int | None = None
    alpha: float | None = None


class CreateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    app_id: str | None = None
    variants: dict[str, float]
    salt: str | None = None
    canary: CanaryBody | None = None
    reason: str = Field(min_length=1)
    by: str | None = None


class ChangeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    app_id: str | None = None
    reason: str = Field(min_length=1)
    by: str | None = None
    to: float | None = None
    weights: dict[str, float] | None = None


def body_schemas() -> dict[str, Any]:
    """The request bodies' JSON Schemas, for the OpenAPI document's components."""
    out: dict[str, Any] = {}
    for model in (CreateBody, ChangeBody):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(schema.pop("$defs", {}))
        out[model.__name__] = schema
    return out


def _request_body(model: type[BaseModel]) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


async def _read(request: Request, model: type[_Body]) -> _Body:
    """The body as ``model``: read through the collector's limits (size, read timeout), parsed
    by the collector's JSON rules, then validated; a clear 4xx otherwise."""
    raw = await receive_body(request, BODY_LIMIT_BYTES)
    try:
        return model.model_validate(parse_json(raw))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in e.errors()[:5]
        )
        raise ApiError(422, "invalid_body", problems) from None
    except ValueError as e:
        raise ApiError(400, "invalid_json", f"the body is not valid UTF-8 JSON: {e}") from None


def _who(body_by: str | None, principal: Principal) -> str:
    return f"{body_by or 'api'} ({principal.rate_key})"


def _public(cfg: Any, principal: Principal) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(cfg.model_dump_json())
    if principal.kind is KeyKind.public:
        data["changed_by"], data["reason"] = "-", ""
    return data


def router() -> APIRouter:
    r = APIRouter(prefix="/v1", tags=["control"])

    @r.get(
        "/experiments",
        summary="The live experiment configuration of an app (ETag / If-None-Match)",
        responses={**error_responses(400, 401, 403, 503), 304: {"description": "Not modified."}},
    )
    async def get_experiments(
        request: Request, principal: WritePrincipal, app_id: str | None = None
    ) -> Response:
        _known_params(request, {"app_id", "key"})
        app = _app_of(principal, app_id)
        configs = _view(request).of(app)
        tag = hashlib.sha256(
            json.dumps([(c.key, c.version) for c in configs]).encode()
        ).hexdigest()[:32]
        etag = f'"{tag}"'
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers={"ETag": etag})
        body = {"experiments": [_public(c, principal) for c in configs]}
        return JSONResponse(body, headers={"ETag": etag, "Cache-Control": "no-cache"})

    @r.post(
        "/experiments",
        status_code=201,
        summary="Create a live experiment (a canary with 'canary')",
        responses=error_responses(400, 401, 403, 408, 409, 413, 422, 503),
        openapi_extra=_request_body(CreateBody),
    )
    async def create_experiment(request: Request, principal: ReadPrincipal) -> dict[str, Any]:
        from feedbackloop.control import Guardrail, new_experiment

        _known_params(request, set())
        body = await _read(request, CreateBody)
        app = _app_of(principal, body.app_id)
        if app is None:
            raise ApiError(422, "app_id_required", "an operator key must name the app_id")
        kwargs: dict[str, Any] = {}
        if body.canary is not None:
            c = body.canary
            try:
                kwargs["guardrails"] = tuple(
                    Guardrail.model_validate(g.model_dump()) for g in c.guardrails
                )
            except ValueError as e:
                raise ApiError(422, "invalid_guardrail", str(e)) from None
            kwargs.update(
                canary_steps=tuple(c.steps),
                min_step_s=c.min_step_s,
                min_step_samples=c.min_step_samples,
                alpha=c.alpha,
            )
        try:
            cfg = new_experiment(
                app,
                body.name,
                body.variants,
                changed_by=_who(body.by, principal),
                reason=body.reason,
                salt=body.salt,
                **kwargs,
            )
            done = await run_in_threadpool(_plane(request).create, cfg)
        except VersionConflict as e:
            raise ApiError(409, "version_conflict", str(e)) from None
        except ConfigError as e:
            raise ApiError(409 if "stop it before" in str(e) else 422, "refused", str(e)) from None
        return _public(done, principal)

    @r.post(
        "/experiments/{name}/{action}",
        summary="Change a live experiment: weights, ramp, pause, resume, stop, rollback "
        '(compare-and-set with If-Match: "v<version>")',
        responses=error_responses(400, 401, 403, 404, 408, 409, 412, 413, 422, 503),
        openapi_extra=_request_body(ChangeBody),
    )
    async def change_experiment(
        request: Request, name: str, action: str, principal: ReadPrincipal
    ) -> Response:
        _known_params(request, set())
        body = await _read(request, ChangeBody)
        if action not in _ACTIONS:
            raise ApiError(404, "unknown_action", f"action must be one of {', '.join(_ACTIONS)}")
        app = _app_of(principal, body.app_id)
        if app is None:
            raise ApiError(422, "app_id_required", "an operator key must name the app_id")
        expected = _if_match(request)
        plane = _plane(request)
        try:
            current = await run_in_threadpool(plane.current)
            if f"{app}|{name}" not in current:
                raise ApiError(404, "not_found", f"no live experiment {name!r} in app {app!r}")
            new = await run_in_threadpool(
                functools.partial(
                    plane.change,
                    app,
                    name,
                    action,
                    if_version=expected,
                    changed_by=_who(body.by, principal),
                    reason=body.reason,
                    weights=body.weights,
                    to=body.to,
                )
            )
        except VersionConflict as e:
            # 412: the If-Match precondition failed; 409: no precondition, but another
            # change came first (nothing was applied either way).
            raise ApiError(
                412 if expected is not None else 409,
                "version_conflict",
                str(e),
                headers={"ETag": version_etag(e.current)},
            ) from None
        except ConfigError as e:
            raise ApiError(409, "refused", str(e)) from None
        return JSONResponse(_public(new, principal), headers={"ETag": version_etag(new.version)})

    return r
