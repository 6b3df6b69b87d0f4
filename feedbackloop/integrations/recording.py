"""What every provider wrapper shares: one call in, one interaction out, never an error.

A wrapper (:mod:`.openai`, :mod:`.anthropic`) knows where a provider keeps the prompt, the
answer and the token counts; this module knows the rest: the context the app opened
(:mod:`feedbackloop.producers.context`) and the per-call ``feedbackloop={...}`` argument,
the interaction id (chosen *before* the call, so the app can read it from the context or
from the result while a stream is still running), latency and time to first token, the price
(:mod:`.pricing`), and handing the interaction to the app's client.

The app's call never fails and never waits because of logging: the provider's answer (or
exception) reaches the app untouched; everything this module does after the call runs in a
``try`` whose failures are counted (:func:`logging_failures`) and logged at most once a
minute; and ``log_interaction`` itself only queues (see :class:`FeedbackClient`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.integrations.pricing import Price, cost_usd
from feedbackloop.producers.context import CallContext, current_context
from feedbackloop.schemas import MAX_TEXT_CHARS

__all__ = [
    "Call",
    "Recorder",
    "LoggedStream",
    "LoggedAsyncStream",
    "interaction_id",
    "logging_failures",
    "patch",
    "patch_stream_helper",
]

log = logging.getLogger(__name__)

#: The keyword argument a wrapped call takes for per-call context (removed before the
#: provider sees the call).
CALL_OPTION = "feedbackloop"
_CALL_FIELDS = frozenset(
    {"session_id", "user_id", "prompt_version", "experiment", "variant", "metadata"}
)

_MISSING = object()
_failures = 0
_failures_lock = threading.Lock()
_last_warning = 0.0


def logging_failures() -> int:
    """How many interactions the wrappers could not log in this process (each one logged as
    a warning, at most one warning a minute)."""
    return _failures


def _failed(what: str, e: BaseException) -> None:
    global _failures, _last_warning
    with _failures_lock:
        _failures += 1
        now = time.monotonic()
        if now - _last_warning < 60:
            return
        _last_warning = now
    log.warning("feedbackloop: could not log %s (%s: %s)", what, type(e).__name__, e)


# Results the app got back -> their interaction id. Keyed by id() because the providers'
# pydantic models are not hashable; the weak reference's callback forgets the entry.
_ids: dict[int, tuple[weakref.ref[Any], uuid.UUID]] = {}


def interaction_id(result: Any) -> uuid.UUID | None:
    """The id of the interaction logged for ``result`` (a wrapped call's response or
    stream), to attach feedback to it; ``None`` if it was not made by a wrapped call."""
    found = getattr(result, "interaction_id", None) if isinstance(result, _Logged) else None
    if found is not None:
        return found  # type: ignore[no-any-return]
    entry = _ids.get(id(result))
    return entry[1] if entry is not None and entry[0]() is result else None


def _tag(result: Any, iid: uuid.UUID) -> None:
    key = id(result)
    try:
        ref = weakref.ref(result, lambda _: _ids.pop(key, None))
    except TypeError:  # not weakly referenceable: the context still has the id
        return
    _ids[key] = (ref, iid)


def clip(text: str) -> str:
    """Text as the event contract accepts it (longer text would be dead-lettered)."""
    return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS]


@dataclass
class Call:
    """One provider call, filled in by a wrapper's extractors."""

    provider: str
    api: str
    request_model: str
    interaction_id: uuid.UUID
    context: CallContext
    options: dict[str, Any]
    started: float
    stream: bool = False
    system_prompt: str = ""
    user_input: str = ""
    response: str = ""
    model: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int = 0
    first_token_at: float | None = None
    #: Streamed output text, joined at the end (``response`` wins when a final event has it).
    chunks: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


