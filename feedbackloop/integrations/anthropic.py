"""Log every Anthropic call as an interaction: ``wrap(Anthropic(), feedback_client)``.

Covers ``messages.create`` (streamed with ``stream=True`` or not) and the
``messages.stream()`` helper, of ``anthropic.Anthropic`` and ``anthropic.AsyncAnthropic``.
The client is patched in place and returned, so it keeps its type. What is logged, and the
guarantees to the app, are in :mod:`feedbackloop.integrations` and :mod:`.recording`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from feedbackloop.integrations.pricing import Price
from feedbackloop.integrations.recording import (
    Call,
    Recorder,
    get,
    patch,
    patch_stream_helper,
    text_of,
)

__all__ = ["wrap"]

C = TypeVar("C")


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
    """Make ``client`` (``Anthropic`` or ``AsyncAnthropic``) log its calls to
    ``feedback_client``; the arguments are those of
    :func:`feedbackloop.integrations.openai.wrap`."""
    recorder = Recorder(
        feedback_client,
        "anthropic",
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
    patch(
        client.messages,  # type: ignore[attr-defined]
        "create",
        recorder,
        "messages",
        _prepare,
        _read,
        _observe,
    )
    # messages.stream() posts on its own (not through create): its raw events are the same.
    patch_stream_helper(client.messages, "stream", recorder, "messages", _prepare, _observe)  # type: ignore[attr-defined]
    return client


def _prepare(call: Call, kwargs: Mapping[str, Any]) -> None:
    call.system_prompt = text_of(kwargs.get("system"))
    messages = kwargs.get("messages")
    messages = list(messages) if isinstance(messages, (list, tuple)) else []
    users = [m for m in messages if get(m, "role") == "user"]
    call.user_input = text_of(get(users[-1], "content")) if users else ""
    call.metadata["messages"] = len(messages)
    user = get(kwargs.get("metadata"), "user_id")
    if isinstance(user, str) and user:
        call.options.setdefault("user_id", user)


def _usage(call: Call, usage: Any) -> None:
    if usage is None:
        return
    # Anthropic counts cache writes and reads apart from input_tokens; all three are input.
    fresh = get(usage, "input_tokens")
    written = get(usage, "cache_creation_input_tokens") or 0
    read = get(usage, "cache_read_input_tokens") or 0
    if fresh is not None:
        call.input_tokens = fresh + written + read
        call.cached_input_tokens = read
    out = get(usage, "output_tokens")
    if out is not None:
        call.output_tokens = out


def _read(call: Call, message: Any) -> None:
    call.model = get(message, "model") or call.model
    blocks = get(message, "content") or []
    texts = [get(b, "text") for b in blocks if get(b, "type") == "text"]
    tools = [
        {"name": get(b, "name"), "input": get(b, "input")}
        for b in blocks
        if get(b, "type") == "tool_use"
    ]
    call.response = "\n".join(t for t in texts if isinstance(t, str)) or (
        json.dumps(tools, default=str) if tools else ""
    )
    call.metadata["stop_reason"] = get(message, "stop_reason")
    _usage(call, get(message, "usage"))


def _observe(call: Call, event: Any) -> bool:
    kind = get(event, "type")
    if kind == "content_block_delta":
        delta = get(event, "delta")
        if get(delta, "type") == "text_delta" and get(delta, "text"):
            call.chunks.append(get(delta, "text"))
            return True
    elif kind == "message_start":
        message = get(event, "message")
        call.model = get(message, "model") or call.model
        _usage(call, get(message, "usage"))
    elif kind == "message_delta":
        call.metadata["stop_reason"] = get(get(event, "delta"), "stop_reason")
        _usage(call, get(event, "usage"))
    return False
