"""``feedbackloop failures`` counted in ClickHouse (analysis.failures.slice_counts) prints the
same report as the analysis of every judged interaction (analysis.failures.records), for
every scope, population and negative definition: never compacted (every signal recomputed,
no input label), compacted (stored per-interaction signals, sinks.interaction_signals; some
labels, sinks.input_labels), with events inserted after the compaction (recomputed in the
read), and compacted again with every label.

The data has what can make two such reads differ: a planted failure slice (German inputs of
prompt v2), inputs with code, interactions stored raw only (their code flag and length bucket
computed, not stored), redelivered and raw copies, changed votes, late and orphaned
feedback, report categories, implicit signals, shadow interactions, a metadata key with an
id per interaction (left out as a dimension), and no two interactions at the same time (the
newest N are the same N in both reads).
"""

from __future__ import annotations

import datetime as dt
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from feedbackloop.analysis.failures import slice_counts
from feedbackloop.analysis.failures.analyze import SliceCount, failure_report
from feedbackloop.analysis.failures.negative import NegativeDefinition
from feedbackloop.analysis.failures.records import read_judged_interactions
from feedbackloop.analysis.failures.slice_counts import load_slice_counts, read_slice_counts
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.config import Settings
from feedbackloop.infra import get_client
from feedbackloop.sinks import migrate
from feedbackloop.sinks.input_labels import label_inputs
from feedbackloop.sinks.query import execute, readonly_client
from feedbackloop.sinks.report_rows import OVERLAP_MS, compact

pytestmark = pytest.mark.integration

NEWEST = dt.datetime(2026, 6, 1, 12, 59, 59, tzinfo=dt.timezone.utc)
N = 1_500
ENRICHED = 2 * 10**13
INPUTS = {
    "en": ["How do I sort a list in place?", "What is the capital of France, please?"],
    "de": [
        "Wie sortiere ich eine Liste an Ort und Stelle?",
        "Was ist die Hauptstadt von Frankreich?",
    ],
    "fr": ["Comment trier une liste sur place, s'il vous plaît ?"],
    "code": ["def f(x):\n    return x == 1\n", "SELECT a FROM t;\nconsole.log(x);"],
    "short": ["ok", "thanks"],
}
_INTERACTION_COLUMNS = [
    "event_id", "occurred_at", "app_id", "session_id", "schema_version", "interaction_id",
    "model", "prompt_version", "experiment", "variant", "user_input", "response", "metadata",
    "shadow", "input_language", "input_has_code", "input_chars", "input_length_bucket",
    "kafka_topic", "kafka_offset", "_version",
]  # fmt: skip
_FEEDBACK_COLUMNS = [
    "event_id", "occurred_at", "app_id", "session_id", "schema_version", "interaction_id",
    "kind", "thumbs", "rating", "text", "category", "enrichment", "kafka_topic",
    "kafka_offset", "_version",
]  # fmt: skip
_IMPLICIT_COLUMNS = [
    "event_id", "occurred_at", "app_id", "session_id", "schema_version", "interaction_id",
    "signal", "edited_text", "enrichment", "kafka_topic", "kafka_offset", "_version",
]  # fmt: skip


def _data(seed: int = 11) -> dict[str, list[list[Any]]]:
    rnd = random.Random(seed)
    rows: dict[str, list[list[Any]]] = {"interactions": [], "feedback": [], "implicit": []}
    again: dict[str, list[list[Any]]] = {t: [] for t in rows}

    def uid() -> uuid.UUID:
        return uuid.UUID(int=rnd.getrandbits(128))

    def event(table: str, iid: uuid.UUID, at: dt.datetime, *vals: Any) -> None:
        row = [uid(), at, "a1", "s", 1, iid, *vals, "enriched", "t", len(rows[table]), ENRICHED]
        rows[table].append(row)
        if rnd.random() < 0.2:  # redelivered
            again[table].append(row)

    for k in range(N):
        at = NEWEST - dt.timedelta(seconds=37 * k)
        iid = uid()
        pv = f"v{k % 3}"
        kind = rnd.choice(list(INPUTS))
        text = rnd.choice(INPUTS[kind]) + f" #{k % 50}"
        exp, var = ("e1", ("control", "treatment")[k % 2]) if k % 4 else ("", "")
        meta = {"plan": rnd.choice(["pro", "free"]), "request": f"r{k}"} if k % 3 else {}
        raw_only = k % 10 == 3  # stored by `sink run --raw` only: nothing derived stored
        row = [
            uid(), at, "a2" if k % 6 == 0 else "a1", f"s{k // 3}", 1, iid,
            rnd.choice(["m-small", "m-large"]), pv, exp, var, text, f"answer {k}", meta,
            k % 13 == 0, "" if raw_only else "en", kind == "code" and not raw_only,
            len(text), "" if raw_only else ("xs" if len(text) <= 50 else "s"),
            "t", k, 0 if raw_only else ENRICHED + k,
        ]  # fmt: skip
        rows["interactions"].append(row)
        if rnd.random() < 0.15:
            again["interactions"].append(row)
        elif not raw_only and rnd.random() < 0.15:  # its raw copy: the enriched row wins
            again["interactions"].append([*row[:14], "", False, row[16], "", "t", k, 0])
        bad = 0.9 if (pv == "v2" and kind == "de") else 0.1
        if rnd.random() < 0.5:
            vote = -1 if rnd.random() < bad else 1
            event("feedback", iid, at + dt.timedelta(seconds=5), "thumbs", vote, None, "", "")
            if rnd.random() < 0.1:  # changed a day later
                late = at + dt.timedelta(days=1)
                event("feedback", iid, late, "thumbs", -vote, None, "", "")
        if rnd.random() < 0.2:
            rating = rnd.randint(1, 2) if rnd.random() < bad else rnd.randint(3, 5)
            lag = dt.timedelta(hours=rnd.choice([2, 2, -3]))  # late; or a clock behind
            event("feedback", iid, at + lag, "rating", 0, rating, "", "")
        for what, p in (("correction", 0.03), ("comment", 0.05), ("report", 0.04)):
            if rnd.random() < p:
                cat = rnd.choice(["harmful", "wrong"]) if what == "report" else ""
                event("feedback", iid, at + dt.timedelta(minutes=1), what, 0, None, "t", cat)
        for signal, p in (
            ("regenerate", bad / 3),
            ("abandon", 0.08),
            ("copy", 0.2),
            ("edit", 0.04),
        ):
            if rnd.random() < p:
                event("implicit", iid, at + dt.timedelta(seconds=30), signal, "")
    for _ in range(10):  # orphaned: no such interaction
        event("feedback", uid(), NEWEST, "thumbs", -1, None, "", "")
    return {t: rows[t] + [[]] + again[t] for t in rows}


