"""OpenAI and Anthropic HTTP APIs, mocked at the transport: the providers' real client
libraries talk to :class:`ProviderMock` through ``httpx2.MockTransport`` (no network).

Answers follow the providers' documented wire formats: JSON bodies, and server-sent events
for ``stream=True`` (chat completion chunks ending in ``[DONE]``; Responses API events;
Anthropic message events).
"""

from __future__ import annotations

import json
from typing import Any

import httpx2

ANSWER = "Hello there"
MODEL_OPENAI = "gpt-4o-mini-2024-07-18"
MODEL_ANTHROPIC = "claude-haiku-4-5-20251001"


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        head = f"event: {name}\n" if name else ""
        body = data if isinstance(data, str) else json.dumps(data)
        out.append(f"{head}data: {body}\n\n")
    return "".join(out).encode()


def _event(kind: str, **fields: Any) -> tuple[str | None, Any]:
    return kind, {"type": kind, **fields}


class ProviderMock:
    """Answers every API the wrappers cover; ``requests`` keeps each request body seen, and
    ``status`` other than 200 makes every call fail with that HTTP status."""

    def __init__(self, answer: str = ANSWER, status: int = 200) -> None:
        self.answer = answer
        self.status = status
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content or b"{}")
        self.requests.append(body)
        if self.status != 200:
            return httpx2.Response(
                self.status, json={"error": {"message": "mocked failure", "type": "server_error"}}
            )
        path = request.url.path
        stream = bool(body.get("stream"))
        if path.endswith("/chat/completions"):
            return self._chat(stream)
        if path.endswith("/responses"):
            return self._responses(stream)
        if path.endswith("/messages"):
            return self._messages(stream)
        return httpx2.Response(404, json={"error": {"message": f"no route {path}"}})

    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self)

    def openai(self, asynchronous: bool = False) -> Any:
        import openai

        if asynchronous:
            return openai.AsyncOpenAI(
                api_key="sk-test",
                http_client=httpx2.AsyncClient(transport=self.transport()),
                max_retries=0,
            )
        return openai.OpenAI(
            api_key="sk-test", http_client=httpx2.Client(transport=self.transport()), max_retries=0
        )

    def anthropic(self, asynchronous: bool = False) -> Any:
        import anthropic

        if asynchronous:
            return anthropic.AsyncAnthropic(
                api_key="sk-test",
                http_client=httpx2.AsyncClient(transport=self.transport()),
                max_retries=0,
            )
        return anthropic.Anthropic(
            api_key="sk-test", http_client=httpx2.Client(transport=self.transport()), max_retries=0
        )

    def _halves(self) -> tuple[str, str]:
        cut = len(self.answer) // 2
        return self.answer[:cut], self.answer[cut:]

    def _chat(self, stream: bool) -> httpx2.Response:
        usage = {
            "prompt_tokens": 12,
            "completion_tokens": 3,
            "total_tokens": 15,
            "prompt_tokens_details": {"cached_tokens": 2},
        }
        base = {"id": "chatcmpl-1", "created": 1_700_000_000, "model": MODEL_OPENAI}
        if not stream:
            return httpx2.Response(
                200,
                json={
                    **base,
                    "object": "chat.completion",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": self.answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                },
            )
        a, b = self._halves()
        chunk = {**base, "object": "chat.completion.chunk"}
        events: list[tuple[str | None, Any]] = [
            (None, {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
            (None, {**chunk, "choices": [{"index": 0, "delta": {"content": a}}]}),
            (
                None,
                {
                    **chunk,
                    "choices": [{"index": 0, "delta": {"content": b}, "finish_reason": "stop"}],
                },
            ),
            (None, {**chunk, "choices": [], "usage": usage}),
            (None, "[DONE]"),
        ]
        return httpx2.Response(
            200, content=_sse(events), headers={"content-type": "text/event-stream"}
        )

    def _response_body(self) -> dict[str, Any]:
        return {
            "id": "resp_1",
            "object": "response",
            "created_at": 1_700_000_000,
            "model": MODEL_OPENAI,
            "status": "completed",
            "output": [
                {
                    "type": "message",
                    "id": "msg_1",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": self.answer, "annotations": []}],
                }
            ],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": {
                "input_tokens": 20,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 4,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 24,
            },
        }

    def _responses(self, stream: bool) -> httpx2.Response:
        done = self._response_body()
        if not stream:
            return httpx2.Response(200, json=done)
        a, b = self._halves()
        started = {**done, "status": "in_progress", "output": [], "usage": None}
        delta = {"item_id": "msg_1", "output_index": 0, "content_index": 0, "logprobs": []}
        item = {**done["output"][0], "status": "in_progress", "content": []}
        part = {"type": "output_text", "text": "", "annotations": []}
        where = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
        events = [
            _event("response.created", response=started, sequence_number=0),
            _event("response.output_item.added", output_index=0, item=item, sequence_number=1),
            _event("response.content_part.added", part=part, sequence_number=2, **where),
            _event("response.output_text.delta", delta=a, sequence_number=3, **delta),
            _event("response.output_text.delta", delta=b, sequence_number=4, **delta),
            _event("response.completed", response=done, sequence_number=5),
        ]
        return httpx2.Response(
            200, content=_sse(events), headers={"content-type": "text/event-stream"}
        )

    def _messages(self, stream: bool) -> httpx2.Response:
        message = {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": MODEL_ANTHROPIC,
            "content": [{"type": "text", "text": self.answer}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 30,
                "output_tokens": 5,
                "cache_read_input_tokens": 10,
                "cache_creation_input_tokens": 0,
            },
        }
        if not stream:
            return httpx2.Response(200, json=message)
        a, b = self._halves()
        start = {
            **message,
            "content": [],
            "stop_reason": None,
            "usage": {**message["usage"], "output_tokens": 1},
        }
        events = [
            _event("message_start", message=start),
            _event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
            _event("ping"),
            _event("content_block_delta", index=0, delta={"type": "text_delta", "text": a}),
            _event("content_block_delta", index=0, delta={"type": "text_delta", "text": b}),
            _event("content_block_stop", index=0),
            _event(
                "message_delta",
                delta={"stop_reason": "end_turn", "stop_sequence": None},
                usage={"output_tokens": 5},
            ),
            _event("message_stop"),
        ]
        return httpx2.Response(
            200, content=_sse(events), headers={"content-type": "text/event-stream"}
        )