class Recorder:
    """Turns finished :class:`Call` s into interactions on ``feedback_client``.

    ``defaults`` are the fields given to ``wrap()``; a context block overrides them and the
    per-call option overrides both.
    """

    def __init__(
        self,
        feedback_client: Any,
        provider: str,
        *,
        defaults: Mapping[str, Any] | None = None,
        prices: Mapping[str, Price] | None = None,
        capture_content: bool = True,
    ) -> None:
        self.feedback_client = feedback_client
        self.provider = provider
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self.prices = prices
        self.capture_content = capture_content

    def start(self, api: str, kwargs: dict[str, Any]) -> Call:
        """Before the call: take our option out of ``kwargs`` and choose the interaction id."""
        options = kwargs.pop(CALL_OPTION, None) or {}
        ctx = current_context()
        iid = options.get("interaction_id") if isinstance(options, dict) else None
        if not isinstance(iid, uuid.UUID):
            iid = uuid.UUID(str(iid)) if _is_uuid(iid) else uuid.uuid4()
        call = Call(
            provider=self.provider,
            api=api,
            request_model=str(kwargs.get("model", "")),
            interaction_id=iid,
            context=ctx,
            options=options if isinstance(options, dict) else {},
            started=time.perf_counter(),
            stream=bool(kwargs.get("stream")),
        )
        try:
            ctx.note(iid)
        except Exception as e:  # a context is the app's object; never fail its call
            _failed("the interaction id in the context", e)
        return call

    def finish(self, call: Call, result: Any | None = None) -> None:
        """After the call (or the stream's end): log the interaction; never raises."""
        try:
            if result is not None:
                _tag(result, call.interaction_id)
            self.feedback_client.log_interaction(**self._fields(call))
        except Exception as e:
            _failed(f"a {self.provider} {call.api} call", e)

    def _fields(self, call: Call) -> dict[str, Any]:
        ctx, opts = call.context, call.options
        chosen: dict[str, Any] = dict(self.defaults)
        for name in ("session_id", "user_id", "prompt_version", "experiment", "variant"):
            value = getattr(ctx, name)
            if value is not None:
                chosen[name] = value
        chosen.update({k: v for k, v in opts.items() if k in _CALL_FIELDS and v is not None})
        metadata: dict[str, Any] = {
            "provider": call.provider,
            "api": call.api,
            "stream": call.stream,
            **call.metadata,
            **dict(self.defaults.get("metadata") or {}),
            **ctx.metadata,
            **dict(opts.get("metadata") or {}),
        }
        ended = time.perf_counter()
        if call.first_token_at is not None:
            metadata["ttft_ms"] = round((call.first_token_at - call.started) * 1000, 3)
        model = call.model or call.request_model or "unknown"
        return {
            # Without a session the interaction is a session of its own: the contract needs
            # one, and inventing a shared one would join unrelated calls.
            "session_id": chosen.get("session_id") or str(call.interaction_id),
            "user_id": chosen.get("user_id"),
            "interaction_id": call.interaction_id,
            "system_prompt": clip(call.system_prompt) if self.capture_content else "",
            "user_input": clip(call.user_input) if self.capture_content else "",
            "response": clip(call.response or "".join(call.chunks)) if self.capture_content else "",
            "model": model[:200],
            "prompt_version": chosen.get("prompt_version"),
            "experiment": chosen.get("experiment"),
            "variant": chosen.get("variant"),
            "latency_ms": round((ended - call.started) * 1000, 3),
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "cost_usd": cost_usd(
                model,
                call.input_tokens,
                call.output_tokens,
                cached_input_tokens=call.cached_input_tokens,
                prices=self.prices,
            ),
            "metadata": metadata,
        }


def _is_uuid(value: Any) -> bool:
    if value is None:
        return False
    try:
        uuid.UUID(str(value))
    except (TypeError, ValueError):
        return False
    return True


class _Logged:
    """Marker base of the stream proxies (they carry ``interaction_id`` themselves)."""

    interaction_id: uuid.UUID


#: Reads one streamed item into the call; True when the item carried output text.
Observer = Callable[[Call, Any], bool]


