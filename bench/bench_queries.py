"""Query benchmark: the documented analyst queries at millions of rows, in embedded chDB.

Run:  .venv/bin/python bench/bench_queries.py [--interactions 2000000] [--days 7] [--runs 3]
      [--exact] [--traffic 30] [--data DIR [--prepare | --only-traffic]]

Builds a database with the real migrations (tables, rollup views) and fills it with SQL
(``INSERT … SELECT … FROM numbers()``: the writer's own speed is bench_sink.py's subject):
``--interactions`` interactions over ``--days`` days, 3 prompt versions, 2 variants; thumbs
feedback on 60 % of them (70 % up), a rating on 20 %, an outcome on 20 %; latencies and times
to outcome as floats, nearly all distinct (as apps measure them); per-variant window rows per
minute; then ``--dup`` of every table inserted again as separate blocks, the way a
redelivered batch lands (duplicates stay until a merge, so ``FINAL`` has work to do).

For each query of ``feedbackloop sql --examples``: the median wall time of ``--runs`` runs
beside a baseline from the same run:
* queries reading with ``FINAL``: the same text without ``FINAL`` (the plain scan; wrong
  answers under duplicates, so it is the floor that exactness costs against);
* queries on the hourly rollups: the same question answered from the event table with
  ``FINAL`` (what the rollup saves).
Every answer of ours is also checked against the generated ground truth where it has one.

Then the reads behind ``feedbackloop ab report`` / ``impact`` / ``ab versions`` and the
dashboard (feedbackloop.analysis.reads.queries), on the same data, from the per-session report
rows (feedbackloop.sinks.report_rows: built by ``compact`` first, timed), beside the cost of
merely deduplicating what the exact queries read (``SELECT count() FROM … FINAL`` of each
table they touch); ``--exact`` also times the exact queries once and compares the answers.
``feedbackloop failures`` (newest 200,000) and the dashboard's failures panel (20,000) are
among those reads: counted in ClickHouse by slice attributes and stored input labels
(labelled first, timed); ``--exact`` compares their reports with the analysis of every
interaction read into Python, which is then timed on its own (read, analysis), as
``complaints`` and the exports still read.
Then 10,000 late thumbs: a report before the next compaction
(more sessions touched than a read recomputes: exact path), the compaction round, a report
after it. ``--skip-analyst`` leaves out the analyst queries.

``--traffic SECONDS``: every report again while a writer inserts ``--write-rate``
interactions/s (their feedback and outcomes as above) and ``--late-rate`` late thumbs/s on old
interactions, every ``--write-tick`` seconds (default: as often as the sink flushes,
``sink_max_age``; sessions 6-10 wrote every 0.2 s), and the sink worker's compactor runs every
``--compact-every`` seconds (default: the sink worker's), standing aside while a read's
statements run as it does in the sink (``--no-yield``: it never does): ours (totals plus the
sessions touched since the last compaction, recomputed in the read) beside ``count() FINAL``,
both timed during the traffic, with the sessions touched at the read, how many exact-path
statements it ran, and how many times per read it looked for the moment the totals agree
with the session rows (1: at once; more: it waited for a round's checkpoint, or ran a
statement again; derived.py) (``BENCH_STATEMENTS=1`` prints each statement's time).

The reads run their independent statements side by side (derived.READ_LANES), each thread
on a read-only client of its own, as the sink worker's query endpoint serves them;
``--sequential`` runs them one after the other (the reads before the lanes).

Storage: the event tables, the report rows and their lookup copies on disk (compressed).

``--data DIR`` keeps the database: ``--prepare`` only fills it and builds its report rows
(``--chunk`` sessions per compaction step), later runs read it as it is (``--only-traffic``:
``failures``, then the traffic part).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from feedbackloop.analysis.failures.analyze import failure_report
from feedbackloop.analysis.failures.records import read_judged_interactions
from feedbackloop.analysis.failures.slice_counts import read_slice_counts
from feedbackloop.analysis.reads import (
    Scope,
    fetch_experiment,
    fetch_impact,
    fetch_satisfaction_over_time,
    fetch_version_totals,
    fetch_versions,
)
from feedbackloop.analysis.reads.analyst_queries import ANALYST_QUERIES, analyst_query
from feedbackloop.config import default_of
from feedbackloop.infra import get_client
from feedbackloop.sinks import migrate
from feedbackloop.sinks.input_labels import label_inputs
from feedbackloop.sinks.query import READ_SETTINGS, ThreadRunner, execute, reading
from feedbackloop.sinks.report_rows import (
    CHUNK_SESSIONS,
    OVERLAP_MS,
    Compactor,
    compact,
    touched_sql,
)
from feedbackloop.sinks.worker import SinkConfig

DB = "benchq"

# Deterministic ids: row n's interaction id, and its feedback / outcome event ids.
_IID = "reinterpretAsUUID(sipHash128('i', number))"


def _templates(client: Any, n: int, days: int) -> tuple[str, str, str, str]:
    """``INSERT … SELECT FROM numbers({lo}, {size})`` of interactions, their feedback and
    outcomes (interaction ``number``: session ``number / 3``), and the window rows."""
    span_ms = days * 86_400_000 - 3_600_000  # ends an hour inside the queries' "last N days"
    # One fixed start: a redelivered event is byte-identical, occurred_at included.
    now = client.query("SELECT toString(now64(3))").result_rows[0][0]
    start = f"toDateTime64('{now}', 3, 'UTC') - toIntervalMillisecond({span_ms})"
    t = f"{start} + toIntervalMillisecond(intDiv(number * {span_ms}, {n}))"
    inter = f"""
