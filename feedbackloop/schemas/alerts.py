"""Alerts on ``Topics.alerts`` (JSON, keyed by detector key): a detected drop in satisfaction,
or an experiment whose verdict turned to "significant regression" or "do not trust".

The detection rule (a one-sided Bernoulli CUSUM with a documented false-alarm bound) is
described in docs/ARCHITECTURE.md, "Stream jobs / Satisfaction-drop alerts".
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["ALERT_SCHEMA_VERSION", "Alert", "AlertDimension"]

ALERT_SCHEMA_VERSION = 1

#: Which slice a detector watches: one experiment arm, one prompt version, or one treatment
#: of an experiment against its control (verdict alerts).
AlertDimension = Literal["variant", "prompt_version", "experiment"]


class Alert(BaseModel):
    """What dropped, from what to what, on how many samples, and since when."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_schema_version: int = ALERT_SCHEMA_VERSION
    alert_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    #: ``satisfaction_drop``: the CUSUM below. ``experiment_verdict``: the experiment
    #: report's verdict (feedbackloop.analysis.statistics.decision.decide, the one ``ab
    #: report`` and the dashboard print) turned bad; then baseline / recent are control /
    #: treatment (their sessions in the ``_n`` fields), ``statistic`` is the p-value that
    #: decided and ``threshold`` alpha.
    alert_type: Literal["satisfaction_drop", "experiment_verdict", "canary_rollback"] = (
        "satisfaction_drop"
    )
    #: ``satisfaction_rate`` = thumbs up / (thumbs up + thumbs down), or the report metric
    #: an experiment verdict is about (e.g. ``satisfaction``, ``latency_ms``).
    metric: str = "satisfaction_rate"
    dimension: AlertDimension
    #: Stable id of the detector, e.g. ``variant:app|exp|arm`` (the Kafka key).
    detector_key: str
    app_id: str
    experiment: str | None = None
    variant: str | None = None
    prompt_version: str | None = None

    #: Trailing baseline the detector compared against, and its sample size.
    baseline_rate: float
    baseline_n: int
    #: Observed rate since the change began (the CUSUM run), and its sample size.
    recent_rate: float
    recent_n: int
    recent_successes: int
    #: Event time of the first window of the run: the estimated start of the drop.
    since: AwareDatetime
    #: Event time (end of the window) at which the statistic crossed the threshold.
    detected_at: AwareDatetime
    emitted_at: AwareDatetime = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    #: The CUSUM statistic, its threshold h, the designed-for drop and the resulting
    #: in-control average run length bound (observations between false alarms >= e^h).
    statistic: float
    threshold: float
    design_drop: float
    arl0_observations: float
    #: One human-readable line (also the Slack text).
    message: str
