"""Topic administration on whichever broker the settings point at."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from feedbackloop.errors import BrokerError

__all__ = ["ensure_topics"]


def ensure_topics(
    client_config: dict[str, Any], topics: Iterable[str], partitions: int, timeout: float = 30.0
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({**client_config, "log_level": 0})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as e:
        raise BrokerError(f"cannot list topics: {e}") from e
    from feedbackloop.schemas.topics import topic_config

    wanted = [
        NewTopic(t, partitions, 1, config=topic_config(t)) for t in topics if t not in existing
    ]
    if not wanted:
        return
    for topic, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result()
        except KafkaException as e:
            if e.args and e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise BrokerError(f"cannot create topic {topic}: {e}") from e
