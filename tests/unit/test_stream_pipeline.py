"""Pure logic of the stream jobs: windows, aggregation, enrichment, orphans, dead letters."""

from __future__ import annotations

import datetime as dt
import json
import random
import uuid

import pytest

pytest.importorskip("faust")  # the stream extra; the package imports faust

from feedbackloop.schemas import (  # noqa: E402
    DeadLetter,
    EnrichedEvent,
    Feedback,
    Implicit,
    Interaction,
    Outcome,
    Topics,
    WindowAggregate,
    encode,
)
from feedbackloop.stream_jobs import (  # noqa: E402
    PartitionWindows,
    Pipeline,
    StreamConfig,
    WindowState,
    detect_language,
    has_code,
    length_bucket,
    window_start,
)
from feedbackloop.stream_jobs.pipeline import decode_pending, encode_pending  # noqa: E402

T0 = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.timezone.utc)
TOPICS = Topics("u.")


class Collect:
    def __init__(self) -> None:
        self.msgs: list[tuple[str, bytes | None, bytes | None, list | None]] = []
        self.changelog_writes: list[tuple[str, int, bytes, bytes | None]] = []

    def produce(self, topic, key, value, partition=None, headers=None):  # noqa: ANN001
        self.msgs.append((topic, key, value, headers))

    def changelog(self, table, partition, key, value):  # noqa: ANN001
        self.changelog_writes.append((table, partition, key, value))

    def on(self, topic: str) -> list:
        return [m for m in self.msgs if m[0] == topic]


def recs(events, start_offset=0):
    """(key, value, offset, timestamp ms) records as the worker hands them over."""
    return [
        (e.partition_key, encode(e), start_offset + i, int(e.occurred_at.timestamp() * 1000))
        for i, e in enumerate(events)
    ]


def interaction(t=T0, **kw):
    base = dict(
        app_id="app",
        session_id="s1",
        user_input="How do I sort a list?",
        response="Use sorted().",
        model="m1",
        prompt_version="v1",
        experiment="exp",
        variant="a",
        latency_ms=100.0,
        occurred_at=t,
    )
    return Interaction(**{**base, **kw})


def thumbs(ia, up=True, t=None):
    return Feedback(
        app_id=ia.app_id,
        session_id=ia.session_id,
        interaction_id=ia.interaction_id,
        kind="thumbs",
        thumbs=1 if up else -1,
        occurred_at=t or ia.occurred_at,
    )


def make(**cfg):
    out = Collect()
    return Pipeline(TOPICS, StreamConfig(**cfg), out), out


# --- windows -------------------------------------------------------------------------------
def test_window_start_is_floor_of_size():
    assert window_start(125.0, 60) == 120.0
    assert window_start(120.0, 60) == 120.0
    assert window_start(119.999, 60) == 60.0


def test_window_closes_only_after_lateness_and_late_events_are_counted():
    pw = PartitionWindows(size=60, lateness=30)
    g = ("app", "e", "a", "v", "m")
    assert pw.touch(10, g, "s", 1) is not None
    pw.advance(89)
    pw.end_batch()
    assert pw.close_due() == []  # 60 + 30 > 89
    pw.advance(90)
    closed = pw.close_due()
    assert [k for k, _ in closed] == [(0.0, g)]
    assert pw.touch(59, g, "s", 2) is None and pw.late_events == 1


def test_window_state_roundtrip_and_sessions_exact_below_k():
    st = WindowState()
    st.add("thumbs_up", 3)
    st.add_sessions({1, 2, 3})
    st.outcome_counts["x"] = 2
    back = WindowState.from_bytes(st.to_bytes())
    assert back.c == st.c and back.sessions == {1, 2, 3} and back.outcome_counts == {"x": 2}
    assert back.distinct_sessions() == 3


def test_session_sketch_estimate_is_close_above_k():
    from feedbackloop.schemas import session_hash

    st = WindowState()
    st.add_sessions({session_hash(f"s{i}") for i in range(20_000)})
    est = st.distinct_sessions()
    assert abs(est - 20_000) / 20_000 < 0.15  # ~3 % standard error; 5 sigma


