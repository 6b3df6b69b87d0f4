"""bench/bench_queries.py stays runnable, and its answer checks pass, on a small data set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from feedbackloop.analysis.analyst_queries import ANALYST_QUERIES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_queries.py"


def test_bench_queries_runs_every_example_and_its_checks_pass() -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH), "--interactions", "30000", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    for q in ANALYST_QUERIES:
        assert any(line.startswith(q.name + " ") for line in lines), q.name
    assert "WRONG" not in res.stdout
    assert sum(line.endswith("; ok") for line in lines) == 6  # 5 examples + ab report
