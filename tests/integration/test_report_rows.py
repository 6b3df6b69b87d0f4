"""The per-session report rows answer every report exactly as re-joining the events does.

Real chDB (or the server of FEEDBACKLOOP_TEST_CLICKHOUSE_URL), the real migrations, and events
written the way the sink writes them: redelivered copies, raw and enriched copies of the same
event, users who change their mind, late feedback, orphaned feedback whose interaction
arrives later, session-level outcomes, shadow traffic, a session id reused by two apps.
Each report is read twice, with ``exact=True`` (today's queries) and from the report rows,
and the two must agree (NaN-aware; float sums to 1e-9 relative).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from feedbackloop.analysis.reads import (
    Scope,
    derived,
    fetch_experiment,
    fetch_impact,
    fetch_satisfaction_over_time,
    fetch_version_totals,
    fetch_versions,
    queries,
)
from feedbackloop.errors import ClickHouseError
from feedbackloop.infra import get_client
from feedbackloop.sinks import migrate, query, report_rows
from feedbackloop.sinks.query import READ_SETTINGS, ThreadRunner, execute
from feedbackloop.sinks.report_rows import changed_rows_sql, compact, repair_totals, totals

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.timezone.utc)
OUTCOMES = (
    "code_accepted",
    "code_rejected",
    "ticket_resolved",
    "ticket_escalated",
    "original_opened",
    "task_completed",
)


def _uuid(rng: random.Random) -> uuid.UUID:
    return uuid.UUID(int=rng.getrandbits(128), version=4)


class Events:
    """Builds event rows and inserts them as the sink would (one insert per call)."""

    def __init__(self, client: Any, db: str, seed: int = 7) -> None:
        self.client, self.db, self.rng = client, db, random.Random(seed)

    def insert(self, table: str, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = sorted({c for r in rows for c in r})
        data = [[r.get(c, _DEFAULTS.get(c)) for c in cols] for r in rows]
        self.client.insert(table, data, database=self.db, column_names=cols)

    def interaction(
        self, app: str, session: str, variant: str, t: dt.datetime, **kw: Any
    ) -> dict[str, Any]:
        iid = _uuid(self.rng)
        return {
            "event_id": iid,
            "interaction_id": iid,
            "occurred_at": t,
            "app_id": app,
            "session_id": session,
            "experiment": kw.pop("experiment", "exp1"),
            "variant": variant,
            "prompt_version": kw.pop("prompt_version", "p1"),
            "model": "m",
            "latency_ms": kw.pop("latency_ms", float(self.rng.randint(100, 900))),
            "cost_usd": kw.pop("cost_usd", self.rng.choice([0.001, 0.0012, None])),
            "shadow": kw.pop("shadow", False),
            "_version": kw.pop("_version", 1),
            **kw,
        }

    def feedback(
        self, i: dict[str, Any], kind: str, t: dt.datetime, enriched: bool = True, **kw: Any
    ) -> dict[str, Any]:
        return {
            "event_id": kw.pop("event_id", _uuid(self.rng)),
            "occurred_at": t,
            "app_id": i["app_id"],
            "session_id": i["session_id"],
            "interaction_id": i["interaction_id"],
            "kind": kind,
            "thumbs": kw.pop("thumbs", 0),
            "rating": kw.pop("rating", None),
            **self._context(i, enriched),
            **kw,
        }

    def implicit(self, i: dict[str, Any], signal: str, t: dt.datetime) -> dict[str, Any]:
        return {
            "event_id": _uuid(self.rng),
            "occurred_at": t,
            "app_id": i["app_id"],
            "session_id": i["session_id"],
            "interaction_id": i["interaction_id"],
            "signal": signal,
            **self._context(i, True),
        }

    def outcome(
        self,
        app: str,
        session: str,
        outcome: str,
        t: dt.datetime,
        i: dict[str, Any] | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        return {
            "event_id": _uuid(self.rng),
            "occurred_at": t,
            "app_id": app,
            "session_id": session,
            "interaction_id": i["interaction_id"] if i else None,
            "outcome": outcome,
            "value": kw.pop("value", 1.0),
            "time_to_outcome_ms": kw.pop("ttm", None),
            **(self._context(i, True) if i else {"enrichment": "enriched", "_version": 2}),
        }

    @staticmethod
    def _context(i: dict[str, Any], enriched: bool) -> dict[str, Any]:
        if not enriched:  # a raw copy: no variant, no experiment
            return {"enrichment": "", "_version": 0}
        return {
            "enrichment": "enriched",
            "experiment": i["experiment"],
            "variant": i["variant"],
            "prompt_version": i["prompt_version"],
            "_version": 2,
        }


_DEFAULTS: dict[str, Any] = {
    "experiment": "",
    "variant": "",
    "prompt_version": "",
    "model": "",
    "enrichment": "",
    "shadow": False,
    "thumbs": 0,
    "_version": 0,
}


def _population(
    ev: Events, sessions: int, app: str = "app1", first: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Sessions of 1-4 interactions over two days with every kind of event (session ids
    ``{app}-s{first}`` onwards)."""
    rng = ev.rng
    out: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("interactions", "feedback", "implicit", "outcomes")
    }
    for s in range(first, first + sessions):
        sid = f"{app}-s{s}"
        variant = ("control", "treatment")[rng.random() < 0.5]
        t = T0 + dt.timedelta(seconds=rng.randint(0, 2 * 86400))
        for k in range(rng.randint(1, 4)):
            ti = t + dt.timedelta(seconds=7 * k + rng.random())
            i = ev.interaction(
                app,
                sid,
                variant,
                ti,
                prompt_version=rng.choice(["p1", "p2"]),
                latency_ms=rng.choice(
                    [float(rng.randint(50, 400)), None, round(rng.uniform(10, 20), 3)]
                ),
            )
            out["interactions"].append(i)
            if rng.random() < 0.6:
                out["feedback"].append(
                    ev.feedback(
                        i, "thumbs", ti + dt.timedelta(seconds=3), thumbs=rng.choice([1, -1])
                    )
                )
                if rng.random() < 0.3:  # changes their mind later
                    out["feedback"].append(
                        ev.feedback(
                            i, "thumbs", ti + dt.timedelta(seconds=30), thumbs=rng.choice([1, -1])
                        )
                    )
            if rng.random() < 0.25:
                out["feedback"].append(
                    ev.feedback(
                        i,
                        "rating",
                        ti + dt.timedelta(seconds=4),
                        rating=rng.randint(1, 5),
                        enriched=rng.random() < 0.5,
                    )
                )
            if rng.random() < 0.3:
                out["implicit"].append(
                    ev.implicit(
                        i, rng.choice(["copy", "edit", "regenerate"]), ti + dt.timedelta(seconds=2)
                    )
                )
            if rng.random() < 0.3:
                out["outcomes"].append(
                    ev.outcome(
                        app,
                        sid,
                        rng.choice(OUTCOMES),
                        ti + dt.timedelta(seconds=60),
                        i,
                        ttm=rng.choice([None, float(rng.randint(1000, 9000))]),
                    )
                )
        if rng.random() < 0.2:
            out["outcomes"].append(
                ev.outcome(
                    app,
                    sid,
                    rng.choice(["ticket_resolved", "ticket_escalated"]),
                    t + dt.timedelta(minutes=5),
                    ttm=float(rng.randint(1, 50) * 1000),
                )
            )
    return out