class _StreamLog(_Logged):
    def __init__(self, stream: Any, recorder: Recorder, call: Call, observe: Observer) -> None:
        self._stream = stream
        self._recorder = recorder
        self._call = call
        self._observe = observe
        self._done = False
        self.interaction_id = call.interaction_id

    def _see(self, item: Any) -> None:
        try:
            if self._observe(self._call, item) and self._call.first_token_at is None:
                self._call.first_token_at = time.perf_counter()
        except Exception as e:
            _failed(f"a {self._call.provider} stream item", e)

    def _end(self, complete: bool, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        if not complete:
            # Stopped early (closed by the app, or an error): what arrived is still the
            # answer the user saw.
            self._call.metadata["stream_complete"] = False
            if error is not None:
                self._call.metadata["stream_error"] = type(error).__name__
        self._recorder.finish(self._call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class LoggedStream(_StreamLog):
    """A provider's sync stream, passed through item by item; the interaction is logged when
    the stream ends, is closed, or fails."""

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._stream)
        except StopIteration:
            self._end(True)
            raise
        except BaseException as e:
            self._end(False, e)
            raise
        self._see(item)
        return item

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._end(False)

    def __enter__(self) -> LoggedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LoggedAsyncStream(_StreamLog):
    """The asyncio twin of :class:`LoggedStream`."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._stream.__anext__()
        except StopAsyncIteration:
            self._end(True)
            raise
        except BaseException as e:
            self._end(False, e)
            raise
        self._see(item)
        return item

    async def close(self) -> None:
        try:
            await self._stream.close()
        finally:
            self._end(False)

    async def __aenter__(self) -> LoggedAsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def text_of(content: Any) -> str:
    """The text in a message's content: a string, or a list of parts with ``text`` (parts of
    other kinds, such as images, are left out)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = [get(p, "text") for p in content]
        return "\n".join(p for p in parts if isinstance(p, str))
    text = get(content, "text")
    return text if isinstance(text, str) else ""


def get(obj: Any, name: str, default: Any = None) -> Any:
    """``obj[name]`` for the dicts an app passes, ``obj.name`` for the providers' models."""
    if type(obj) is dict:
        return obj.get(name, default)
    # Attributes before the (slower) Mapping check: the providers' models are most of it.
    value = getattr(obj, name, _MISSING)
    if value is not _MISSING:
        return value
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return default


def _is_raw(result: Any) -> bool:
    """The SDKs' raw-response wrappers (``with_raw_response``, ``with_streaming_response``)
    hold the HTTP response and parse on demand."""
    return hasattr(result, "http_response") and callable(getattr(result, "parse", None))


def _parsed(raw: Any) -> Any | None:
    """The model in a raw response whose body has already been read (the SDKs cache the
    parse, so the app's own ``parse()`` gets the same object); None when reading it would
    change what the app gets (a body still streaming, an async parse)."""
    try:
        _ = raw.http_response.content  # raises while the body has not been read
    except Exception:
        return None
    parsed = raw.parse()
    if inspect.isawaitable(parsed):
        close = getattr(parsed, "close", None)
        if close is not None:
            close()  # never awaited: say so to the coroutine, not to the app's warnings
        return None
    return parsed


#: Fills a call from the request's keyword arguments (prompt, model, user).
Prepare = Callable[[Call, Mapping[str, Any]], None]
#: Fills a call from a complete (not streamed) response.
Read = Callable[[Call, Any], None]


