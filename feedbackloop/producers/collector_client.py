"""The SDK over HTTP: the same :class:`FeedbackClient` API and guarantees, sending to the
feedbackloop collector (``POST /v1/events``) instead of Kafka, for hosts that cannot reach the
brokers. The delivery mechanics are :class:`~feedbackloop.producers.http_transport.HttpTransport`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from feedbackloop.config import Settings
from feedbackloop.producers.client import FeedbackClient
from feedbackloop.producers.http_transport import HttpTransport

if TYPE_CHECKING:  # the control plane imports the producers: no cycle at run time
    from feedbackloop.control.live import LiveConfig

__all__ = ["CollectorClient"]


class CollectorClient(FeedbackClient):
    """A :class:`FeedbackClient` configured with the HTTP collector at ``url`` (its base URL)
    as its transport, with bearer ``key`` if given.

    Events are posted in batches of up to ``batch_size`` after at most ``linger_s`` s; at
    most ``max_pending`` wait in memory (more are counted ``dropped``). It follows its app's
    live experiments by polling the collector (``GET /v1/experiments`` with
    ``If-None-Match``, once a second) unless ``live_experiments=False`` or the setting
    ``live_experiments`` is off. Other keyword arguments are :class:`FeedbackClient`'s.
    """

    def __init__(
        self,
        url: str,
        key: str | None = None,
        settings: Settings | None = None,
        *,
        batch_size: int = 500,
        linger_s: float = 0.2,
        max_pending: int = 100_000,
        live_experiments: bool | LiveConfig | None = None,
        **kwargs: Any,
    ) -> None:
        settings = settings or Settings()
        transport = HttpTransport(
            url,
            key,
            batch_size=batch_size,
            linger_s=linger_s,
            max_pending=max_pending,
            close_timeout_s=settings.close_timeout_s,
        )
        self.url = transport.url
        if live_experiments is None:  # the default: the collector serves the live config
            live_experiments = settings.live_experiments
        if live_experiments is True:  # followed from the collector, not the broker
            from feedbackloop.control.live import LiveConfig

            live_experiments = LiveConfig.for_collector(url, key, settings)
        super().__init__(settings, transport=transport, live_experiments=live_experiments, **kwargs)
