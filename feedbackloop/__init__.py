"""feedbackloop: stream, join, aggregate and analyse LLM interactions, feedback and outcomes.

The names an app needs are importable from here; everything else lives in the subpackages
(``feedbackloop.schemas``, ``producers``, ``stream_jobs``, ``sinks``, ``analysis``, ``infra``).
They are loaded on first use, so ``import feedbackloop.schemas`` does not pay for the SDK.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("feedbackloop")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

if TYPE_CHECKING:
    from feedbackloop.config import Settings, load_settings
    from feedbackloop.errors import FeedbackLoopError
    from feedbackloop.producers import Experiment, FeedbackClient

_LAZY = {
    "Experiment": "feedbackloop.producers",
    "FeedbackClient": "feedbackloop.producers",
    "FeedbackLoopError": "feedbackloop.errors",
    "Settings": "feedbackloop.config",
    "load_settings": "feedbackloop.config",
}

__all__ = [
    "Experiment",
    "FeedbackClient",
    "FeedbackLoopError",
    "Settings",
    "__version__",
    "load_settings",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'feedbackloop' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
