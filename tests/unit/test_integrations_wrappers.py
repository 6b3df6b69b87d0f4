"""The OpenAI and Anthropic wrappers, with the providers' real client libraries talking to a
mocked HTTP transport: what each call logs, and that logging never changes the app's call."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

pytest.importorskip("openai", reason="the integrations extra is not installed")
pytest.importorskip("anthropic", reason="the integrations extra is not installed")

from provider_mocks import ANSWER, MODEL_ANTHROPIC, MODEL_OPENAI, ProviderMock  # noqa: E402

from feedbackloop.integrations import (  # noqa: E402
    Price,
    cost_usd,
    interaction_id,
    logging_failures,
)
from feedbackloop.integrations import anthropic as fl_anthropic  # noqa: E402
from feedbackloop.integrations import openai as fl_openai  # noqa: E402
from feedbackloop.producers.context import context  # noqa: E402
from feedbackloop.schemas import Interaction  # noqa: E402

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]


class Logged:
    """Stands in for FeedbackClient: validates each interaction against the contract."""

    def __init__(self, fail: bool = False) -> None:
        self.interactions: list[Interaction] = []
        self.fail = fail

    def log_interaction(self, **fields: Any) -> uuid.UUID:
        if self.fail:
            raise RuntimeError("the feedback client is broken")
        self.interactions.append(Interaction(app_id="app", **fields))
        return fields["interaction_id"]  # type: ignore[no-any-return]

    @property
    def one(self) -> Interaction:
        assert len(self.interactions) == 1, self.interactions
        return self.interactions[0]


@pytest.fixture
def mock() -> ProviderMock:
    return ProviderMock()


@pytest.fixture
def logged() -> Logged:
    return Logged()


def test_a_chat_completion_is_logged_with_prompt_answer_tokens_cost_and_context(
    mock: ProviderMock, logged: Logged
) -> None:
    client = fl_openai.wrap(mock.openai(), logged, experiment="tone", variant="short")
    with context(session_id="s-1", user_id="u-1", prompt_version="v7") as ctx:
        result = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert result.choices[0].message.content == ANSWER
    got = logged.one
    assert (got.system_prompt, got.user_input, got.response) == ("Be brief.", "Hi?", ANSWER)
    assert got.model == MODEL_OPENAI
    assert (got.input_tokens, got.output_tokens) == (12, 3)
    # 10 fresh input tokens at 0.15, 2 cached at 0.075, 3 output at 0.60 per million
    assert got.cost_usd == pytest.approx((10 * 0.15 + 2 * 0.075 + 3 * 0.60) / 1e6)
    assert (got.session_id, got.user_id, got.prompt_version) == ("s-1", "u-1", "v7")
    assert (got.experiment, got.variant) == ("tone", "short")
    assert got.latency_ms is not None and got.latency_ms > 0
    assert got.metadata["provider"] == "openai" and got.metadata["api"] == "chat.completions"
    assert interaction_id(result) == ctx.interaction_id == got.interaction_id


def test_the_per_call_option_wins_over_the_context_and_never_reaches_the_provider(
    mock: ProviderMock, logged: Logged
) -> None:
    client = fl_openai.wrap(mock.openai(), logged)
    mine = uuid.uuid4()
    with context(session_id="outer", prompt_version="v1"):
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=CHAT,
            feedbackloop={"prompt_version": "v2", "interaction_id": str(mine)},
        )
    assert (logged.one.session_id, logged.one.prompt_version) == ("outer", "v2")
    assert logged.one.interaction_id == mine
    assert "feedbackloop" not in mock.requests[0]


def test_a_streamed_chat_is_logged_once_when_the_stream_ends_with_time_to_first_token(
    mock: ProviderMock, logged: Logged
) -> None:
    client = fl_openai.wrap(mock.openai(), logged)
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=CHAT, stream=True, stream_options={"include_usage": True}
    )
    pieces = []
    for chunk in stream:
        assert logged.interactions == []  # nothing before the end
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == ANSWER == logged.one.response
    assert (logged.one.input_tokens, logged.one.output_tokens) == (12, 3)
    assert 0 < logged.one.metadata["ttft_ms"] <= logged.one.latency_ms  # type: ignore[operator]
    assert interaction_id(stream) == logged.one.interaction_id
    stream.close()  # closing after the end logs nothing more
    assert len(logged.interactions) == 1


def test_a_stream_closed_early_logs_what_arrived_and_says_so(
    mock: ProviderMock, logged: Logged
) -> None:
    client = fl_openai.wrap(mock.openai(), logged)
    with client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True) as s:
        next(s)
        next(s)
    assert logged.one.metadata["stream_complete"] is False
    assert logged.one.response == ANSWER[: len(ANSWER) // 2]


def test_the_responses_api_streamed_or_not(mock: ProviderMock, logged: Logged) -> None:
    client = fl_openai.wrap(mock.openai(), logged)
    plain = client.responses.create(model="gpt-4o-mini", instructions="Sys.", input="Q?")
    assert plain.output_text == ANSWER
    for _ in client.responses.create(
        model="gpt-4o-mini",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Q2?"}]}],
        stream=True,
    ):
        pass
    first, second = logged.interactions
    assert (first.system_prompt, first.user_input, first.response) == ("Sys.", "Q?", ANSWER)
    assert (second.user_input, second.response) == ("Q2?", ANSWER)
    assert (second.input_tokens, second.output_tokens) == (20, 4)
    assert second.metadata["api"] == "responses" and "ttft_ms" in second.metadata


def test_anthropic_messages_streamed_or_not_count_cache_reads_as_input(
    mock: ProviderMock, logged: Logged
) -> None:
    client = fl_anthropic.wrap(mock.anthropic(), logged, session_id="wrap-default")
    msg = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        system=[{"type": "text", "text": "Be kind."}],
        messages=[{"role": "user", "content": "Hello?"}],
        metadata={"user_id": "u-9"},
    )
    assert msg.content[0].text == ANSWER
    stream = client.messages.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=[{"role": "user", "content": [{"type": "text", "text": "Again?"}]}],
        stream=True,
    )
    assert [e.type for e in stream][-1] == "message_stop"
    plain, streamed = logged.interactions
    assert (plain.system_prompt, plain.user_input, plain.response) == ("Be kind.", "Hello?", ANSWER)
    assert (plain.session_id, plain.user_id, plain.model) == (
        "wrap-default",
        "u-9",
        MODEL_ANTHROPIC,
    )
    for got in (plain, streamed):
        assert (got.input_tokens, got.output_tokens) == (40, 5)
        assert got.cost_usd == pytest.approx((30 * 1.0 + 10 * 0.10 + 5 * 5.0) / 1e6)
    assert streamed.response == ANSWER and "ttft_ms" in streamed.metadata
    assert interaction_id(msg) == plain.interaction_id


def test_async_clients_streamed_or_not(mock: ProviderMock, logged: Logged) -> None:
    async def app() -> None:
        oa = fl_openai.wrap(mock.openai(asynchronous=True), logged)
        an = fl_anthropic.wrap(mock.anthropic(asynchronous=True), logged)
        with context(session_id="async-s"):
            done = await oa.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
            assert interaction_id(done) is not None
            stream = await oa.chat.completions.create(
                model="gpt-4o-mini", messages=CHAT, stream=True
            )
            assert [c async for c in stream]
            stream = await an.messages.create(
                model="claude-haiku-4-5", max_tokens=8, messages=CHAT[1:], stream=True
            )
            async with stream:
                assert [e async for e in stream]

    asyncio.run(app())
    assert [i.metadata["stream"] for i in logged.interactions] == [False, True, True]
    assert {i.session_id for i in logged.interactions} == {"async-s"}
    assert all(i.response == ANSWER for i in logged.interactions)


def test_contexts_nest_and_stay_inside_their_asyncio_task(
    mock: ProviderMock, logged: Logged
) -> None:
    async def handler(session: str) -> uuid.UUID | None:
        with context(session_id=session) as ctx:
            await asyncio.sleep(0.01)  # the other handler runs meanwhile
            await client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
            return ctx.interaction_id

    async def main() -> list[uuid.UUID | None]:
        return list(await asyncio.gather(handler("a"), handler("b")))

    client = fl_openai.wrap(mock.openai(asynchronous=True), logged)
    with context(prompt_version="v1") as outer:
        ids = asyncio.run(main())
        with context(prompt_version="v2") as inner:
            assert inner.session_id is None and inner.prompt_version == "v2"
    by_id = {i.interaction_id: i for i in logged.interactions}
    assert [by_id[i].session_id for i in ids if i] == ["a", "b"]
    # an enclosing block sees the interactions of the blocks nested in it, tasks included
    assert set(outer.interaction_ids) == set(ids) and len(ids) == 2


def test_a_broken_feedback_client_never_breaks_the_apps_call(mock: ProviderMock) -> None:
    before = logging_failures()
    client = fl_openai.wrap(mock.openai(), Logged(fail=True))
    result = client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert result.choices[0].message.content == ANSWER
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=CHAT, stream=True))
    assert len(chunks) == 4
    assert logging_failures() == before + 2


def test_a_provider_error_reaches_the_app_unchanged_and_logs_nothing(logged: Logged) -> None:
    import openai

    failing = ProviderMock(status=400)
    client = fl_openai.wrap(failing.openai(), logged)
    with pytest.raises(openai.BadRequestError, match="mocked failure"):
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert logged.interactions == []


def test_wrapping_twice_logs_each_call_once_and_other_clients_are_untouched(
    mock: ProviderMock, logged: Logged
) -> None:
    client = fl_openai.wrap(fl_openai.wrap(mock.openai(), logged), logged)
    client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    mock.openai().chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert len(logged.interactions) == 1


def test_prices_are_overridable_and_unknown_models_get_no_cost(
    mock: ProviderMock, logged: Logged
) -> None:
    client = fl_openai.wrap(mock.openai(), logged, prices={"gpt-4o-mini": Price(1.0, 2.0)})
    client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert logged.one.cost_usd == pytest.approx((12 * 1.0 + 3 * 2.0) / 1e6)
    assert cost_usd("my-own-model", 100, 100) is None
    assert cost_usd("gpt-4o-2024-08-06", 1_000_000, 0) == 2.5  # a snapshot of gpt-4o
    assert cost_usd("gpt-4o-mini-2024-07-18", 1_000_000, 0) == 0.15
    assert cost_usd("claude-sonnet-4-5-20250929", 0, 1_000_000) == 15.0
    assert cost_usd("claude-sonnet-4-6", 1, 1) is None  # a newer model is not guessed at


def test_capture_content_off_logs_no_text(mock: ProviderMock, logged: Logged) -> None:
    client = fl_openai.wrap(mock.openai(), logged, capture_content=False)
    client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    got = logged.one
    assert (got.system_prompt, got.user_input, got.response) == ("", "", "")
    assert got.output_tokens == 3


def test_the_stream_helpers_are_logged_once_each(mock: ProviderMock, logged: Logged) -> None:
    oa = fl_openai.wrap(mock.openai(), logged)
    an = fl_anthropic.wrap(mock.anthropic(), logged)
    with oa.chat.completions.stream(model="gpt-4o-mini", messages=CHAT) as s:
        assert [e for e in s]
    with oa.responses.stream(model="gpt-4o-mini", input="Q?") as s:
        assert s.get_final_response().output_text == ANSWER
    with an.messages.stream(model="claude-haiku-4-5", max_tokens=8, messages=CHAT[1:]) as s:
        assert "".join(s.text_stream) == ANSWER
        assert interaction_id(s) is not None
    apis = [(i.metadata["api"], i.metadata["stream"]) for i in logged.interactions]
    assert apis == [("chat.completions", True), ("responses", True), ("messages", True)]
    assert all(i.response == ANSWER for i in logged.interactions)
    assert logged.interactions[2].input_tokens == 40  # from the raw events, as with create


def test_the_async_anthropic_stream_helper_is_logged(mock: ProviderMock, logged: Logged) -> None:
    async def app() -> str:
        an = fl_anthropic.wrap(mock.anthropic(asynchronous=True), logged)
        async with an.messages.stream(
            model="claude-haiku-4-5", max_tokens=8, messages=CHAT[1:]
        ) as s:
            return str(await s.get_final_text())

    assert asyncio.run(app()) == ANSWER
    assert logged.one.response == ANSWER and "ttft_ms" in logged.one.metadata


def test_outside_every_block_nothing_is_remembered(mock: ProviderMock, logged: Logged) -> None:
    from feedbackloop.producers.context import current_context

    client = fl_openai.wrap(mock.openai(), logged)
    for _ in range(3):
        client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert len(current_context().interaction_ids) == 0
    with context(session_id="long-lived") as ctx:
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o-mini", messages=CHAT)
    assert list(ctx.interaction_ids) == [i.interaction_id for i in logged.interactions[3:]]


def test_raw_responses_are_logged_from_their_parsed_body_or_not_at_all(
    mock: ProviderMock, logged: Logged
) -> None:
    oa = fl_openai.wrap(mock.openai(), logged)
    raw = oa.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=CHAT)
    assert raw.parse().choices[0].message.content == ANSWER
    assert (logged.one.response, logged.one.output_tokens) == (ANSWER, 3)
    # a raw stream's body is the app's to read: nothing logged, nothing consumed
    raw = oa.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=CHAT, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == ANSWER
    assert len(logged.interactions) == 1
