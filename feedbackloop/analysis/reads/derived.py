"""The report queries answered from the per-session report rows (feedbackloop.sinks.report_rows).

Each function returns the rows the exact query (:mod:`.queries`) would return, in the same
shape, so one piece of code turns either into statistics; or ``None`` when the report rows
cannot answer the scope exactly, and the caller re-joins the events instead:

* a scope with ``since`` / ``until`` / ``prompt_version`` / ``model`` (a session row cannot
  be split by time or by a column of its interactions);
* a database without the report rows (its migration not applied);
* a scope without both app and experiment that holds a *split* session (one whose events
  straddle apps or experiments; the rows count it once per (app, experiment));
* events inserted after the last compaction (the sink worker's compactor runs every
  second): the rows do not hold them yet, so the answer would not be the exact one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from feedbackloop.analysis.reads.literals import quote
from feedbackloop.analysis.reads.scope import Scope

__all__ = [
    "experiment_rows",
    "impact_rows",
    "satisfaction_rows",
    "version_rows",
    "version_total_rows",
]

Rows = Callable[[str], list[dict[str, Any]]]


def _as_rows(runner: Any) -> Rows:
    """Rows as dicts from a :data:`~feedbackloop.analysis.reads.queries.Runner`."""

    def rows(sql: str) -> list[dict[str, Any]]:
        res = runner(sql)
        return [dict(zip(res.columns, r, strict=True)) for r in res.rows]

    return rows


def _where(rows: Rows, scope: Scope) -> str | None:
    """The condition on the report rows' keys for ``scope``; ``None`` for the exact path."""
    if any(v is not None for v in (scope.since, scope.until, scope.prompt_version, scope.model)):
        return None
    exists = rows("EXISTS TABLE report_variant_totals")
    if not exists or not int(next(iter(exists[0].values()))):
        return None
    from feedbackloop.sinks.report_rows import changed_rows_sql

    # Rows inserted after the last compaction are not in the report rows yet: re-join.
    if int(rows(changed_rows_sql().replace("{db}.", ""))[0]["changed"]):
        return None
    parts = ["1"]
    if scope.experiment is not None:
        parts.append(f"experiment = {quote(scope.experiment)}")
    if scope.app_id is not None:
        parts.append(f"app_id = {quote(scope.app_id)}")
    return " AND ".join(parts)


def _split(scope: Scope, totals: list[dict[str, Any]]) -> bool:
    """Whether a split session makes the rows differ from the exact path for ``scope``."""
    whole = scope.experiment is not None and scope.app_id is not None
    return not whole and any(int(r["split"] or 0) for r in totals)


def _current(table: str, where: str, group: tuple[str, ...], having: str) -> str:
    from feedbackloop.sinks.report_rows import current_sql

    return current_sql(table, where, group, having)


def _quantiles(table: str, where: str, group: tuple[str, ...], quantiles: Sequence[float]) -> str:
    """``quantilesExactInclusive`` from a value -> count table: the same interpolation
    (ClickHouse's QuantileExactInclusive: h = q (N - 1) + 1, x[⌊h⌋] + (h - ⌊h⌋) (x[⌊h⌋+1] -
    x[⌊h⌋]) over the sorted values), computed on cumulative counts instead of N values."""
    levels = ", ".join(repr(float(q)) for q in quantiles)
    at = "v[arrayFirstIndex(x -> x >= {k}, c)]"
    xk, xk1 = at.format(k="k"), at.format(k="k + 1")
    pick = (
        f"arrayMap((h, k) -> if(k >= total, v[-1], if(k < 1, v[1], "
        f"{xk} + (h - k) * ({xk1} - {xk}))), hs, arrayMap(h -> toInt64(floor(h)), hs))"
    )
    names = ", ".join(group)
    inner = _current(table, where, (*group, "value"), "n != 0")
    return f"""SELECT {names},
       if(total = 0, arrayMap(h -> nan, hs), {pick}) AS q FROM (
    SELECT {names}, arraySort(groupArray((value, n))) AS vc,
           arrayMap(x -> x.1, vc) AS v, arrayCumSum(arrayMap(x -> x.2, vc)) AS c,
           c[-1] AS total, arrayMap(q -> q * toFloat64(total - 1) + 1, [{levels}]) AS hs
    FROM ({inner}) GROUP BY {names})"""


