"""What the app knows about the current request, for interactions it does not log by hand.

``with feedback_client.context(session_id=..., prompt_version=...) as ctx:`` sets the session,
user, prompt version, experiment and variant (and extra metadata) for every interaction the
provider wrappers (:mod:`feedbackloop.integrations`) log inside the block; ``ctx.interaction_id``
is then the id of the last one, for attaching feedback. Blocks nest (an inner block inherits
what it does not set) and follow the app's threads and asyncio tasks, because the current
context lives in a :class:`contextvars.ContextVar`: a context opened in one request handler is
never seen by another.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["CallContext", "current_context", "context"]

_KEPT_IDS = 1000


@dataclass
class CallContext:
    """The fields an interaction takes from its surroundings; ``None`` means "not set here"."""

    session_id: str | None = None
    user_id: str | None = None
    prompt_version: str | None = None
    experiment: str | None = None
    variant: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Interactions logged inside this block (and blocks nested in it), oldest first; the
    #: last thousand (a block may be held open for a whole process).
    interaction_ids: deque[uuid.UUID] = field(default_factory=lambda: deque(maxlen=_KEPT_IDS))
    parent: CallContext | None = field(default=None, repr=False)

    @property
    def interaction_id(self) -> uuid.UUID | None:
        """The last interaction logged inside this block, if any."""
        return self.interaction_ids[-1] if self.interaction_ids else None

    def merged(self, overrides: Mapping[str, Any]) -> CallContext:
        """A child context: ``overrides`` (those not None) over this one's values."""
        known = {k: v for k, v in overrides.items() if v is not None and k in _FIELDS}
        unknown = sorted(set(overrides) - _FIELDS - {"metadata"})
        if unknown:
            raise TypeError(f"unknown context field(s): {', '.join(unknown)}")
        metadata = {**self.metadata, **dict(overrides.get("metadata") or {})}
        return replace(
            self, **known, metadata=metadata, interaction_ids=deque(maxlen=_KEPT_IDS), parent=self
        )

    def note(self, interaction_id: uuid.UUID) -> None:
        """Record an interaction logged in this block and every enclosing one."""
        ctx: CallContext | None = self
        while ctx is not None and ctx is not _ROOT:  # outside every block: nobody to tell
            ctx.interaction_ids.append(interaction_id)
            ctx = ctx.parent


_FIELDS = frozenset({"session_id", "user_id", "prompt_version", "experiment", "variant"})
_ROOT = CallContext()
_current: ContextVar[CallContext] = ContextVar("feedbackloop_context", default=_ROOT)


def current_context() -> CallContext:
    """The innermost open context (an empty one outside every block)."""
    return _current.get()


@contextlib.contextmanager
def context(
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    prompt_version: str | None = None,
    experiment: str | None = None,
    variant: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[CallContext]:
    """Open a block whose interactions carry these fields (see the module docstring)."""
    ctx = current_context().merged(
        {
            "session_id": session_id,
            "user_id": user_id,
            "prompt_version": prompt_version,
            "experiment": experiment,
            "variant": variant,
            "metadata": metadata,
        }
    )
    if ctx.parent is _ROOT:
        ctx.parent = None  # the root is shared by everyone; it keeps no history
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)
