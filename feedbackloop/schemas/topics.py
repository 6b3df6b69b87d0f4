"""Topic names. Every event of every kind enters on one raw topic, keyed by interaction id, so
an interaction and its feedback share a partition and keep their order.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Topics", "topic_config"]

_CONTROL = "control"


@dataclass(frozen=True)
class Topics:
    """All topic names under one prefix (``Settings.topic_prefix``)."""

    prefix: str = "feedbackloop."

    @property
    def events(self) -> str:
        """Raw events from SDKs and the HTTP collector (all kinds, JSON)."""
        return f"{self.prefix}events"

    @property
    def enriched(self) -> str:
        """Validated events; feedback / implicit / outcome joined with request context."""
        return f"{self.prefix}enriched"

    @property
    def aggregates(self) -> str:
        """Per-variant window aggregates (sufficient statistics)."""
        return f"{self.prefix}aggregates"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}alerts"

    @property
    def dead_letters(self) -> str:
        """Anything that failed validation or processing, with the original bytes and reason."""
        return f"{self.prefix}deadletter"

    @property
    def repartition(self) -> str:
        """Raw events the stream jobs move to the partition that joins their interaction
        (produced elsewhere with another key or partitioner); internal to the stream jobs."""
        return f"{self.prefix}stream.repartition"

    @property
    def control(self) -> str:
        """Live experiment configuration (compacted: the latest version per
        ``app_id|experiment`` is the truth; see :mod:`feedbackloop.control`)."""
        return f"{self.prefix}{_CONTROL}"

    def all(self) -> list[str]:
        return [
            self.events,
            self.enriched,
            self.aggregates,
            self.alerts,
            self.dead_letters,
            self.repartition,
            self.control,
        ]


def topic_config(name: str) -> dict[str, str]:
    """Configs a topic is created with (beyond the broker's defaults), by its name: whoever
    creates a prefix's topics (``ensure_topics``) compacts its control topic."""
    return {"cleanup.policy": "compact"} if name.endswith(_CONTROL) else {}
