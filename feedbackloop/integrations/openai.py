"""Log every OpenAI call as an interaction: ``wrap(OpenAI(), feedback_client)``.

Covers ``chat.completions.create`` / ``.parse`` and ``responses.create`` / ``.parse`` of
``openai.OpenAI`` and ``openai.AsyncOpenAI``, streamed (``stream=True``) or not; the
``.stream()`` helpers go through ``create`` and are logged by it. The client is
patched in place and returned, so it keeps its type; clients made from it later
(``with_options``) are not wrapped. What is logged, and the guarantees to the app, are in
:mod:`feedbackloop.integrations` and :mod:`.recording`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from feedbackloop.integrations.pricing import Price
from feedbackloop.integrations.recording import Call, Recorder, get, patch, text_of

__all__ = ["wrap"]

C = TypeVar("C")
_SYSTEM_ROLES = ("system", "developer")


def wrap(
    client: C,
    feedback_client: Any,
    *,
    session_id: str | None = None,
    prompt_version: str | None = None,
    experiment: str | None = None,
    variant: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    prices: Mapping[str, Price] | None = None,
    capture_content: bool = True,
) -> C:
    """Make ``client`` (``OpenAI`` or ``AsyncOpenAI``) log its calls to ``feedback_client``.

    The keyword fields are defaults under ``feedback_client.context(...)`` and the per-call
    ``feedbackloop={...}`` argument; ``prices`` override :data:`~.pricing.PRICES`;
    ``capture_content=False`` logs empty prompt and response texts (tokens, latency and
    cost only).
    """
    recorder = Recorder(
        feedback_client,
        "openai",
        defaults={
            "session_id": session_id,
            "prompt_version": prompt_version,
            "experiment": experiment,
            "variant": variant,
            "metadata": metadata,
        },
        prices=prices,
        capture_content=capture_content,
    )
    chat = client.chat.completions  # type: ignore[attr-defined]
    for name in ("create", "parse"):
        patch(chat, name, recorder, "chat.completions", _prepare_chat, _read_chat, _observe_chat)
    responses = getattr(client, "responses", None)
    if responses is not None:
        for name in ("create", "parse"):
            patch(
                responses,
                name,
                recorder,
                "responses",
                _prepare_responses,
                _read_response,
                _observe_response,
            )
    return client


def _user(call: Call, kwargs: Mapping[str, Any]) -> None:
    user = kwargs.get("safety_identifier") or kwargs.get("user")
    if isinstance(user, str) and user:
        call.options.setdefault("user_id", user)


# ---------------------------------------------------------------- chat completions


def _prepare_chat(call: Call, kwargs: Mapping[str, Any]) -> None:
    messages = kwargs.get("messages")
    messages = list(messages) if isinstance(messages, (list, tuple)) else []
    call.system_prompt = "\n\n".join(
        text_of(get(m, "content")) for m in messages if get(m, "role") in _SYSTEM_ROLES
    )
    users = [m for m in messages if get(m, "role") == "user"]
    call.user_input = text_of(get(users[-1], "content")) if users else ""
    call.metadata["messages"] = len(messages)
    _user(call, kwargs)


def _chat_usage(call: Call, usage: Any) -> None:
    if usage is None:
        return
    call.input_tokens = get(usage, "prompt_tokens")
    call.output_tokens = get(usage, "completion_tokens")
    call.cached_input_tokens = get(get(usage, "prompt_tokens_details"), "cached_tokens") or 0


def _tool_calls(calls: Any) -> str:
    return json.dumps(
        [
            {
                "name": get(get(c, "function"), "name"),
                "arguments": get(get(c, "function"), "arguments"),
            }
            for c in calls or ()
        ]
    )


def _read_chat(call: Call, completion: Any) -> None:
    call.model = get(completion, "model")
    choices = get(completion, "choices") or []
    if choices:
        message = get(choices[0], "message")
        tool_calls = get(message, "tool_calls")
        call.response = (
            get(message, "content")
            or get(message, "refusal")
            or (_tool_calls(tool_calls) if tool_calls else "")
        )
        call.metadata["finish_reason"] = get(choices[0], "finish_reason")
    _chat_usage(call, get(completion, "usage"))


def _observe_chat(call: Call, chunk: Any) -> bool:
    call.model = get(chunk, "model") or call.model
    _chat_usage(call, get(chunk, "usage"))
    for choice in get(chunk, "choices") or ():
        if get(choice, "index", 0) != 0:
            continue  # n > 1: the first choice is the one logged
        if get(choice, "finish_reason"):
            call.metadata["finish_reason"] = get(choice, "finish_reason")
        text = get(get(choice, "delta"), "content")
        if text:
            call.chunks.append(text)
            return True
    return False


# ---------------------------------------------------------------- responses


def _prepare_responses(call: Call, kwargs: Mapping[str, Any]) -> None:
    system = [kwargs["instructions"]] if isinstance(kwargs.get("instructions"), str) else []
    items = kwargs.get("input")
    if isinstance(items, str):
        call.user_input = items
        items = []
    items = list(items) if isinstance(items, (list, tuple)) else []
    system += [text_of(get(i, "content")) for i in items if get(i, "role") in _SYSTEM_ROLES]
    users = [i for i in items if get(i, "role") == "user"]
    if users:
        call.user_input = text_of(get(users[-1], "content"))
    call.system_prompt = "\n\n".join(system)
    _user(call, kwargs)


def _read_response(call: Call, response: Any) -> None:
    call.model = get(response, "model") or call.model
    text = get(response, "output_text")
    if isinstance(text, str) and text:
        call.response = text
    call.metadata["status"] = get(response, "status")
    usage = get(response, "usage")
    if usage is not None:
        call.input_tokens = get(usage, "input_tokens")
        call.output_tokens = get(usage, "output_tokens")
        call.cached_input_tokens = get(get(usage, "input_tokens_details"), "cached_tokens") or 0


def _observe_response(call: Call, event: Any) -> bool:
    kind = get(event, "type")
    if kind == "response.output_text.delta":
        delta = get(event, "delta")
        if delta:
            call.chunks.append(delta)
            return True
    elif kind in ("response.completed", "response.incomplete", "response.failed"):
        _read_response(call, get(event, "response"))
    return False
