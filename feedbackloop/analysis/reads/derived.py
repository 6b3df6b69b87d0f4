"""The report queries answered from the per-session report rows (feedbackloop.sinks.report_rows).

Each function returns the rows the exact query (:mod:`.queries`) would return, in the same
shape, so one piece of code turns either into statistics; or ``None`` when the report rows
cannot answer the scope exactly, and the caller re-joins the events instead:

* a scope with ``since`` / ``until`` / ``prompt_version`` / ``model`` (a session row cannot
  be split by time or by a column of its interactions);
* a database without the report rows (its migration not applied);
* a scope without both app and experiment that holds a *split* session (one whose events
  straddle apps or experiments; the rows count it once per (app, experiment));
* more than :data:`MAX_TOUCHED` sessions touched since the last compaction (the compactor
  is behind or stopped: see below);
* the totals not agreeing with the state rows for :data:`SETTLE_S` (see the end).

Events keep arriving after the last compaction (the sink worker's compactor runs every
second or so). A read then splits the sessions in two: those *touched* since the
watermark (less its overlap: :func:`~feedbackloop.sinks.report_rows.touched_sql`) are
answered by the exact statement restricted to them
(:func:`~feedbackloop.sinks.report_rows.restricted_sql`: their events only, deduplicated
as ``FINAL`` does), every other session by the totals less the touched sessions' stored
rows. Every statement sums over sessions, so the two shares add up to the exact answer;
quantiles are taken from the value counts of both shares together. The cost grows with
the sessions touched, not with everything stored.

"The totals less the touched sessions' stored rows" holds only while the totals agree with
the state rows: a round's ``INSERT`` commits the state table's part and each view's part
one after the other, and a statement that reads both in between is off by that round's
change. Each statement that reads both therefore runs between two readings of the tables'
inserts (:func:`~feedbackloop.sinks.report_rows.inserts_sql`) that are equal and that the
compactor recorded as agreeing (:func:`~feedbackloop.sinks.report_rows.checkpoint`, after
each of its inserts has returned); otherwise it waits for the next checkpoint and runs
again (:class:`_Steady`).
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, ParamSpec, TypeVar

from feedbackloop.analysis.reads.literals import quote
from feedbackloop.analysis.reads.scope import Scope

__all__ = [
    "MAX_TOUCHED",
    "experiment_rows",
    "impact_rows",
    "satisfaction_rows",
    "version_rows",
    "version_total_rows",
]

log = logging.getLogger(__name__)

Rows = Callable[[str], list[dict[str, Any]]]
_P = ParamSpec("_P")
_R = TypeVar("_R")

#: Sessions touched since the last compaction that a read recomputes itself; beyond that
#: (the compactor stopped or far behind) it re-joins everything. Their ids travel in the
#: statement's text, which ClickHouse parses with a 256 KiB limit (``max_query_size``).
MAX_TOUCHED = 4_000
_MAX_LITERAL = 200_000


def _as_rows(runner: Any) -> Rows:
    """Rows as dicts from a :data:`~feedbackloop.analysis.reads.queries.Runner`."""

    def rows(sql: str) -> list[dict[str, Any]]:
        res = runner(sql)
        return [dict(zip(res.columns, r, strict=True)) for r in res.rows]

    rows.concurrent = bool(getattr(runner, "concurrent", False))  # type: ignore[attr-defined]
    return rows


#: Threads that run a read's independent statements side by side (the touched sessions'
#: exact statements, the totals' statements) while the read's own thread goes on, for a
#: runner that may be called from several threads at once (``runner.concurrent``), and
#: shared by every read of the process. Each statement is mostly planning, one core's
#: work: side by side a read takes its longest chain instead of the sum, as far as the
#: cores go (measured: 2, 4 and 8 lanes alike on 2 cores, docs/PERFORMANCE.md).
READ_LANES = 4
_lanes: tuple[int, ThreadPoolExecutor] | None = None
_lanes_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """The lanes of this process (a child forked after reads ran gets its own: the
    parent's threads do not exist there)."""
    global _lanes
    with _lanes_lock:
        if _lanes is None or _lanes[0] != os.getpid():
            pool = ThreadPoolExecutor(max_workers=READ_LANES, thread_name_prefix="report-read")
            _lanes = (os.getpid(), pool)
        return _lanes[1]


def _later(rows: Rows, fn: Callable[..., _R], *args: Any) -> Future[_R]:
    """``fn(*args)`` on a lane if ``rows`` may run concurrently, else at once."""
    if getattr(rows, "concurrent", False):
        return _pool().submit(fn, *args)
    done: Future[_R] = Future()
    try:
        done.set_result(fn(*args))
    except Exception as e:  # raised where the result is asked for, as from a lane
        done.set_exception(e)
    return done


#: How long a read waits for the totals to agree with the state rows (a round between its
#: insert and its checkpoint: milliseconds, or a sink flush on embedded chDB) before it
#: re-joins the events instead, and how often it looks meanwhile.
SETTLE_S = 2.0
_SETTLE_PAUSE_S = 0.02
#: Times a statement runs again because a round committed while it ran.
STEADY_ATTEMPTS = 5


class _Unsettled(Exception):
    """The totals did not agree with the state rows within :data:`SETTLE_S`."""


def _settle(rows: Rows) -> tuple[str, str]:
    """``(since, inserts)`` at a moment the totals agree with the state rows (a checkpoint
    recorded the tables' inserts as they are now); raises :class:`_Unsettled`."""
    from feedbackloop.sinks.report_rows import settled_sql, time_literal

    deadline = time.monotonic() + SETTLE_S
    while True:
        r = rows(settled_sql().replace("{db}.", ""))[0]
        if int(r["settled"]):
            return time_literal(str(r["since"])), str(r["inserts"])
        if time.monotonic() > deadline:
            raise _Unsettled
        time.sleep(_SETTLE_PAUSE_S)


def _read_by(sql: str, inserts: str) -> set[str]:
    """The entries of ``inserts`` (``table:partition:block,…``) of the tables ``sql`` reads."""
    entries = [e for e in inserts.split(",") if e]
    return {e for e in entries if re.search(rf"\b{re.escape(e.split(':', 1)[0])}\b", sql)}


class _Steady:
    """Runs statements that read the totals beside the state rows: each between two readings
    of the tables' inserts that are equal for the tables it reads, the first one a
    checkpoint's (``inserts``). A round that commits into those tables meanwhile makes the
    statement run again once the next checkpoint is there (a commit into the other state
    table and its views' tables changes nothing this statement read)."""

    def __init__(self, rows: Rows, inserts: str) -> None:
        #: The latest checkpoint's inserts: where the read's next statement starts from.
        self.rows, self.inserts = rows, inserts

    def __call__(self, sql: str) -> list[dict[str, Any]]:
        from feedbackloop.sinks.report_rows import inserts_sql

        # Statements of one read may run side by side (lanes): each compares with the
        # reading it started from, whatever another one found meanwhile.
        before = self.inserts
        for _ in range(STEADY_ATTEMPTS):
            out = self.rows(sql)
            now = str(self.rows(f"SELECT {inserts_sql()} AS inserts")[0]["inserts"])
            if _read_by(sql, now) == _read_by(sql, before):
                return out
            before = self.inserts = _settle(self.rows)[1]
        raise _Unsettled


def _exact_when_unsettled(read: Callable[_P, _R | None]) -> Callable[_P, _R | None]:
    """``read`` returning ``None`` (the exact path) when the totals never agreed long
    enough with the state rows."""

    @functools.wraps(read)
    def wrapped(*args: _P.args, **kwargs: _P.kwargs) -> _R | None:
        try:
            return read(*args, **kwargs)
        except _Unsettled:
            return None

    return wrapped


@dataclass(frozen=True)
class _Plan:
    """How a read answers a scope: ``where`` on the totals' keys, the sessions touched since
    the last compaction (a tuple literal; ``None`` when there are none: events that touch no
    session yet, such as orphaned feedback, change no answer), the time they were read
    from (the watermark less the overlap: a DateTime64 literal), and the runner of the
    statements that read the totals (:class:`_Steady`)."""

    where: str
    touched: str | None
    since: str
    steady: _Steady


def _plan(rows: Rows, scope: Scope) -> _Plan | None:
    """The plan for ``scope``; ``None`` for the exact path."""
    from feedbackloop.sinks.report_rows import CHECKPOINTS_TABLE, touched_sql

    if any(v is not None for v in (scope.since, scope.until, scope.prompt_version, scope.model)):
        return None
    exists = rows(f"EXISTS TABLE {CHECKPOINTS_TABLE}")
    if not exists or not int(next(iter(exists[0].values()))):
        return None  # the report rows' migrations are not applied
    parts = ["1"]
    if scope.experiment is not None:
        parts.append(f"experiment = {quote(scope.experiment)}")
    if scope.app_id is not None:
        parts.append(f"app_id = {quote(scope.app_id)}")
    where = " AND ".join(parts)
    # The time is read once, so every later statement of this read splits the sessions the
    # same way and finds their events in the same places, whatever arrives meanwhile.
    since, inserts = _settle(rows)
    touched = rows(
        f"SELECT groupArray(session_id) AS ids FROM ("
        f"{touched_sql(since).replace('{db}.', '')} LIMIT {MAX_TOUCHED + 1})"
    )[0]["ids"]
    # A tuple, not an array: ``x IN (…)`` is ClickHouse's oldest form of a constant set.
    literal = "(" + ", ".join(quote(str(s)) for s in touched) + ")"
    if len(touched) > MAX_TOUCHED or len(literal) > _MAX_LITERAL:
        return None
    return _Plan(where, literal if touched else None, since, _Steady(rows, inserts))


def _split(scope: Scope, totals: list[dict[str, Any]]) -> bool:
    """Whether a split session makes the rows differ from the exact path for ``scope``
    (``totals``: the untouched sessions' rows; the touched ones are read exactly)."""
    whole = scope.experiment is not None and scope.app_id is not None
    return not whole and any(int(r["split"] or 0) for r in totals)


def _current(plan: _Plan, table: str, group: tuple[str, ...], having: str) -> str:
    """The totals of the sessions not touched since the last compaction."""
    from feedbackloop.sinks.report_rows import current_sql

    return current_sql(table, plan.where, group, having, cancel=plan.touched)


def _touched(rows: Rows, plan: _Plan, sql: str) -> list[dict[str, Any]]:
    """The rows of the exact statement ``sql`` for the touched sessions only (run by
    :func:`_start` when some are; :func:`_fresh` answers none otherwise). Their events are
    materialized once per statement (an experimental ClickHouse feature); should the engine
    fail on that (a ``LOGICAL_ERROR``: a bug of the engine, never of the data), the
    statement runs again with them inlined, which answers the same."""
    from feedbackloop.sinks.report_rows import restricted_sql

    assert plan.touched is not None
    try:
        return rows(restricted_sql(sql, plan.touched, plan.since).replace("{db}.", ""))
    except Exception as e:
        if "LOGICAL_ERROR" not in str(e):
            raise
        log.warning("the restricted statement failed materialized, run inlined: %s", e)
    inlined = restricted_sql(sql, plan.touched, plan.since, materialized=False)
    return rows(inlined.replace("{db}.", ""))


def _merge(
    parts: Iterable[list[dict[str, Any]]],
    keys: tuple[str, ...],
    sums: dict[str, str],
    keep: str,
    extremes: dict[str, Callable[..., Any]] | None = None,
) -> list[dict[str, Any]]:
    """Rows with the same ``keys`` added up: ``sums`` maps a column of the result to the
    column of each part it adds (``{result: part}``; a part may lack it), ``extremes`` are
    combined by their function (min, max). Rows whose ``keep`` column sums to 0 are left
    out, as the statements' ``HAVING`` / inner joins leave them out. Sorted by ``keys``."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for part in parts:
        for r in part:
            k = tuple(r[c] for c in keys)
            acc = out.setdefault(k, dict(zip(keys, k, strict=True)))
            for name, col in sums.items():
                v = r.get(col)
                if v is not None:
                    acc[name] = acc.get(name, 0) + v
            for name, fn in (extremes or {}).items():
                if r.get(name) is not None:
                    acc[name] = r[name] if name not in acc else fn(acc[name], r[name])
    merged = [r for r in out.values() if r.get(keep, 0)]
    for r in merged:
        for name in sums:
            r.setdefault(name, 0)
    return sorted(merged, key=lambda r: tuple(r[k] for k in keys))


#: Attempts at reading consistent bucket and value counts (a compaction committing between
#: the two statements adds sessions to the second only) before the exact path is taken.
QUANTILE_ATTEMPTS = 3


def _quantiles(
    rows: Rows,
    plan: _Plan,
    table: str,
    group: tuple[str, ...],
    quantiles: Sequence[float],
    fresh: Callable[[], list[dict[str, Any]]],
) -> dict[tuple[Any, ...], list[float]] | None:
    """``quantilesExactInclusive`` per ``group`` from the value -> count ``table``: the same
    interpolation (ClickHouse's QuantileExactInclusive: h = q (N - 1) + 1, k = ⌊h⌋,
    x[k] + (h - k) (x[k+1] - x[k]) over the sorted values). The ranks are first located
    in the table's buckets (``<table>_buckets``: counts per 0.1 % of value), then only
    those buckets' values are read: a few thousand rows, whatever the number of distinct
    values. ``fresh()``: the touched sessions' ``(group…, value, n, bucket)`` rows, counted
    in with the totals' (asked for once the buckets are read: they may still be running).
    ``None`` when the two reads never agreed."""
    for _ in range(QUANTILE_ATTEMPTS):
        found = _quantiles_once(rows, plan, table, group, quantiles, fresh)
        if found is not None:
            return found
    return None


def _exact_float(x: float) -> str:
    """``x`` as SQL that is exactly ``x`` (a decimal literal may be parsed 1 ulp off)."""
    return f"reinterpretAsFloat64(toUInt64({struct.unpack('<Q', struct.pack('<d', x))[0]}))"


def _quantiles_once(
    rows: Rows,
    plan: _Plan,
    table: str,
    group: tuple[str, ...],
    quantiles: Sequence[float],
    touched: Callable[[], list[dict[str, Any]]],
) -> dict[tuple[Any, ...], list[float]] | None:
    from feedbackloop.sinks.report_rows import bucket_sql

    buckets: dict[tuple[Any, ...], dict[int, list[Any]]] = {}
    coarse = plan.steady(_current(plan, f"{table}_buckets", (*group, "bucket"), "1"))
    fresh = touched()
    for r in coarse + [{**f, "lo": f["value"], "hi": f["value"]} for f in fresh]:
        b = buckets.setdefault(tuple(r[c] for c in group), {}).setdefault(
            int(r["bucket"]), [0, r["lo"], r["hi"]]
        )
        b[0] += int(r["n"])
        b[1], b[2] = min(b[1], r["lo"]), max(b[2], r["hi"])
    # Per group: the ranks each quantile needs, and the buckets that hold them as
    # (values before the bucket, values in it, least and greatest value).
    wanted: dict[tuple[Any, ...], list[tuple[float, int, int]]] = {}
    needed: dict[tuple[tuple[Any, ...], int], tuple[int, int, float, float]] = {}
    for key, by_bucket in buckets.items():
        order = sorted((k, v) for k, v in by_bucket.items() if v[0] > 0)
        total = sum(v[0] for _, v in order)
        if not total:
            continue
        starts, seen = [], 0
        for _, v in order:
            starts.append(seen)
            seen += v[0]
        wanted[key] = []
        for q in quantiles:
            h = float(q) * (total - 1) + 1
            k = int(h)
            ranks = (total, total) if k >= total else (k, k + 1)
            wanted[key].append((h, *ranks))
            for rank in ranks:
                i = bisect.bisect_right(starts, rank - 1) - 1
                bucket, (n, lo, hi) = order[i][0], order[i][1]
                needed[(key, bucket)] = (starts[i], n, lo, hi)
    if not wanted:
        return {}
    ranges = " OR ".join(
        "("
        + " AND ".join(f"{c} = {quote(v)}" for c, v in zip(group, key, strict=True))
        + f" AND value >= {_exact_float(lo)} AND value <= {_exact_float(hi)})"
        for (key, _), (_, _, lo, hi) in needed.items()
    )
    in_range = replace(plan, where=f"{plan.where} AND ({ranges})")
    counts: dict[tuple[tuple[Any, ...], int], dict[float, int]] = {at: {} for at in needed}
    found = plan.steady(
        _current(in_range, table, (*group, "value", f"{bucket_sql('value')} AS bucket"), "n != 0")
    )
    for r in found + fresh:
        at = (tuple(r[c] for c in group), int(r["bucket"]))
        if at in counts:
            counts[at][float(r["value"])] = counts[at].get(float(r["value"]), 0) + int(r["n"])
    if any(sum(counts[at].values()) != n for at, (_, n, _, _) in needed.items()):
        return None  # a compaction committed between the two statements

    def value_at(key: tuple[Any, ...], rank: int) -> float:
        """The ``rank``-th smallest value (1-based) of ``key``'s values."""
        at = next(a for a, (s, n, _, _) in needed.items() if a[0] == key and s < rank <= s + n)
        seen = needed[at][0]
        for v in sorted(counts[at]):
            seen += counts[at][v]
            if rank <= seen:
                return v
        raise AssertionError("unreachable: the bucket's counts add up to its total")

    out: dict[tuple[Any, ...], list[float]] = {}
    for key, levels in wanted.items():
        out[key] = []
        for h, k, k1 in levels:
            x, x1 = value_at(key, k), value_at(key, k1)
            out[key].append(x if k == k1 else x + (h - k) * (x1 - x))
    return out


def _start(
    runner: Any, scope: Scope, touched: Callable[[], dict[str, str]]
) -> tuple[Rows, _Plan, dict[str, Future[list[dict[str, Any]]]]] | None:
    """How a read starts: its plan, and the touched sessions' statements (``touched()``:
    name -> exact statement) already running on the lanes; ``None`` for the exact path."""
    rows = _as_rows(runner)
    plan = _plan(rows, scope)
    if plan is None:
        return None
    statements = touched() if plan.touched is not None else {}
    return rows, plan, {k: _later(rows, _touched, rows, plan, q) for k, q in statements.items()}


def _fresh(started: dict[str, Future[list[dict[str, Any]]]], name: str) -> list[dict[str, Any]]:
    """The touched sessions' rows of statement ``name`` (none when no session is touched)."""
    return started[name].result() if name in started else []


def _variant_totals(rows: Rows, plan: _Plan, scope: Scope) -> list[dict[str, Any]] | None:
    """The untouched sessions' totals per variant; ``None`` for the exact path."""
    totals = plan.steady(_current(plan, "report_variant_totals", ("variant",), "sessions != 0"))
    return None if _split(scope, totals) else totals


def _latency_values_sql(scope: Scope) -> str:
    from feedbackloop.analysis.reads.queries import _units_cte
    from feedbackloop.sinks.report_rows import bucket_sql

    return f"""WITH {_units_cte(scope)}
SELECT variant, assumeNotNull(latency_ms) AS value, count() AS n, {bucket_sql("value")} AS bucket
FROM units WHERE latency_ms IS NOT NULL GROUP BY variant, value"""


def _time_values_sql(scope: Scope) -> str:
    from feedbackloop.analysis.reads.queries import _attributed_cte, _units_cte
    from feedbackloop.sinks.report_rows import bucket_sql

    return f"""WITH {_units_cte(scope)},
{_attributed_cte(scope)}
SELECT variant, outcome, assumeNotNull(ttm) AS value, count() AS n, {bucket_sql("value")} AS bucket
FROM attributed WHERE ttm IS NOT NULL GROUP BY variant, outcome, value"""


def _per_variant(
    runner: Any,
    scope: Scope,
    touched: Callable[[], dict[str, str]],
    having: str,
    values: tuple[str, tuple[str, ...], str],
    quantiles: Sequence[float],
) -> (
    tuple[
        _Plan,
        dict[str, Future[list[dict[str, Any]]]],
        list[dict[str, Any]],
        list[dict[str, Any]],
        dict[tuple[Any, ...], list[float]],
    ]
    | None
):
    """How the experiment and impact reads go: the plan; the touched sessions' statements
    (``touched()``) started; side by side, the untouched sessions' totals per variant and per
    (variant, outcome) (rows with ``having``); and on this thread the quantiles of
    ``values`` = (value counts table, group, name of its touched statement). ``None`` for
    the exact path."""
    start = _start(runner, scope, touched)
    if start is None:
        return None
    rows, plan, started = start
    totals_f = _later(rows, _variant_totals, rows, plan, scope)
    outcomes_f = _later(
        rows,
        plan.steady,
        _current(plan, "report_variant_outcomes", ("variant", "outcome"), having),
    )
    table, group, fresh = values
    found = _quantiles(rows, plan, table, group, quantiles, lambda: _fresh(started, fresh))
    totals, outcomes = totals_f.result(), outcomes_f.result()
    if found is None or totals is None:
        return None
    return plan, started, totals, outcomes, found


def _metric_columns() -> list[str]:
    from feedbackloop.sinks.report_rows import METRIC_COLUMNS

    return [f"{k}__{s}" for k, *_ in METRIC_COLUMNS for s in ("y", "d", "yy", "dd", "yd")]


@_exact_when_unsettled
def experiment_rows(
    runner: Any, scope: Scope, quantiles: Sequence[float]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[dict[str, Any]]] | None:
    """``(metrics by variant, assignment by variant, outcomes)`` as :func:`experiment_sql`'s
    three statements return them."""
    from feedbackloop.analysis.reads.queries import experiment_sql

    sql = experiment_sql(scope)
    read = _per_variant(
        runner,
        scope,
        lambda: {
            "latency": _latency_values_sql(scope),
            **{k: sql[k] for k in ("metrics", "assignment", "outcomes")},
        },
        "sessions_with != 0",
        ("report_variant_latency", ("variant",), "latency"),
        quantiles,
    )
    if read is None:
        return None
    plan, started, totals, outcomes, latency_q = read
    latency = {key[0]: q for key, q in latency_q.items()}
    cross = sum(int(r["cross_variant"]) for r in totals)
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
    if plan.touched is not None:
        fresh = _fresh(started, "metrics")
        assigned = _fresh(started, "assignment")
        cross += max((int(r["cross_variant"]) for r in assigned), default=0)
        renamed = [{**r, "interactions": r["interactions_total"]} for r in fresh]
        cost = [{"variant": r["variant"], "cost_total": r["cost_total"]} for r in assigned]
        sums = ("sessions", "interactions", "n_sq", "cost_total", *_metric_columns())
        totals = _merge((totals, renamed, cost), ("variant",), {c: c for c in sums}, "sessions")
        outcome_rows = _merge(
            (outcome_rows, _fresh(started, "outcomes")),
            ("level", "outcome", "variant"),
            {"y": "y", "yy": "yy", "yd": "yd"},
            "y",
        )
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
    return metrics, assignment, outcome_rows


@_exact_when_unsettled
def impact_rows(
    runner: Any, scope: Scope, quantiles: Sequence[float]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """``(per_outcome, headline)`` as :func:`impact_sql` returns them with every timed
    outcome making up a session's time."""
    from feedbackloop.analysis.reads.queries import impact_sql

    sql = impact_sql(scope)
    read = _per_variant(
        runner,
        scope,
        lambda: {
            "times": _time_values_sql(scope),
            **{k: sql[k] for k in ("per_outcome", "headline")},
        },
        "events != 0",
        ("report_variant_time_to_outcome", ("variant", "outcome"), "times"),
        quantiles,
    )
    if read is None:
        return None
    plan, started, totals, outcomes, times = read
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
        }
        for r in outcomes
    ]
    heads = (
        "sessions",
        "interactions",
        "code_n",
        "code_ok",
        "opened",
        "ticket_n",
        "ticket_ok",
        "st_n",
        "st_sum",
        "st_sq",
    )
    headline = [{"variant": r["variant"], **{h: r[h] for h in heads}} for r in totals]
    if plan.touched is not None:
        cols = ("events", "interactions_with", "sessions_with", "value_sum", "t_n", "t_sum")
        per_outcome = _merge(
            (per_outcome, _fresh(started, "per_outcome")),
            ("variant", "outcome"),
            {c: c for c in (*cols, "t_sq")},
            "events",
        )
        headline = _merge(
            (headline, _fresh(started, "headline")),
            ("variant",),
            {h: h for h in heads},
            "sessions",
        )
    for r in per_outcome:
        r["t_q"] = times.get((r["variant"], r["outcome"])) or [float("nan")] * len(quantiles)
    return per_outcome, headline


