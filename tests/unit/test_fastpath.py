"""The SDK's fast path against the pydantic models, which stay the contract.

Two clients see the same randomised calls: one as shipped, one with the fast path switched
off (every event built by the model). They must accept and reject exactly the same calls,
with the same error message, and every accepted event must be byte-for-byte what the model
encodes. The encoders are also checked directly: whatever they accept, the model accepts and
encodes to the same bytes, and ``decode`` turns those bytes into an equal event.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from feedbackloop.config import Settings
from feedbackloop.errors import SchemaError
from feedbackloop.producers import FeedbackClient
from feedbackloop.producers.fastpath import EVENT_IDS, FastEncoder, utc_timestamp, uuid_from_str
from feedbackloop.schemas import (
    Envelope,
    Feedback,
    FeedbackKind,
    Implicit,
    ImplicitSignal,
    Interaction,
    Outcome,
    ReportCategory,
    decode,
    encode,
)

EXAMPLES = settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# ------------------------------------------------------------------ strategies: plausible
# values of each field's type, near its limits, plus values the model coerces or rejects.

wild = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(),
    st.floats(),
    st.text(max_size=4),
    st.sampled_from(["5", "1.5", "true", "", " ", "\ud800", b"x", [], {}, 1 + 2j]),
    st.uuids(),
)
short_text = st.text(max_size=6)
texts = st.one_of(
    short_text, st.sampled_from(["", "a\nb\t\x00\x7f", '"\\/', "é😀\u2028", "lone \udc80"])
)


def sized(hi: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(min_size=1, max_size=5), st.text(min_size=hi - 2, max_size=hi + 2), wild
    )


identifier = st.one_of(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,6}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{126,129}", fullmatch=True),
    st.sampled_from(["a b", "-a", "a\n", "é", "a:b.c-d_e"]),
    wild,
)
floats = st.one_of(
    st.none(),
    st.floats(),
    st.integers(-(2**60), 2**60),
    st.sampled_from([-0.0, 0, -1, 2**53, 2**53 + 1, True, "1.5"]),
)
counts = st.one_of(
    st.none(),
    st.integers(-3, 2**64),
    st.sampled_from([0, 2**53 - 1, 2**53, True, 1.0, "3"]),
)
metadata = st.one_of(
    st.none(),
    st.dictionaries(
        st.one_of(st.text(max_size=3), st.text(min_size=63, max_size=66)),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(),
            st.text(max_size=4),
            st.sampled_from([[], b"b", "\ud800"]),
        ),
        max_size=3,
    ),
    st.dictionaries(st.text(max_size=3), st.integers(0, 9), min_size=63, max_size=66),
    st.sampled_from([{}, {1: "x"}, [("a", 1)]]),
)


def interaction_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    maybe = st.one_of(st.none(), identifier)
    return st.fixed_dictionaries(
        {
            "session_id": sized(256),
            "user_input": texts,
            "response": texts,
            "model": sized(200),
        },
        optional={
            "system_prompt": texts,
            "prompt_version": st.one_of(st.none(), sized(200)),
            "experiment": maybe,
            "variant": maybe,
            "latency_ms": floats,
            "input_tokens": counts,
            "output_tokens": counts,
            "cost_usd": floats,
            "metadata": metadata,
            "shadow": st.one_of(st.booleans(), wild),
            "user_id": st.one_of(st.none(), sized(256)),
        },
    )


categories = st.one_of(st.sampled_from(list(ReportCategory)), st.sampled_from(["harmful", "x"]))
signals = st.one_of(st.sampled_from(list(ImplicitSignal)), st.sampled_from(["copy", "COPY"]))
feedback_calls = st.one_of(
    st.tuples(st.just("thumbs"), st.one_of(st.booleans(), st.sampled_from([1, -1, 0, 2, "1"]))),
    st.tuples(st.just("rate"), st.one_of(st.integers(-1, 7), st.integers(-1, 7), wild)),
    st.tuples(st.just("correct"), st.one_of(texts, wild)),
    st.tuples(st.just("comment"), st.one_of(texts, wild)),
    st.tuples(st.just("report"), st.one_of(categories, wild), st.one_of(st.none(), texts, wild)),
)
implicit_kwargs = st.fixed_dictionaries(
    {"signal": st.one_of(signals, wild)},
    optional={
        "edited_text": st.one_of(st.none(), texts),
        "edit_distance": counts,
        "dwell_ms": floats,
        "copied_chars": counts,
    },
)
outcome_names = st.one_of(
    st.sampled_from(["code_accepted", "task_failed", "Not Valid", "a" * 64, "a" * 65, "x\n"]),
    st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True),
    wild,
)
ids_context = st.fixed_dictionaries(
    {},
    optional={
        "user_id": st.one_of(st.none(), sized(256)),
        "session_id": st.one_of(st.none(), sized(256)),
    },
)
context = st.one_of(
    st.just({}),
    ids_context,
    st.fixed_dictionaries(
        {},
        optional={
            "user_id": st.one_of(st.none(), sized(256)),
            "session_id": st.one_of(st.none(), sized(256)),
            "occurred_at": st.sampled_from(
                [dt.datetime(2024, 5, 1, 12, tzinfo=dt.timezone.utc), dt.datetime(2024, 5, 1)]
            ),
            "sesion_id": st.just("typo"),
        },
    ),
)

# ------------------------------------------------------------------ two clients, one call


class Tap:
    def __init__(self) -> None:
        self.sent: list[tuple[Envelope, bytes]] = []

    def __call__(self, event: Envelope, payload: bytes) -> None:
        self.sent.append((event, payload))


def _client(tmp_path: Path, name: str, fast: bool) -> tuple[FeedbackClient, Tap]:
    tap = Tap()
    client = FeedbackClient(
        Settings(
            bootstrap_servers="127.0.0.1:1",
            data_dir=tmp_path / name,
            app_id="unit",
            producer_message_timeout_ms=1000,
        ),
        strict=True,
        on_event=tap,
    )
    client._fast.enabled = fast  # the model path only: the reference
    return client, tap


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    tmp = tmp_path_factory.mktemp("fastpath")
    fast, slow = _client(tmp, "fast", True), _client(tmp, "slow", False)
    yield fast, slow
    fast[0].close(timeout=0)
    slow[0].close(timeout=0)


def _outcome(client: FeedbackClient, tap: Tap, call: Callable[[FeedbackClient], Any]) -> Any:
    before = len(tap.sent)
    try:
        returned = call(client)
    except SchemaError as e:
        assert len(tap.sent) == before
        return ("rejected", e.reason, str(e))
    assert len(tap.sent) == before + 1, "an accepted event reaches the tap once"
    event, payload = tap.sent[-1]
    return ("accepted", returned, event, payload)


def _same(pair: Any, call: Callable[[FeedbackClient], Any]) -> None:
    (fast, fast_tap), (slow, slow_tap) = pair
    got, want = _outcome(fast, fast_tap, call), _outcome(slow, slow_tap, call)
    assert got[0] == want[0], (got, want)
    if got[0] == "rejected":
        assert got[1:] == want[1:]  # the model's reason and message, word for word
        return
    _, returned, event, payload = got
    _, _, ref_event, _ = want
    decoded = decode(payload)
    # As the event crosses the wire (the models accept an infinite float but write null).
    assert decoded == decode(encode(event))
    # The reference event with this event's id and time must encode to the very same bytes.
    ref = ref_event.model_copy(
        update={"event_id": decoded.event_id, "occurred_at": decoded.occurred_at}
    )
    assert encode(ref) == payload
    if isinstance(decoded, Interaction):
        assert returned == decoded.interaction_id
    else:
        assert returned == decoded.event_id


@EXAMPLES
@given(kwargs=interaction_kwargs(), explicit_id=st.booleans())
def test_log_interaction_fast_path_is_the_model(
    pair: Any, kwargs: dict[str, Any], explicit_id: bool
) -> None:
    iid = uuid.uuid4()
    _same(pair, lambda c: c.log_interaction(**kwargs, interaction_id=iid))
    if not explicit_id:
        # a generated id: compare everything but the id itself
        (fast, tap), _ = pair
        out = _outcome(fast, tap, lambda c: c.log_interaction(**kwargs))
        if out[0] == "accepted":
            assert isinstance(out[1], uuid.UUID) and out[1].version == 4
            assert decode(out[3]).interaction_id == out[1]


@EXAMPLES
@given(call=feedback_calls, ctx=context, known=st.booleans())
def test_feedback_fast_path_is_the_model(
    pair: Any, call: tuple[Any, ...], ctx: dict[str, Any], known: bool
) -> None:
    iid = uuid.uuid4()
    if known:  # the client remembers the interaction's session
        for client, _ in pair:
            client.log_interaction(
                session_id="s-1", user_input="q", response="a", model="m", interaction_id=iid
            )
    method, *args = call
    _same(pair, lambda c: getattr(c, method)(iid, *args, **ctx))


@EXAMPLES
@given(kwargs=implicit_kwargs, ctx=context)
def test_implicit_fast_path_is_the_model(
    pair: Any, kwargs: dict[str, Any], ctx: dict[str, Any]
) -> None:
    iid = uuid.uuid4()
    kwargs = {**kwargs, **ctx, "session_id": ctx.get("session_id", "s")}
    _same(pair, lambda c: c.implicit(iid, **kwargs))


@EXAMPLES
@given(
    name=outcome_names,
    session_id=st.one_of(st.none(), sized(256)),
    with_interaction=st.booleans(),
    value=floats,
    tto=floats,
    ctx=context.map(lambda d: {k: v for k, v in d.items() if k != "session_id"}),
)
def test_outcome_fast_path_is_the_model(
    pair: Any,
    name: Any,
    session_id: Any,
    with_interaction: bool,
    value: Any,
    tto: Any,
    ctx: dict[str, Any],
) -> None:
    iid = uuid.uuid4() if with_interaction else None
    _same(
        pair,
        lambda c: c.outcome(
            name,
            session_id=session_id,
            interaction_id=iid,
            value=value,
            time_to_outcome_ms=tto,
            **ctx,
        ),
    )


MAX = 100_000  # MAX_TEXT_CHARS
A = "a"
EDGES: list[tuple[str, dict[str, Any]]] = [
    *[("session_id", {"session_id": A * n}) for n in (0, 1, 256, 257)],
    *[("user_id", {"user_id": A * n}) for n in (0, 1, 256, 257)],
    *[("model", {"model": A * n}) for n in (0, 1, 200, 201)],
    *[("prompt_version", {"prompt_version": A * n}) for n in (0, 1, 200, 201)],
    *[("user_input", {"user_input": A * n}) for n in (0, MAX, MAX + 1)],
    *[("response", {"response": A * n}) for n in (0, MAX, MAX + 1)],
    *[("system_prompt", {"system_prompt": A * n}) for n in (0, MAX, MAX + 1)],
    *[("experiment", {"experiment": A * n, "variant": "b"}) for n in (0, 1, 128, 129)],
    *[("variant", {"experiment": "e", "variant": v}) for v in ("a.b:c-d_9", "_a", "a\n", None)],
    ("variant", {"variant": "b"}),
    *[
        (f, {f: v})
        for f in ("input_tokens", "output_tokens")
        for v in (-1, 0, 2**53 - 1, 2**53, 2**63, True, 1.0, "3")
    ],
    *[("latency_ms", {"latency_ms": v}) for v in (-1e-300, -0.0, 0, 2**53, math.inf, math.nan)],
    *[("cost_usd", {"cost_usd": v}) for v in (-1, 0.0, 1e308, "1", False)],
    *[("shadow", {"shadow": v}) for v in (True, 0, 1, "yes", None)],
    *[("metadata", {"metadata": {str(i): i for i in range(n)}}) for n in (0, 64, 65)],
    *[("metadata", {"metadata": {A * n: 1}}) for n in (0, 64, 65)],
    *[("metadata", {"metadata": {"k": v}}) for v in (2**63, 1e300, math.inf, [1], b"x", "\ud800")],
    ("metadata", {"metadata": {1: 1}}),
]


@pytest.mark.parametrize(("field", "kwargs"), EDGES, ids=[f for f, _ in EDGES])
def test_interaction_limits_match_the_model(pair: Any, field: str, kwargs: dict[str, Any]) -> None:
    base = {"session_id": "s", "user_input": "q", "response": "a", "model": "m"}
    iid = uuid.uuid4()
    _same(pair, lambda c: c.log_interaction(**{**base, **kwargs}, interaction_id=iid))


FEEDBACK_EDGES: list[tuple[str, tuple[Any, ...]]] = [
    *[("rate", (v,)) for v in (0, 1, 5, 6, True, 3.0, "3")],
    *[("thumbs", (v,)) for v in (True, False, 1, -1, 0, 2, "1")],
    *[("correct", (v,)) for v in ("", "x", A * MAX, A * (MAX + 1), None)],
    *[("comment", (v,)) for v in ("", " ", A * MAX, A * (MAX + 1), 5)],
    *[("report", (c, t)) for c in ("spam", ReportCategory.other, "SPAM", 1) for t in (None, "")],
    ("report", ("spam", A * (MAX + 1))),
]


@pytest.mark.parametrize(("method", "args"), FEEDBACK_EDGES, ids=[m for m, _ in FEEDBACK_EDGES])
def test_feedback_limits_match_the_model(pair: Any, method: str, args: tuple[Any, ...]) -> None:
    iid = uuid.uuid4()
    for client, _ in pair:
        client.log_interaction(
            session_id="s", user_input="q", response="a", model="m", interaction_id=iid
        )
    _same(pair, lambda c: getattr(c, method)(iid, *args))
    _same(pair, lambda c: getattr(c, method)(iid, *args, session_id="other", user_id="u"))


IID = uuid.uuid4()
OTHER_EDGES: list[Callable[[FeedbackClient], Any]] = [
    *[lambda c, n=n: c.outcome(A * n, session_id="s") for n in (0, 1, 64, 65)],  # type: ignore[misc]
    *[lambda c, v=v: c.outcome("x", session_id="s", value=v) for v in (-1, math.nan, math.inf)],  # type: ignore[misc]
    lambda c: c.outcome("x"),
    lambda c: c.outcome("x", interaction_id=IID),
    lambda c: c.outcome("x", session_id="s", interaction_id=IID, time_to_outcome_ms=-1),
    *[lambda c, s=s: c.implicit(IID, s, session_id="s") for s in ImplicitSignal],  # type: ignore[misc]
    lambda c: c.implicit(IID, "dwell", session_id="s", dwell_ms=0),
    lambda c: c.implicit(IID, "copy", session_id="s", edit_distance=0),
    lambda c: c.implicit(IID, "edit", session_id="s", edited_text="", edit_distance=0),
    lambda c: c.implicit(IID, "edit", session_id="s", edited_text=A * (MAX + 1)),
    lambda c: c.implicit(str(IID), "copy", session_id="s"),
    *[
        lambda c, f=f, v=v: c.implicit(IID, "edit", session_id="s", **{f: v})  # type: ignore[misc]
        for f in ("edit_distance", "copied_chars", "dwell_ms")
        for v in (-1, 0, 2**53, True, 1.5, "2", math.inf)
    ],
]


@pytest.mark.parametrize("call", OTHER_EDGES)
def test_outcome_and_implicit_limits_match_the_model(
    pair: Any, call: Callable[[FeedbackClient], Any]
) -> None:
    _same(pair, call)


# ------------------------------------------------------------------ the encoders directly


def _model_or_none(model_cls: type[Envelope], **fields: Any) -> Envelope | None:
    try:
        return model_cls(**fields)
    except ValidationError:
        return None


@EXAMPLES
@given(kwargs=interaction_kwargs(), app_id=st.sampled_from(["unit", "bad app"]))
def test_interaction_encoder_accepts_only_what_the_model_accepts(
    kwargs: dict[str, Any], app_id: str
) -> None:
    enc = FastEncoder(app_id)
    eid, ts, iid = EVENT_IDS.next(), utc_timestamp(), uuid.uuid4()
    args = {
        "system_prompt": "",
        "prompt_version": None,
        "experiment": None,
        "variant": None,
        "latency_ms": None,
        "input_tokens": None,
        "output_tokens": None,
        "cost_usd": None,
        "metadata": None,
        "shadow": False,
        "user_id": None,
        **kwargs,
    }
    got = enc.interaction(
        eid, ts, str(iid), args["session_id"], args["user_id"], args["system_prompt"],
        args["user_input"], args["response"], args["model"], args["prompt_version"],
        args["experiment"], args["variant"], args["latency_ms"], args["input_tokens"],
        args["output_tokens"], args["cost_usd"], args["metadata"], args["shadow"],
    )  # fmt: skip
    if got is None or not enc.enabled:  # the client asks a disabled encoder nothing
        return
    args["metadata"] = dict(args["metadata"]) if args["metadata"] else {}
    model = _model_or_none(
        Interaction, event_id=eid, occurred_at=ts, app_id=app_id, interaction_id=iid, **args
    )
    assert model is not None, "the fast path accepted what the model rejects"
    assert encode(model) == got
    assert decode(got) == model


def test_plain_valid_calls_take_the_fast_path() -> None:
    """The common case must not fall back (else the fast path is dead code)."""
    enc = FastEncoder("unit")
    eid, ts, iid = EVENT_IDS.next(), utc_timestamp(), str(uuid.uuid4())
    assert enc.interaction(
        eid,
        ts,
        iid,
        "s",
        None,
        "",
        "q",
        "a",
        "m",
        "v1",
        "exp",
        "b",
        1.5,
        3,
        4,
        0,
        {"k": 1, "f": 0.5, "b": True, "n": None, "s": "x"},
        False,
    )
    assert enc.feedback(eid, ts, iid, "s", "u", FeedbackKind.thumbs, thumbs=-1)
    assert enc.feedback(eid, ts, iid, "s", None, FeedbackKind.rating, rating=5)
    assert enc.feedback(eid, ts, iid, "s", None, FeedbackKind.correction, text="fix")
    assert enc.feedback(eid, ts, iid, "s", None, FeedbackKind.report, category="spam")
    assert enc.implicit(eid, ts, iid, "s", None, ImplicitSignal.dwell, None, None, 12.0, None)
    assert enc.implicit(eid, ts, iid, "s", None, "edit", "new text", 3, None, None)
    assert enc.outcome(eid, ts, None, "s", None, "code_accepted", 1, 250.0)
    assert not FastEncoder("not an identifier").enabled


def test_event_encoders_match_the_model_on_the_feedback_kinds() -> None:
    eid, ts, iid = EVENT_IDS.next(), utc_timestamp(), uuid.uuid4()
    enc = FastEncoder("unit")
    base = {"event_id": eid, "occurred_at": ts, "app_id": "unit", "session_id": "s",
            "interaction_id": iid}  # fmt: skip
    cases: list[tuple[bytes | None, Envelope]] = [
        (enc.feedback(eid, ts, str(iid), "s", None, FeedbackKind.thumbs, thumbs=1),
         Feedback(**base, kind="thumbs", thumbs=1)),
        (enc.feedback(eid, ts, str(iid), "s", None, FeedbackKind.report,
                      category=ReportCategory.harmful, text=""),
         Feedback(**base, kind="report", category="harmful", text="")),
        (enc.implicit(eid, ts, str(iid), "s", None, "copy", None, None, None, 12),
         Implicit(**base, signal="copy", copied_chars=12)),
        (enc.outcome(eid, ts, str(iid), "s", None, "purchase", -2, None),
         Outcome(**base, outcome="purchase", value=-2)),
    ]  # fmt: skip
    for got, model in cases:
        assert got == encode(model)


# ------------------------------------------------------------------ ids, time, threads


def test_event_ids_are_version_4_and_distinct() -> None:
    ids = [EVENT_IDS.next() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for s in ids[:600]:
        u = uuid.UUID(s)
        assert str(u) == s and u.version == 4 and u.variant == uuid.RFC_4122
        assert uuid_from_str(s) == u and hash(uuid_from_str(s)) == hash(u)
    # every random nibble is used: no bias from how the version/variant bits are set
    assert set("".join(ids).replace("-", "")) == set("0123456789abcdef")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX only")
def test_a_forked_child_never_reuses_the_parents_ids() -> None:
    EVENT_IDS.next()  # the pool now holds unused ids the child inherits
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write, ",".join(EVENT_IDS.next() for _ in range(20)).encode())
        os._exit(0)
    os.close(write)
    child = set(os.read(read, 100_000).decode().split(","))
    os.close(read)
    os.waitpid(pid, 0)
    parent = {EVENT_IDS.next() for _ in range(20)}
    assert len(child) == 20 and not child & parent


def test_timestamps_are_what_pydantic_writes() -> None:
    ts = utc_timestamp()
    parsed = dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - parsed).total_seconds()) < 1
    assert (
        encode(Outcome(app_id="a", session_id="s", outcome="x", occurred_at=ts)).find(
            f'"occurred_at":"{ts}"'.encode()
        )
        > 0
    )


def test_counters_and_ids_stay_exact_across_threads(tmp_path: Path) -> None:
    seen: list[uuid.UUID] = []
    lock = threading.Lock()

    def tap(event: Envelope, _payload: bytes) -> None:
        with lock:
            seen.append(event.event_id)

    client = FeedbackClient(
        Settings(bootstrap_servers="127.0.0.1:1", data_dir=tmp_path, app_id="unit"),
        producer_config={"queue.buffering.max.messages": 100_000},
        on_event=tap,
    )

    def work() -> None:
        for i in range(2000):
            iid = client.log_interaction(
                session_id=f"s{i}", user_input="q", response="a", model="m"
            )
            client.thumbs(iid, i % 2 == 0)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = client.stats()
    client.close(timeout=0)
    assert stats.enqueued == 16_000
    assert len(set(seen)) == 16_000


def test_non_finite_floats_still_take_the_model_path() -> None:
    enc = FastEncoder("unit")
    for bad in (math.inf, math.nan, -1.0):
        assert enc.outcome("e", "t", None, "s", None, "x", None, bad) is None
