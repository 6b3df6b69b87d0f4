"""Variant assignment: stable (test vectors), uniform, monotone under ramping, validated."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from scipy import stats

from feedbackloop.errors import ConfigError
from feedbackloop.producers import BUCKETS, Experiment, assign_variant, bucket_of

# (salt, session_id, bucket): frozen. Another language's SDK must reproduce these exactly.
VECTORS = [
    ("checkout-prompt", "user-1", 11),
    ("checkout-prompt", "user-2", 510),
    ("checkout-prompt", "session-42", 7475),
    ("checkout-prompt", "a", 3164),
    ("checkout-prompt", "Zürich-7", 8925),
    ("checkout-prompt", "0", 5851),
    ("s3", "user-1", 1388),
    ("s3", "Zürich-7", 8880),
]


@pytest.mark.parametrize(("salt", "session", "bucket"), VECTORS)
def test_bucket_test_vectors(salt: str, session: str, bucket: int) -> None:
    assert bucket_of(salt, session) == bucket
    # the documented algorithm, spelled out independently
    digest = hashlib.md5((salt + "." + session).encode("utf-8")).digest()
    assert int.from_bytes(digest[:4], "big") % 10_000 == bucket


def test_variant_test_vectors() -> None:
    half = Experiment("checkout-prompt", {"control": 0.5, "treatment": 0.5})
    assert [half.assign(s) for s in ("user-1", "session-42", "a", "Zürich-7", "0")] == [
        "control",
        "treatment",
        "control",
        "treatment",
        "treatment",
    ]
    three = Experiment("model-swap", {"gpt-4o": 0.34, "claude": 0.33, "llama": 0.33}, salt="s3")
    assert [three.assign(s) for s in ("user-1", "a", "Zürich-7", "0")] == [
        "gpt-4o",
        "claude",
        "llama",
        "claude",
    ]
    assert assign_variant(half, "user-1") == half.assign("user-1")


def test_uniform_over_100k_sessions() -> None:
    buckets = np.array([bucket_of("uniformity", f"session-{i}") for i in range(100_000)])
    counts = np.bincount(buckets // 100, minlength=100)  # 100 groups of 100 buckets
    chi2 = stats.chisquare(counts)
    assert chi2.pvalue > 0.001, chi2

    exp = Experiment("split", {"a": 0.2, "b": 0.4, "c": 0.4})
    got = [exp.assign(f"session-{i}") for i in range(100_000)]
    observed = [got.count(v) for v in ("a", "b", "c")]
    test = stats.chisquare(observed, [20_000, 40_000, 40_000])
    assert test.pvalue > 0.001, (observed, test)


def test_ramping_only_moves_control_to_treatment() -> None:
    sessions = [f"s{i}" for i in range(20_000)]
    before = Experiment("ramp", {"control": 0.95, "treatment": 0.05})
    after = Experiment("ramp", {"control": 0.50, "treatment": 0.50})
    moved = 0
    for s in sessions:
        a, b = before.assign(s), after.assign(s)
        if a == "treatment":
            assert b == "treatment", s
        if a != b:
            moved += 1
            assert (a, b) == ("control", "treatment")
    assert 0.40 < moved / len(sessions) < 0.50


def test_ramping_one_of_several_treatments_leaves_the_others_alone() -> None:
    sessions = [f"s{i}" for i in range(20_000)]
    before = Experiment("multi", {"c": 0.8, "t1": 0.1, "t2": 0.1})
    after = Experiment("multi", {"c": 0.5, "t1": 0.4, "t2": 0.1})
    for s in sessions:
        a, b = before.assign(s), after.assign(s)
        assert a == b or (a, b) == ("c", "t1")


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ({"only": 1.0}, "at least two variants"),
        ({"a": 0.5, "b": 0.6}, "weights must sum to 1"),
        ({"a": 1.2, "b": -0.2}, "finite and >= 0"),
        ({"a": 0.1, "b": 0.6, "c": 0.3}, "more than 1/(k-1) = 0.5"),
        ({"a": float("nan"), "b": 1.0}, "finite"),
    ],
)
def test_weights_are_validated(variants: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Experiment("bad", variants)


def test_zero_weight_treatment_gets_nobody_and_full_weight_everybody() -> None:
    off = Experiment("off", {"control": 1.0, "treatment": 0.0})
    on = Experiment("on", {"control": 0.0, "treatment": 1.0})
    assert {off.assign(f"s{i}") for i in range(2000)} == {"control"}
    assert {on.assign(f"s{i}") for i in range(2000)} == {"treatment"}
    assert BUCKETS == 10_000
