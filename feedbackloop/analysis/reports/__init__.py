"""Reports: stored experiment data (:mod:`feedbackloop.analysis.reads`) judged with
:mod:`feedbackloop.analysis.statistics` and rendered as tables or JSON.
"""

from __future__ import annotations

from feedbackloop.analysis.reports.impact import (
    HEADLINE_RATES,
    ImpactReport,
    OutcomeRow,
    RateRow,
    TimeSaved,
    VariantImpactRow,
    build_impact,
    format_impact,
)
from feedbackloop.analysis.reports.plaintext import (
    estimate,
    number,
    table,
)
from feedbackloop.analysis.reports.report import (
    ExperimentReport,
    MetricComparison,
    MetricValue,
    TreatmentDecision,
    VariantRow,
    build_report,
    format_report,
    metric_rules,
    pick_control,
    report_experiment,
)
from feedbackloop.analysis.reports.shadow import (
    ShadowReport,
    build_shadow_report,
    format_shadow_report,
    run_shadow_report,
)
from feedbackloop.analysis.reports.versions import (
    BucketRow,
    VersionRow,
    VersionsReport,
    build_versions,
    format_versions,
)

__all__ = [
    "estimate",
    "number",
    "table",
    "MetricValue",
    "MetricComparison",
    "VariantRow",
    "TreatmentDecision",
    "ExperimentReport",
    "build_report",
    "format_report",
    "pick_control",
    "report_experiment",
    "metric_rules",
    "HEADLINE_RATES",
    "RateRow",
    "OutcomeRow",
    "TimeSaved",
    "VariantImpactRow",
    "ImpactReport",
    "build_impact",
    "format_impact",
    "BucketRow",
    "VersionRow",
    "VersionsReport",
    "build_versions",
    "format_versions",
    "ShadowReport",
    "build_shadow_report",
    "format_shadow_report",
    "run_shadow_report",
]
