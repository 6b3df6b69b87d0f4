"""The benchmarks stay runnable: each at a small size, its output lines and checks in place.

The figures themselves are not asserted (machines are noisy; docs/PERFORMANCE.md holds the
measured ones); what is asserted is that each benchmark runs end to end, prints our figure
beside its baseline, and that every correctness check it makes passes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feedbackloop.analysis.reads.analyst_queries import ANALYST_QUERIES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _run(script: str, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_bench_queries_runs_every_example_and_its_checks_pass() -> None:
    out = _run("bench_queries.py", "--interactions", "30000", "--runs", "1")
    lines = out.splitlines()
    for q in ANALYST_QUERIES:
        assert any(line.startswith(q.name + " ") for line in lines), q.name
    assert "WRONG" not in out
    assert sum(line.endswith("; ok") for line in lines) == 6  # 5 examples + ab report


def test_bench_shadow_prints_the_report_beside_count_final_and_its_check_passes() -> None:
    out = _run("bench_shadow.py", "--interactions", "20000", "--runs", "1")
    assert "shadow report, total" in out and "count() FINAL of interactions" in out
    assert "check: ok (2,000 pairs" in out and "WRONG" not in out


def test_bench_sdk_prints_ours_beside_raw_produce() -> None:
    out = _run("bench_sdk.py", "--events", "5000")
    assert "sustained: ours delivers" in out and "raw" in out


def test_bench_stream_prints_ours_beside_raw_aiokafka() -> None:
    out = _run("bench_stream.py", "--events", "5000")
    assert "ours (validate+enrich+windows):" in out and "ratio ours/baseline:" in out
    assert "'records_in': 5000" in out and "'dead_letters': 0" in out


def test_bench_sink_writer_and_both_latency_paths() -> None:
    out = _run(
        "bench_sink.py",
        *("--rows", "4000", "--rate", "1000", "--seconds", "2", "--lookup-sizes", "0,20000"),
    )
    for mode in ("enriched", "raw"):
        assert f"[{mode}] writer into embedded chDB:" in out
        assert f"[{mode}] raw client.insert, same rows:" in out
    assert "[identity] lookup of 500 new ids among 20,000 stored:" in out
    assert "[latency, SDK -> stream jobs -> enriched topic -> sink (the default pipeline)]" in out
    assert "[latency, SDK -> raw topic -> sink run --raw]" in out
    # every event sent in the timed span was stored, on both paths
    assert out.count(" achieved, 2,000 rows): p50") == 2


def test_bench_integrations_prints_wrapped_beside_bare_and_otlp_beside_json() -> None:
    out = _run("bench_integrations.py", "--calls", "50", "--spans", "1000")
    for api in ("openai chat", "openai chat, stream", "anthropic messages"):
        assert any(line.startswith(api + " ") for line in out.splitlines()), api
    assert "the wrapper's own work" in out
    assert "failed 0, dropped 0" in out
    assert "OTLP protobuf spans /v1/traces" in out and "ratio OTLP / JSON" in out


def test_bench_durable_prints_durable_beside_memory_and_the_restart_figures() -> None:
    out = _run(
        "bench_durable.py",
        "--sdk-events",
        "4000",
        "--stream-events",
        "4000",
        "--rate",
        "500",
        "--seconds",
        "2",
        "--log-events",
        "5000",
        "--skip",
        "latency",  # the pipeline's latency path runs in test_bench_sink_... above
    )
    assert "durable/memory" in out
    for label in ("SDK enqueue, events/s", "stream jobs, events/s", "raw aiokafka consume"):
        assert label in out
    assert "durable restart with 5,000 events in the log" in out
    assert "read 5,000 back" in out


def test_bench_verdicts_prints_ours_beside_the_rule_before_and_naive_peeking() -> None:
    out = _run("bench_verdicts.py", "--sims", "10", "--chdb", "1")
    assert "| ours: compare_counts, 10^8 per arm" in out and "ratio ours / raw z-test" in out
    assert "before issue 14 | naive peeking |" in out
    assert "| every 250 sessions to 2,000 | " in out and "| 8/8 |" in out
