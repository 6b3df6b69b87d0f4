"""Starting and reaching the infrastructure: the embedded broker and ClickHouse."""

from feedbackloop.infra.broker import EmbeddedBroker, free_port, tansu_binary, wait_for_kafka
from feedbackloop.infra.clickhouse import get_client, is_embedded
from feedbackloop.infra.kafka_admin import ensure_topics

__all__ = [
    "EmbeddedBroker",
    "ensure_topics",
    "free_port",
    "get_client",
    "is_embedded",
    "tansu_binary",
    "wait_for_kafka",
]