def experiment_rows(
    runner: Any, scope: Scope, quantiles: Sequence[float]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]] | None:
    """``(metrics by variant, assignment by variant, outcomes)`` as :func:`experiment_sql`'s
    three statements return them."""
    rows = _as_rows(runner)
    where = _where(rows, scope)
    if where is None:
        return None
    totals = rows(_current("report_variant_totals", where, ("variant",), "sessions != 0"))
    if _split(scope, totals):
        return None
    outcomes = rows(
        _current("report_variant_outcomes", where, ("variant", "outcome"), "sessions_with != 0")
    )
    latency = {
        r["variant"]: r["q"]
        for r in rows(_quantiles("report_variant_latency", where, ("variant",), quantiles))
    }
    cross = sum(int(r["cross_variant"]) for r in totals)
    metrics: dict[str, dict[str, Any]] = {}
    assignment: dict[str, dict[str, Any]] = {}
    for r in totals:
        v = r["variant"]
        metrics[v] = {
            **r,
            "interactions_total": r["interactions"],
            "rated_total": r["satisfaction__d"],
            "positive_total": r["satisfaction__y"],
        }
        assignment[v] = {
            "sessions": r["sessions"],
            "interactions": r["interactions"],
            "latency_q": latency.get(v) or [float("nan")] * len(quantiles),
            "cost_total": r["cost_total"],
            "cross_variant": cross,
        }
    outcome_rows = []
    for r in outcomes:
        base = {"variant": r["variant"], "outcome": r["outcome"]}
        if int(r["iw"]):
            outcome_rows.append(
                {**base, "level": "interaction", "y": r["iw"], "yy": r["iw_sq"], "yd": r["iw_n"]}
            )
        if int(r["session_level"]):
            n = r["session_level"]
            outcome_rows.append({**base, "level": "session", "y": n, "yy": n, "yd": n})
    return metrics, assignment, outcome_rows


def impact_rows(
    runner: Any, scope: Scope, quantiles: Sequence[float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """``(per_outcome, headline)`` as :func:`impact_sql` returns them with every timed
    outcome making up a session's time."""
    rows = _as_rows(runner)
    where = _where(rows, scope)
    if where is None:
        return None
    totals = rows(_current("report_variant_totals", where, ("variant",), "sessions != 0"))
    if _split(scope, totals):
        return None
    outcomes = rows(
        _current("report_variant_outcomes", where, ("variant", "outcome"), "events != 0")
    )
    times = {
        (r["variant"], r["outcome"]): r["q"]
        for r in rows(
            _quantiles("report_variant_time_to_outcome", where, ("variant", "outcome"), quantiles)
        )
    }
    per_outcome = [
        {
            "variant": r["variant"],
            "outcome": r["outcome"],
            "events": r["events"],
            "interactions_with": r["iw"],
            "sessions_with": r["sessions_with"],
            "value_sum": r["value_sum"],
            "t_n": r["t_n"],
            "t_sum": r["t_sum"],
            "t_sq": r["t_sq"],
            "t_q": times.get((r["variant"], r["outcome"])) or [float("nan")] * len(quantiles),
        }
        for r in outcomes
    ]
    headline = [
        {
            "variant": r["variant"],
            "sessions": r["sessions"],
            "interactions": r["interactions"],
            "code_n": r["code_n"],
            "code_ok": r["code_ok"],
            "opened": r["opened"],
            "ticket_n": r["ticket_n"],
            "ticket_ok": r["ticket_ok"],
            "st_n": r["st_n"],
            "st_sum": r["st_sum"],
            "st_sq": r["st_sq"],
        }
        for r in totals
    ]
    return per_outcome, headline


def satisfaction_rows(
    runner: Any, scope: Scope, bucket_seconds: int
) -> list[dict[str, Any]] | None:
    """``satisfaction_over_time_sql``'s rows: (variant, t, rated, positive)."""
    rows = _as_rows(runner)
    where = _where(rows, scope)
    if where is None:
        return None
    totals = rows(_current("report_variant_totals", where, ("variant",), "sessions != 0"))
    if _split(scope, totals):
        return None
    t = f"toUnixTimestamp(toStartOfInterval(t, INTERVAL {int(bucket_seconds)} SECOND)) AS t"
    return rows(_current("report_variant_seconds", where, ("variant", t), "rated != 0"))


def version_total_rows(runner: Any, scope: Scope) -> list[dict[str, Any]] | None:
    """``version_totals_sql``'s rows, oldest version first."""
    rows = _as_rows(runner)
    where = _where(rows, scope)
    if where is None:
        return None
    current = _current("report_version_totals", where, ("prompt_version",), "sessions != 0")
    totals = rows(
        f"SELECT *, toString(t0) AS first_seen, toString(t1) AS last_seen FROM ({current})"
    )
    if _split(scope, totals):
        return None
    return sorted(totals, key=lambda r: (str(r["first_seen"]), str(r["prompt_version"])))


def version_rows(runner: Any, scope: Scope, bucket: str) -> list[dict[str, Any]] | None:
    """``versions_sql``'s rows: per prompt version and day (or week)."""
    rows = _as_rows(runner)
    totals = version_total_rows(runner, scope)
    if totals is None:
        return None
    where = _where(rows, scope)
    assert where is not None
    first = {r["prompt_version"]: r["first_seen"] for r in totals}
    buckets = rows(
        _current(
            "report_version_buckets",
            f"{where} AND kind = {quote(bucket)}",
            ("prompt_version", "toString(start) AS bucket"),
            "sessions != 0",
        )
    )
    out = [{**r, "first_seen": first[r["prompt_version"]]} for r in buckets]
    return sorted(out, key=lambda r: (r["first_seen"], r["prompt_version"], r["bucket"]))
