"""``feedbackloop stats compare`` end to end through click."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

from feedbackloop.cli import cli

Invoke = Callable[..., Result]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch) -> Invoke:
    # An engineer's own FEEDBACKLOOP_CONFIG must not leak into the test.
    monkeypatch.delenv("FEEDBACKLOOP_CONFIG", raising=False)
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(cli, ["stats", "compare", *args])

    return invoke


def test_table(run: Invoke) -> None:
    result = run("--control", "540/1000", "--treatment", "580/1010")
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.splitlines()[0].startswith("sample ratio")
    assert "540/1,000 = 54.00% [50.90%, 57.07%]" in out
    assert "z-test p" in out and "0.1221" in out
    assert "sequential p (always valid)" in out
    assert "P(treatment beats control)" in out
    assert "verdict                      keep running" in out


def test_json(run: Invoke) -> None:
    result = run("--control", "540/1000", "--treatment", "580/1010", "--alpha", "0.1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["alpha"] == 0.1
    assert data["control"]["successes"] == 540 and data["treatment"]["n"] == 1010
    assert data["z_test"]["p_value"] == pytest.approx(0.122105, abs=1e-6)
    assert data["difference"]["level"] == pytest.approx(0.9)
    assert data["decision"]["verdict"] == "keep_running"
    assert data["required"]["power"] == 0.8 and data["required"]["error"] == "undefined"


def test_options_reach_the_library(run: Invoke) -> None:
    futile = run("--control", "5000/20000", "--treatment", "5010/20000", "--mde", "0.02", "--json")
    assert json.loads(futile.output)["decision"]["text"] == "no difference as large as the MDE"
    relative = run(
        "--control", "5000/20000", "--treatment", "5010/20000", "--mde", "0.08", "--mde-relative"
    )
    assert "MDE ±2.00%" in relative.output and "no difference as large" in relative.output
    fixed = ["--mode", "fixed", "--mde", "0.03", "--baseline", "0.5", "--json"]
    early = json.loads(run("--control", "500/1000", "--treatment", "600/1000", *fixed).output)
    assert early["decision"]["text"] == "keep running (1,000 of 4,356)"
    at = json.loads(run("--control", "2178/4356", "--treatment", "2400/4356", *fixed).output)
    assert at["decision"]["verdict"] == "significant_improvement"
    past = json.loads(run("--control", "2500/5000", "--treatment", "2700/5000", *fixed).output)
    assert "valid only if this is its one evaluation" in past["decision"]["reason"]
    srm = run("--control", "500/5000", "--treatment", "500/5000", "--weights", "90/10")
    assert "do not trust: sample-ratio mismatch" in srm.output
    lower = run("--control", "540/10000", "--treatment", "400/10000", "--lower-is-better")
    assert "significant improvement" in lower.output


@pytest.mark.parametrize(
    "args,message",
    [
        (["--control", "5/0", "--treatment", "580/1010"], "cannot exceed"),
        (["--control", "abc", "--treatment", "580/1010"], "SUCCESSES/N"),
        (["--control", "540/1000", "--treatment", "1.5/10"], "whole numbers"),
        (["--control", "540/1000", "--treatment", "-3/10"], ">= 0"),
        (["--control", "540/1000", "--treatment", "580/1010", "--alpha", "2"], "--alpha"),
        (["--control", "540/1000", "--treatment", "580/1010", "--alpha", "nan"], "--alpha"),
        (["--control", "540/1000", "--treatment", "580/1010", "--power", "inf"], "--power"),
        (["--control", "540/1000", "--treatment", "580/1010", "--power", "0.01"], "power"),
        (["--control", "540/1000", "--treatment", "580/1010", "--mde", "2"], "must be < 1"),
        (["--control", "540/1000", "--treatment", "580/1010", "--mde", "0"], "must be > 0"),
        (["--control", "540/1000", "--treatment", "580/1010", "--mde", "-0.6"], "must be > 0"),
        (["--control", "540/1000", "--treatment", "580/1010", "--mde", "nan"], "finite"),
        (["--control", "540/1000", "--treatment", "580/1010", "--mde", "inf"], "finite"),
        (["--control", "540/1000", "--treatment", "580/1010", "--mde", "x"], "not a number"),
        (["--control", "540/1000", "--treatment", "580/1010", "--mode", "fixed"], "needs an MDE"),
        (
            ["--control", "540/1000", "--treatment", "580/1010", "--mode", "fixed", "--mde", "0.1"],
            "baseline",
        ),
        (["--control", "540/1000", "--treatment", "580/1010", "--sessions", "1"], "--sessions"),
        (["--control", "540/1000", "--treatment", "580/1010", "--sessions", "99"], "fixed"),
        (["--control", "540/1000", "--treatment", "580/1010", "--baseline", "nan"], "finite"),
        (["--control", "540/1000", "--treatment", "580/1010", "--weights", "x/y"], "50/50"),
        (["--treatment", "580/1010"], "--control"),
    ],
)
def test_bad_input_is_a_clear_error(run: Invoke, args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_degenerate_counts_are_reported_not_raised(run: Invoke) -> None:
    result = run("--control", "0/0", "--treatment", "3/10")
    assert result.exit_code == 0, result.output
    assert "cannot decide: a variant has no samples" in result.output


def test_small_counts_show_the_exact_test_and_its_exact_power(run: Invoke) -> None:
    # Issue 14: 0/20 vs 4/20 printed the z-test p (0.035) beside Fisher's (0.106) and
    # "20 of 19 needed per variant"; the exact power of Fisher's test there is 0.37.
    result = run("--control", "0/20", "--treatment", "4/20", "--mde", "0.2", "--json")
    data = json.loads(result.output)
    assert data["z_test"] is None and data["chi_square"] is None
    assert data["fisher"]["p_value"] == pytest.approx(0.106029, abs=1e-6)
    assert data["power_at_n"] == pytest.approx(0.37035, abs=1e-5)
    assert data["required"]["control"] > 20 and data["decision"]["verdict"] == "keep_running"
    text = run("--control", "0/20", "--treatment", "4/20", "--mde", "0.2").output
    assert "z-test" not in text and "37.0% (Fisher exact test, exact)" in text
