"""Shadow answers: a candidate's response to a live request, logged but never shown.

The app computes the candidate's answer for the same input, keeps showing the live one, and
logs the candidate's with :meth:`FeedbackClient.shadow`. The event is an ``interaction`` with
``shadow = true`` and ``metadata["shadow_of"]`` naming the live interaction: keyed by the live
interaction's id, so the stream jobs join it there with everything users did with the live
answer (docs/ARCHITECTURE.md, "Shadow deployments").

Sampling is per candidate and per session: :func:`shadow_sampled` hashes the session with the
candidate's name (the MD5 bucketing of :mod:`.assignment`, salted ``shadow.<candidate>``), so a
session is either shadowed on every turn or on none, in every process, and two candidates
sample independently. Ask it *before* computing the candidate's answer to save the call.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

from feedbackloop.errors import ConfigError
from feedbackloop.producers.assignment import BUCKETS, bucket_of
from feedbackloop.schemas.events import SHADOW_OF

__all__ = ["shadow_fields", "shadow_sampled"]


def shadow_sampled(candidate: str, session_id: str, rate: float) -> bool:
    """Whether ``session_id`` is shadowed by ``candidate`` at sampling ``rate`` (0 to 1)."""
    if not isinstance(rate, (int, float)) or not math.isfinite(rate) or not 0 <= rate <= 1:
        raise ConfigError(f"shadow rate must be a number between 0 and 1, got {rate!r}")
    return bucket_of(f"shadow.{candidate}", session_id) < round(rate * BUCKETS)


def shadow_fields(
    live_id: Any,
    *,
    response: Any,
    model: Any,
    prompt_version: Any,
    user_input: Any,
    system_prompt: Any,
    latency_ms: Any,
    input_tokens: Any,
    output_tokens: Any,
    cost_usd: Any,
    metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The interaction fields of a shadow answer for live interaction ``live_id``."""
    meta = dict(metadata) if metadata else {}
    meta[SHADOW_OF] = str(live_id)
    return {
        "interaction_id": uuid.uuid4(),
        "system_prompt": system_prompt,
        "user_input": user_input,
        "response": response,
        "model": model,
        "prompt_version": prompt_version,
        "latency_ms": latency_ms,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cost_usd": cost_usd,
        "metadata": meta,
        "shadow": True,
    }
