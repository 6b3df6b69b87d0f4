"""The dashboard's read API (``/api``) and its static page (``/dashboard/``).

Reads go through :func:`feedbackloop.sinks.run_query`, i.e. through the running sink
worker's read-only endpoint when it holds embedded chDB, else straight to ClickHouse with a
``readonly=1`` session. Every query is built here from validated identifiers (the contract's
``app_id`` / ``experiment`` pattern) and escaped literals; nothing a caller sends is pasted
into SQL unchecked.

Feedback is joined to its interaction by ``interaction_id`` instead of trusting the
variant copied onto the feedback row, so the numbers are the same whether the sink stored
enriched events (stream jobs running) or raw ones (``sink run --raw``). Satisfaction is the
experiment report's (:mod:`feedbackloop.analysis.reads.queries`: the interaction's latest thumbs
or rating, so a user who changes their mind counts once). The statistics come from
:mod:`feedbackloop.analysis`.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

from cachetools import TTLCache, cached
from cachetools.keys import hashkey
from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from feedbackloop.config import Settings
from feedbackloop.sinks.tables import TABLES
from feedbackloop.web.auth import ALL_APPS, Principal
from feedbackloop.web.state import ApiError, QueryFn, ReadPrincipal, error_responses, state_of

__all__ = ["DashboardQueries", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
#: Time-series bucket widths to choose from, in seconds (aim: 20-60 points per chart).
_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
#: How many of the latest interactions the failure slices are computed over.
FAILURE_SAMPLE = 20_000
#: How many of the latest shadow pairs the dashboard's shadow report judges (the read path's
#: row limit; `feedbackloop shadow report` reads them all).
SHADOW_SAMPLE = 10_000
#: The alert fields the dashboard shows (checked against the table's declaration at import).
_ALERT_COLUMNS = TABLES["alerts"].select(
    "alert_id",
    "alert_type",
    "metric",
    "dimension",
    "detector_key",
    "app_id",
    "experiment",
    "variant",
    "prompt_version",
    "baseline_rate",
    "recent_rate",
    "recent_n",
    "statistic",
    "threshold",
    "message",
)


def _ident(value: str, what: str) -> str:
    if not _IDENT.match(value):
        raise ApiError(422, "invalid_parameter", f"{what} {value!r} is not a valid identifier")
    return value


def _bucket_for(span_s: float) -> int:
    for b in _BUCKETS:
        if span_s / b <= 60:
            return b
    return _BUCKETS[-1]


def _stats() -> Any:
    try:
        import feedbackloop.analysis.statistics as analysis
    except ImportError as e:  # numpy / scipy missing
        from feedbackloop.errors import MissingDependency

        raise MissingDependency("numpy/scipy", "analysis") from e
    return analysis


def _interval(stats: Any) -> dict[str, Any]:
    """``stats`` (a :class:`~.statistics.BinaryStats`) with its Wilson interval."""
    a = _stats()
    est = a.wilson_interval(stats)
    return {"n": stats.n, "successes": stats.successes, **a.to_jsonable(est)}


def _key_without_settings(settings: Settings, *args: Any) -> tuple[Any, ...]:
    return hashkey(*args)


class DashboardQueries:
    """The dashboard's numbers, each from one or a few read-only queries.

    ``app`` restricts a query to one app_id (``None``: all apps).

    Answers are reused for ``cache_s`` seconds, and a request that arrives while the same
    answer is being computed waits for it instead of querying again: with millions of
    interactions an experiment's answer takes seconds (docs/PERFORMANCE.md, "Queries"), and
    every open dashboard asks again every 15 s.
    """

    _CACHED = (
        "experiments",
        "experiment",
        "failure_slices",
        "alerts",
        "prompt_versions",
        "shadow_candidates",
        "shadow_report",
    )

    def __init__(self, query: QueryFn, cache_s: float = 0.0) -> None:
        self._query = query
        for name in self._CACHED:
            # failure_slices' first argument (the Settings) is the same for the whole app
            key = _key_without_settings if name == "failure_slices" else hashkey
            memo = cached(
                TTLCache(maxsize=256, ttl=cache_s), key=key, condition=threading.Condition()
            )
            setattr(self, name, memo(getattr(self, name)))

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        res = self._query(sql)
        return [dict(zip(res.columns, row, strict=True)) for row in res.rows]

    @staticmethod
    def _app_filter(app: str | None) -> str:
        if app is None:
            return ""
        from feedbackloop.analysis.reads.literals import quote

        return f" AND app_id = {quote(app)}"

    # --- experiments ---------------------------------------------------------------------
    def experiments(self, app: str | None) -> list[dict[str, Any]]:
        """Every experiment seen, most recently active first."""
        rows = self._rows(
            "SELECT app_id, experiment, arraySort(groupUniqArray(variant)) AS variants, "
            "count() AS interactions, uniqExact(session_id) AS sessions, "
            "toUnixTimestamp64Milli(min(occurred_at)) AS first_seen_ms, "
            "toUnixTimestamp64Milli(max(occurred_at)) AS last_seen_ms "
            "FROM interactions FINAL WHERE experiment != '' AND NOT shadow"
            f"{self._app_filter(app)} GROUP BY app_id, experiment "
            "ORDER BY last_seen_ms DESC LIMIT 500"
        )
        for r in rows:
            r["variants"] = list(r["variants"])
        return rows

    def experiment(self, app_id: str, experiment: str) -> dict[str, Any] | None:
        """The experiment report (verdict by the registered design, SRM, per-variant
        satisfaction, implicit-signal and outcome rates: :mod:`~feedbackloop.analysis.reports`)
        and cumulative satisfaction over time per variant."""
        _stats()
        from feedbackloop.analysis.reads import Scope, fetch_satisfaction_over_time
        from feedbackloop.analysis.reports.report import report_experiment

        scope = Scope(experiment=experiment, app_id=app_id)
        span = self._rows(
            "SELECT count() AS n, toUnixTimestamp64Milli(min(occurred_at)) AS first_ms, "
            "toUnixTimestamp64Milli(max(occurred_at)) AS last_ms FROM interactions FINAL "
            f"WHERE {scope.interaction_filter()}"
        )
        if not span or not int(span[0]["n"]):
            return None
        first, last = int(span[0]["first_ms"]), int(span[0]["last_ms"])
        # The registered design and the one decision function: the verdict shown here is the
        # one `ab report` prints for the same data.
        report = report_experiment(self._query, scope)
        bucket = _bucket_for((last - first) / 1000)
        over_time = fetch_satisfaction_over_time(self._query, scope, bucket)
        variants = [v.variant for v in report.variants]
        # Cumulative: the estimate one would have read at that time, its interval narrowing
        # as evidence accumulates.
        series = {
            v: [{"t_ms": b.start_s * 1000, **_interval(b.cumulative)} for b in over_time.get(v, [])]
            for v in variants
        }
        return {
            "app_id": app_id,
            "experiment": experiment,
            "control": report.control,
            "variants": variants,
            "bucket_s": bucket,
            "first_seen_ms": first,
            "last_seen_ms": last,
            "series": series,
            "report": report.to_dict(),
        }

    # --- failures ------------------------------------------------------------------------
    def failure_slices(
        self, settings: Settings, app: str | None, experiment: str | None, min_support: int
    ) -> dict[str, Any]:
        """Ranked failure slices (:func:`feedbackloop.analysis.failures.analyze_slice_counts`)
        of the latest :data:`FAILURE_SAMPLE` interactions."""
        _stats()
        from feedbackloop.analysis.failures.analyze import analyze_slice_counts
        from feedbackloop.analysis.failures.slice_counts import load_slice_counts
        from feedbackloop.analysis.reads.scope import Scope

        sel = Scope(app_id=app, experiment=experiment, limit=FAILURE_SAMPLE)
        found = analyze_slice_counts(load_slice_counts(settings, sel), min_support=min_support)
        out = found.to_dict()
        out["findings"] = out["findings"][:50]
        return out

    # --- alerts --------------------------------------------------------------------------
    def alerts(self, app: str | None, hours: int) -> list[dict[str, Any]]:
        """Alerts of the last ``hours``, newest first."""
        return self._rows(
            f"SELECT {_ALERT_COLUMNS}, toUnixTimestamp64Milli(detected_at) AS detected_ms "
            f"FROM alerts FINAL WHERE detected_at >= now64(3) - INTERVAL {int(hours)} HOUR"
            f"{self._app_filter(app)} ORDER BY detected_ms DESC LIMIT 1000"
        )

    # --- prompt versions -----------------------------------------------------------------
    def prompt_versions(self, app: str | None, experiment: str | None) -> dict[str, Any]:
        """Satisfaction per prompt version, each against the one before it, with daily
        buckets (:func:`feedbackloop.analysis.reports.versions.build_versions`)."""
        _stats()
        from feedbackloop.analysis.reads import Scope, fetch_version_totals, fetch_versions
        from feedbackloop.analysis.reports.versions import build_versions

        scope = Scope(experiment=experiment, app_id=app)
        report = build_versions(
            fetch_versions(self._query, scope, "day"),
            fetch_version_totals(self._query, scope),
            bucket="day",
            experiment=experiment,
        )
        out = report.to_dict()
        assert isinstance(out, dict)
        return out

    # --- shadow deployments ----------------------------------------------------------------
    def shadow_candidates(self, app: str | None) -> list[dict[str, Any]]:
        """Every shadow candidate, most answers first."""
        from dataclasses import asdict

        from feedbackloop.analysis.reads.shadow import fetch_shadow_candidates

        return [asdict(c) for c in fetch_shadow_candidates(self._query, app_id=app)]

    def shadow_report(self, app: str | None, candidate: str, against: str | None) -> Any:
        """The shadow report of one candidate over its latest :data:`SHADOW_SAMPLE` pairs
        (:func:`feedbackloop.analysis.reports.shadow.run_shadow_report`)."""
        _stats()
        from feedbackloop.analysis.reads.shadow import ShadowScope
        from feedbackloop.analysis.reports.shadow import run_shadow_report

        scope = ShadowScope(candidate=candidate, against=against, app_id=app, limit=SHADOW_SAMPLE)
        rep = run_shadow_report(self._query, scope)
        return {**rep.to_dict(), "text": rep.to_text()}


def _name(value: str, what: str) -> str:
    """A prompt version or model name as the contract allows it (1-200 characters)."""
    if not 1 <= len(value) <= 200:
        raise ApiError(422, "invalid_parameter", f"{what} must have 1 to 200 characters")
    return value


def _app_for(principal: Principal, app_id: str | None) -> str | None:
    """The app a read covers: the one asked for if the key may read it, else the key's own
    (``None``, every app, for an operator key)."""
    if app_id is not None:
        _ident(app_id, "app_id")
        if not principal.may_read(app_id):
            raise ApiError(403, "forbidden_app_id", f"this key may not read app_id {app_id!r}")
        return app_id
    return None if principal.app_id == ALL_APPS else principal.app_id


_READ_ERRORS = error_responses(401, 403, 422, 429)


def router() -> APIRouter:
    """The read API (``/api``) and the dashboard page (``/dashboard/``)."""
    r = APIRouter()

    def queries(request: Request) -> DashboardQueries:
        dashboard = state_of(request).dashboard
        assert isinstance(dashboard, DashboardQueries)
        return dashboard

    AppQ = Query(default=None, description="Restrict to one app_id.")

    @r.get(
        "/api/experiments",
        tags=["dashboard"],
        responses=_READ_ERRORS,
        summary="Experiments seen, most recently active first",
    )
    async def list_experiments(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
    ) -> list[dict[str, Any]]:
        app = _app_for(principal, app_id)
        return await run_in_threadpool(queries(request).experiments, app)

    @r.get(
        "/api/experiments/{app_id}/{experiment}",
        tags=["dashboard"],
        responses=error_responses(401, 403, 404, 422, 429),
        summary="One experiment: satisfaction over time, decision, SRM, signals, outcomes",
    )
    async def get_experiment(
        request: Request, app_id: str, experiment: str, principal: ReadPrincipal
    ) -> dict[str, Any]:
        _app_for(principal, app_id)
        _ident(experiment, "experiment")
        found = await run_in_threadpool(queries(request).experiment, app_id, experiment)
        if found is None:
            raise ApiError(
                404, "not_found", f"no interactions of experiment {experiment!r} in app {app_id!r}"
            )
        return found

    @r.get(
        "/api/failures",
        tags=["dashboard"],
        responses=_READ_ERRORS,
        summary="Failure slices: negative rate per slice and pair, significant first",
    )
    async def failures(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
        experiment: str | None = Query(default=None),
        min_support: int = Query(
            default=30,
            ge=1,
            le=1_000_000,
            description="Smallest slice (interactions) that is tested.",
        ),
    ) -> dict[str, Any]:
        app = _app_for(principal, app_id)
        if experiment is not None:
            _ident(experiment, "experiment")
        return await run_in_threadpool(
            queries(request).failure_slices,
            state_of(request).settings,
            app,
            experiment,
            min_support,
        )

    @r.get(
        "/api/alerts",
        tags=["dashboard"],
        responses=_READ_ERRORS,
        summary="Alerts of the last hours, newest first",
    )
    async def alerts(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
        hours: int = Query(default=168, ge=1, le=24 * 366),
    ) -> list[dict[str, Any]]:
        app = _app_for(principal, app_id)
        return await run_in_threadpool(queries(request).alerts, app, hours)

    @r.get(
        "/api/prompt-versions",
        tags=["dashboard"],
        responses=_READ_ERRORS,
        summary="Satisfaction per prompt version, each against the previous one",
    )
    async def prompt_versions(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
        experiment: str | None = Query(default=None),
    ) -> dict[str, Any]:
        app = _app_for(principal, app_id)
        if experiment is not None:
            _ident(experiment, "experiment")
        return await run_in_threadpool(queries(request).prompt_versions, app, experiment)

    @r.get(
        "/api/shadow",
        tags=["dashboard"],
        responses=_READ_ERRORS,
        summary="Shadow candidates, most answers first",
    )
    async def shadow_candidates(
        request: Request, principal: ReadPrincipal, app_id: str | None = AppQ
    ) -> list[dict[str, Any]]:
        app = _app_for(principal, app_id)
        return await run_in_threadpool(queries(request).shadow_candidates, app)

    @r.get(
        "/api/shadow/report",
        tags=["dashboard"],
        responses=_READ_ERRORS,
        summary="Shadow report: is the candidate closer than live to what users wanted?",
    )
    async def shadow_report(
        request: Request,
        principal: ReadPrincipal,
        candidate: str = Query(description="The candidate's prompt_version (or model)."),
        against: str | None = Query(default=None, description="Only this live version."),
        app_id: str | None = AppQ,
    ) -> Any:
        app = _app_for(principal, app_id)
        _name(candidate, "candidate")
        if against is not None:
            _name(against, "against")
        return await run_in_threadpool(queries(request).shadow_report, app, candidate, against)

    # The page itself is static and holds no data, so it needs no key; its scripts call
    # /api with the key (or, in local mode, without one).
    @r.get("/", include_in_schema=False)
    async def root() -> Response:
        return RedirectResponse("/dashboard/")

    @r.get("/dashboard", include_in_schema=False)
    async def dashboard_no_slash() -> Response:
        return RedirectResponse("/dashboard/")

    @r.get("/dashboard/", include_in_schema=False)
    async def dashboard_page() -> Response:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    return r