INSERT INTO {DB}.interactions
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, model,
     prompt_version, experiment, variant, user_input, response, latency_ms, input_tokens,
     output_tokens, cost_usd, input_language, input_chars, response_chars,
     input_length_bucket, kafka_topic, kafka_offset, _version)
SELECT {_IID}, {t}, 'app1', concat('s', toString(intDiv(number, 3))), 1, {_IID},
       ['m-small', 'm-large'][1 + number % 2], concat('p', toString(number % 3)), 'exp1',
       ['control', 'treatment'][1 + sipHash64('v', intDiv(number, 3)) % 2],
       concat('How do I frobnicate widget ', toString(number), '?'),
       concat('To frobnicate widget ', toString(number), ', first ...'),
       150 + (sipHash64('l', number) % 2500000000) / 1e6, 40, 120, 0.0012, 'en', 40, 120,
       'short', 'bench', number, 1
FROM numbers({{lo}}, {{size}})"""
    # Feedback on 60 %: thumbs (70 % up) and, on a third of those, a rating.
    fb = f"""
INSERT INTO {DB}.feedback
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, kind, thumbs,
     rating, enrichment, model, prompt_version, experiment, variant, input_language,
     kafka_topic, kafka_offset, _version)
SELECT reinterpretAsUUID(sipHash128(kind, number)), {t} + toIntervalSecond(5), 'app1',
       concat('s', toString(intDiv(number, 3))), 1, {_IID}, kind,
       if(kind = 'thumbs', if(sipHash64('u', number) % 100 < 70, 1, -1), 0),
       if(kind = 'rating', toUInt8(1 + sipHash64('r', number) % 5), NULL), 'enriched',
       ['m-small', 'm-large'][1 + number % 2], concat('p', toString(number % 3)), 'exp1',
       ['control', 'treatment'][1 + sipHash64('v', intDiv(number, 3)) % 2], 'en', 'bench',
       number, 2
FROM numbers({{lo}}, {{size}}) ARRAY JOIN
     arrayFilter(k -> (k = 'thumbs' AND number % 5 < 3) OR (k = 'rating' AND number % 5 = 0),
                 ['thumbs', 'rating']) AS kind"""
    out = f"""