def test_aggregates_equal_ground_truth_exactly():
    rng = random.Random(3)
    pipe, out = make(window_s=60, allowed_lateness_s=0)
    events, truth = [], {}
    for i in range(600):
        t = T0 + dt.timedelta(seconds=i * 0.5)
        ia = interaction(
            t,
            variant=rng.choice("ab"),
            session_id=f"s{rng.randrange(40)}",
            latency_ms=float(rng.randrange(50, 500)),
        )
        events.append(ia)
        key = (window_start(t.timestamp(), 60), ia.variant)
        tr = truth.setdefault(
            key,
            {
                "interactions": 0,
                "thumbs_up": 0,
                "thumbs_down": 0,
                "latency_sum": 0.0,
                "rating_sum": 0,
                "rating_count": 0,
                "implicit_copy": 0,
                "outcome": 0,
                "sessions": set(),
            },
        )
        tr["interactions"] += 1
        tr["latency_sum"] += ia.latency_ms
        tr["sessions"].add(ia.session_id)
        r = rng.random()
        if r < 0.5:
            up = rng.random() < 0.7
            events.append(thumbs(ia, up))
            tr["thumbs_up" if up else "thumbs_down"] += 1
        elif r < 0.7:
            rating = rng.randint(1, 5)
            events.append(
                Feedback(
                    app_id="app",
                    session_id=ia.session_id,
                    interaction_id=ia.interaction_id,
                    kind="rating",
                    rating=rating,
                    occurred_at=t,
                )
            )
            tr["rating_sum"] += rating
            tr["rating_count"] += 1
        elif r < 0.85:
            events.append(
                Implicit(
                    app_id="app",
                    session_id=ia.session_id,
                    interaction_id=ia.interaction_id,
                    signal="copy",
                    occurred_at=t,
                )
            )
            tr["implicit_copy"] += 1
        else:
            events.append(
                Outcome(
                    app_id="app",
                    session_id=ia.session_id,
                    interaction_id=ia.interaction_id,
                    outcome="purchase",
                    value=2.5,
                    occurred_at=t,
                )
            )
            tr["outcome"] += 1
    # a far-later interaction closes every window above
    closer = interaction(T0 + dt.timedelta(hours=1), variant="z")
    rs = recs([*events, closer])
    for i in range(0, len(rs), 97):  # odd batch size: windows span batches
        pipe.process(0, rs[i : i + 97], now=T0.timestamp())
    aggs = [WindowAggregate.model_validate_json(v) for _, _, v, _ in out.on(TOPICS.aggregates)]
    got = {(a.window_start.timestamp(), a.variant): a for a in aggs}
    assert set(got) == set(truth)
    for key, tr in truth.items():
        a = got[key]
        assert a.interactions == tr["interactions"]
        assert (a.thumbs_up, a.thumbs_down) == (tr["thumbs_up"], tr["thumbs_down"])
        assert a.latency_sum == pytest.approx(tr["latency_sum"])
        assert a.latency_count == tr["interactions"]
        assert (a.rating_count, a.rating_sum) == (tr["rating_count"], tr["rating_sum"])
        assert a.implicit_copy == tr["implicit_copy"]
        assert a.outcome_counts.get("purchase", 0) == tr["outcome"]
        assert a.outcome_value_sums.get("purchase", 0.0) == pytest.approx(2.5 * tr["outcome"])
        assert a.distinct_sessions == len(tr["sessions"])
        assert a.source_partition == 0 and a.model == "m1" and a.prompt_version == "v1"
    assert pipe.stats.records_in == pipe.stats.valid == len(rs)


# --- enrichment ----------------------------------------------------------------------------
def test_feedback_after_its_interaction_is_enriched():
    pipe, out = make()
    ia = interaction(user_input="def f(x):\n    return x  # why is this slow?")
    fb = thumbs(ia, up=False)
    pipe.process(0, recs([ia, fb]))
    enriched = [EnrichedEvent.model_validate_json(v) for _, _, v, _ in out.on(TOPICS.enriched)]
    assert [e.event.event_type for e in enriched] == ["interaction", "feedback"]
    e = enriched[1]
    assert e.event == fb and not e.orphaned and e.waited_ms == 0
    assert e.context is not None and e.context.interaction_id == ia.interaction_id
    assert (e.context.model, e.context.variant, e.context.experiment) == ("m1", "a", "exp")
    assert e.context.user_input == ia.user_input and e.context.response == ia.response
    assert e.context.interaction_occurred_at == ia.occurred_at
    assert e.derived is not None and e.derived.input_has_code
    assert e.derived.input_language == "en" and e.source_offset == 1
    assert enriched[0].context is None and enriched[0].derived == e.derived


def test_early_feedback_waits_then_is_enriched():
    pipe, out = make(grace_s=30)
    ia = interaction()
    fb = thumbs(ia)
    pipe.process(0, recs([fb]), now=1000.0)
    assert out.on(TOPICS.enriched) == [] and pipe.stats.pending == 1
    assert any(t == "pending" and v is not None for t, _, _, v in out.changelog_writes)
    pipe.tick(now=1010.0)  # within grace: still waiting
    assert out.on(TOPICS.enriched) == []
    pipe.process(0, recs([ia], start_offset=1), now=1020.0)
    enriched = [EnrichedEvent.model_validate_json(v) for _, _, v, _ in out.on(TOPICS.enriched)]
    fbe = [e for e in enriched if e.event.event_type == "feedback"][0]
    assert not fbe.orphaned and fbe.context is not None and fbe.waited_ms == pytest.approx(20_000)
    assert fbe.source_offset == 0
    assert pipe.stats.pending == 0 and pipe.pending == {}


