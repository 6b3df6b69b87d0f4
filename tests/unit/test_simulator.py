"""The traffic simulator plants what it promises: overall effect, weak slices, bad events."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from feedbackloop.config import Settings
from feedbackloop.producers import FeedbackClient
from feedbackloop.simulator import Simulator, TrafficSpec


@pytest.mark.parametrize("variant", ["control", "treatment"])
def test_overall_satisfaction_is_the_planted_rate(variant: str) -> None:
    spec = TrafficSpec()
    rng = random.Random(1)
    langs = list(spec.languages)
    weights = list(spec.languages.values())
    good = weak_good = weak_n = 0
    n = 200_000
    for _ in range(n):
        weak = rng.choices(langs, weights)[0] != "en" or rng.random() < spec.code_share
        ok = rng.random() < spec.p_good(variant, weak)
        good += ok
        weak_n += weak
        weak_good += ok and weak
    assert good / n == pytest.approx(spec.satisfaction[variant], abs=0.005)
    if spec.prompt_versions[variant] == spec.weak_prompt_version:
        strong_fail = 1 - (good - weak_good) / (n - weak_n)
        weak_fail = 1 - weak_good / weak_n
        assert weak_fail / strong_fail == pytest.approx(spec.weak_slice_multiplier, rel=0.05)


def test_simulation_sends_every_kind_and_counts_what_it_sent(tmp_path: Path) -> None:
    settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, close_timeout_s=0)
    raw: list[bytes] = []
    client = FeedbackClient(settings, strict=True)
    sim = Simulator(client, TrafficSpec(malformed_share=0.05, late_share=0.05), raw_send=raw.append)
    result = sim.run(sessions=300)
    stats = client.close(timeout=0)
    assert set(result.sent) == {"interaction", "feedback", "implicit", "outcome"}
    assert sum(result.sent.values()) == stats.enqueued  # strict: every simulated event valid
    assert result.malformed == len(raw) > 0
    assert set(result.by_variant) == {"control", "treatment"}
    assert sum(v["sessions"] for v in result.by_variant.values()) == 300