INSERT INTO {DB}.outcomes
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, outcome, value,
     time_to_outcome_ms, enrichment, model, prompt_version, experiment, variant, kafka_topic,
     kafka_offset, _version)
SELECT reinterpretAsUUID(sipHash128('o', number)), {t} + toIntervalSecond(60), 'app1',
       concat('s', toString(intDiv(number, 3))), 1, {_IID}, 'task_completed', 1.0,
       (sipHash64('t', number) % 3600000000) / 1e3, 'enriched',
       ['m-small', 'm-large'][1 + number % 2], concat('p', toString(number % 3)), 'exp1',
       ['control', 'treatment'][1 + sipHash64('v', intDiv(number, 3)) % 2], 'bench', number, 2
FROM numbers({{lo}}, {{size}}) WHERE number % 5 = 1"""
    minutes = days * 1440
    windows = f"""
INSERT INTO {DB}.window_aggregates
    (window_start, window_end, app_id, experiment, variant, prompt_version, model,
     source_partition, revision, emitted_at, interactions, latency_count, latency_sum,
     thumbs_up, thumbs_down, rating_count, rating_sum)
SELECT toStartOfMinute(now64(3)) - toIntervalMinute({minutes} - intDiv(number, 24)) AS ws,
       ws + toIntervalMinute(1), 'app1', 'exp1', ['control', 'treatment'][1 + number % 2],
       concat('p', toString(intDiv(number, 2) % 3)),
       ['m-small', 'm-large'][1 + intDiv(number, 6) % 2],
       intDiv(number, 12) % 2, 1, ws, 10, 10, 2500, 4, 2, 2, 7
FROM numbers({minutes * 24})"""
    return inter, fb, out, windows


def _fill(client: Any, n: int, days: int, dup: float, chunk: int = 500_000) -> dict[str, int]:
    inter, fb, out, windows = _templates(client, n, days)
    for lo in range(0, n, chunk):
        size = min(chunk, n - lo)
        for sql in (inter, fb, out):
            client.command(sql.format(lo=lo, size=size))
    client.command(windows)
    # Redelivery: the first `dup` share of every table again, in blocks of its own.
    extra = int(n * dup)
    for lo in range(0, extra, chunk):
        size = min(chunk, extra - lo)
        for sql in (inter, fb, out):
            client.command(sql.format(lo=lo, size=size))
    counts = {}
    for table in ("interactions", "feedback", "outcomes", "window_aggregates"):
        counts[table] = client.query(f"SELECT count() FROM {DB}.{table}").result_rows[0][0]
    return counts


def _filled(client: Any, n: int, days: int, dup: float) -> dict[str, int]:
    """``_fill`` unless the database already holds ``n`` interactions (a kept ``--data``;
    more once a ``--traffic`` run wrote to it)."""
    have = client.query(f"SELECT uniqExact(event_id) FROM {DB}.interactions").result_rows[0][0]
    if have >= n:
        return {
            t: client.query(f"SELECT count() FROM {DB}.{t}").result_rows[0][0]
            for t in ("interactions", "feedback", "outcomes", "window_aggregates")
        }
    if have:
        sys.exit(f"the kept database holds {have:,} interactions, < {n:,}: use another --data")
    return _fill(client, n, days, dup)


# Rollup query -> the same question from the event table (its baseline).
_ROLLUP_BASELINES = {
    "satisfaction-by-day-rollup": analyst_query("satisfaction-by-day").sql,
    "latency-by-model": """\
SELECT toDate(occurred_at) AS day, model, prompt_version, count() AS n,
       quantilesTDigest(0.5, 0.9, 0.99)(latency_ms) AS latency_p50_p90_p99
