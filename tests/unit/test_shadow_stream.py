"""Shadow answers in the event contract and the stream jobs: keyed, joined, never counted live."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

pytest.importorskip("faust")  # the stream extra; the package imports faust

from test_stream_pipeline import T0, TOPICS, recs  # noqa: E402
from test_stream_pipeline import Collect as PipelineCollect  # noqa: E402

from feedbackloop.schemas import (  # noqa: E402
    SHADOW_OF,
    EnrichedEvent,
    Feedback,
    Interaction,
    WindowAggregate,
    encode,
)
from feedbackloop.stream_jobs import Pipeline, StreamConfig  # noqa: E402


class Collect(PipelineCollect):
    def enriched(self) -> list[EnrichedEvent]:
        return [EnrichedEvent.model_validate_json(m[2]) for m in self.on(TOPICS.enriched)]


def live(**kw):
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
        occurred_at=T0,
    )
    return Interaction(**{**base, **kw})


def shadow_of(ia: Interaction, **kw):
    base = dict(
        app_id=ia.app_id,
        session_id=ia.session_id,
        user_input="",
        response="Call sorted(xs) or xs.sort().",
        model="m2",
        prompt_version="v2",
        latency_ms=80.0,
        shadow=True,
        metadata={SHADOW_OF: str(ia.interaction_id)},
        occurred_at=ia.occurred_at + dt.timedelta(seconds=1),
    )
    return Interaction(**{**base, **kw})


def test_a_shadow_answer_is_keyed_by_its_live_interaction():
    ia = live()
    sh = shadow_of(ia)
    assert sh.shadow_of == ia.interaction_id
    assert sh.partition_key == ia.partition_key == str(ia.interaction_id).encode()
    # without the flag, or with something that is not an id, the key is the answer's own id
    plain = sh.model_copy(update={"shadow": False})
    assert plain.shadow_of is None and plain.partition_key == str(sh.interaction_id).encode()
    odd = shadow_of(ia, metadata={SHADOW_OF: "not-an-id"})
    assert odd.shadow_of is None and odd.partition_key == str(odd.interaction_id).encode()


def test_a_shadow_answer_is_emitted_with_its_live_answers_context():
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(), out)
    ia = live()
    sh = shadow_of(ia)
    pipe.process(0, recs([ia, sh]))
    e = [x for x in out.enriched() if x.event.event_id == sh.event_id][0]
    assert e.context is not None and e.context.interaction_id == ia.interaction_id
    assert e.context.response == ia.response and not e.orphaned
    assert e.derived is not None and e.derived.response_chars == len(sh.response)
    # the join state still holds the live answer: later feedback gets the live context
    fb = Feedback(
        app_id="app", session_id="s1", interaction_id=ia.interaction_id, kind="thumbs", thumbs=-1
    )
    pipe.process(0, recs([fb], 2))
    fbe = [x for x in out.enriched() if x.event.event_id == fb.event_id][0]
    assert fbe.context is not None and fbe.context.model == "m1" and not fbe.context.shadow


def test_an_early_shadow_answer_waits_for_its_live_interaction_then_joins():
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(grace_s=30), out)
    ia = live()
    sh = shadow_of(ia)
    pipe.process(0, recs([sh]), now=1000.0)
    assert out.enriched() == [] and pipe.stats.pending == 1
    pipe.process(0, recs([ia], 1), now=1010.0)
    e = [x for x in out.enriched() if x.event.event_id == sh.event_id][0]
    assert e.context is not None and e.context.interaction_id == ia.interaction_id
    assert e.waited_ms == pytest.approx(10_000) and pipe.pending == {}


def test_a_shadow_answer_whose_live_interaction_never_comes_is_orphaned_not_dropped():
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(grace_s=30), out)
    sh = shadow_of(live())
    pipe.process(0, recs([sh]), now=1000.0)
    pipe.tick(now=1031.0)
    (e,) = out.enriched()
    assert e.event.event_id == sh.event_id and e.orphaned and e.context is None
    assert e.derived is not None and pipe.pending == {} and pipe.stats.orphaned == 1


def test_shadow_answers_are_counted_apart_from_the_live_window_metrics():
    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(window_s=60, allowed_lateness_s=0), out)
    ia = live()
    pipe.process(0, recs([ia, shadow_of(ia), shadow_of(ia, experiment="exp", variant="a")]))
    later = live(occurred_at=T0 + dt.timedelta(minutes=10), session_id="s2")
    pipe.process(0, recs([later], 3))
    aggs = [WindowAggregate.model_validate_json(m[2]) for m in out.on(TOPICS.aggregates)]
    first = [a for a in aggs if a.window_start == T0]
    live_rows = [a for a in first if a.model == "m1"]
    assert sum(a.interactions for a in live_rows) == 1
    assert sum(a.latency_count for a in first) == 1
    assert sum(a.interactions for a in first) == 1
    assert sum(a.shadow_interactions for a in first) == 2


def test_shadow_answers_never_enter_the_join_state():
    pipe = Pipeline(TOPICS, StreamConfig(), Collect())
    ia = live()
    pipe.process(0, recs([ia, shadow_of(ia)]))
    assert list(pipe.interactions) == [str(ia.interaction_id).encode()]
    assert pipe.interactions[str(ia.interaction_id).encode()].model == "m1"
    assert uuid.UUID(list(pipe.interactions)[0].decode()) == ia.interaction_id


def test_a_shadow_answer_over_the_http_collector_is_keyed_by_its_live_interaction():
    pytest.importorskip("fastapi")
    from feedbackloop.web.auth import ALL_APPS, KeyKind, Principal
    from feedbackloop.web.collector import Collector

    sent: list = []

    class Sink:
        def send(self, event) -> bool:  # noqa: ANN001
            sent.append((event.partition_key, event))
            return True

        def send_dead_letter(self, letter) -> bool:  # noqa: ANN001
            return True

    ia = live()
    body = {
        "event_type": "interaction",
        "app_id": "app",
        "session_id": "s1",
        "user_input": "",
        "response": "Call sorted(xs).",
        "model": "m2",
        "prompt_version": "v2",
        "shadow": True,
        "metadata": {SHADOW_OF: str(ia.interaction_id)},
    }
    principal = Principal(KeyKind.local, ALL_APPS, "test")
    (result,) = Collector(Sink()).ingest([body], principal)
    assert result.status == "accepted"
    ((key, event),) = sent
    assert key == str(ia.interaction_id).encode() and event.shadow_of == ia.interaction_id


def test_a_shadow_answer_on_its_own_ids_partition_is_forwarded_to_its_live_answers_owner():
    # A producer that keys the shadow by its own id (not the live one) puts it where the live
    # interaction is not; the join key is the live id, so it goes to that id's partition.
    from feedbackloop.stream_jobs.pipeline import owner_partition

    out = Collect()
    pipe = Pipeline(TOPICS, StreamConfig(), out, partitions=4)
    ia = live()
    sh = shadow_of(ia)
    live_key = str(ia.interaction_id).encode()
    owner = owner_partition(live_key, 4)
    wrong = (owner + 1) % 4
    ts = int(sh.occurred_at.timestamp() * 1000)
    pipe.process(wrong, [(str(sh.interaction_id).encode(), encode(sh), 7, ts)])
    assert pipe.stats.forwarded == 1 and not out.enriched()
    (fwd,) = out.on(TOPICS.repartition)
    assert fwd[1] == live_key
