"""HTTP collector and web dashboard (needs the ``web`` extra: FastAPI and uvicorn).

Start it with ``feedbackloop web``, or embed it: :func:`create_app` (ASGI app),
:func:`serve` (foreground), :class:`WebServer` (background thread with start/stop).
"""

from feedbackloop.web.app import WebServer, create_app, serve
from feedbackloop.web.auth import KeyRing, Principal
from feedbackloop.web.collector import BatchResponse, Collector, EventResult, EventSink
from feedbackloop.web.ratelimit import RateLimited, RateLimiter

__all__ = [
    "BatchResponse",
    "Collector",
    "EventResult",
    "EventSink",
    "KeyRing",
    "Principal",
    "RateLimited",
    "RateLimiter",
    "WebServer",
    "create_app",
    "serve",
]
