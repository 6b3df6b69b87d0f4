"""The client SDK an app embeds: events to Kafka (or the HTTP collector) without ever
blocking or crashing the app."""

from feedbackloop.producers.assignment import BUCKETS, Experiment, assign_variant, bucket_of
from feedbackloop.producers.client import FeedbackClient
from feedbackloop.producers.collector_client import CollectorClient
from feedbackloop.producers.delivery import DeliveryStats
from feedbackloop.producers.http_transport import HttpTransport
from feedbackloop.producers.kafka_transport import KafkaTransport
from feedbackloop.producers.shadow import shadow_sampled
from feedbackloop.producers.transport import Transport

__all__ = [
    "BUCKETS",
    "CollectorClient",
    "DeliveryStats",
    "Experiment",
    "FeedbackClient",
    "HttpTransport",
    "KafkaTransport",
    "Transport",
    "assign_variant",
    "bucket_of",
    "shadow_sampled",
]