def _inserted(
    ev: Events, sessions: int, app: str = "app1", first: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """A :func:`_population`, inserted one table at a time."""
    pop = _population(ev, sessions, app, first)
    for table, rows in pop.items():
        ev.insert(table, rows)
    return pop


def _same(a: Any, b: Any, path: str = "") -> None:
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert dataclasses.is_dataclass(b), path
        _same(dataclasses.asdict(a), dataclasses.asdict(b), path)
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{path}: keys {set(a) ^ set(b)}"
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: {a!r} != {b!r}"
        for n, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{n}]")
    elif isinstance(a, float) or isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            assert math.isnan(a) and math.isnan(b), f"{path}: {a!r} != {b!r}"
        else:
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{path}: {a!r} != {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


READS: dict[str, Callable[..., Any]] = {
    "experiment": lambda r, s, e: fetch_experiment(r, s, exact=e),
    "impact": lambda r, s, e: fetch_impact(r, s, exact=e),
    "versions by day": lambda r, s, e: fetch_versions(r, s, "day", exact=e),
    "versions by week": lambda r, s, e: fetch_versions(r, s, "week", exact=e),
    "version totals": lambda r, s, e: fetch_version_totals(r, s, exact=e),
    "satisfaction per hour": lambda r, s, e: fetch_satisfaction_over_time(r, s, 3600, exact=e),
    "satisfaction per 7 s": lambda r, s, e: fetch_satisfaction_over_time(r, s, 7, exact=e),
}
SCOPES = (
    Scope(experiment="exp1"),
    Scope(experiment="exp1", app_id="app1"),
    Scope(app_id="app1"),
    Scope(),
)


@pytest.fixture
def store(clickhouse_dsn: str, clickhouse_database: str) -> Any:
    client = get_client(clickhouse_dsn)
    migrate(client, clickhouse_database)
    # What the reads' sessions have (sinks/query.readonly_client): the restricted statements'
    # events materialized; one per thread, so the reads run their lanes side by side.
    reader = ThreadRunner(
        lambda: get_client(clickhouse_dsn, database=clickhouse_database, settings=READ_SETTINGS)
    )
    yield client, clickhouse_database, reader
    client.command(f"DROP DATABASE IF EXISTS {clickhouse_database}")
    reader.close()
    client.close()


def _assert_both_paths_agree(
    runner: Any, scopes: tuple[Scope, ...] = SCOPES, reads: tuple[str, ...] = tuple(READS)
) -> None:
    for scope in scopes:
        for name in reads:
            read = READS[name]
            _same(read(runner, scope, True), read(runner, scope, False), f"{name} {scope}")


def test_report_rows_answer_like_the_exact_queries_under_redelivery_and_late_events(
    store: Any, clickhouse_dsn: str
) -> None:
    client, db, runner = store
    ev = Events(client, db)
    pop = _population(ev, 80)
    for table, rows in pop.items():
        ev.insert(table, rows)
        ev.insert(table, rows[: len(rows) // 3])  # a redelivered batch
    # Raw copies of enriched feedback (the sink run with --raw as well): lower _version.
    ev.insert(
        "feedback",
        [
            {
                **f,
                "enrichment": "",
                "experiment": "",
                "variant": "",
                "prompt_version": "",
                "_version": 0,
            }
            for f in pop["feedback"][:40]
        ],
    )
    # Shadow traffic never counts.
    ev.insert("interactions", [ev.interaction("app1", "app1-s0", "control", T0, shadow=True)])
    compact(client, db)
    assert derived.experiment_rows(runner, Scope(experiment="exp1"), (0.5,)) is not None
    _assert_both_paths_agree(runner)

    # Late events after the compaction: until the next one, the reads add the recomputed
    # sessions to the totals; the next compaction cancels the sessions' old rows.
    late_i = pop["interactions"][:25]
    ev.insert(
        "feedback", [ev.feedback(i, "thumbs", T0 + dt.timedelta(days=3), thumbs=-1) for i in late_i]
    )
    ev.insert(
        "outcomes",
        [
            ev.outcome(
                "app1", i["session_id"], "code_rejected", T0 + dt.timedelta(days=3), i, ttm=5.0
            )
            for i in late_i[:5]
        ],
    )
    assert derived.experiment_rows(runner, Scope(experiment="exp1"), (0.5,)) is not None
    _assert_both_paths_agree(runner)
    # The reads' session materializes the restricted statements' events; a session that
    # does not (a plain client, whose runner runs one statement after the other) inlines
    # them and answers the same.
    on = runner("SELECT getSetting('enable_materialized_cte') AS on")
    assert on.rows[0][0] in (1, True, "1")
    plain = get_client(clickhouse_dsn, database=db)
    try:
        for scope in SCOPES:
            for name, read in READS.items():
                _same(
                    read(lambda sql: execute(plain, sql, max_rows=100_000), scope, False),
                    read(runner, scope, False),
                    f"{name} {scope}, materialized or not",
                )
    finally:
        plain.close()

    # ClickHouse's materialized common table expressions are experimental: should the engine
    # fail on one (a LOGICAL_ERROR), the statement runs again inlined.
    refused: list[str] = []

    def failing(sql: str) -> Any:
        if " AS MATERIALIZED (" in sql:
            refused.append(sql)
            raise ClickHouseError("Code: 49. DB::Exception: … (LOGICAL_ERROR)")
        return runner(sql)

    failing.concurrent = True  # type: ignore[attr-defined]  # failing in the lanes

    for name, read in READS.items():
        _same(read(failing, Scope(), False), read(runner, Scope(), True), f"{name}, inlined")
    assert len(refused) >= len(READS)

    # Any other failure of a statement in a lane fails the read with that error, as it
    # would one after the other.
    def broken(sql: str) -> Any:
        if " AS MATERIALIZED (" in sql:
            raise ClickHouseError("Code: 241. DB::Exception: … (MEMORY_LIMIT_EXCEEDED)")
        return runner(sql)

    broken.concurrent = True  # type: ignore[attr-defined]
    for read in READS.values():
        with pytest.raises(ClickHouseError, match="MEMORY_LIMIT_EXCEEDED"):
            read(broken, Scope(), False)
    compact(client, db)
    _assert_both_paths_agree(runner)


def test_totals_cut_off_from_their_session_rows_are_repaired(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compaction killed between the state table's part of an insert and its views'
    leaves totals that no later round corrects; the compactor's start repairs them."""
    client, db, runner = store
    monkeypatch.setattr(derived, "SETTLE_S", 0.2)  # reads that wait for a checkpoint
    ev = Events(client, db)
    _inserted(ev, 40)
    time.sleep(report_rows.OVERLAP_MS / 1000 + 0.5)  # nothing changed since the compaction
    compact(client, db)
    assert repair_totals(client, db) == []
    scope = Scope(experiment="exp1", app_id="app1")

    def phantom(name: str) -> None:
        """The view of ``name`` saw a block the state table never got: three sessions'
        rows (the other way round is the same difference with the other sign)."""
        t = totals(name)
        rows = (
            f"(SELECT * FROM {db}.report_sessions WHERE sign = 1 AND app_id = 'app1' "
            "AND experiment = 'exp1' LIMIT 3)"
        )
        client.command(f"INSERT INTO {db}.{t.table} {t.select(rows)}")

    phantom("report_variant_totals")
    # No checkpoint holds these inserts: the reads take the exact path.
    assert derived.experiment_rows(runner, scope, (0.5,)) is None
    _assert_both_paths_agree(runner, (scope,), ("experiment",))
    # Recorded as agreeing anyway (what the reads trusted before the checkpoints), the totals
    # less the sessions' rows are three sessions off.
    report_rows.checkpoint(client, db)
    assert derived.experiment_rows(runner, scope, (0.5,)) is not None  # not the exact path
    with pytest.raises(AssertionError, match=r"\.sessions: \d+ != \d+"):
        _assert_both_paths_agree(runner, (scope,), ("experiment",))
    assert repair_totals(client, db) == ["report_variant_totals"]
    report_rows.checkpoint(client, db)  # as the compactor does after repairing
    assert derived.experiment_rows(runner, scope, (0.5,)) is not None
    _assert_both_paths_agree(runner, (scope,), ("experiment",))
    # The quantile buckets: a read sees their counts disagree with the values and takes
    # the exact path (same answer, slower) until they are repaired.
    phantom("report_variant_latency_buckets")
    report_rows.checkpoint(client, db)
    _assert_both_paths_agree(runner)
    assert repair_totals(client, db) == ["report_variant_latency_buckets"]
    assert repair_totals(client, db) == []
    report_rows.checkpoint(client, db)
    _assert_both_paths_agree(runner)
    # The compactor checks at its start only after a round stopped before its watermark:
    # session rows stamped later than the watermark, or totals whose view summed such rows
    # (the state table's part lost: the views of one insert are written in parallel).
    assert not report_rows.cut_off_round(client, db)
    t = totals("report_variant_outcomes")
    client.command(
        f"INSERT INTO {db}.{t.table} {t.select(f'(SELECT * REPLACE (computed_at + toIntervalMillisecond(1) AS computed_at) FROM {db}.report_sessions WHERE sign = 1 LIMIT 2)')}"  # noqa: E501
    )
    assert report_rows.cut_off_round(client, db)
    assert repair_totals(client, db) == ["report_variant_outcomes"]
    _assert_both_paths_agree(runner, (scope,), ("impact",))
    # The next round's watermark is later than the cut one's stamps.
    ev.insert("interactions", [ev.interaction("app1", "after-the-cut", "control", T0)])
    compact(client, db)
    assert not report_rows.cut_off_round(client, db)
    client.command(
        f"INSERT INTO {db}.report_sessions SELECT * REPLACE (computed_at + 1 AS computed_at) "
        f"FROM {db}.report_sessions WHERE sign = 1 LIMIT 1"
    )
    assert report_rows.cut_off_round(client, db)


def _merge_all_but_the_first_part(client: Any, db: str, table: str) -> None:
    """Merge every active part of ``table`` except its oldest, as the background merges
    may (they take adjacent parts, any range of them)."""
    parts = client.query(
        "SELECT name FROM system.parts WHERE database = {d:String} AND table = {t:String} "
        "AND active ORDER BY min_block_number",
        parameters={"d": db, "t": table},
    ).result_rows
    assert len(parts) >= 3, parts
    client.command(f"ALTER TABLE {db}.{table} DETACH PART '{parts[0][0]}'")
    client.command(f"SYSTEM START MERGES {db}.{table}")
    client.command(f"OPTIMIZE TABLE {db}.{table} FINAL")
    client.command(f"ALTER TABLE {db}.{table} ATTACH PART '{parts[0][0]}'")


def test_a_read_between_a_rounds_session_rows_and_their_totals_waits_for_both(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round's ``INSERT`` commits the state table's part and each view's part one after the
    other. Held at that moment (a view's part not there yet, the round's checkpoint neither),
    a read does not take the totals less the session rows: it waits for a checkpoint, then
    re-joins the events. Read as it was (what the reads did before the checkpoints), the
    report is off by the round's change; once the part and the checkpoint are there, the
    report rows answer again."""
    client, db, runner = store
    monkeypatch.setattr(derived, "SETTLE_S", 0.2)
    ev = Events(client, db, seed=29)
    pop = _inserted(ev, 40)
    time.sleep(report_rows.OVERLAP_MS / 1000 + 0.5)
    compact(client, db)
    scope = Scope(experiment="exp1", app_id="app1")
    assert derived.experiment_rows(runner, scope, (0.5,)) is not None
    late = T0 + dt.timedelta(days=3)
    ev.insert(
        "feedback", [ev.feedback(i, "thumbs", late, thumbs=-1) for i in pop["interactions"][:30]]
    )
    t = totals("report_variant_totals")
    client.command(f"DROP VIEW {db}.{t.table}_mv")  # its part of the next insert: not yet
    with monkeypatch.context() as held:
        held.setattr(report_rows, "checkpoint", lambda client, database: None)
        compact(client, db)
    assert derived.experiment_rows(runner, scope, (0.5,)) is None
    _assert_both_paths_agree(runner, (scope,), ("experiment",))

    report_rows.checkpoint(client, db)  # trusted at this moment, the totals lag the rows
    assert derived.experiment_rows(runner, scope, (0.5,)) is not None
    with pytest.raises(AssertionError, match=r"\.variants\.\w+\.\S+: \S+ != "):
        _assert_both_paths_agree(runner, (scope,), ("experiment",))

    client.command(t.ddl()[1].replace("{db}", db))
    assert repair_totals(client, db) == [t.table]  # the view's part, written
    report_rows.checkpoint(client, db)
    assert derived.experiment_rows(runner, scope, (0.5,)) is not None
    _assert_both_paths_agree(runner)


def test_a_merge_of_later_rounds_never_brings_an_old_session_row_back(store: Any) -> None:
    """Three rounds write a session's rows (``+r1``; ``-r1 +r2``; ``-r2 +r3``) in three
    parts, and a merge takes the last two. Under ``CollapsingMergeTree`` (migration 7) that
    merge removed all four rows when a cancel came last, and ``r1`` was the session's row
    again: the reads then subtracted it from the totals (found on the kept 30M bench
    database, 9 interactions short). The versioned engine removes only ``(r, -r)`` pairs."""
    client, db, runner = store
    ev = Events(client, db, seed=17)
    pop = _inserted(ev, 30)
    for state in report_rows._STATES:
        client.command(f"SYSTEM STOP MERGES {db}.{state.table}")
    compact(client, db)  # r1
    more = [
        ev.interaction("app1", i["session_id"], i["variant"], i["occurred_at"])
        for i in pop["interactions"][::2]
    ]
    ev.insert("interactions", more)
    compact(client, db)  # -r1 +r2: a session's new interactions
    ev.insert("interactions", more)  # redelivered: the sessions are touched, not changed
    compact(client, db)  # -r2 +r3
    for state in report_rows._STATES:
        _merge_all_but_the_first_part(client, db, state.table)
    stored = {
        state.table: client.query(
            f"SELECT session_id, sum(sign) AS live FROM {db}.{state.table} "
            f"GROUP BY {', '.join(state.key)}, computed_at HAVING live != 0"
        ).result_rows
        for state in report_rows._STATES
    }
    sessions = {i["session_id"] for i in pop["interactions"]}
    assert sorted(s for s, _ in stored["report_sessions"]) == sorted(sessions)
    assert all(live == 1 for rows in stored.values() for _, live in rows)
    n = client.query(
        f"SELECT sum(sign * n) FROM {db}.report_sessions WHERE variant != ''"
    ).result_rows[0][0]
    assert n == len(pop["interactions"]) + len(more)
    _assert_both_paths_agree(runner)


def test_a_round_killed_before_its_watermark_is_made_again_by_the_next(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A round that wrote one state table's rows and died before the other's and before its
    watermark: the next round recomputes the same sessions, cancels what was written, and
    the reads are exact; no totals need repair."""
    client, db, runner = store
    ev = Events(client, db, seed=41)
    pop = _inserted(ev, 30)
    compact(client, db)
    late = T0 + dt.timedelta(days=3)
    ev.insert("feedback", [ev.feedback(i, "thumbs", late, thumbs=-1) for i in pop["interactions"]])
    real = report_rows._insert_state

    def dies_on_the_second(client: Any, database: str, state: Any, *a: Any) -> None:
        if state.table == "report_version_sessions":
            raise RuntimeError("killed")
        real(client, database, state, *a)

    monkeypatch.setattr(report_rows, "_insert_state", dies_on_the_second)
    watermark = client.command(f"SELECT max(watermark) FROM {db}.report_rows_watermark")
    with pytest.raises(RuntimeError, match="killed"):
        compact(client, db)
    assert client.command(f"SELECT max(watermark) FROM {db}.report_rows_watermark") == watermark
    assert report_rows.cut_off_round(client, db)
    monkeypatch.setattr(report_rows, "_insert_state", real)
    _assert_both_paths_agree(runner)  # the touched sessions are recomputed in the read
    compact(client, db)
    assert not report_rows.cut_off_round(client, db)
    assert repair_totals(client, db) == []
    _assert_both_paths_agree(runner)


def test_the_compactor_stands_aside_for_reads_and_its_rounds_still_go_on(
    store: Any, clickhouse_dsn: str
) -> None:
    """Reads that never stop (the sink's query endpoint, a dashboard): the compactor waits
    between its statements while a read runs (report_rows._Yield), within a credit its own
    statements earn back, so its rounds still bring every new event in; the reads stay
    exact throughout."""
    client, db, runner = store
    ev = Events(client, db, seed=43)
    _inserted(ev, 40)
    compact(client, db)
    compactor = report_rows.Compactor(
        lambda: get_client(clickhouse_dsn), db, 0.05, reading=query.reading
    )
    stop, reads, failed = threading.Event(), [0], []

    def read_on() -> None:
        while not stop.is_set():
            try:
                fetch_experiment(runner, Scope(experiment="exp1"))
                reads[0] += 1
            except Exception as e:  # noqa: BLE001 - reported below
                failed.append(e)
                return

    reader = threading.Thread(target=read_on)
    compactor.start()
    reader.start()
    try:
        for batch in range(2):
            _inserted(ev, 10, first=1000 + 100 * batch)
            deadline = time.monotonic() + 60
            while _changed(runner) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _changed(runner) == 0, "the rounds stopped under the reads"
    finally:
        stop.set()
        reader.join(60)
        compactor.stop()
    assert not failed and reads[0] >= 3
    assert compactor.failures == 0
    assert compactor.gate.waited > 0  # it did stand aside
    _assert_both_paths_agree(runner, (Scope(experiment="exp1"),), ("experiment", "impact"))


def test_migration_13_rebuilds_the_report_rows_from_the_events(
    clickhouse_dsn: str, clickhouse_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database compacted under migration 7's engine, with a session row a merge brought
    back: migration 13 drops every derived row, the reads recompute every session until the
    next compaction, which builds the rows (and the copies, once) from the events."""
    client = get_client(clickhouse_dsn)
    db = clickhouse_database
    migrate(client, db, target=12)
    reader = get_client(clickhouse_dsn, database=db)
    runner = lambda sql: execute(reader, sql, max_rows=100_000)  # noqa: E731
    try:
        ev = Events(client, db, seed=23)
        _inserted(ev, 40)
        time.sleep(report_rows.OVERLAP_MS / 1000 + 0.5)  # nothing touched after the round
        with monkeypatch.context() as before_14:  # the code of that time kept no checkpoints
            before_14.setattr(report_rows, "checkpoint", lambda client, database: None)
            compact(client, db)
        assert "CollapsingMergeTree(sign)" in str(
            client.command(
                f"SELECT engine_full FROM system.tables WHERE database = '{db}' "
                "AND name = 'report_sessions'"
            )
        )
        # What the merge did: an older row of a session live again beside its current one.
        client.command(
            f"INSERT INTO {db}.report_sessions SELECT * REPLACE (computed_at - 60 AS "
            f"computed_at) FROM {db}.report_sessions WHERE sign = 1 AND experiment = 'exp1' "
            "LIMIT 1"
        )
        scope = Scope(experiment="exp1")
        # The reads of that time trusted the rows at any moment (migration 14's checkpoints).
        for stmt in report_rows.CHECKPOINTS_DDL:
            client.command(stmt.replace("{db}", db))
        report_rows.checkpoint(client, db)
        with pytest.raises(AssertionError, match=r"\.sessions: \d+ != \d+"):
            _assert_both_paths_agree(runner, (scope,), ("experiment",))

        assert migrate(client, db) == [13, 14]
        assert (
            str(
                client.command(
                    f"SELECT engine FROM system.tables WHERE database = '{db}' "
                    "AND name = 'report_sessions'"
                )
            )
            == "VersionedCollapsingMergeTree"
        )
        derived_tables = [
            *(s.table for s in report_rows._STATES),
            *(t.table for t in report_rows.SUMMED),
            *(lk.table for lk in report_rows.LOOKUPS),
            "report_rows_watermark",
        ]
        assert {
            t: int(client.command(f"SELECT count() FROM {db}.{t}")) for t in derived_tables
        } == (dict.fromkeys(derived_tables, 0))
        # Every session is touched: the reads recompute them all (or take the exact path).
        _assert_both_paths_agree(runner, (scope,))

        compact(client, db)
        for lk in report_rows.LOOKUPS:  # every event older than the overlap, copied once
            assert int(client.command(f"SELECT count() FROM {db}.{lk.table}")) == int(
                client.command(f"SELECT count() FROM {db}.{lk.source}")
            )
        assert derived.experiment_rows(runner, scope, (0.5,)) is not None
        _assert_both_paths_agree(runner)
    finally:
        client.command(f"DROP DATABASE IF EXISTS {db}")
        reader.close()
        client.close()


def test_orphaned_feedback_counts_once_its_interaction_arrives(store: Any) -> None:
    client, db, runner = store
    ev = Events(client, db, seed=11)
    _inserted(ev, 40)
    waiting = ev.interaction("app1", "late-session", "treatment", T0 + dt.timedelta(hours=1))
    ev.insert("feedback", [ev.feedback(waiting, "thumbs", T0 + dt.timedelta(hours=1), thumbs=1)])
    compact(client, db)
    _assert_both_paths_agree(runner, SCOPES[:1], ("experiment", "versions by day"))
    before = fetch_experiment(runner, Scope(experiment="exp1")).variants["treatment"]
    ev.insert("interactions", [waiting])
    compact(client, db)
    _assert_both_paths_agree(runner, SCOPES[:1], ("experiment", "versions by day"))
    after = fetch_experiment(runner, Scope(experiment="exp1")).variants["treatment"]
    assert after.rated.n == before.rated.n + 1
    assert after.sessions == before.sessions + 1


def test_a_session_id_shared_by_two_apps_falls_back_to_the_exact_path_where_it_matters(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No commit lag in one process: once compacted, "shared" is not a touched session.
    monkeypatch.setattr(report_rows, "OVERLAP_MS", 0)
    client, db, runner = store
    ev = Events(client, db, seed=5)
    for app in ("app1", "app2"):
        _inserted(ev, 30, app)
    shared = [ev.interaction(app, "shared", "control", T0) for app in ("app1", "app2")]
    ev.insert("interactions", shared)
    ev.insert("feedback", [ev.feedback(i, "thumbs", T0, thumbs=1) for i in shared])
    compact(client, db)
    # Across apps the rows would count "shared" twice: the reads take the exact path.
    assert derived.experiment_rows(runner, Scope(experiment="exp1"), (0.5,)) is None
    # Within one app and experiment the rows are the exact answer.
    assert derived.experiment_rows(runner, Scope(experiment="exp1", app_id="app1"), (0.5,))
    _assert_both_paths_agree(runner, (Scope(experiment="exp1"), SCOPES[1]), ("experiment",))
    # Touched again, "shared" is read exactly (restricted to the touched sessions) and no
    # other session is split: the rows answer again.
    ev.insert("feedback", [ev.feedback(shared[0], "thumbs", T0 + dt.timedelta(hours=1))])
    assert derived.experiment_rows(runner, Scope(experiment="exp1"), (0.5,)) is not None
    _assert_both_paths_agree(runner, (Scope(experiment="exp1"),), ("experiment", "impact"))


def test_scopes_the_rows_cannot_split_take_the_exact_path(store: Any) -> None:
    client, db, runner = store
    ev = Events(client, db, seed=3)
    _inserted(ev, 20)
    compact(client, db)
    for scope in (
        Scope(experiment="exp1", since=T0 + dt.timedelta(hours=6)),
        Scope(experiment="exp1", prompt_version="p1"),
        Scope(experiment="exp1", model="m"),
    ):
        assert derived.experiment_rows(runner, scope, (0.5,)) is None
        _same(fetch_experiment(runner, scope, exact=True), fetch_experiment(runner, scope))


def _changed(runner: Any) -> int:
    res = runner(changed_rows_sql().replace("{db}.", ""))
    return int(res.rows[0][0])


def test_reads_stay_exact_while_events_keep_arriving_after_the_compaction(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reads add the sessions touched since the last compaction (recomputed from their
    events) to the totals of every other session, round after round, with no compaction in
    between: new sessions, redelivered copies, late votes and outcomes on old sessions,
    orphaned feedback and then its interaction."""
    # No commit lag in one process: the sessions touched are exactly those written to.
    monkeypatch.setattr(report_rows, "OVERLAP_MS", 0)
    client, db, runner = store
    ev = Events(client, db, seed=23)
    old = _inserted(ev, 60)
    compact(client, db)
    assert _changed(runner) == 0
    scopes = (Scope(experiment="exp1"), Scope())

    new = _population(ev, 15, first=1000)
    for table, rows in new.items():
        ev.insert(table, rows)
        ev.insert(table, rows[: len(rows) // 2])  # redelivered
    assert _changed(runner) > 0
    assert derived.experiment_rows(runner, scopes[0], (0.5,)) is not None
    _assert_both_paths_agree(runner, scopes)

    late = old["interactions"][::7]
    waiting = ev.interaction("app1", "app1-s2000", "control", T0 + dt.timedelta(hours=2))
    ev.insert(
        "feedback",
        [ev.feedback(i, "thumbs", T0 + dt.timedelta(days=3), thumbs=-1) for i in late]
        + [ev.feedback(waiting, "rating", T0 + dt.timedelta(hours=2), rating=5)],
    )
    ev.insert(
        "outcomes",
        [
            ev.outcome("app1", i["session_id"], "code_accepted", T0 + dt.timedelta(days=3), i)
            for i in late[:4]
        ]
        + [ev.outcome("app1", "app1-s3", "ticket_resolved", T0 + dt.timedelta(days=3), ttm=4e3)],
    )
    ev.insert("implicit", [ev.implicit(i, "copy", T0 + dt.timedelta(days=3)) for i in late[:3]])
    assert derived.impact_rows(runner, scopes[0], (0.5,)) is not None
    _assert_both_paths_agree(runner, scopes)

    ev.insert("interactions", [waiting, *old["interactions"][:10]])  # and a redelivery
    _assert_both_paths_agree(runner, scopes[:1])

    compact(client, db)
    assert _changed(runner) == 0
    _assert_both_paths_agree(runner, scopes[:1])


def test_reads_take_the_exact_path_when_too_many_sessions_changed_since_the_compaction(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(report_rows, "OVERLAP_MS", 0)
    monkeypatch.setattr(derived, "MAX_TOUCHED", 3)
    client, db, runner = store
    ev = Events(client, db, seed=29)
    _inserted(ev, 20)
    compact(client, db)
    _inserted(ev, 5, first=100)
    scope = Scope(experiment="exp1")
    assert derived.experiment_rows(runner, scope, (0.5,)) is None
    _same(fetch_experiment(runner, scope, exact=True), fetch_experiment(runner, scope))


def test_migration_9_copies_the_events_compacted_before_it(store: Any) -> None:
    """A database compacted before the lookup copies existed: migration 9 copies every event
    inserted up to the watermark less the overlap, and the sessions changed after it (whose
    older events only the copies find) read exactly."""
    client, db, runner = store
    ev = Events(client, db, seed=31)
    old = _population(ev, 40)
    for table, rows in old.items():
        ev.insert(table, rows)
        ev.insert(table, rows[:5])  # redelivered
    time.sleep(report_rows.OVERLAP_MS / 1000 + 0.5)  # every event older than the overlap
    compact(client, db)
    copies = {lk.table: lk for lk in report_rows.LOOKUPS}
    counts = {t: int(client.command(f"SELECT count() FROM {db}.{t}")) for t in copies}
    assert counts == {
        t: int(client.command(f"SELECT count() FROM {db}.{lk.source}")) for t, lk in copies.items()
    }
    for table in copies:  # as a database of the version before: no copies
        client.command(f"TRUNCATE TABLE {db}.{table}")
    backfill = [s for s in report_rows.LOOKUPS_DDL if s.startswith("INSERT")]
    assert len(backfill) == len(copies)
    for stmt in backfill:
        client.command(stmt.replace("{db}", db))
    assert {t: int(client.command(f"SELECT count() FROM {db}.{t}")) for t in copies} == counts

    late = old["interactions"][::5]
    ev.insert(
        "feedback", [ev.feedback(i, "thumbs", T0 + dt.timedelta(days=3), thumbs=-1) for i in late]
    )
    ev.insert("implicit", [ev.implicit(i, "edit", T0 + dt.timedelta(days=3)) for i in late[:4]])
    ev.insert(
        "outcomes",
        [ev.outcome("app1", i["session_id"], "code_accepted", T0, i) for i in late[:3]],
    )
    scopes = (Scope(experiment="exp1"), Scope())
    assert derived.experiment_rows(runner, scopes[0], (0.5,)) is not None
    _assert_both_paths_agree(runner, scopes)


def test_quantiles_from_buckets_equal_clickhouses_exact_ones(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Latencies and times to outcome as apps send them (floats, nearly all distinct), with
    ties, values on both sides of bucket edges, a negative and a zero: every quantile from
    0 to 1 read from the buckets equals ClickHouse's ``quantilesExactInclusive`` over the
    events, after a compaction and with sessions touched since."""
    monkeypatch.setattr(report_rows, "OVERLAP_MS", 0)
    client, db, runner = store
    ev = Events(client, db, seed=41)
    rng = random.Random(41)
    edge = 1024.0  # a power of two: the first value of a bucket
    special = [edge, math.nextafter(edge, 0), edge, 0.0, -3.5, 812.25, 812.25, 812.25]
    levels = (0.0, 0.01, 0.25, 0.5, 0.9, 0.99, 1.0)

    def write(first: int, sessions: int) -> None:
        inter, out = [], []
        for s in range(first, first + sessions):
            variant = ("control", "treatment")[s % 2]
            for _ in range(3):
                latency = special.pop() if special else rng.lognormvariate(6.5, 0.8)
                i = ev.interaction("app1", f"q{s}", variant, T0, latency_ms=latency)
                inter.append(i)
                if rng.random() < 0.5:
                    ttm = round(rng.uniform(0, 3.6e6), 3)
                    out.append(ev.outcome("app1", f"q{s}", "task_completed", T0, i, ttm=ttm))
        ev.insert("interactions", inter)
        ev.insert("outcomes", out)

    monkeypatch.setattr(queries, "QUANTILES", levels)

    def agree() -> None:
        scope = Scope(experiment="exp1")
        exact, ours = (fetch_experiment(runner, scope, exact=e) for e in (True, False))
        for v in ("control", "treatment"):
            got = ours.variants[v].latency_quantiles
            assert len(got) == len(levels) and got == exact.variants[v].latency_quantiles
        _same(fetch_impact(runner, scope, exact=True), fetch_impact(runner, scope))

    write(0, 400)
    compact(client, db)
    agree()
    write(400, 30)  # touched since the compaction: their values come from the read itself
    assert derived.experiment_rows(runner, Scope(experiment="exp1"), levels) is not None
    agree()


def test_a_compaction_between_the_two_quantile_statements_makes_them_read_again(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bucket counts and the values are two statements: sessions compacted between them
    are in the second only. The quantiles are read again rather than picked from counts
    that do not add up."""
    monkeypatch.setattr(report_rows, "OVERLAP_MS", 0)
    client, db, runner = store
    ev = Events(client, db, seed=43)
    old = _inserted(ev, 60)
    compact(client, db)
    statements: list[str] = []

    def buckets(sql: str) -> bool:  # a read of the buckets, not of their inserts' numbers
        return "report_variant_latency_buckets" in sql and "system.parts" not in sql

    def racing(sql: str) -> Any:
        out = runner(sql)
        statements.append(sql)
        if [s for s in statements if buckets(s)] == [sql]:
            # Right after the first bucket read: new sessions with the same latencies, so
            # every bucket the values are read from gains some, compacted at once.
            copies = []
            for i in old["interactions"]:
                iid = _uuid(ev.rng)
                copies.append(
                    {
                        **i,
                        "event_id": iid,
                        "interaction_id": iid,
                        "session_id": f"c-{i['session_id']}",
                    }
                )
            ev.insert("interactions", copies)
            compact(client, db)
        return out

    scope = Scope(experiment="exp1")
    ours = fetch_experiment(racing, scope)
    assert sum(buckets(s) for s in statements) == 2  # read again
    exact = fetch_experiment(runner, scope, exact=True)
    for v in ("control", "treatment"):
        assert ours.variants[v].latency_quantiles == exact.variants[v].latency_quantiles