def patch(
    resource: Any,
    name: str,
    recorder: Recorder,
    api: str,
    prepare: Prepare,
    read: Read,
    observe: Observer,
) -> None:
    """Replace ``resource.name`` (a provider's bound method) on that object only by one that
    logs each call; patching twice is a no-op, and other clients are untouched."""
    original = getattr(resource, name, None)
    if original is None or getattr(original, "__feedbackloop__", False):
        return

    def begin(kwargs: dict[str, Any]) -> Call | None:
        try:
            return recorder.start(api, kwargs)
        except Exception as e:
            kwargs.pop(CALL_OPTION, None)
            _failed(f"a {recorder.provider} {api} call", e)
            return None

    def after(call: Call, kwargs: Mapping[str, Any], result: Any) -> Any:
        try:
            prepare(call, kwargs)
            if _is_raw(result):  # with_raw_response / with_streaming_response
                parsed = None if call.stream else _parsed(result)
                if parsed is None:
                    return result  # its body is the app's to read: not logged
                read(call, parsed)
                recorder.finish(call, result)
                return result
            if call.stream:
                cls = LoggedAsyncStream if hasattr(result, "__anext__") else LoggedStream
                stream = cls(result, recorder, call, observe)
                _tag(stream, call.interaction_id)
                return stream
            read(call, result)
        except Exception as e:
            _failed(f"a {recorder.provider} {api} response", e)
            return result
        recorder.finish(call, result)
        return result

    # The async clients' methods are plain functions returning a coroutine (the SDKs
    # decorate them), so the kind of call is told by what it returns.
    @functools.wraps(original)
    def logged(*args: Any, **kwargs: Any) -> Any:
        call = begin(kwargs)
        result = original(*args, **kwargs)
        if call is None:
            return result
        if inspect.isawaitable(result):
            return _later(call, kwargs, result)
        return after(call, kwargs, result)

    async def _later(call: Call, kwargs: Mapping[str, Any], pending: Any) -> Any:
        return after(call, kwargs, await pending)

    wrapper: Any = logged
    wrapper.__feedbackloop__ = True
    setattr(resource, name, wrapper)


def patch_stream_helper(
    resource: Any, name: str, recorder: Recorder, api: str, prepare: Prepare, observe: Observer
) -> None:
    """Like :func:`patch`, for a provider's ``.stream()`` helper that does not go through
    ``create``: it returns a context manager whose stream object reads the raw event stream
    from its ``_raw_stream`` attribute, which is replaced by a :class:`LoggedStream` when
    the block is entered. (An SDK that renames the attribute loses the logging, counted as a
    failure, never the stream.)"""
    original = getattr(resource, name, None)
    if original is None or getattr(original, "__feedbackloop__", False):
        return

    @functools.wraps(original)
    def logged(*args: Any, **kwargs: Any) -> Any:
        try:
            call: Call | None = recorder.start(api, kwargs)
        except Exception as e:
            kwargs.pop(CALL_OPTION, None)
            _failed(f"a {recorder.provider} {api} stream", e)
            call = None
        manager = original(*args, **kwargs)
        return (
            manager
            if call is None
            else _LoggedManager(manager, recorder, call, kwargs, prepare, observe)
        )

    logged.__feedbackloop__ = True  # type: ignore[attr-defined]
    setattr(resource, name, logged)


class _LoggedManager:
    def __init__(
        self,
        manager: Any,
        recorder: Recorder,
        call: Call,
        kwargs: Mapping[str, Any],
        prepare: Prepare,
        observe: Observer,
    ) -> None:
        self._manager = manager
        self._recorder = recorder
        self._call = call
        self._kwargs = kwargs
        self._prepare = prepare
        self._observe = observe
        self.interaction_id = call.interaction_id
        call.stream = True

    def _hook(self, stream: Any) -> Any:
        try:
            self._prepare(self._call, self._kwargs)
            raw = stream._raw_stream
            cls = LoggedAsyncStream if hasattr(raw, "__anext__") else LoggedStream
            stream._raw_stream = cls(raw, self._recorder, self._call, self._observe)
            _tag(stream, self._call.interaction_id)
        except Exception as e:
            _failed(f"a {self._recorder.provider} {self._call.api} stream", e)
        return stream

    def __enter__(self) -> Any:
        return self._hook(self._manager.__enter__())

    def __exit__(self, *exc: Any) -> Any:
        return self._manager.__exit__(*exc)

    async def __aenter__(self) -> Any:
        return self._hook(await self._manager.__aenter__())

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._manager.__aexit__(*exc)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)
