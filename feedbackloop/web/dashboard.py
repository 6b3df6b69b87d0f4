"""The dashboard's read API (``/api``) and its static page (``/dashboard/``).

Reads go through :func:`feedbackloop.sinks.run_query`, i.e. through the running sink
worker's read-only endpoint when it holds embedded chDB, else straight to ClickHouse with a
``readonly=1`` session. Every query is built here from validated identifiers (the contract's
``app_id`` / ``experiment`` pattern) and escaped literals; nothing a caller sends is pasted
into SQL unchecked.

Feedback is joined to its interaction by ``interaction_id`` instead of trusting the
variant copied onto the feedback row, so the numbers are the same whether the sink stored
enriched events (stream jobs running) or raw ones (``sink run --raw``). The unit of
satisfaction is the interaction: its latest thumbs vote (a user who changes their mind
counts once). The statistics come from :mod:`feedbackloop.analysis`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from feedbackloop.web.auth import ALL_APPS, Principal
from feedbackloop.web.state import ApiError, QueryFn, ReadPrincipal, error_responses, state_of

__all__ = ["DashboardQueries", "STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}$")
#: Time-series bucket widths to choose from, in seconds (aim: 20-60 points per chart).
_BUCKETS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
_SIGNALS = ("copy", "edit", "follow_up", "regenerate", "abandon", "dwell")
_CONTROL_NAMES = ("control", "a", "baseline", "champion")


def _ident(value: str, what: str) -> str:
    if not _IDENT.match(value):
        raise ApiError(422, "invalid_parameter", f"{what} {value!r} is not a valid identifier")
    return value


def _lit(value: str) -> str:
    """A ClickHouse string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bucket_for(span_s: float) -> int:
    for b in _BUCKETS:
        if span_s / b <= 60:
            return b
    return _BUCKETS[-1]


def _control_of(variants: Sequence[str]) -> str:
    for name in _CONTROL_NAMES:
        for v in variants:
            if v.lower() == name:
                return v
    return sorted(variants)[0]


def _stats() -> Any:
    try:
        import feedbackloop.analysis as analysis
    except ImportError as e:  # numpy / scipy missing
        from feedbackloop.errors import MissingDependency

        raise MissingDependency("numpy/scipy", "analysis") from e
    return analysis


def _interval(successes: int, n: int) -> dict[str, Any]:
    a = _stats()
    est = a.wilson_interval(a.BinaryStats(n=n, successes=successes))
    return {"n": n, "successes": successes, **a.to_jsonable(est)}


