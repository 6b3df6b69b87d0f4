"""Every documented analyst query, run on a real ClickHouse engine through the real writer.

The events go through ``ClickHouseSink`` as the enriched messages the stream jobs emit, part
of them delivered twice in a different batch (a restart that re-reads from an older commit),
so each answer is also a check that the query counts an event once. Expected numbers are
computed here, in Python, from the events themselves.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest
from click.testing import CliRunner
from sink_helpers import enrich, make_events

from feedbackloop.analysis.reads.analyst_queries import ANALYST_QUERIES, analyst_query
from feedbackloop.cli import cli
from feedbackloop.infra import get_client
from feedbackloop.schemas import Feedback, Interaction, Outcome, Topics, WindowAggregate
from feedbackloop.sinks import ClickHouseSink, SinkMessage, migrate
from feedbackloop.sinks.query import execute, readonly_client

pytestmark = pytest.mark.integration

N_INTERACTIONS = 90


@pytest.fixture
def loaded(clickhouse_dsn: str, clickhouse_database: str) -> Any:
    """A database holding the events of make_events(N) (a third delivered twice)."""
    topics = Topics("aq.")
    events = make_events(N_INTERACTIONS, seed=7)
    interactions = {e.interaction_id: e for e in events if isinstance(e, Interaction)}
    messages = [enrich(e, interactions, offset=i) for i, e in enumerate(events)]

    admin = get_client(clickhouse_dsn)
    migrate(admin, clickhouse_database)
    sink = ClickHouseSink(clickhouse_dsn, clickhouse_database, topics)
    try:
        for i, m in enumerate(messages):
            sink.add(topics.enriched, 0, i, SinkMessage(m, offset=i))
        sink.flush()
        # Redelivery of the first third, as its own batch: different dedup token, so the
        # rows are stored again and only FINAL / the distinct-count rollups hide them.
        for i, m in enumerate(messages[: len(messages) // 3]):
            sink.add(topics.enriched, 0, i, SinkMessage(m, offset=i))
        sink.flush()
        windows = _window_rows()
        for i, w in enumerate(windows):
            sink.add(topics.aggregates, 0, i, SinkMessage(w.model_dump_json().encode(), offset=i))
        sink.add(topics.enriched, 0, len(messages), SinkMessage(b"{not json", offset=len(messages)))
        sink.flush()
    finally:
        sink.close()
    yield events, windows
    admin.command(f"DROP DATABASE IF EXISTS {clickhouse_database}")
    admin.close()


def _window_rows() -> list[WindowAggregate]:
    start = dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0) - dt.timedelta(
        minutes=5
    )
    common = dict(
        window_start=start,
        window_end=start + dt.timedelta(minutes=1),
        app_id="app1",
        experiment="exp",
        prompt_version="p0",
        model="m1",
        emitted_at=start,
    )
    return [
        # partition 0, revision 1 then its replacement (revision 2): only the second counts
        WindowAggregate(
            variant="a",
            source_partition=0,
            revision=1,
            interactions=5,
            thumbs_up=1,
            thumbs_down=1,
            rating_count=1,
            rating_sum=2,
            latency_count=5,
            latency_sum=500.0,
            **common,
        ),
        WindowAggregate(
            variant="a",
            source_partition=0,
            revision=2,
            interactions=8,
            thumbs_up=3,
            thumbs_down=2,
            rating_count=2,
            rating_sum=7,
            latency_count=8,
            latency_sum=960.0,
            **common,
        ),
        WindowAggregate(
            variant="a",
            source_partition=1,
            revision=1,
            interactions=4,
            thumbs_up=1,
            thumbs_down=0,
            rating_count=1,
            rating_sum=5,
            latency_count=4,
            latency_sum=440.0,
            **common,
        ),
        WindowAggregate(
            variant="b",
            source_partition=0,
            revision=1,
            interactions=6,
            thumbs_up=2,
            thumbs_down=3,
            latency_count=6,
            latency_sum=600.0,
            **common,
        ),
    ]


def _clickhouse_uuid_order(u: uuid.UUID) -> tuple[int, int]:
    """ClickHouse orders UUIDs by their second 64-bit half first."""
    return u.int & (2**64 - 1), u.int >> 64


def _run(dsn: str, db: str, name: str) -> list[dict[str, Any]]:
    res = execute(readonly_client(dsn, db), analyst_query(name).sql)
    return [dict(zip(res.columns, row, strict=True)) for row in res.rows]


def test_every_documented_query_runs_and_returns_rows(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str
) -> None:
    for q in ANALYST_QUERIES:
        assert _run(clickhouse_dsn, clickhouse_database, q.name), q.name
    # The redelivered third really is stored twice: the answers below must not count it so.
    ro = readonly_client(clickhouse_dsn, clickhouse_database)
    stored, distinct = ro.query("SELECT count(), uniqExact(event_id) FROM feedback").result_rows[0]
    assert stored > distinct


def test_satisfaction_by_day_counts_each_thumb_once_and_the_rollup_agrees(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str
) -> None:
    events, _ = loaded
    variant = {e.interaction_id: e.variant for e in events if isinstance(e, Interaction)}
    truth: Counter[tuple[Any, str, int]] = Counter()
    for e in events:
        if isinstance(e, Feedback) and e.kind == "thumbs":
            assert e.thumbs is not None
            truth[(e.occurred_at.date(), variant[e.interaction_id], e.thumbs)] += 1
    for name in ("satisfaction-by-day", "satisfaction-by-day-rollup"):
        rows = _run(clickhouse_dsn, clickhouse_database, name)
        got = {}
        for r in rows:
            got[(r["day"], r["variant"], 1)] = r["up"]
            got[(r["day"], r["variant"], -1)] = r["down"]
            up, down = truth[(r["day"], r["variant"], 1)], truth[(r["day"], r["variant"], -1)]
            assert r["satisfaction"] == pytest.approx(round(up / (up + down), 3)), name
        assert {k: v for k, v in got.items() if v} == dict(truth), name


def test_failures_by_prompt_version_match_the_events(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str
) -> None:
    events, _ = loaded
    version = {e.interaction_id: e.prompt_version for e in events if isinstance(e, Interaction)}
    down: dict[str, set[uuid.UUID]] = defaultdict(set)
    low: dict[str, set[uuid.UUID]] = defaultdict(set)
    for e in events:
        if isinstance(e, Feedback):
            if e.thumbs == -1:
                down[version[e.interaction_id]].add(e.interaction_id)
            if e.rating is not None and e.rating <= 2:
                low[version[e.interaction_id]].add(e.interaction_id)
    n = Counter(version.values())
    rows = _run(clickhouse_dsn, clickhouse_database, "failures-by-prompt-version")
    assert {r["prompt_version"] for r in rows} == set(n)
    for r in rows:
        pv = r["prompt_version"]
        assert r["interactions"] == n[pv]
        assert r["with_thumbs_down"] == len(down[pv])
        assert r["with_low_rating"] == len(low[pv])
        assert r["corrected"] == r["reported"] == 0
        expected = round((len(down[pv]) + len(low[pv])) / n[pv], 3)
        assert r["failure_signals_per_interaction"] == pytest.approx(expected)
    rates = [r["failure_signals_per_interaction"] for r in rows]
    assert rates == sorted(rates, reverse=True)


def test_failing_inputs_are_the_latest_failures(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str
) -> None:
    events, _ = loaded
    by_id = {e.interaction_id: e for e in events if isinstance(e, Interaction)}
    failing = sorted(
        (e for e in events if isinstance(e, Feedback) and (e.thumbs == -1 or (e.rating or 5) <= 2)),
        key=lambda e: (-e.occurred_at.timestamp(), _clickhouse_uuid_order(e.event_id)),
    )[:20]
    rows = _run(clickhouse_dsn, clickhouse_database, "failing-inputs")
    assert len(rows) == len(failing) == 20
    for r, fb in zip(rows, failing, strict=True):
        it = by_id[fb.interaction_id]
        # DateTime64(3, 'UTC') comes back naive, in milliseconds
        ms = fb.occurred_at.microsecond // 1000 * 1000
        assert r["feedback_at"] == fb.occurred_at.replace(microsecond=ms, tzinfo=None)
        assert (r["user_input"], r["response"], r["prompt_version"]) == (
            it.user_input,
            it.response,
            it.prompt_version,
        )
        assert (r["kind"], r["thumbs"], r["rating"]) == (fb.kind, fb.thumbs or 0, fb.rating)


def test_outcome_rates_and_latency_counts_match_the_events(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str
) -> None:
    events, _ = loaded
    its = [e for e in events if isinstance(e, Interaction)]
    variant = {e.interaction_id: e.variant for e in its}
    n = Counter(e.variant for e in its)
    with_outcome: dict[str, set[uuid.UUID]] = defaultdict(set)
    for e in events:
        if isinstance(e, Outcome):
            assert e.interaction_id is not None
            with_outcome[variant[e.interaction_id]].add(e.interaction_id)
    rows = _run(clickhouse_dsn, clickhouse_database, "outcome-rates")
    assert {r["variant"]: r["with_outcome"] for r in rows} == {
        v: len(s) for v, s in with_outcome.items()
    }
    for r in rows:
        assert r["interactions"] == n[r["variant"]]
        assert r["rate"] == pytest.approx(
            round(len(with_outcome[r["variant"]]) / n[r["variant"]], 3)
        )

    latency = _run(clickhouse_dsn, clickhouse_database, "latency-by-model")
    assert sum(r["n"] for r in latency) == len(its)


def test_window_stats_take_the_latest_revision_and_sum_partitions(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str
) -> None:
    rows = {
        r["variant"]: r for r in _run(clickhouse_dsn, clickhouse_database, "variant-window-stats")
    }
    a, b = rows["a"], rows["b"]
    assert (a["n"], a["up"], a["down"], a["ratings"]) == (12, 4, 2, 3)
    assert a["mean_rating"] == pytest.approx(12 / 3)
    assert a["mean_latency_ms"] == pytest.approx((960.0 + 440.0) / 12)
    assert (b["n"], b["up"], b["down"], b["ratings"]) == (6, 2, 3, 0)
    assert b["mean_rating"] is None


def test_dead_letters_query_shows_the_malformed_message(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str
) -> None:
    rows = _run(clickhouse_dsn, clickhouse_database, "dead-letters")
    assert sum(r["n"] for r in rows) == 1
    assert rows[0]["reason"] and rows[0]["example"]


def test_cli_runs_an_example_by_name(
    loaded: Any, clickhouse_dsn: str, clickhouse_database: str, tmp_path: Any
) -> None:
    env = {
        "FEEDBACKLOOP_CLICKHOUSE_URL": clickhouse_dsn,
        "FEEDBACKLOOP_CLICKHOUSE_DATABASE": clickhouse_database,
        "FEEDBACKLOOP_DATA_DIR": str(tmp_path),  # no running worker advertised there
    }
    res = CliRunner().invoke(cli, ["sql", "--example", "outcome-rates", "--format", "csv"], env=env)
    assert res.exit_code == 0, res.output
    header, *lines = res.output.strip().splitlines()
    assert header.split(",")[:3] == ["experiment", "variant", "outcome"]
    assert len(lines) == 2
