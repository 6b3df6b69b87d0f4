"""Stream jobs (faust): validate raw events, enrich them with their request context, window
per-variant sufficient statistics and raise satisfaction-drop alerts.

Import this package only where faust is installed (the ``stream`` extra); the schemas and the
SDK never import it.
"""

from feedbackloop.stream_jobs.app import KafkaOutput, StreamJobs, post_webhook, run_worker
from feedbackloop.stream_jobs.config import StreamConfig
from feedbackloop.stream_jobs.consumer import BatchConsumer, FetchTuning, TunedConsumerThread
from feedbackloop.stream_jobs.detector import (
    BernoulliCusum,
    SatisfactionDetector,
    cusum_increment,
    detector_keys,
)
from feedbackloop.stream_jobs.enrich import derive, detect_language, has_code, length_bucket
from feedbackloop.stream_jobs.pipeline import Output, PendingEvent, Pipeline, PipelineStats
from feedbackloop.stream_jobs.windows import PartitionWindows, WindowState, window_start

__all__ = [
    "BatchConsumer",
    "BernoulliCusum",
    "FetchTuning",
    "KafkaOutput",
    "Output",
    "PartitionWindows",
    "PendingEvent",
    "Pipeline",
    "PipelineStats",
    "SatisfactionDetector",
    "StreamConfig",
    "StreamJobs",
    "TunedConsumerThread",
    "WindowState",
    "cusum_increment",
    "derive",
    "detect_language",
    "detector_keys",
    "has_code",
    "length_bucket",
    "post_webhook",
    "run_worker",
    "window_start",
]
