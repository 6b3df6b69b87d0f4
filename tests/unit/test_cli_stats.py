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
    assert "too few samples (1,000 of" in out


def test_json(run: Invoke) -> None:
    result = run("--control", "540/1000", "--treatment", "580/1010", "--alpha", "0.1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["alpha"] == 0.1
    assert data["control"]["successes"] == 540 and data["treatment"]["n"] == 1010
    assert data["z_test"]["p_value"] == pytest.approx(0.122105, abs=1e-6)
    assert data["difference"]["level"] == pytest.approx(0.9)
    assert data["decision"]["verdict"] == "too_few_samples"
    assert data["required"]["power"] == 0.8


def test_options_reach_the_library(run: Invoke) -> None:
    planned = run("--control", "540/10000", "--treatment", "541/10000", "--mde", "0.01", "--json")
    assert json.loads(planned.output)["decision"]["text"] == "no significant difference"
    srm = run("--control", "500/5000", "--treatment", "500/5000", "--weights", "90/10")
    assert "sample-ratio mismatch: do not trust" in srm.output
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