class DashboardQueries:
    """The dashboard's numbers, each from one or a few read-only queries.

    ``apps`` restricts every query to those app_ids (``None``: all apps).
    """

    def __init__(self, query: QueryFn) -> None:
        self._query = query

    def _rows(self, sql: str) -> list[dict[str, Any]]:
        res = self._query(sql)
        return [dict(zip(res.columns, row, strict=True)) for row in res.rows]

    @staticmethod
    def _app_filter(apps: Iterable[str] | None, column: str = "app_id") -> str:
        if apps is None:
            return ""
        names = ", ".join(_lit(a) for a in apps)
        return f" AND {column} IN ({names})"

    @staticmethod
    def _thumbs(app_id: str) -> str:
        # The latest vote per interaction.
        return (
            "SELECT interaction_id, argMax(thumbs, occurred_at) AS thumbs, "
            "max(occurred_at) AS voted_at FROM feedback FINAL "
            f"WHERE kind = 'thumbs' AND thumbs != 0{app_id} GROUP BY interaction_id"
        )

    # --- experiments ---------------------------------------------------------------------
    def experiments(self, apps: Iterable[str] | None) -> list[dict[str, Any]]:
        """Every experiment seen, most recently active first."""
        rows = self._rows(
            "SELECT app_id, experiment, arraySort(groupUniqArray(variant)) AS variants, "
            "count() AS interactions, uniqExact(session_id) AS sessions, "
            "toUnixTimestamp64Milli(min(occurred_at)) AS first_seen_ms, "
            "toUnixTimestamp64Milli(max(occurred_at)) AS last_seen_ms "
            "FROM interactions FINAL WHERE experiment != '' AND NOT shadow"
            f"{self._app_filter(apps)} GROUP BY app_id, experiment "
            "ORDER BY last_seen_ms DESC LIMIT 500"
        )
        for r in rows:
            r["variants"] = list(r["variants"])
        return rows

    def experiment(self, app_id: str, experiment: str) -> dict[str, Any] | None:
        """Per variant: exposure, satisfaction over time, decision, SRM, signals, outcomes."""
        a = _stats()
        app, exp = _lit(app_id), _lit(experiment)
        scope = f"app_id = {app} AND experiment = {exp} AND NOT shadow"
        exposure = self._rows(
            "SELECT variant, count() AS interactions, uniqExact(session_id) AS sessions, "
            "toUnixTimestamp64Milli(min(occurred_at)) AS first_ms, "
            "toUnixTimestamp64Milli(max(occurred_at)) AS last_ms "
            f"FROM interactions FINAL WHERE {scope} GROUP BY variant ORDER BY variant"
        )
        if not exposure:
            return None
        variants = [r["variant"] for r in exposure]
        first = min(int(r["first_ms"]) for r in exposure)
        last = max(int(r["last_ms"]) for r in exposure)
        bucket = _bucket_for((last - first) / 1000)
        in_exp = f"SELECT interaction_id, variant FROM interactions FINAL WHERE {scope}"
        votes = self._rows(
            "SELECT i.variant AS variant, "
            f"toUnixTimestamp(toStartOfInterval(f.voted_at, INTERVAL {bucket} SECOND)) AS t, "
            "countIf(f.thumbs = 1) AS up, count() AS n "
            f"FROM ({self._thumbs(f' AND app_id = {app}')}) AS f "
            f"INNER JOIN ({in_exp}) AS i ON f.interaction_id = i.interaction_id "
            "GROUP BY variant, t ORDER BY variant, t"
        )
        signals = self._rows(
            "SELECT i.variant AS variant, s.signal AS signal, "
            "uniqExact(s.interaction_id) AS interactions "
            f"FROM (SELECT interaction_id, signal FROM implicit FINAL WHERE app_id = {app}) AS s "
            f"INNER JOIN ({in_exp}) AS i ON s.interaction_id = i.interaction_id "
            "GROUP BY variant, signal"
        )
        # Outcomes often belong to a session rather than one interaction (a ticket resolved
        # later): the unit is the session, assigned to its variant by its interactions.
        outcomes = self._rows(
            "SELECT v.variant AS variant, o.outcome AS outcome, "
            "uniqExact(o.session_id) AS sessions "
            f"FROM (SELECT session_id, outcome FROM outcomes FINAL WHERE app_id = {app}) AS o "
            f"INNER JOIN (SELECT session_id, any(variant) AS variant FROM interactions FINAL "
            f"WHERE {scope} GROUP BY session_id) AS v ON o.session_id = v.session_id "
            "GROUP BY variant, outcome"
        )

        series: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        totals: dict[str, list[int]] = {v: [0, 0] for v in variants}
        for r in votes:
            v = r["variant"]
            if v not in totals:
                continue
            totals[v][0] += int(r["up"])
            totals[v][1] += int(r["n"])
            # Cumulative: the estimate an analyst would have read at that time, with its
            # interval narrowing as evidence accumulates.
            up, n = totals[v]
            series[v].append({"t_ms": int(r["t"]) * 1000, **_interval(up, n)})

        by_variant = {r["variant"]: r for r in exposure}
        summary = []
        for v in variants:
            up, n = totals[v]
            e = by_variant[v]
            sig = {s: 0 for s in _SIGNALS}
            for r in signals:
                if r["variant"] == v:
                    sig[r["signal"]] = int(r["interactions"])
            outs = {r["outcome"]: int(r["sessions"]) for r in outcomes if r["variant"] == v}
            summary.append(
                {
                    "variant": v,
                    "interactions": int(e["interactions"]),
                    "sessions": int(e["sessions"]),
                    "satisfaction": _interval(up, n),
                    "signal_rates": {
                        s: (c / int(e["interactions"]) if int(e["interactions"]) else None)
                        for s, c in sig.items()
                    },
                    "outcome_rates": {
                        o: (c / int(e["sessions"]) if int(e["sessions"]) else None)
                        for o, c in sorted(outs.items())
                    },
                }
            )

        control = _control_of(variants)
        # Assignment is per session: that is the unit whose split SRM checks (an equal split
        # is assumed; the configured weights live in the app, not in the data).
        srm = a.sample_ratio_mismatch([int(by_variant[v]["sessions"]) for v in variants])
        comparisons = []
        for v in variants:
            if v == control:
                continue
            cmp = a.compare_counts(tuple(totals[control]), tuple(totals[v]))
            decision = cmp.decision
            if srm.mismatch:
                # The session split overrides the feedback-count SRM inside compare_counts.
                decision = a.Decision(
                    a.Verdict.SAMPLE_RATIO_MISMATCH, "sample-ratio mismatch: do not trust "
                    "this result", "srm"
                )
            comparisons.append(
                {
                    "control": control,
                    "treatment": v,
                    "decision": a.to_jsonable(decision),
                    "difference": a.to_jsonable(cmp.difference),
                    "lift": a.to_jsonable(cmp.lift),
                    "p_value": a.to_jsonable(cmp.fixed_horizon.p_value),
                    "sequential": a.to_jsonable(cmp.sequential),
                    "prob_treatment_beats_control": a.to_jsonable(
                        cmp.bayesian.prob_treatment_beats_control
                    ),
                    "power": a.to_jsonable(cmp.power_status),
                    "text": cmp.to_text(),
                }
            )
        return {
            "app_id": app_id,
            "experiment": experiment,
            "control": control,
            "variants": variants,
            "bucket_s": bucket,
            "first_seen_ms": first,
            "last_seen_ms": last,
            "summary": summary,
            "series": series,
            "srm": a.to_jsonable(srm),
            "comparisons": comparisons,
        }

    # --- failures ------------------------------------------------------------------------
    def failure_slices(
        self, apps: Iterable[str] | None, experiment: str | None, min_votes: int = 5
    ) -> dict[str, Any]:
        """Thumbs-down rate per slice of the input (language, code, length, prompt, model),
        worst first, beside the overall rate."""
        exp = f" AND experiment = {_lit(experiment)}" if experiment else ""
        rows = self._rows(
            "SELECT tupleElement(p, 1) AS dimension, tupleElement(p, 2) AS value, "
            "countIf(thumbs = -1) AS down, count() AS n FROM ("
            "SELECT f.thumbs AS thumbs, i.input_language AS input_language, "
            "i.input_has_code AS input_has_code, i.input_length_bucket AS input_length_bucket, "
            "i.prompt_version AS prompt_version, i.model AS model "
            f"FROM ({self._thumbs(self._app_filter(apps))}) AS f INNER JOIN ("
            "SELECT interaction_id, input_language, input_has_code, input_length_bucket, "
            "prompt_version, model FROM interactions FINAL WHERE NOT shadow"
            f"{self._app_filter(apps)}{exp}) AS i ON f.interaction_id = i.interaction_id) "
            "ARRAY JOIN ["
            "tuple('language', input_language), "
            "tuple('code in input', if(input_has_code, 'yes', 'no')), "
            "tuple('input length', if(input_length_bucket = '', 'unknown', input_length_bucket)), "
            "tuple('prompt version', if(prompt_version = '', '(none)', prompt_version)), "
            "tuple('model', model)] AS p "
            "GROUP BY dimension, value"
        )
        overall_n = overall_down = 0
        for r in rows:
            if r["dimension"] == "model":  # every vote falls in exactly one model slice
                overall_n += int(r["n"])
                overall_down += int(r["down"])
        slices = [
            {"dimension": r["dimension"], "value": r["value"],
             "thumbs_down": _interval(int(r["down"]), int(r["n"]))}
            for r in rows
            if int(r["n"]) >= min_votes
        ]
        slices.sort(key=lambda s: -(s["thumbs_down"]["value"] or 0.0))
        return {"overall": _interval(overall_down, overall_n), "slices": slices}

    # --- alerts --------------------------------------------------------------------------
    def alerts(self, apps: Iterable[str] | None, hours: int) -> list[dict[str, Any]]:
        """Alerts of the last ``hours``, newest first."""
        return self._rows(
            "SELECT toString(alert_id) AS alert_id, alert_type, metric, dimension, "
            "detector_key, app_id, experiment, variant, prompt_version, baseline_rate, "
            "recent_rate, recent_n, statistic, threshold, message, "
            "toUnixTimestamp64Milli(detected_at) AS detected_ms "
            f"FROM alerts FINAL WHERE detected_at >= now64(3) - INTERVAL {int(hours)} HOUR"
            f"{self._app_filter(apps)} ORDER BY detected_ms DESC LIMIT 1000"
        )

    # --- prompt versions -----------------------------------------------------------------
    def prompt_versions(self, apps: Iterable[str] | None) -> list[dict[str, Any]]:
        """Per prompt version and model: traffic, first/last use, satisfaction."""
        rows = self._rows(
            "SELECT i.app_id AS app_id, i.prompt_version AS prompt_version, i.model AS model, "
            "count() AS interactions, "
            "toUnixTimestamp64Milli(min(i.occurred_at)) AS first_seen_ms, "
            "toUnixTimestamp64Milli(max(i.occurred_at)) AS last_seen_ms, "
            "countIf(f.thumbs = 1) AS up, countIf(f.thumbs != 0) AS votes "
            "FROM (SELECT interaction_id, app_id, prompt_version, model, occurred_at "
            f"FROM interactions FINAL WHERE NOT shadow{self._app_filter(apps)}) AS i "
            f"LEFT JOIN ({self._thumbs(self._app_filter(apps))}) AS f "
            "ON i.interaction_id = f.interaction_id "
            "GROUP BY app_id, prompt_version, model ORDER BY last_seen_ms DESC LIMIT 500"
        )
        return [
            {
                "app_id": r["app_id"],
                "prompt_version": r["prompt_version"] or "(none)",
                "model": r["model"],
                "interactions": int(r["interactions"]),
                "first_seen_ms": int(r["first_seen_ms"]),
                "last_seen_ms": int(r["last_seen_ms"]),
                "satisfaction": _interval(int(r["up"]), int(r["votes"])),
            }
            for r in rows
        ]