FROM interactions FINAL
WHERE NOT shadow
GROUP BY day, model, prompt_version
ORDER BY day, model, prompt_version""",
}


def _storage(client: Any) -> None:
    """Bytes on disk (compressed) of the event tables, the report rows and their lookups."""
    sizes = dict(
        client.query(
            f"SELECT multiIf(table LIKE 'report_lookup_%', 'lookup copies',"
            f" table LIKE 'report_input_labels%', 'input labels',"
            f" table = 'report_interaction_signals', 'interaction signals', table LIKE 'report_%',"
            f" 'report rows', table IN ('interactions', 'feedback', 'implicit', 'outcomes'),"
            f" 'event tables', 'other') AS kind, sum(bytes_on_disk) FROM system.parts"
            f" WHERE active AND database = '{DB}' GROUP BY kind"
        ).result_rows
    )
    print(
        "storage: "
        + ", ".join(
            f"{k} {sizes.get(k, 0) / 2**20:,.0f} MiB"
            for k in (
                "event tables",
                "report rows",
                "lookup copies",
                "input labels",
                "interaction signals",
            )
        )
    )


def _baseline(name: str, sql: str) -> tuple[str, str] | None:
    if name in _ROLLUP_BASELINES:
        return "event table, FINAL", _ROLLUP_BASELINES[name]
    if " FINAL" in sql:
        return "same without FINAL", sql.replace(" FINAL", "")
    return None


def _time(client: Any, sql: str, runs: int) -> tuple[float, list[tuple[Any, ...]]]:
    return _time_call(lambda: client.query(sql).result_rows, runs)


def _check(name: str, rows: list[tuple[Any, ...]], n: int) -> str:
    """Ground truth of the generated data, where the query has one."""
    if name == "latency-by-model":
        got = sum(r[3] for r in rows)
        return "ok" if got == n else f"WRONG: {got} interactions, expected {n}"
    if name == "outcome-rates":
        got = sum(r[3] for r in rows)
        want = len(range(1, n, 5))
        return "ok" if got == want else f"WRONG: {got} outcomes, expected {want}"
    if name in ("satisfaction-by-day", "satisfaction-by-day-rollup"):
        got = sum(r[3] + r[4] for r in rows)
        want = sum(1 for i in range(n) if i % 5 < 3)
        return "ok" if got == want else f"WRONG: {got} thumbs, expected {want}"
    if name == "failures-by-prompt-version":
        got = sum(r[1] for r in rows)
        return "ok" if got == n else f"WRONG: {got} interactions, expected {n}"
    return ""


def _time_call(fn: Any, runs: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _failure_slices(q: Any, limit: int, exact: bool) -> dict[str, Any]:
    """``feedbackloop failures`` (``limit`` 200,000) or the dashboard's failures panel
    (20,000): the counts read and the report over them; ``exact``: every interaction read
    into Python and analysed (the read before input labels, still what ``complaints`` uses)."""

    def run(sql: str, max_rows: int) -> list[list[Any]]:
        return execute(q, sql, max_rows=max_rows).rows

    scope = Scope(limit=limit)
    if exact:
        read: Any = read_judged_interactions(run, scope, DB)
    else:
        read = read_slice_counts(run, scope, DB)
    return failure_report(read, limit=limit).to_dict()


def _reads(runner: Any, q: Any) -> list[tuple[str, Any, tuple[str, ...]]]:
    """(name, read(exact), tables the exact query reads) of every report and panel."""
    scope = Scope(experiment="exp1")
    slices = ("interactions", "feedback", "implicit")
    return [
        ("failures (newest 200,000)", lambda e: _failure_slices(q, 200_000, e), slices),
        ("failures panel (20,000)", lambda e: _failure_slices(q, 20_000, e), slices),
        (
            "ab report (experiment stats)",
            lambda e: fetch_experiment(runner, scope, exact=e),
            ("interactions", "feedback", "implicit", "outcomes"),
        ),
        ("impact", lambda e: fetch_impact(runner, scope, exact=e), ("interactions", "outcomes")),
        (
            "ab versions",
            lambda e: fetch_versions(runner, Scope(), exact=e),
            ("interactions", "feedback"),
        ),
        (
            "version totals",
            lambda e: fetch_version_totals(runner, Scope(), exact=e),
            ("interactions", "feedback"),
        ),
        (
            "satisfaction over time (1 h)",
            lambda e: fetch_satisfaction_over_time(runner, scope, 3600, exact=e),
            ("interactions", "feedback"),
        ),
    ]


class _Writer:
    """Steady traffic into the event tables while reports are read: every ``tick`` seconds,
    new sessions' interactions with their feedback (60 %) and outcomes (20 %), as the fill
    makes them, and late thumbs on old interactions (``late`` per second), under the lock
    the compactor (the sink worker's, every second) also takes, as the sink's flushes do.

    A tick costs what a sink flush of the same events costs (measured: 0.11-0.14 CPU s
    each, docs/PERFORMANCE.md), and the sink flushes a batch once it is ``sink_max_age``
    old, the default ``--write-tick``: at these rates its batches never fill up."""

    def __init__(
        self,
        where: str,
        n: int,
        days: int,
        rate: int,
        late: int,
        lock: threading.Lock,
        tick: float,
    ) -> None:
        self.client = get_client(f"chdb://{where}")
        self.templates = _templates(self.client, n, days)[:3]
        self.next, self.rate, self.late, self.lock, self.tick = n, rate, late, lock, tick
        self.late_next, self.n = 0, n
        self.inserted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()

    def _run(self) -> None:
        tick = self.tick
        while not self._stop.wait(tick):
            size, late = max(1, int(self.rate * tick)), max(1, int(self.late * tick))
            with self.lock:
                for sql in self.templates:
                    self.client.command(sql.format(lo=self.next, size=size))
                self.client.command(_late_thumbs_sql(self.late_next, late, step=7919, tag="steady"))
            self.next += size
            self.late_next = (self.late_next + late) % max(1, self.n // 7919)
            self.inserted += size


def _under_traffic(
    where: str,
    q: Any,
    reader: ThreadRunner,
    n: int,
    days: int,
    rate: int,
    late: int,
    seconds: float,
    runs: int,
    every: float,
    tick: float,
    no_yield: bool,
) -> None:
    """Every report read while ``_Writer`` inserts and the compactor runs: ours (the totals
    plus the sessions touched since the last compaction, recomputed in the read) beside
    ``count() FINAL`` of the tables the exact query reads, both timed during the traffic."""
    touched_n = f"SELECT count() AS n FROM ({touched_sql().replace('{db}.', '')})"
    paths = {"exact": 0, "rows": 0, "settle": 0}
    counting = threading.Lock()  # the reads' lanes call the runner side by side

    def runner(sql: str) -> Any:
        with counting:
            if " FINAL" in sql and "_sessions" not in sql:
                paths["exact"] += 1
            # a read's first look for a checkpoint, a wait for one, or a statement run again
            paths["settle"] += " AS settled" in sql
        t0 = time.perf_counter()
        out = reader(sql)
        if os.environ.get("BENCH_STATEMENTS"):
            print(f"    {time.perf_counter() - t0:7.3f} s  {' '.join(sql.split())[:90]}")
        return out

    runner.concurrent = reader.concurrent  # type: ignore[attr-defined]

    lock = threading.Lock()
    writer = _Writer(where, n, days, rate, late, lock, tick)
    compactor = Compactor(
        lambda: get_client(f"chdb://{where}"),
        DB,
        every,
        lock,
        reading=None if no_yield else reading,
    )
    writer.start()
    compactor.start()
    try:
        time.sleep(5)  # the compactor's first rounds
        print(
            f"under traffic: {rate:,} interactions/s (+ their feedback and outcomes) and "
            f"{late:,} late thumbs/s, written every {tick:g} s, compactor every {every:g} s"
        )
        print(
            f"{'analysis read':30} {'ours s':>8} {'baseline s':>11} {'ratio':>6} "
            f"{'touched':>8} {'exact':>6} {'settle':>6} {'load':>5}"
        )
        t_end = time.monotonic() + seconds
        while True:
            for name, fn, tables in _reads(runner, q):
                paths["exact"] = paths["settle"] = 0
                touched = int(q.query(touched_n).result_rows[0][0])
                ours, _ = _time_call(lambda fn=fn: fn(False), runs)
                dedup = " UNION ALL ".join(f"SELECT count() FROM {t} FINAL" for t in tables)
                base, _ = _time(q, dedup, runs)
                print(
                    f"{name:30} {ours:8.3f} {base:11.3f} {ours / base:6.2f} {touched:8,} "
                    f"{paths['exact']:>6} {paths['settle'] / runs:6.1f} {os.getloadavg()[0]:5.2f}"
                )
            if time.monotonic() > t_end:
                break
    finally:
        writer.stop()
        compactor.stop()
    last = compactor.last
    print(
        f"traffic: {writer.inserted:,} interactions inserted; compactor: last round "
        f"{last.seconds if last else float('nan'):.2f} s ({last.sessions if last else 0:,} "
        f"sessions), {compactor.failures} failed rounds, "
        f"{compactor.gate.waited:.1f} s stood aside for reads"
    )


def _label(client: Any) -> None:
    """Every input labelled, timed (the compactor's labeller does :data:`LABEL_BATCH` per call)."""
    t0, n = time.perf_counter(), 0
    while done := label_inputs(client, DB, batch=200_000):
        n += done
    took = time.perf_counter() - t0
    print(f"input labels: {n:,} labelled in {took:.1f} s ({n / max(took, 1e-9):,.0f}/s)")


def _analysis_reads(
    client: Any, q: Any, reader: ThreadRunner, n: int, runs: int, exact: bool
) -> bool:
    """Time the analysis layer's reads from the report rows (and, with ``exact``, by
    re-joining the events, one run); True if an answer is wrong."""

    runner = reader
    # The sink worker's compactor keeps the report rows current; here: one round for
    # everything just loaded, timed, then one more so that nothing is left to recompute.
    built = compact(client, DB)
    time.sleep(OVERLAP_MS / 1000 + 1)
    compact(client, DB)
    print(
        f"report rows built in {built.seconds:.1f} s ({built.sessions:,} sessions); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    _label(client)
    # A kept --data that a --traffic run wrote to holds more than --interactions (and a
    # second such run writes the same event ids again at other times: more rows still).
    stored = int(client.command(f"SELECT count() FROM {DB}.interactions FINAL"))
    reads = _reads(runner, q)
    print(
        f"{'analysis read':30} {'ours s':>8} {'baseline s':>11} {'ratio':>6} {'exact s':>8} "
        f"{'load':>5}  baseline / check"
    )
    wrong = False
    for name, fn, tables in reads:
        ours, out = _time_call(lambda fn=fn: fn(False), runs)
        dedup = " UNION ALL ".join(f"SELECT count() FROM {t} FINAL" for t in tables)
        base, _ = _time(q, dedup, runs)
        old = "-"
        if exact:
            t_exact, want = _time_call(lambda fn=fn: fn(True), 1)
            old = f"{t_exact:.3f}"
            if not _same(want, out):
                wrong = True
                old += " DIFFERS"
        check = ""
        if name.startswith("ab report"):
            got = sum(v.interactions for v in out.variants.values())
            check = "ok" if got == stored else f"WRONG: {got} interactions, expected {stored}"
            wrong |= got != stored
        print(
            f"{name:30} {ours:8.3f} {base:11.3f} {ours / base:6.2f} {old:>8} "
            f"{os.getloadavg()[0]:5.2f}  count() FINAL of {', '.join(tables)}; {check}"
        )
    _failures(q, runs)
    _late_feedback(client, q, runner, n)
    return wrong


def _failures(q: Any, runs: int) -> None:
    """The failures read by interaction (what ``failures`` read before input labels, and what
    ``complaints`` and the exports read): every signal of the newest 200,000 interactions,
    with their texts' heads, into Python objects, then the failure analysis over them,
    beside ``count() FINAL`` of the tables it reads (``BENCH_STATEMENTS=1`` prints each
    statement's time)."""

    def run(sql: str, max_rows: int) -> list[list[Any]]:
        t0 = time.perf_counter()
        out = execute(q, sql, max_rows=max_rows).rows
        if os.environ.get("BENCH_STATEMENTS"):
            print(f"    {time.perf_counter() - t0:7.3f} s  {' '.join(sql.split())[:90]}")
        return out

    ours, judged = _time_call(lambda: read_judged_interactions(run, Scope(), DB), runs)
    tables = ("interactions", "feedback", "implicit")
    base, _ = _time(q, " UNION ALL ".join(f"SELECT count() FROM {t} FINAL" for t in tables), runs)
    print(
        f"{'per-interaction read (200,000)':30} {ours:8.3f} {base:11.3f} {ours / base:6.2f} "
        f"{'-':>8} {os.getloadavg()[0]:5.2f}  count() FINAL of {', '.join(tables)}; "
        f"{len(judged):,} rows"
    )
    analysis, _ = _time_call(lambda: failure_report(judged, limit=Scope().limit), runs)
    print(
        f"{'per-interaction analysis':30} {analysis:8.3f} {'-':>11} {'-':>6} {'-':>8} "
        f"{os.getloadavg()[0]:5.2f}  slices of the rows read (language, pairs)"
    )


def _same(a: Any, b: Any) -> bool:
    """Equal up to float summation order (1e-9 relative), NaN equal to NaN."""
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return _same(dataclasses.asdict(a), dataclasses.asdict(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) or isinstance(b, float):
        both_nan = math.isnan(a) and math.isnan(b)
        return both_nan or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    return bool(a == b)


def _late_thumbs_sql(lo: int, size: int, step: int = 97, tag: str = "late") -> str:
    """Thumbs down, now, on interactions ``step * k`` for k in [lo, lo + size)."""
    return f"""
INSERT INTO {DB}.feedback
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, kind, thumbs,
     enrichment, experiment, variant, kafka_topic, kafka_offset, _version)
SELECT reinterpretAsUUID(sipHash128('{tag}', number)), now64(3), 'app1',
       concat('s', toString(intDiv(number * {step}, 3))), 1,
       reinterpretAsUUID(sipHash128('i', number * {step})), 'thumbs', -1, 'enriched', 'exp1',
       ['control', 'treatment'][1 + sipHash64('v', intDiv(number * {step}, 3)) % 2], 'bench',
       number, 2
FROM numbers({lo}, {size})"""


def _late_feedback(client: Any, q: Any, runner: Any, n: int, late: int = 10_000) -> None:
    """What a change costs: ``late`` thumbs on old interactions, read before the compaction
    (the read recomputes the changed sessions) and after it; and the compaction round."""
    client.command(_late_thumbs_sql(0, min(late, n // 97)))
    scope = Scope(experiment="exp1")
    fresh, _ = _time_call(lambda: fetch_experiment(runner, scope), 1)
    rnd = compact(client, DB)
    time.sleep(OVERLAP_MS / 1000 + 1)
    compact(client, DB)
    after, _ = _time_call(lambda: fetch_experiment(runner, scope), 1)
    print(
        f"{min(late, n // 97):,} late thumbs: ab report before compaction {fresh:.3f} s, "
        f"compaction round {rnd.seconds:.2f} s ({rnd.sessions:,} sessions), "
        f"ab report after {after:.3f} s; load average {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--dup", type=float, default=0.05, help="share inserted twice")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--exact", action="store_true", help="also time the exact reads (one run) and compare"
    )
    ap.add_argument("--tmp", default=None, help="where the data directory goes")
    ap.add_argument(
        "--data",
        default=None,
        help="a data directory to keep: filled (and its report rows built) on the first run, "
        "read as it is on later runs with the same --interactions",
    )
    ap.add_argument(
        "--traffic",
        type=float,
        default=0.0,
        help="seconds of reads under steady traffic (0: skip), after the quiet reads",
    )
    ap.add_argument(
        "--only-traffic",
        action="store_true",
        help="skip the quiet reads (a kept --data): failures once, then the traffic part",
    )
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="the report reads run their statements one after the other (no lanes)",
    )
    ap.add_argument("--write-rate", type=int, default=500, help="interactions/s under traffic")
    ap.add_argument(
        "--compact-every",
        type=float,
        default=SinkConfig.compact_interval_s,
        help="seconds between compaction rounds under traffic (the sink worker's default)",
    )
    ap.add_argument(
        "--write-tick",
        type=float,
        default=default_of("sink_max_age"),
        help="seconds between the traffic's inserts (default: as often as the sink flushes)",
    )
    ap.add_argument(
        "--no-yield",
        action="store_true",
        help="the compactor never stands aside for the reads (report_rows._Yield)",
    )
    ap.add_argument("--late-rate", type=int, default=50, help="late thumbs/s under traffic")
    ap.add_argument(
        "--chunk",
        type=int,
        default=CHUNK_SESSIONS,
        help="sessions per compaction step when --prepare builds the rows from scratch "
        "(each step scans the event tables once: larger is faster, and takes more memory)",
    )
    ap.add_argument(
        "--prepare",
        action="store_true",
        help="only fill --data and build its report rows (then time it with later runs)",
    )
    ap.add_argument("--skip-analyst", action="store_true", help="only the analysis reads")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-queries-", dir=args.tmp) as tmp:
        where = args.data or os.path.join(tmp, "ch")
        client = get_client(f"chdb://{where}")
        migrate(client, DB)
        t0 = time.perf_counter()
        counts = _filled(client, args.interactions, args.days, args.dup)
        fill_s = time.perf_counter() - t0
        print(
            f"load average {os.getloadavg()[0]:.2f}; filled in {fill_s:.1f} s: "
            + ", ".join(f"{t} {c:,}" for t, c in counts.items())
            + f" ({args.dup:.0%} inserted twice)"
        )
        if args.prepare:
            built = compact(client, DB, args.chunk)
            print(f"report rows built in {built.seconds:.1f} s ({built.sessions:,} sessions)")
            time.sleep(OVERLAP_MS / 1000 + 1)
            _label(client)
            _storage(client)
            return
        q = get_client(f"chdb://{where}", database=DB, settings=READ_SETTINGS)
        reader = ThreadRunner(
            lambda: get_client(f"chdb://{where}", database=DB, settings=READ_SETTINGS)
        )
        reader.concurrent = not args.sequential
        print(f"{'query':30} {'ours s':>8} {'baseline s':>11} {'ratio':>6}  baseline / check")
        failed = False
        for aq in () if args.skip_analyst else ANALYST_QUERIES:
            ours, rows = _time(q, aq.sql, args.runs)
            base = _baseline(aq.name, aq.sql)
            check = _check(aq.name, rows, args.interactions)
            failed |= check.startswith("WRONG")
            if base is None:
                print(f"{aq.name:30} {ours:8.3f} {'-':>11} {'-':>6}  {check}")
                continue
            label, sql = base
            b, _ = _time(q, sql, args.runs)
            print(f"{aq.name:30} {ours:8.3f} {b:11.3f} {ours / b:6.2f}  {label}; {check}")
        if args.only_traffic:
            compact(client, DB)
            _label(client)
            _failures(q, args.runs)
        else:
            failed |= _analysis_reads(client, q, reader, args.interactions, args.runs, args.exact)
        if args.traffic > 0:
            _under_traffic(
                where,
                q,
                reader,
                args.interactions,
                args.days,
                args.write_rate,
                args.late_rate,
                args.traffic,
                args.runs,
                args.compact_every,
                args.write_tick,
                args.no_yield,
            )
        reader.close()
        _storage(client)
        print(f"load average {os.getloadavg()[0]:.2f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
