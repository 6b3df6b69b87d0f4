"""The hostile load test (bench/bench_hostile_load.py) stays runnable and its checks pass.

A short run: valid traffic with hostile requests mixed in, against the real stack; every
valid event stored once, every hostile request a 4xx, a dead letter for each that carries a
payload. The latency figures are printed, not asserted (docs/PERFORMANCE.md holds the
measured ones from the 60 s run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed")

pytestmark = [pytest.mark.integration, pytest.mark.hostile, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_hostile_load.py"


def test_hostile_load_stores_every_valid_event_once_and_answers_every_hostile_one_4xx() -> None:
    res = subprocess.run(
        [sys.executable, str(BENCH), "--seconds", "4", "--rate", "40", "--hostile", "0.1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = res.stdout
    assert res.returncode == 0, out + res.stderr
    assert "ALL CHECKS ok" in out and "WRONG" not in out
    assert "valid requests p99: with 10% hostile" in out and "baseline (no hostile)" in out
    assert "dead letters" in out and "non-4xx answers: none" in out
