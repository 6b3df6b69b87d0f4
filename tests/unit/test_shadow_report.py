"""The shadow report over hand-made pairs: what each section judges, the slices, the
recommendation, and the SDK's shadow call and sampling."""

from __future__ import annotations

import dataclasses
import json
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from feedbackloop.analysis.reads.shadow import ShadowPair, ShadowScope, row_to_pair
from feedbackloop.analysis.reports.shadow import (
    PROMOTE_RECOMMENDATION,
    build_shadow_report,
    format_shadow_report,
    similarity,
)
from feedbackloop.config import Settings
from feedbackloop.errors import SchemaError
from feedbackloop.producers import FeedbackClient, shadow_sampled
from feedbackloop.schemas import SHADOW_OF, Interaction

GOOD = "Open Settings, then Security, and choose Reset password."
BAD = "You can try restarting the application and clearing the cache."
CORRECTION = "Open Settings, then Security, and choose Reset password to reset it."
NONSENSE = "Entschuldigung, dazu kann ich leider nichts sagen."


def pair(i: int, shadow: str, live: str = BAD, **kw: Any) -> ShadowPair:
    base: dict[str, Any] = dict(
        live_id=f"l{i}",
        shadow_id=f"s{i}",
        live_version="v1",
        live_model="m1",
        user_input="How do I reset my password?",
        live_response=live,
        shadow_response=shadow,
        live_latency_ms=120.0 + i % 3,
        shadow_latency_ms=100.0 + i % 5,
        live_tokens=100.0,
        shadow_tokens=90.0,
        live_cost_usd=0.002,
        shadow_cost_usd=0.001,
        correction="",
        edited_text="",
        next_input="",
        thumbs_down=0,
        low_ratings=0,
        reports=0,
        regenerates=0,
        abandons=0,
        copies=0,
        last_verdict_positive=None,
        good_outcomes=0,
        attributes={"language": "en", "has_code": "no"},
    )
    return ShadowPair(**{**base, **kw})


def corrected(i: int, shadow: str, **kw: Any) -> ShadowPair:
    return pair(i, shadow, correction=CORRECTION, thumbs_down=1, **kw)


def accepted(i: int, shadow: str, **kw: Any) -> ShadowPair:
    return pair(i, shadow, live=GOOD, last_verdict_positive=True, **kw)


SCOPE = ShadowScope(candidate="v2")


def test_similarity_is_one_for_equal_texts_and_ignores_case_and_punctuation() -> None:
    s = similarity(["Hello, World!", "", "abc"], ["hello world", "", "xyz"])
    assert s[0] == pytest.approx(1.0) and s[1] == 1.0 and s[2] == 0.0
    with pytest.raises(ValueError):
        similarity(["a"], [])


def test_a_candidate_writing_the_correction_wins_and_is_recommended() -> None:
    pairs = [corrected(i, CORRECTION) for i in range(40)] + [
        accepted(i, GOOD) for i in range(40, 80)
    ]
    rep = build_shadow_report(pairs, SCOPE)
    c = rep.corrected
    assert c.n == 40 and c.result.counts.wins == 40 and c.result.net.lower > 0.8
    assert c.shadow_similarity == pytest.approx(1.0) and c.live_similarity < 0.6
    assert rep.accepted.n == 40 and rep.accepted.departs.value == 0.0
    assert rep.recommendation == "promote to canary", rep.reason
    text = format_shadow_report(rep)
    assert "Recommendation: promote to canary" in text and "win 100.0%" in text
    assert rep.recommendation == PROMOTE_RECOMMENDATION
    assert json.loads(json.dumps(rep.to_dict()))["corrected"]["n"] == 40


def test_a_candidate_equal_to_live_is_even() -> None:
    pairs = [corrected(i, BAD) for i in range(40)] + [accepted(i, GOOD) for i in range(40, 80)]
    rep = build_shadow_report(pairs, SCOPE)
    assert rep.corrected.result.counts.ties == 40
    assert rep.recommendation == "no difference shown"
    assert rep.rejected.n == 40 and rep.rejected.differs.value == 0.0


def test_a_candidate_further_from_corrections_is_not_promoted() -> None:
    rep = build_shadow_report([corrected(i, NONSENSE) for i in range(40)], SCOPE)
    assert rep.corrected.result.net.upper < 0 and rep.recommendation == "do not promote"