@_exact_when_unsettled
def satisfaction_rows(
    runner: Any, scope: Scope, bucket_seconds: int
) -> list[dict[str, Any]] | None:
    """``satisfaction_over_time_sql``'s rows: (variant, t, rated, positive)."""
    from feedbackloop.analysis.reads.queries import satisfaction_over_time_sql

    start = _start(
        runner, scope, lambda: {"seconds": satisfaction_over_time_sql(scope, bucket_seconds)}
    )
    if start is None:
        return None
    rows, plan, started = start
    if _variant_totals(rows, plan, scope) is None:
        return None
    t = f"toUnixTimestamp(toStartOfInterval(t, INTERVAL {int(bucket_seconds)} SECOND)) AS t"
    found = plan.steady(_current(plan, "report_variant_seconds", ("variant", t), "rated != 0"))
    if plan.touched is None:
        return found
    return _merge(
        (found, _fresh(started, "seconds")),
        ("variant", "t"),
        {"rated": "rated", "positive": "positive"},
        "rated",
    )


@_exact_when_unsettled
def version_total_rows(runner: Any, scope: Scope) -> list[dict[str, Any]] | None:
    """``version_totals_sql``'s rows, oldest version first."""
    from feedbackloop.analysis.reads.queries import version_totals_sql

    start = _start(runner, scope, lambda: {"totals": version_totals_sql(scope)})
    return None if start is None else _version_totals(start[1], scope, start[2])


