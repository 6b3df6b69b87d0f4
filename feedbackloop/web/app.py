"""The web server: collector (``/v1``), read API (``/api``), dashboard (``/dashboard/``).

:func:`create_app` builds the ASGI app; :func:`serve` runs it in the foreground (the
``feedbackloop web`` command); :class:`WebServer` runs it on a background thread for a
supervisor such as ``feedbackloop up`` (start, ``url``, stop).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, TypeAdapter
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from feedbackloop.config import Settings
from feedbackloop.errors import FeedbackLoopError
from feedbackloop.producers.delivery import DeliveryStats
from feedbackloop.schemas import SCHEMA_VERSION, Event
from feedbackloop.web import collector as collector_mod
from feedbackloop.web import control as control_mod
from feedbackloop.web import dashboard as dashboard_mod
from feedbackloop.web import otlp as otlp_mod
from feedbackloop.web import snippet as snippet_mod
from feedbackloop.web.auth import KeyRing
from feedbackloop.web.collector import Collector, EventSink
from feedbackloop.web.ratelimit import RateLimiter
from feedbackloop.web.state import ApiError, QueryFn, WebState

__all__ = ["create_app", "serve", "WebServer"]

log = logging.getLogger(__name__)

# The dashboard is self-contained: scripts, styles and data all come from this server, so
# the browser is told to load nothing from anywhere else.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


class SpoolHealth(BaseModel):
    pending: int
    quarantined: int


class Health(BaseModel):
    status: Literal["ok", "spooling", "degraded"]
    spool: SpoolHealth
    producer: dict[str, int] | None


def create_app(
    settings: Settings,
    *,
    client: EventSink | None = None,
    query: QueryFn | None = None,
) -> FastAPI:
    """The ASGI app.

    ``client`` receives validated events (default: a :class:`FeedbackClient` made from
    ``settings``, spooling to ``<data_dir>/spool/collector.sqlite3``, closed, flushing,
    when the app shuts down; a client passed in stays the caller's to close). ``query``
    runs read-only SQL (default: :func:`feedbackloop.sinks.run_query` with ``settings``).
    """
    owned: list[Any] = []
    if client is None:
        from feedbackloop.producers import FeedbackClient

        client = FeedbackClient(
            settings, spool_path=settings.data_dir / "spool" / "collector.sqlite3"
        )
        owned.append(client)
    if query is None:
        from feedbackloop.sinks.query import run_query

        def query(sql: str) -> Any:
            return run_query(settings, sql)

        query.concurrent = True  # type: ignore[attr-defined]  # a session per statement

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        view = getattr(app.state, "control_view", None)
        if view is not None:
            view.close()
        for c in owned:
            stats = c.close()
            log.info("collector client closed: %s", stats)

    app = FastAPI(
        title="feedbackloop",
        version=f"schema {SCHEMA_VERSION}",
        summary="HTTP collector and dashboard API for LLM interactions, feedback and outcomes.",
        # The interactive docs pages load their scripts from a CDN; nothing here may need
        # the network, so only the document itself is served.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        lifespan=lifespan,
    )
    app.state.web = WebState(
        settings=settings,
        keys=KeyRing.from_settings(settings),
        limiter=RateLimiter(settings.web_rate_limit_per_s, settings.web_rate_limit_burst),
        auth_failures=RateLimiter(
            settings.web_auth_failures_per_min / 60, settings.web_auth_failures_burst
        ),
        query=query,
        collector=Collector(client, max_batch_events=settings.web_max_batch_events),
        dashboard=dashboard_mod.DashboardQueries(query, cache_s=settings.web_cache_s),
    )
    app.include_router(collector_mod.router())
    app.include_router(control_mod.router())
    app.include_router(otlp_mod.router())
    app.include_router(snippet_mod.router())
    app.include_router(dashboard_mod.router())
    app.mount(
        "/dashboard/static",
        StaticFiles(directory=dashboard_mod.STATIC_DIR),
        name="dashboard-static",
    )

    @app.get(
        "/healthz",
        tags=["operations"],
        summary="Liveness, spool backlog and quarantine, producer counters",
        description="Always 200 while the server runs. status is 'ok', 'spooling' (events "
        "wait on disk for the broker) or 'degraded' (records the broker refused for good are "
        "quarantined in the spool file; see docs/RELIABILITY.md).",
        response_model=Health,
    )
    async def healthz() -> Health:
        stats = client.stats() if hasattr(client, "stats") else None
        pending = int(getattr(stats, "spool_pending", 0) or 0)
        quarantined = int(getattr(stats, "spool_quarantined", 0) or 0)
        status: Literal["ok", "spooling", "degraded"] = (
            "degraded" if quarantined else "spooling" if pending else "ok"
        )
        return Health(
            status=status,
            spool=SpoolHealth(pending=pending, quarantined=quarantined),
            producer=dataclasses.asdict(stats) if isinstance(stats, DeliveryStats) else None,
        )

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        # Every process sharing the metrics directory (stream worker, sink, this server):
        # one scrape target for the stack. Unauthenticated like /healthz: counts only.
        from feedbackloop.infra.metrics import CONTENT_TYPE, exposition

        body = await run_in_threadpool(exposition)
        return Response(body, media_type=CONTENT_TYPE)

    _install_error_handlers(app)
    _install_headers(app)
    if settings.web_cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.web_cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type"],
            expose_headers=["Retry-After"],
            allow_credentials=False,  # keys travel in headers, never in cookies
            max_age=600,
        )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _error(status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> Any:
    return JSONResponse({"error": reason, "message": message}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> Any:
        return _error(e.status, e.reason, e.message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_params(_: Request, e: RequestValidationError) -> Any:
        parts = [
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in e.errors()
        ]
        return _error(422, "invalid_parameter", "; ".join(parts) or "invalid parameters")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> Any:
        reason = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "http_error")
        return _error(e.status_code, reason, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(FeedbackLoopError)
    async def backend_error(_: Request, e: FeedbackLoopError) -> Any:
        # ClickHouse unreachable, analysis extra missing: the server is fine, a backend not.
        # The details (SQL, paths, driver messages) go to the log only, under a reference
        # the caller can quote; the body says nothing about the internals.
        ref = secrets.token_hex(4)
        log.warning("backend error (ref %s): %s", ref, e)
        return _error(
            503,
            "backend_unavailable",
            f"the query backend is unavailable or failed; retry later (ref {ref} in the "
            "server log)",
            {"Retry-After": "5"},
        )


def _install_headers(app: FastAPI) -> None:
    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        if request.url.path.startswith("/api"):
            # Experiment data must not stay in browser or proxy caches.
            response.headers["Cache-Control"] = "no-store"
        if request.url.path.startswith("/dashboard"):
            response.headers.setdefault("Content-Security-Policy", _CSP)
            response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the event contract as components (the collector reads raw
    bodies so that it can answer per event, so FastAPI cannot infer the request schemas)."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    schema = TypeAdapter(Event).json_schema(ref_template="#/components/schemas/{model}")
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    defs = schema.pop("$defs", {})
    # /v1/feedback fills in event_type; in a batch every event must name its type.
    components["FeedbackCall"] = copy.deepcopy(defs["Feedback"])
    for name in ("Interaction", "Feedback", "Implicit", "Outcome"):
        required = defs[name].setdefault("required", [])
        if "event_type" not in required:
            required.insert(0, "event_type")
    components.update(defs)
    components["Event"] = schema
    components.update(control_mod.body_schemas())
    app.openapi_schema = doc
    return doc


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    *,
    ready: Callable[[str], None] | None = None,
) -> None:
    """Run the web server in the foreground until Ctrl-C / SIGTERM (then flush and stop).

    ``ready`` is called with the base URL once the socket listens (``feedbackloop up``
    waits for the CLI's "web ready" line, printed from here).
    """
    import uvicorn

    config = uvicorn.Config(
        create_app(settings),
        host=host or settings.web_host,
        port=settings.web_port if port is None else port,
        log_level="info",
        access_log=False,
        # Our root handler (feedbackloop.infra.logs) formats uvicorn's lines too.
        log_config=None,
    )
    _ready_server(config, ready).run()


def _listening_url(server: Any) -> str:
    for srv in getattr(server, "servers", None) or []:
        for sock in srv.sockets:
            host, port = sock.getsockname()[:2]
            return f"http://{host}:{port}"
    raise RuntimeError("the web server is not listening")


def _ready_server_class() -> type:
    import uvicorn

    class ReadyServer(uvicorn.Server):
        """uvicorn's server plus a callback once it listens (uvicorn has none)."""

        def __init__(self, config: Any, ready: Callable[[str], None] | None) -> None:
            super().__init__(config)
            self._ready = ready

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if self.started and self._ready is not None:
                self._ready(_listening_url(self))

    return ReadyServer


def _ready_server(config: Any, ready: Callable[[str], None] | None) -> Any:
    return _ready_server_class()(config, ready)


class WebServer:
    """The web server on a background thread, for supervisors and tests.

    ``start()`` returns once the socket listens; ``url`` is where; ``stop()`` shuts down
    gracefully (in-flight requests finish, the app's own client flushes and closes).
    """

    def __init__(
        self,
        settings: Settings,
        host: str | None = None,
        port: int | None = None,
        *,
        client: EventSink | None = None,
        query: QueryFn | None = None,
    ) -> None:
        import uvicorn

        self.app = create_app(settings, client=client, query=query)
        self._config = uvicorn.Config(
            self.app,
            host=host or settings.web_host,
            port=settings.web_port if port is None else port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        self._server = uvicorn.Server(self._config)
        # uvicorn installs signal handlers only on the main thread, so on ours the
        # supervisor keeps Ctrl-C and calls stop().
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening socket."""
        return _listening_url(self._server)

    def start(self, timeout: float = 30.0) -> WebServer:
        self._thread = threading.Thread(
            target=self._server.run, name="feedbackloop-web", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise FeedbackLoopError(
                    f"the web server did not start on {self._config.host}:{self._config.port}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def running(self) -> Iterator[WebServer]:
        self.start()
        try:
            yield self
        finally:
            self.stop()
