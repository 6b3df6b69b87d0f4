"""The client SDK an app embeds: events to Kafka without ever blocking or crashing the app."""

from feedbackloop.producers.assignment import BUCKETS, Experiment, assign_variant, bucket_of
from feedbackloop.producers.client import FeedbackClient
from feedbackloop.producers.delivery import DeliveryStats
from feedbackloop.producers.shadow import shadow_sampled

__all__ = [
    "BUCKETS",
    "DeliveryStats",
    "Experiment",
    "FeedbackClient",
    "assign_variant",
    "bucket_of",
    "shadow_sampled",
]