def _apps_for(principal: Principal, app_id: str | None) -> list[str] | None:
    """The app_ids a read may cover: the key's own app, or (operator key) any / the one asked."""
    if app_id is not None:
        _ident(app_id, "app_id")
        if not principal.may_read(app_id):
            raise ApiError(403, "forbidden_app_id", f"this key may not read app_id {app_id!r}")
        return [app_id]
    return None if principal.app_id == ALL_APPS else [principal.app_id]


_READ_ERRORS = error_responses(401, 403, 422, 429)


def router() -> APIRouter:
    """The read API (``/api``) and the dashboard page (``/dashboard/``)."""
    r = APIRouter()

    def queries(request: Request) -> DashboardQueries:
        return DashboardQueries(state_of(request).query)

    AppQ = Query(default=None, description="Restrict to one app_id.")

    @r.get("/api/experiments", tags=["dashboard"], responses=_READ_ERRORS,
           summary="Experiments seen, most recently active first")
    async def list_experiments(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
    ) -> list[dict[str, Any]]:
        apps = _apps_for(principal, app_id)
        return await run_in_threadpool(queries(request).experiments, apps)

    @r.get("/api/experiments/{app_id}/{experiment}", tags=["dashboard"],
           responses=error_responses(401, 403, 404, 422, 429),
           summary="One experiment: satisfaction over time, decision, SRM, signals, outcomes")
    async def get_experiment(
        request: Request, app_id: str, experiment: str, principal: ReadPrincipal
    ) -> dict[str, Any]:
        _apps_for(principal, app_id)
        _ident(experiment, "experiment")
        found = await run_in_threadpool(queries(request).experiment, app_id, experiment)
        if found is None:
            raise ApiError(404, "not_found", f"no interactions of experiment {experiment!r} "
                           f"in app {app_id!r}")
        return found

    @r.get("/api/failures", tags=["dashboard"], responses=_READ_ERRORS,
           summary="Thumbs-down rate per input slice, worst first")
    async def failures(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
        experiment: str | None = Query(default=None),
        min_votes: int = Query(default=5, ge=1, le=1_000_000),
    ) -> dict[str, Any]:
        apps = _apps_for(principal, app_id)
        if experiment is not None:
            _ident(experiment, "experiment")
        return await run_in_threadpool(
            queries(request).failure_slices, apps, experiment, min_votes
        )

    @r.get("/api/alerts", tags=["dashboard"], responses=_READ_ERRORS,
           summary="Alerts of the last hours, newest first")
    async def alerts(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
        hours: int = Query(default=168, ge=1, le=24 * 366),
    ) -> list[dict[str, Any]]:
        apps = _apps_for(principal, app_id)
        return await run_in_threadpool(queries(request).alerts, apps, hours)

    @r.get("/api/prompt-versions", tags=["dashboard"], responses=_READ_ERRORS,
           summary="Prompt versions and models: traffic and satisfaction")
    async def prompt_versions(
        request: Request,
        principal: ReadPrincipal,
        app_id: str | None = AppQ,
    ) -> list[dict[str, Any]]:
        apps = _apps_for(principal, app_id)
        return await run_in_threadpool(queries(request).prompt_versions, apps)

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
