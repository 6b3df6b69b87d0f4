"""Regression suites: case selection from planted failures, the runner, the report."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from planted_failures import planted_judged

from feedbackloop.analysis.loop.regressions import (
    load_suite,
    resolve_candidate,
    run_suite,
    select_regression_cases,
    write_run_report,
    write_suite,
)
from feedbackloop.errors import ConfigError


def echo_candidate(case: dict[str, Any]) -> str:
    """A stand-in callable candidate (module:function)."""
    if case["input"] == "boom":
        raise RuntimeError("kaput")
    return case.get("correction") or "new: " + case["input"][:20]


def test_cases_cover_the_significant_slices() -> None:
    judged = [j for j in planted_judged(6000, seed=3) if j.prompt_version == "v1.2"]
    cases, report = select_regression_cases(judged, top=10)
    assert len(cases) == 10
    sig = [f.label for f in report.significant]
    assert sig, "v1.2 traffic has planted slices"
    # Each case carries its best-ranked significant slice (language=de cases also fall in
    # language_group=not-en, ranked higher); round robin: the first cases alternate.
    used = [s for s in sig if any(c.slice == s for c in cases)]
    assert set(used) >= {"language_group=not-en", "has_code=yes"}
    assert [c.slice for c in cases[: len(used)]] == used
    assert [c.slice for c in cases[len(used) : 2 * len(used)]] == used
    for c in cases:
        assert c.prompt_version == "v1.2" and c.bad_response and c.occurrences >= 1
        assert len(c.interaction_ids) == c.occurrences and c.signals
    assert len({c.id for c in cases}) == 10
    # Inputs that failed more often come first within a slice.
    for s in set(c.slice for c in cases):
        occ = [c.occurrences for c in cases if c.slice == s]
        assert occ == sorted(occ, reverse=True)


def test_suite_round_trip_and_bad_files(tmp_path: Path) -> None:
    judged = [j for j in planted_judged(1500, seed=4) if j.prompt_version == "v1.2"]
    cases, _ = select_regression_cases(judged, top=5)
    p = write_suite(cases, tmp_path / "s.jsonl")
    loaded = load_suite(p)
    assert [c["id"] for c in loaded] == [c.id for c in cases]
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    with pytest.raises(ConfigError, match="input"):
        load_suite(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError):
        load_suite(tmp_path / "missing.jsonl")


CASES = [
    {
        "id": "c1",
        "input": "Wie exportiere ich?",
        "bad_response": "In English: export it.",
        "correction": "Exportieren Sie die Tabelle über das Menü.",
        "slice": "language=de",
    },
    {"id": "c2", "input": "boom", "bad_response": "x", "correction": None, "slice": ""},
    {"id": "c3", "input": "same", "bad_response": "same answer", "correction": None},
]


def test_runner_with_a_callable(tmp_path: Path) -> None:
    cand = resolve_candidate("test_regressions:echo_candidate")
    results = run_suite(CASES, cand, jobs=2)
    assert [r.case["id"] for r in results] == ["c1", "c2", "c3"]
    assert results[0].new_response == CASES[0]["correction"]
    assert results[0].closer_to_correction is True
    assert results[1].error == "RuntimeError: kaput"
    md, jl = write_run_report(
        results, tmp_path / "rep", suite="s.jsonl", candidate="test_regressions:echo_candidate"
    )
    text = md.read_text()
    assert "| old response | correction | new response |" in text
    assert "**error:** RuntimeError: kaput" in text
    rows = [json.loads(x) for x in jl.read_text().splitlines()]
    assert rows[0]["old_response"] == "In English: export it." and rows[1]["error"]
    with pytest.raises(ConfigError):
        resolve_candidate("no_such_module_xyz:f")


def test_runner_with_a_command(tmp_path: Path) -> None:
    script = tmp_path / "cand.py"
    script.write_text(
        textwrap.dedent("""
        import json, sys, time
        case = json.load(sys.stdin)
        if case["input"] == "boom":
            print("bad things", file=sys.stderr)
            sys.exit(2)
        if case["input"] == "same":
            print("same answer")
        else:
            print("Neu: " + case["input"])
    """)
    )
    cand = resolve_candidate(f"{sys.executable} {script}", timeout=30)
    results = run_suite(CASES, cand, jobs=1)
    assert results[0].new_response == "Neu: Wie exportiere ich?"
    assert results[1].error == "exit code 2: bad things"
    assert results[2].unchanged
    slow = tmp_path / "slow.py"
    slow.write_text("import time; time.sleep(5)")
    timed = run_suite(CASES[:1], resolve_candidate(f"{sys.executable} {slow}", timeout=0.5))
    assert "timed out" in (timed[0].error or "")
    missing = run_suite(CASES[:1], resolve_candidate("/nonexistent/cmd --x"))
    assert "cannot run" in (missing[0].error or "")
