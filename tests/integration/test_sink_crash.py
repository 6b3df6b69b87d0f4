"""SIGKILL the sink worker mid-stream, restart it: every event stored once, none counted twice.

The worker runs as a child process (``python -m feedbackloop sink run``) with its own chDB
directory: chDB admits one process per directory, so this test never opens that directory
itself while a worker runs; it queries through the worker's read-only endpoint, and checks
the final state with ``feedbackloop sql`` in a fresh process after the worker exited.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import make_events, produce, wait_until

from feedbackloop.config import Settings
from feedbackloop.schemas import Topics
from feedbackloop.sinks.query import _live_endpoint, _via_endpoint

pytestmark = [pytest.mark.integration, pytest.mark.fault]


def _env(bootstrap: str, prefix: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACKLOOP_")}
    env.update(
        FEEDBACKLOOP_BOOTSTRAP_SERVERS=bootstrap,
        FEEDBACKLOOP_TOPIC_PREFIX=prefix,
        FEEDBACKLOOP_TOPIC_PARTITIONS="2",
        FEEDBACKLOOP_DATA_DIR=str(data_dir),
        FEEDBACKLOOP_CLICKHOUSE_DATABASE="crash",
    )
    return env


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "feedbackloop",
        "sink",
        "run",
        "--raw",
        "--group-id",
        "crash",
        "--max-rows",
        "250",
        "--max-age",
        "0.2",
    ]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _count(settings: Settings, sql: str) -> int | None:
    info = _live_endpoint(settings)
    if info is None:
        return None
    try:
        return int(_via_endpoint(info, sql, 10).rows[0][0])
    except Exception:
        return None  # endpoint not answering yet


def test_sigkill_mid_batch_then_restart_counts_each_event_once(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    events = make_events(2500, seed=7)
    n_inter = sum(1 for e in events if e.event_type == "interaction")
    n_feedback = sum(1 for e in events if e.event_type == "feedback")
    produce(kafka_bootstrap, Topics(topic_prefix).events, events)
    data_dir = tmp_path / "worker"
    env = _env(kafka_bootstrap, topic_prefix, data_dir)
    settings = Settings(data_dir=data_dir, clickhouse_database="crash")
    log = tmp_path / "worker.log"

    first = _start(env, log)
    try:
        # Kill as soon as some, but not all, rows are in: mid-stream, most likely mid-batch.
        stored = wait_until(
            lambda: (c := _count(settings, "SELECT count() FROM interactions")) and c > 0 and c,
            timeout=60,
            interval=0.05,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert stored < n_inter + n_feedback, "the worker finished before it could be killed"

    second = _start(env, log)
    try:
        wait_until(
            lambda: (
                _count(settings, "SELECT uniqExact(event_id) FROM interactions") == n_inter
                and _count(settings, "SELECT uniqExact(event_id) FROM feedback") == n_feedback
            ),
            timeout=90,
        )
        second.send_signal(signal.SIGTERM)  # graceful: flush, commit, exit 0
        assert second.wait(30) == 0
    finally:
        if second.poll() is None:
            second.kill()

    # The worker is gone; a fresh process may open its chDB directory now.
    queries = {
        "raw_rows": "SELECT count() FROM interactions",
        "final": "SELECT count() FROM interactions FINAL",
        "distinct": "SELECT uniqExact(event_id) FROM interactions",
        "argmax": "SELECT count() FROM (SELECT event_id, argMax(variant, _version) "
        "FROM interactions GROUP BY event_id)",
        "rollup": "SELECT uniqExactMerge(interactions) FROM interactions_hourly",
        "feedback_final": "SELECT count() FROM feedback FINAL",
        "thumbs": "SELECT countIf(thumbs != 0) FROM feedback FINAL",
    }
    union = " UNION ALL ".join(f"SELECT '{k}' AS q, ({v}) AS n" for k, v in queries.items())
    out = subprocess.run(
        [sys.executable, "-m", "feedbackloop", "sql", "--format", "json", union],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    got: dict[str, Any] = {r["q"]: int(r["n"]) for r in json.loads(out.stdout)}
    print("after kill + restart:", got, "log:", log.read_text()[-2000:])
    assert got["final"] == got["distinct"] == got["argmax"] == got["rollup"] == n_inter
    assert got["feedback_final"] == n_feedback
    assert got["thumbs"] == n_inter  # one thumbs per interaction
    assert got["raw_rows"] >= n_inter  # duplicates may be stored, never counted


def test_sql_cli_refuses_writes(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACKLOOP_")}
    env["FEEDBACKLOOP_DATA_DIR"] = str(tmp_path / f"d{uuid.uuid4().hex[:6]}")
    out = subprocess.run(
        [sys.executable, "-m", "feedbackloop", "sql", "DROP DATABASE feedbackloop"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "read-only" in out.stderr and "Traceback" not in out.stderr
    t0 = time.monotonic()
    assert time.monotonic() - t0 < 60