def test_feedback_without_interaction_is_orphaned_after_grace_not_dropped():
    pipe, out = make(grace_s=30)
    ia = interaction()
    pipe.process(0, recs([thumbs(ia)]), now=1000.0)
    pipe.tick(now=1031.0)
    enriched = [EnrichedEvent.model_validate_json(v) for _, _, v, _ in out.on(TOPICS.enriched)]
    assert len(enriched) == 1 and enriched[0].orphaned and enriched[0].context is None
    assert pipe.stats.orphaned == 1 and pipe.pending == {}
    # counted as unattributed in its window, with the orphan flag
    pipe.process(0, recs([interaction(T0 + dt.timedelta(hours=1))], 5), now=1032.0)
    aggs = [WindowAggregate.model_validate_json(v) for _, _, v, _ in out.on(TOPICS.aggregates)]
    unattributed = [a for a in aggs if a.variant == ""]
    assert unattributed and unattributed[0].orphaned == 1 and unattributed[0].thumbs_up == 1


def test_pending_roundtrip():
    pipe, _ = make()
    ia = interaction()
    pipe.process(2, recs([thumbs(ia)]), now=5.0)
    (lst,) = pipe.pending.values()
    assert decode_pending(encode_pending(lst)) == lst and lst[0].partition == 2


def test_session_outcome_is_not_orphaned():
    pipe, out = make()
    oc = Outcome(app_id="app", session_id="s9", outcome="purchase", value=3.0, occurred_at=T0)
    pipe.process(0, recs([oc]))
    (e,) = [EnrichedEvent.model_validate_json(v) for _, _, v, _ in out.on(TOPICS.enriched)]
    assert not e.orphaned and e.context is None and pipe.pending == {}


def test_retention_sweep_forgets_old_interactions_with_tombstones():
    pipe, out = make(retention_s=3600)
    old = interaction(T0)
    new = interaction(T0 + dt.timedelta(hours=2))
    pipe.process(1, recs([old, new]))
    assert pipe.sweep() == 1
    assert list(pipe.interactions) == [new.partition_key]
    assert ("interactions", 1, old.partition_key, None) in out.changelog_writes


# --- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b'{"event_type": "nope", "app_id": "a", "session_id": "s"}', "unknown_event_type"),
        (b'{"event_type": "feedback", "app_id": "a", "session_id": "s"}', "validation_error"),
        (b'{"event_type": "feedback", "schema_version": 99}', "unsupported_schema_version"),
        (b'{"event_type":"interaction","user_input":"' + b"x" * 1_000_001 + b'"}', "oversized"),
    ],
)
def test_bad_input_goes_to_dead_letters_and_processing_continues(payload, reason):
    pipe, out = make()
    ia = interaction()
    rs = [(b"k", payload, 0, 0), *recs([ia], start_offset=1)]
    pipe.process(3, rs)
    (dl,) = out.on(TOPICS.dead_letters)
    letter = DeadLetter.from_message(dl[2], dl[1], dl[3])
    assert letter.reason == reason and letter.payload == payload
    assert (letter.source_topic, letter.source_partition, letter.source_offset) == (
        TOPICS.events,
        3,
        0,
    )
    assert len(out.on(TOPICS.enriched)) == 1
    s = pipe.stats
    assert s.records_in == s.valid + s.dead_letters == 2


# --- derived attributes --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("How do I read a file in Python?", "en"),
        ("¿Cómo puedo leer un archivo?", "es"),
        ("Comment est-ce que je peux lire un fichier ?", "fr"),
        ("Wie kann ich das machen und was ist das?", "de"),
        ("Привет, как дела?", "ru"),
        ("こんにちは、元気ですか", "ja"),
        ("你好，世界", "zh"),
        ("xyz", "und"),
    ],
)
def test_detect_language(text, lang):
    assert detect_language(text) == lang


def test_has_code_and_length_bucket():
    assert has_code("```py\nprint(1)\n```")
    assert has_code("def f(x):\n    return x")
    assert not has_code("Could you summarise this article (it is long)?")
    assert [length_bucket(n) for n in (0, 50, 51, 1000, 5001)] == ["empty", "xs", "s", "m", "xl"]


def test_enriched_bytes_match_the_model():
    pipe, out = make()
    ia = interaction(metadata={"tier": "pro", "n": 3})
    pipe.process(0, recs([ia, thumbs(ia)]))
    for _, _, v, _ in out.on(TOPICS.enriched):
        parsed = EnrichedEvent.model_validate_json(v)
        assert json.loads(parsed.model_dump_json())["event"]["event_id"] in v.decode()
    assert uuid.UUID(str(parsed.event.event_id))


def test_dead_letter_refused_whole_is_truncated_not_fatal():
    class Refusing(Collect):
        def produce(self, topic, key, value, partition=None, headers=None):  # noqa: ANN001
            if topic == TOPICS.dead_letters and value and len(value) > 300_000:
                raise RuntimeError("Message size too large")
            super().produce(topic, key, value, partition, headers)

    out = Refusing()
    pipe = Pipeline(TOPICS, StreamConfig(), out)
    big = b'{"event_type":"interaction","user_input":"' + b"x" * 1_000_001 + b'"}'
    pipe.process(0, [(b"k", big, 7, 0), *recs([interaction()], 8)])
    (dl,) = out.on(TOPICS.dead_letters)
    assert len(dl[2]) == 256 * 1024
    assert ("feedbackloop.dlq.truncated_from", str(len(big)).encode()) in dl[3]
    assert len(out.on(TOPICS.enriched)) == 1
