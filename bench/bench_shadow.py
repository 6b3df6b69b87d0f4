"""Shadow report benchmark: ``feedbackloop shadow report`` at a million live interactions.

Run:  .venv/bin/python bench/bench_shadow.py [--interactions 1000000] [--shadowed 0.1] [--runs 3]

Builds a database with the real migrations and fills it with SQL (``INSERT … SELECT … FROM
numbers()``; the writer's speed is bench_sink.py's subject): ``--interactions`` live
interactions in sessions of three over the last day, a ``--shadowed`` share of them shadowed by
one candidate (its answer a variation of the live one; on code inputs, the users' correction),
thumbs on 60 % of the live answers (70 % up), a correction on 15 %, a copy on 20 %, a
regenerate on 5 %, an outcome on 20 %; then 5 % of every table inserted again as separate
blocks (a redelivery: ``FINAL`` has duplicates to remove).

Prints, from the same run (median of ``--runs``):

* the read (:func:`~feedbackloop.analysis.reads.shadow.fetch_shadow_pairs`: SQL and rows into
  Python), the judging (:func:`~feedbackloop.analysis.reports.shadow.build_shadow_report`:
  similarity, statistics, slices) and their sum, which is what the command costs;
* beside the baseline: ``SELECT count() FROM … FINAL`` of each table the report reads (the
  cost of merely deduplicating those rows), and the ratio;
* a check of the report against the generated ground truth (pairs, corrected pairs, and the
  planted win on code inputs).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from feedbackloop.analysis.reads.shadow import (
    ShadowScope,
    fetch_shadow_pairs,
    fetch_shadow_totals,
)
from feedbackloop.analysis.reports.shadow import build_shadow_report
from feedbackloop.infra import get_client
from feedbackloop.sinks import migrate
from feedbackloop.sinks.query import execute

DB = "benchshadow"
_IID = "reinterpretAsUUID(sipHash128('i', number))"
_CORRECTED = "sipHash64('c', number) % 100 < 15"
_CODE = "number % 7 = 0"
TABLES = ("interactions", "feedback", "implicit", "outcomes")


def _fill(client: Any, n: int, shadowed: float, dup: float, chunk: int = 250_000) -> dict[str, Any]:
    span_ms = 86_400_000 - 3_600_000
    now = client.query("SELECT toString(now64(3))").result_rows[0][0]
    start = f"toDateTime64('{now}', 3, 'UTC') - toIntervalMillisecond({span_ms})"
    t = f"{start} + toIntervalMillisecond(intDiv(number * {span_ms}, {n}))"
    every = max(1, round(1 / shadowed))
    session = "concat('s', toString(intDiv(number, 3)))"
    correction = (
        f"if({_CODE}, 'Build a new list with a comprehension: xs = [x for x in xs if keep(x)].',"
        " concat('Open Settings, then Security, and choose Reset password for account ',"
        " toString(number % 97), '.'))"
    )
    live = f"""
INSERT INTO {DB}.interactions
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, model,
     prompt_version, user_input, response, latency_ms, input_tokens, output_tokens, cost_usd,
     metadata, shadow, input_language, input_has_code, input_chars, response_chars,
     input_length_bucket, kafka_topic, kafka_offset, _version)
SELECT {_IID}, {t}, 'app1', {session}, 1, {_IID}, 'm-live', 'v1',
       if({_CODE}, 'Why does this fail? for i in range(len(xs)): xs.remove(xs[i])',
          concat('How do I reset the password of account ', toString(number % 97), '?')),
       if({_CODE}, 'Try calling xs.clear() before the loop starts.',
          concat('You can reset the password of account ', toString(number % 97),
                 ' from the Security page in Settings.')),
       200 + number % 300, 40, 120, 0.0012, map('plan', ['free', 'pro'][1 + number % 2]), false,
       ['en', 'de', 'fr'][1 + number % 3], {_CODE}, 40, 80, 's', 'bench', number, 1
FROM numbers({{lo}}, {{size}})"""
    shadow = f"""
INSERT INTO {DB}.interactions
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, model,
     prompt_version, user_input, response, latency_ms, input_tokens, output_tokens, cost_usd,
     metadata, shadow, input_language, input_has_code, input_chars, response_chars,
     input_length_bucket, kafka_topic, kafka_offset, _version)
SELECT reinterpretAsUUID(sipHash128('sh', number)), {t} + toIntervalMillisecond(300), 'app1',
       {session}, 1, reinterpretAsUUID(sipHash128('sh', number)), 'm-cand', 'cand', '',
       if({_CODE}, {correction},
          concat('Reset the password of account ', toString(number % 97),
                 ' on the Security page under Settings.')),
       150 + number % 200, 40, 100, 0.0008, map('shadow_of', toString({_IID})), true,
       'und', false, 0, 80, 'empty', 'bench', number, 1
FROM numbers({{lo}}, {{size}}) WHERE number % {every} = 0"""
    fb = f"""
INSERT INTO {DB}.feedback
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, kind, thumbs,
     text, enrichment, model, prompt_version, input_language, kafka_topic, kafka_offset,
     _version)
SELECT reinterpretAsUUID(sipHash128(kind, number)), {t} + toIntervalSecond(5), 'app1',
       {session}, 1, {_IID}, kind,
       if(kind = 'thumbs', if({_CORRECTED} OR sipHash64('u', number) % 100 >= 70, -1, 1), 0),
       if(kind = 'correction', {correction}, ''), 'enriched', 'm-live', 'v1', 'en', 'bench',
       number, 2
