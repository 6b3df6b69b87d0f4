"""The stream jobs' config: the ``stream_*`` settings plus tunables no deployment changes.

A plain frozen dataclass built by :meth:`StreamConfig.from_settings` (the CLI passes its
options as overrides); library code only receives it. Defaults of the fields that mirror a
setting come from :class:`~feedbackloop.config.Settings`, so each is written once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from feedbackloop.config import Settings, default_of

__all__ = ["StreamConfig"]


@dataclass(frozen=True)
class StreamConfig:
    """Tunables of the faust worker; defaults suit a production deployment."""

    #: Faust app id, also the consumer group id and the prefix of changelog topics.
    app_id: str = "feedbackloop-stream"
    #: How long feedback that arrived before its interaction waits before it is orphaned.
    grace_s: float = default_of("stream_grace_s")
    #: How long an interaction stays joinable (event time behind the partition watermark).
    retention_s: float = default_of("stream_retention_s")
    #: Tumbling window size and how late (event time) an event may be and still count.
    window_s: float = default_of("stream_window_s")
    allowed_lateness_s: float = default_of("stream_lateness_s")
    #: A partition without events for this long (wall clock) closes its due windows.
    idle_close_s: float = 10.0
    #: How often the timers release orphans, close idle windows and sweep retention.
    tick_s: float = 1.0
    retention_sweep_s: float = 60.0

    # --- consumer (see docs/PERFORMANCE.md, "Stream jobs") --------------------------------
    #: Long-poll of a fetch on partitions without data. faust hard-codes 1500 ms; a
    #: single-node broker then blocks every busy partition behind that poll.
    fetch_max_wait_ms: int = 50
    #: Records per fetched batch, at most. Per-batch work (a changelog record per touched
    #: window, the flush before the acknowledgement) is amortized over it: 20000 ran ~6 %
    #: faster than 5000 in bench/bench_stream.py, for ~0.3 s more per batch.
    max_poll_records: int = 20_000
    max_partition_fetch_bytes: int = 8 * 1024 * 1024
    #: Group timeouts: Tansu's group join takes ~20 s with Kafka's defaults.
    session_timeout_s: float = 6.0
    heartbeat_interval_s: float = 1.0
    rebalance_timeout_s: float = 6.0

    # --- satisfaction-drop alerts (docs/ARCHITECTURE.md, "Satisfaction-drop alerts") ---
    #: Smallest absolute drop of the satisfaction rate the CUSUM is tuned to (p1 = p0 - d).
    alert_design_drop: float = 0.10
    #: In-control average run length, in feedback observations; threshold h = ln(ARL0).
    alert_arl0: float = 1e6
    #: Baseline: pooled rate of the windows in [W - (lag + span), W - lag).
    alert_baseline_windows: int = 60
    alert_baseline_lag_windows: int = 5
    alert_min_baseline_samples: int = 200
    #: Observations in the current run before an alert may fire.
    alert_min_samples: int = 50
    alert_cooldown_s: float = 1800.0
    #: Slack-compatible incoming-webhook URL (JSON POST with a "text" field); None: off.
    alert_webhook_url: str | None = None
    #: How often experiments with a registered design are judged (as `ab report` judges
    #: them) for a verdict that turned "significant regression" or "do not trust"; 0: off.
    verdict_check_s: float = default_of("stream_verdict_check_s")

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> StreamConfig:
        """The config ``settings`` describe; each override that is not None wins (the CLI
        passes its options this way, so an option left out means the setting)."""
        webhook = settings.stream_alert_webhook
        config = cls(
            grace_s=settings.stream_grace_s,
            retention_s=settings.stream_retention_s,
            window_s=settings.stream_window_s,
            allowed_lateness_s=settings.stream_lateness_s,
            alert_webhook_url=webhook.get_secret_value() if webhook else None,
            verdict_check_s=settings.stream_verdict_check_s,
        )
        return dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def alert_threshold(self) -> float:
        """CUSUM threshold h = ln(ARL0) (Lorden 1971: ARL0 >= e^h)."""
        return math.log(self.alert_arl0)