def test_a_slice_where_the_candidate_loses_holds_the_promotion() -> None:
    code = {"language": "en", "has_code": "yes"}
    pairs = [corrected(i, CORRECTION) for i in range(60)] + [
        corrected(i, NONSENSE, attributes=code) for i in range(60, 90)
    ]
    rep = build_shadow_report(pairs, SCOPE)
    worst = rep.loses_most[0]
    assert worst.slice == "has_code=yes" and worst.significant and worst.n == 30
    assert rep.recommendation == "hold" and "has_code=yes" in rep.reason
    assert rep.wins_most[0].slice == "has_code=no"
    assert "Slices where the candidate loses most" in format_shadow_report(rep)


def test_drifting_from_accepted_answers_is_a_regression_risk() -> None:
    pairs = [corrected(i, BAD) for i in range(20)] + [
        accepted(i, NONSENSE if i % 2 else GOOD) for i in range(20, 80)
    ]
    rep = build_shadow_report(pairs, SCOPE)
    assert rep.accepted.departs.value == pytest.approx(0.5)
    assert rep.recommendation == "hold" and "accepted" in rep.reason


def test_rejected_answers_are_compared_with_the_users_follow_up() -> None:
    follow = "Where do I find the reset password button in Settings?"
    pairs = [
        pair(i, GOOD, regenerates=1, next_input=follow if i % 2 else "", edited_text="")
        for i in range(20)
    ]
    rep = build_shadow_report(pairs, SCOPE)
    assert rep.rejected.n == 20 and rep.rejected.with_follow_up == 10
    assert rep.rejected.differs.value == 1.0
    assert rep.rejected.follow_up.counts.wins == 10
    assert rep.recommendation == "keep shadowing"  # 10 judged pairs are too few


def test_latency_tokens_and_cost_are_paired_differences() -> None:
    rep = build_shadow_report([accepted(i, GOOD) for i in range(30)], SCOPE)
    d = {r.metric: r for r in rep.deltas}
    assert d["tokens"].difference.value == -10.0 and not d["tokens"].difference.ok
    assert d["latency_ms"].difference.lower < d["latency_ms"].difference.value < 0
    assert d["cost_usd"].n == 30
    assert "every pair equal" in format_shadow_report(rep)


def test_missing_numbers_leave_the_pair_out_of_that_delta_only() -> None:
    pairs = [accepted(i, GOOD, shadow_cost_usd=float("nan")) for i in range(10)]
    rep = build_shadow_report(pairs, SCOPE)
    d = {r.metric: r for r in rep.deltas}
    assert d["cost_usd"].n == 0 and d["latency_ms"].n == 10


def test_no_pairs_gives_a_report_that_says_so() -> None:
    rep = build_shadow_report([], SCOPE, shadows=5, linked=3)
    assert rep.pairs == 0 and rep.recommendation == "keep shadowing"
    assert len(rep.notes) == 2
    assert "0 pairs" in format_shadow_report(rep)


def test_a_result_row_becomes_a_pair_with_the_failure_slice_dimensions() -> None:
    row = [
        "l1", "s1", "v1", "m1", "exp", "a", True, "q", "live", "cand", 120.0, None, 30.0, None,
        0.1, 0.2, "fix", "", "next?", 1, 0, 0, 2, 0, 0, 0, 1, "de", True, "s",
        {"plan": "pro", SHADOW_OF: "x"},
    ]  # fmt: skip
    p = row_to_pair(row)
    assert p.corrected and p.negative and not p.accepted and p.last_verdict_positive is False
    assert p.follow_up == "next?" and p.shadow_latency_ms != p.shadow_latency_ms  # nan
    assert p.attributes == {
        "prompt_version": "v1",
        "model": "m1",
        "language": "de",
        "has_code": "yes",
        "input_length": "s",
        "variant": "exp/a",
        "meta.plan": "pro",
    }
    assert dataclasses.replace(p, correction="").corrected is False
    reported = dataclasses.replace(p, thumbs_down=0, regenerates=0, last_verdict_positive=None)
    assert not reported.negative and dataclasses.replace(reported, reports=1).negative


# --- SDK ---------------------------------------------------------------------------------


def test_sampling_is_consistent_per_session_and_close_to_the_rate() -> None:
    sessions = [f"s{i}" for i in range(20_000)]
    picked = [s for s in sessions if shadow_sampled("v2", s, 0.1)]
    assert 0.09 < len(picked) / len(sessions) < 0.11
    assert picked == [s for s in sessions if shadow_sampled("v2", s, 0.1)]
    # a larger rate keeps every session already sampled; another candidate samples apart
    assert set(picked) <= {s for s in sessions if shadow_sampled("v2", s, 0.3)}
    other = {s for s in sessions if shadow_sampled("v3", s, 0.1)}
    assert 0.005 < len(other & set(picked)) / len(sessions) < 0.015
    assert not shadow_sampled("v2", "s1", 0.0) and shadow_sampled("v2", "s1", 1.0)