def _load(client: Any) -> str:
    """A new database holding :func:`_data` (its name)."""
    db = f"slcount_{uuid.uuid4().hex[:8]}"
    migrate(client, db)
    columns = {
        "interactions": _INTERACTION_COLUMNS,
        "feedback": _FEEDBACK_COLUMNS,
        "implicit": _IMPLICIT_COLUMNS,
    }
    for table, rows in _data().items():
        client.command(f"SYSTEM STOP MERGES {db}.{table}")
        cut = rows.index([])
        for part in (rows[:cut], rows[cut + 1 :]):
            client.insert(
                table, part, database=db, column_names=columns[table],
                settings={"optimize_on_insert": 0},
            )  # fmt: skip
    return db


@pytest.fixture(scope="module")
def loaded(clickhouse_dsn: str) -> Iterator[tuple[str, str]]:
    client = get_client(clickhouse_dsn)
    db = _load(client)
    yield clickhouse_dsn, db
    client.command(f"DROP DATABASE IF EXISTS {db}")
    client.close()


def test_inputs_labelled_between_the_counts_and_their_heads_are_read_by_name(
    clickhouse_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sink's labeller runs beside the reads. Past ``_NAMED_HEADS`` unlabelled inputs
    the heads' statement finds them again as the newest interactions without a label, so an
    input labelled after the counts were read is not among them: it is read by name."""
    monkeypatch.setattr(slice_counts, "_NAMED_HEADS", 1)  # every read takes the join form
    writer = get_client(clickhouse_dsn)
    db = _load(writer)
    client = readonly_client(clickhouse_dsn, db, None, None)
    labelled: list[int] = []

    def run(sql: str, max_rows: int) -> list[list[Any]]:
        if "substring(user_input" in sql and not labelled:  # the first heads' statement
            while done := label_inputs(writer, db, batch=500, overlap_ms=0):
                labelled.append(done)
        return execute(client, sql, max_rows).rows

    try:
        counts = read_slice_counts(run, Scope(), db)
        assert sum(labelled) > 1
        judged = read_judged_interactions(run, Scope(), db)
        assert failure_report(counts).to_dict() == failure_report(judged).to_dict()
    finally:
        client.close()
        writer.command(f"DROP DATABASE IF EXISTS {db}")
        writer.close()


SCOPES = [
    Scope(),
    Scope(limit=150),  # the newest hours hold enough
    Scope(limit=100, experiment="e1"),
    Scope(app_id="a2"),
    Scope(since=NEWEST - dt.timedelta(hours=5), prompt_version="v2"),
]
DEFINITIONS = [
    NegativeDefinition(),
    NegativeDefinition.build(weights=["abandon=1"], low_rating_max=3),
    NegativeDefinition.build(
        signals=["thumbs_down", "report", "edit"], report_categories=["wrong"]
    ),
    NegativeDefinition.build(threshold=2.0),
]


def _reports(dsn: str, db: str) -> list[tuple[str, Any, Any]]:
    """(case, report of every judged interaction, report of the counts) for every case."""
    client = readonly_client(dsn, db, None, None)

    def run(sql: str, max_rows: int) -> list[list[Any]]:
        return execute(client, sql, max_rows).rows

    out = []
    try:
        for s, sel in enumerate(SCOPES):
            judged = read_judged_interactions(run, sel, db)
            for d, definition in enumerate(DEFINITIONS):
                counts = read_slice_counts(run, sel, db, definition)
                assert sum(c.interactions for c in counts) == len(judged)
                for population in ("all", "with-feedback"):
                    kw: dict[str, Any] = {"limit": sel.limit, "population": population}
                    want = failure_report(judged, definition, **kw)
                    got = failure_report(counts, definition, **kw)
                    out.append((f"scope {s} definition {d} {population}", want, got))
    finally:
        client.close()
    return out


def _labels(dsn: str, db: str) -> int:
    client = get_client(dsn)
    try:
        return int(client.query(f"SELECT count() FROM {db}.report_input_labels").result_rows[0][0])
    finally:
        client.close()


def _late_events(dsn: str, db: str) -> None:
    """Events inserted after a compaction: changed votes, new signals, redelivered copies."""
    client = get_client(dsn)
    try:
        rows = client.query(
            f"SELECT interaction_id, occurred_at FROM {db}.interactions "
            "ORDER BY occurred_at DESC LIMIT 400"
        ).result_rows
        rnd = random.Random(3)
        fb, im = [], []
        for k, (iid, at) in enumerate(rows[::2]):
            eid = uuid.UUID(int=rnd.getrandbits(128))
            vote = rnd.choice([1, -1])
            late = at + dt.timedelta(hours=1)
            fb.append([eid, late, "a1", "s", 1, iid, "thumbs", vote, None, "", "", "enriched",
                       "t", 10**6 + k, ENRICHED])  # fmt: skip
            if k % 3 == 0:
                im.append([uuid.UUID(int=rnd.getrandbits(128)), late, "a1", "s", 1, iid,
                           "regenerate", "", "enriched", "t", k, ENRICHED])  # fmt: skip
        client.insert("feedback", fb + fb[:20], database=db, column_names=_FEEDBACK_COLUMNS)
        client.insert("implicit", im, database=db, column_names=_IMPLICIT_COLUMNS)
    finally:
        client.close()


def _compare(dsn: str, db: str, stage: str) -> None:
    significant = 0
    for case, want, got in _reports(dsn, db):
        assert got.to_dict() == want.to_dict(), f"{stage}: {case}"
        assert got.to_text(show_all=True) == want.to_text(show_all=True)
        significant += len(want.slices.significant)
    assert significant, "the planted slice was found"


def test_counts_give_the_same_report_stored_or_not_labelled_or_not(
    loaded: tuple[str, str],
) -> None:
    """Every interaction recomputed and unlabelled (never compacted); then stored signals,
    some labels; then events inserted after the compaction (recomputed in the read); then
    compacted again with every label."""
    dsn, db = loaded
    writer = get_client(dsn)
    try:
        _compare(dsn, db, "never compacted, no labels")
        time.sleep(OVERLAP_MS / 1000 + 0.5)  # nothing inserted after the overlap
        assert compact(writer, db).sessions
        assert label_inputs(writer, db, batch=700, overlap_ms=0) == 700
        stored = writer.query(f"SELECT count() FROM {db}.report_interaction_signals FINAL")
        assert int(stored.result_rows[0][0]) > N // 2
        _compare(dsn, db, "compacted, some labels")
        _late_events(dsn, db)
        _compare(dsn, db, "late events after the compaction")
        time.sleep(OVERLAP_MS / 1000 + 0.5)
        compact(writer, db)
        while label_inputs(writer, db, batch=500, overlap_ms=0):
            pass
        _compare(dsn, db, "compacted again, every label")
    finally:
        writer.close()
    # Every stored interaction but the shadow ones is labelled once its copies merge: the
    # redelivered copies are labelled twice (the cursor passes both) and collapse.
    assert _labels(dsn, db) >= N - len(range(0, N, 13))


def test_the_planted_slice_and_the_left_out_id_dimension(loaded: tuple[str, str]) -> None:
    dsn, db = loaded
    client = readonly_client(dsn, db, None, None)
    try:
        counts = read_slice_counts(lambda sql, m: execute(client, sql, m).rows, Scope(), db)
    finally:
        client.close()
    assert all(isinstance(c, SliceCount) for c in counts)
    assert len(counts) < sum(c.interactions for c in counts)  # counted, not one row each
    report = failure_report(counts)
    top = report.slices.significant[0]
    assert dict(top.conditions) == {"prompt_version": "v2", "language": "de"}
    assert any("meta.request left out" in n for n in report.slices.notes)
    # Raw-only interactions got their code flag and length bucket from their input.
    assert any(c.attributes["has_code"] == "yes" for c in counts)


def test_load_slice_counts_reads_through_run_query(loaded: tuple[str, str], tmp_path: Any) -> None:
    dsn, db = loaded
    settings = Settings(clickhouse_url=dsn, clickhouse_database=db, data_dir=tmp_path)
    got = failure_report(load_slice_counts(settings, Scope(limit=300), url=dsn), limit=300)
    client = readonly_client(dsn, db, None, None)
    try:
        judged = read_judged_interactions(
            lambda sql, m: execute(client, sql, m).rows, Scope(limit=300), db
        )
    finally:
        client.close()
    assert got.to_dict() == failure_report(judged, limit=300).to_dict()
    assert got.truncated_at == 300