FROM numbers({{lo}}, {{size}}) ARRAY JOIN
     arrayFilter(k -> (k = 'thumbs' AND sipHash64('th', number) % 5 < 3)
                      OR (k = 'correction' AND {_CORRECTED}),
                 ['thumbs', 'correction']) AS kind"""
    im = f"""
INSERT INTO {DB}.implicit
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, signal,
     copied_chars, enrichment, model, prompt_version, input_language, kafka_topic,
     kafka_offset, _version)
SELECT reinterpretAsUUID(sipHash128(signal, number)), {t} + toIntervalSecond(3), 'app1',
       {session}, 1, {_IID}, signal, if(signal = 'copy', 30, NULL), 'enriched', 'm-live', 'v1',
       'en', 'bench', number, 2
FROM numbers({{lo}}, {{size}}) ARRAY JOIN
     arrayFilter(k -> (k = 'copy' AND sipHash64('cp', number) % 5 = 1 AND NOT {_CORRECTED})
                      OR (k = 'regenerate' AND sipHash64('rg', number) % 20 = 2),
                 ['copy', 'regenerate']) AS signal"""
    out = f"""
INSERT INTO {DB}.outcomes
    (event_id, occurred_at, app_id, session_id, schema_version, interaction_id, outcome, value,
     enrichment, model, prompt_version, kafka_topic, kafka_offset, _version)
SELECT reinterpretAsUUID(sipHash128('o', number)), {t} + toIntervalSecond(60), 'app1',
       {session}, 1, {_IID}, 'task_completed', 1.0, 'enriched', 'm-live', 'v1', 'bench', number, 2
FROM numbers({{lo}}, {{size}}) WHERE sipHash64('oc', number) % 5 = 4"""
    statements = (live, shadow, fb, im, out)
    for lo in range(0, n, chunk):
        size = min(chunk, n - lo)
        for sql in statements:
            client.command(sql.format(lo=lo, size=size))
    extra = int(n * dup)
    for lo in range(0, extra, chunk):
        size = min(chunk, extra - lo)
        for sql in statements:
            client.command(sql.format(lo=lo, size=size))
    counts: dict[str, Any] = {
        t: client.query(f"SELECT count() FROM {DB}.{t}").result_rows[0][0] for t in TABLES
    }
    truth = client.query(
        f"SELECT count(), countIf({_CORRECTED}), countIf({_CORRECTED} AND {_CODE}) "
        f"FROM numbers({n}) WHERE number % {every} = 0"
    ).result_rows[0]
    counts["truth"] = tuple(int(x) for x in truth)
    return counts


def _median_time(fn: Any, runs: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--interactions", type=int, default=1_000_000)
    ap.add_argument("--shadowed", type=float, default=0.1, help="share of live ones shadowed")
    ap.add_argument("--dup", type=float, default=0.05, help="share inserted twice")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-shadow-") as tmp:
        client = get_client(f"chdb://{os.path.join(tmp, 'ch')}")
        migrate(client, DB)
        t0 = time.perf_counter()
        counts = _fill(client, args.interactions, args.shadowed, args.dup)
        truth = counts.pop("truth")
        print(
            f"load average {os.getloadavg()[0]:.2f}; filled in {time.perf_counter() - t0:.1f} s: "
            + ", ".join(f"{t} {c:,}" for t, c in counts.items())
            + f" ({args.dup:.0%} inserted twice); {truth[0]:,} shadow answers"
        )
        q = get_client(f"chdb://{os.path.join(tmp, 'ch')}", database=DB)

        def runner(sql: str) -> Any:
            return execute(q, sql, max_rows=10_000_000)

        scope = ShadowScope(candidate="cand")
        read_s, pairs = _median_time(lambda: fetch_shadow_pairs(runner, scope), args.runs)
        totals_s, totals = _median_time(lambda: fetch_shadow_totals(runner, scope), args.runs)
        judge_s, rep = _median_time(
            lambda: build_shadow_report(
                pairs, scope, shadows=totals["shadows"], linked=totals["linked"]
            ),
            args.runs,
        )
        dedup = " UNION ALL ".join(f"SELECT count() FROM {t} FINAL" for t in TABLES)
        base_s, _ = _median_time(lambda: q.query(dedup).result_rows, args.runs)
        ours = read_s + totals_s + judge_s
        print(f"{'step':34} {'ours s':>8} {'baseline s':>11} {'ratio':>6}")
        print(f"{'read shadow pairs (SQL + rows)':34} {read_s + totals_s:8.3f}")
        print(f"{'judge (similarity, statistics)':34} {judge_s:8.3f}")
        print(
            f"{'shadow report, total':34} {ours:8.3f} {base_s:11.3f} {ours / base_s:6.2f}  "
            f"baseline: count() FINAL of {', '.join(TABLES)}"
        )
        n_pairs, n_corrected, n_code_corrected = truth
        problems = []
        if rep.pairs != n_pairs:
            problems.append(f"{rep.pairs:,} pairs, expected {n_pairs:,}")
        if rep.corrected.n != n_corrected:
            problems.append(f"{rep.corrected.n:,} corrected, expected {n_corrected:,}")
        if rep.corrected.result.counts.wins < n_code_corrected:
            problems.append("the planted win on corrected code inputs is missing")
        print(
            f"check: {'ok' if not problems else 'WRONG: ' + '; '.join(problems)} "
            f"({rep.pairs:,} pairs, {rep.corrected.n:,} corrected; "
            f"recommendation: {rep.recommendation})"
        )
        print(f"load average {os.getloadavg()[0]:.2f}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