def _client(tmp_path: Path, **kw: Any) -> tuple[FeedbackClient, list[Any]]:
    seen: list[Any] = []
    settings = Settings(
        bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, app_id="unit", close_timeout_s=0.5
    )
    return FeedbackClient(settings, on_event=lambda e, b: seen.append(e), **kw), seen


def test_the_sdk_logs_a_shadow_answer_keyed_by_its_live_interaction(tmp_path: Path) -> None:
    client, seen = _client(tmp_path)
    iid = client.log_interaction(session_id="s1", user_input="q", response="a", model="m1")
    sid = client.shadow(
        iid, response="b", model="m2", prompt_version="v2", latency_ms=80.0, input_tokens=3,
        output_tokens=4, cost_usd=0.001, metadata={"region": "eu"},
    )  # fmt: skip
    client.close(timeout=0)
    assert sid is not None and sid != iid
    shadow = seen[-1]
    assert isinstance(shadow, Interaction) and shadow.shadow and shadow.interaction_id == sid
    assert shadow.session_id == "s1" and shadow.metadata == {"region": "eu", SHADOW_OF: str(iid)}
    assert shadow.partition_key == str(iid).encode() and shadow.experiment is None
    assert (shadow.model, shadow.prompt_version, shadow.output_tokens) == ("m2", "v2", 4)


def test_an_unsampled_session_sends_nothing(tmp_path: Path) -> None:
    client, seen = _client(tmp_path)
    unsampled = next(f"s{i}" for i in range(1000) if not shadow_sampled("v2", f"s{i}", 0.5))
    iid = uuid.uuid4()
    assert client.shadow(iid, response="b", model="m", prompt_version="v2", rate=0.5,
                         session_id=unsampled) is None  # fmt: skip
    assert seen == []
    client.close(timeout=0)


def test_bad_shadow_input_never_raises_into_the_app_unless_strict(tmp_path: Path) -> None:
    client, seen = _client(tmp_path)
    iid = uuid.uuid4()
    # unknown session, a bad rate, a negative latency: logged and dropped or dead-lettered
    assert client.shadow(iid, response="b", model="m") is None
    assert client.shadow(iid, response="b", model="m", session_id="s", rate=2.0) is None
    assert client.shadow(iid, response="b", model="m", session_id="s", latency_ms=-1) is None
    assert seen == [] and client.stats().invalid == 2
    client.close(timeout=0)
    strict, _ = _client(tmp_path / "strict", strict=True)
    with pytest.raises(SchemaError, match="session_id is required"):
        strict.shadow(iid, response="b", model="m")
    strict.close(timeout=0)


def test_simulate_plants_a_shadow_candidate_when_asked(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from feedbackloop.cli import cli

    env = {
        "FEEDBACKLOOP_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens: the SDK spools
        "FEEDBACKLOOP_DATA_DIR": str(tmp_path),
        "FEEDBACKLOOP_CLOSE_TIMEOUT_S": "0",
    }
    args = ["simulate", "--duration", "0.5", "--rate", "400"]
    res = CliRunner().invoke(cli, [*args, "--shadow-candidate", "cand-x"], env=env)
    assert res.exit_code == 0, res.output
    sent = json.loads(res.output[res.output.index("{") :])["sent"]
    assert 0 < sent["shadow"] <= sent["interaction"]
    res = CliRunner().invoke(cli, args, env=env)
    assert "shadow" not in json.loads(res.output[res.output.index("{") :])["sent"]


def _recommendations(p_win: float, p_loss: float, runs: int, n: int, seed: int) -> Counter:
    rng = random.Random(seed)
    out: Counter = Counter()
    for _ in range(runs):
        pairs = []
        for i in range(n):
            u = rng.random()
            shadow = CORRECTION if u < p_win else NONSENSE if u < p_win + p_loss else BAD
            pairs.append(corrected(i, shadow))
        out[build_shadow_report(pairs, SCOPE).recommendation] += 1
    return out


def test_an_even_candidate_is_printed_promote_in_at_most_alpha_over_two_of_reports() -> None:
    """The printed recommendation, by fixed-seed simulation: a candidate that wins and loses
    equally often (30 % each, 60 corrected pairs) reads "promote to canary" in about 2.5 % of
    reports (the interval's lower tail), and a clearly better one (45 % vs 15 %) nearly always."""
    even = _recommendations(0.3, 0.3, runs=400, n=60, seed=3)
    assert even["promote to canary"] / 400 <= 0.045
    assert even["do not promote"] / 400 <= 0.045
    assert even["no difference shown"] / 400 >= 0.91
    better = _recommendations(0.45, 0.15, runs=100, n=60, seed=4)
    assert better["promote to canary"] >= 80
