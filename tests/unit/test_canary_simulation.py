"""The canary guard's judge on simulated canaries with chatty sessions (fixed seeds; the full
table is scripts/canary_simulation.py): A/A canaries are rolled back at most alpha of the
time (a per-vote test on the same data is not), and a large drop is rolled back quickly."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "canary_simulation.py"


def _sim():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("canary_simulation", _SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aa_canaries_with_chatty_sessions_are_rolled_back_at_most_alpha_of_the_time() -> None:
    runs = 100
    res = _sim().simulate(10_000, 0.0, runs, hours=1, seed=11)
    rolled = sum(r is not None for r, _ in res)
    # alpha plus 2.5 Monte Carlo standard errors (the per-vote test's excess shows over
    # longer horizons: the script's table)
    assert rolled / runs <= 0.05 + 2.5 * math.sqrt(0.05 * 0.95 / runs)


def test_a_twenty_point_drop_at_10k_per_minute_is_rolled_back_within_20_minutes() -> None:
    res = _sim().simulate(10_000, 0.20, 40, hours=1, seed=12)
    assert all(r is not None and r <= 20 for r, _ in res)
