"""The traffic simulator plants what it promises: overall effect, weak slices, bad events."""

from __future__ import annotations

import random
import uuid
from collections import Counter
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


def test_a_planted_shadow_candidate_wins_on_code_and_loses_on_german(tmp_path: Path) -> None:
    """The simulator's candidate, judged by the shadow report over the events it sent (joined
    here in Python, as the ClickHouse read joins them; the integration test covers the read)."""
    from collections import defaultdict

    from feedbackloop.analysis.reads.shadow import ShadowPair, ShadowScope
    from feedbackloop.analysis.reports.shadow import build_shadow_report
    from feedbackloop.schemas import SHADOW_OF, Feedback, Implicit, Interaction, Outcome
    from feedbackloop.schemas.derive import detect_language, has_code
    from feedbackloop.simulator import ShadowPlan

    events: list = []
    settings = Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, close_timeout_s=0)
    client = FeedbackClient(settings, strict=True, on_event=lambda e, _: events.append(e))
    live_only = Simulator(client, TrafficSpec(seed=11)).run(sessions=100)
    n_live = len(events)
    sim = Simulator(client, TrafficSpec(seed=11, shadow=ShadowPlan(rate=0.5)))
    result = sim.run(sessions=1200)
    client.close(timeout=0)
    # the live traffic is the same with a shadow planted: its first 100 sessions match
    assert live_only.sent == Counter({k: v for k, v in _sent_of(events[n_live:], 100).items() if v})
    lives = {e.interaction_id: e for e in events if type(e) is Interaction and not e.shadow}
    shadows = [e for e in events[n_live:] if type(e) is Interaction and e.shadow]
    assert len(shadows) == result.sent["shadow"] and 0.4 < len(shadows) / len(lives) < 0.6
    signals: dict = defaultdict(list)
    for e in events:
        if isinstance(e, (Feedback, Implicit, Outcome)) and e.interaction_id is not None:
            signals[e.interaction_id].append(e)
    pairs = []
    for sh in shadows:
        live = lives[uuid.UUID(sh.metadata[SHADOW_OF])]
        sig = signals[live.interaction_id]
        fb = [e for e in sig if isinstance(e, Feedback)]
        verdicts = [e for e in fb if e.kind.value in ("thumbs", "rating")]
        last = verdicts[-1] if verdicts else None
        pairs.append(
            ShadowPair(
                live_id=str(live.interaction_id), shadow_id=str(sh.interaction_id),
                live_version=live.prompt_version or "", live_model=live.model,
                user_input=live.user_input, live_response=live.response,
                shadow_response=sh.response, live_latency_ms=live.latency_ms or 0.0,
                shadow_latency_ms=sh.latency_ms or 0.0, live_tokens=0.0, shadow_tokens=0.0,
                live_cost_usd=live.cost_usd or 0.0, shadow_cost_usd=sh.cost_usd or 0.0,
                correction=next((e.text or "" for e in fb if e.kind.value == "correction"), ""),
                edited_text="", next_input="",
                thumbs_down=sum(1 for e in fb if e.thumbs == -1),
                low_ratings=sum(1 for e in fb if (e.rating or 5) <= 2),
                reports=sum(1 for e in fb if e.kind.value == "report"),
                regenerates=sum(1 for e in sig if getattr(e, "signal", None) == "regenerate"),
                abandons=sum(1 for e in sig if getattr(e, "signal", None) == "abandon"),
                copies=sum(1 for e in sig if getattr(e, "signal", None) == "copy"),
                last_verdict_positive=None if last is None
                else (last.thumbs == 1 if last.kind.value == "thumbs" else (last.rating or 0) >= 4),
                good_outcomes=sum(1 for e in sig if isinstance(e, Outcome)
                                  and e.outcome in ("ticket_resolved", "code_accepted")),
                attributes={
                    "language": detect_language(live.user_input),
                    "has_code": "yes" if has_code(live.user_input) else "no",
                },
            )
        )  # fmt: skip
    rep = build_shadow_report(pairs, ShadowScope(candidate="v2.0-shadow"))
    assert rep.wins_most[0].slice == "has_code=yes" and rep.wins_most[0].significant
    assert rep.loses_most[0].slice == "language=de" and rep.loses_most[0].significant
    assert rep.recommendation == "hold" and "language=de" in rep.reason


def _sent_of(events: list, sessions: int) -> Counter:
    """What Simulator.result.sent counts, for the first ``sessions`` sessions of ``events``."""
    from feedbackloop.schemas import Interaction

    keep = {f"sim-11-{i}" for i in range(1, sessions + 1)}
    out: Counter = Counter()
    for e in events:
        if e.session_id in keep and not (type(e) is Interaction and e.shadow):
            out[e.event_type] += 1
    return out