_VERSION_SUMS = ("interactions", "sessions", "s_y", "s_d", "s_yy", "s_dd", "s_yd")


def _version_totals(
    plan: _Plan, scope: Scope, started: dict[str, Future[list[dict[str, Any]]]]
) -> list[dict[str, Any]] | None:
    current = _current(plan, "report_version_totals", ("prompt_version",), "sessions != 0")
    totals = plan.steady(
        f"SELECT *, toString(t0) AS first_seen, toString(t1) AS last_seen FROM ({current})"
    )
    if _split(scope, totals):
        return None
    if plan.touched is not None:
        totals = _merge(
            (totals, _fresh(started, "totals")),
            ("prompt_version",),
            {c: c for c in _VERSION_SUMS},
            "sessions",
            {"first_seen": min, "last_seen": max},
        )
    return sorted(totals, key=lambda r: (str(r["first_seen"]), str(r["prompt_version"])))


@_exact_when_unsettled
def version_rows(runner: Any, scope: Scope, bucket: str) -> list[dict[str, Any]] | None:
    """``versions_sql``'s rows: per prompt version and day (or week)."""
    from feedbackloop.analysis.reads.queries import version_totals_sql, versions_sql

    start = _start(
        runner,
        scope,
        lambda: {"totals": version_totals_sql(scope), "buckets": versions_sql(scope, bucket)},
    )
    if start is None:
        return None
    _, plan, started = start
    totals = _version_totals(plan, scope, started)
    if totals is None:
        return None
    first = {r["prompt_version"]: r["first_seen"] for r in totals}
    in_bucket = replace(plan, where=f"{plan.where} AND kind = {quote(bucket)}")
    buckets = plan.steady(
        _current(
            in_bucket,
            "report_version_buckets",
            ("prompt_version", "toString(start) AS bucket"),
            "sessions != 0",
        )
    )
    if plan.touched is not None:
        buckets = _merge(
            (buckets, _fresh(started, "buckets")),
            ("prompt_version", "bucket"),
            {c: c for c in ("interactions", "sessions", "rated", "positive")},
            "sessions",
        )
    out = [{**r, "first_seen": first[r["prompt_version"]]} for r in buckets]
    return sorted(out, key=lambda r: (r["first_seen"], r["prompt_version"], r["bucket"]))
