"""Failure analysis: judged interactions read from ClickHouse, what counts as negative,
the slices where failures concentrate, input language, complaint clusters.
"""

from __future__ import annotations

from feedbackloop.analysis.failures.analyze import (
    POPULATIONS,
    FailureReport,
    Labeled,
    SliceCount,
    analyze_failures,
    analyze_slice_counts,
    failure_report,
    label_interactions,
    matches,
    parse_slice,
    slice_attributes,
)
from feedbackloop.analysis.failures.clusters import (
    Cluster,
    cluster_texts,
    format_clusters,
)
from feedbackloop.analysis.failures.complaints import (
    COMPLAINT_KINDS,
    COMPLAINT_SOURCES,
    ComplaintReport,
    find_complaints,
)
from feedbackloop.analysis.failures.language import (
    UNDETERMINED,
    detect_input_language,
    strip_code,
)
from feedbackloop.analysis.failures.negative import (
    DEFAULT_WEIGHTS,
    SIGNALS,
    InteractionSignals,
    NegativeDefinition,
)
from feedbackloop.analysis.failures.records import (
    FeedbackText,
    JudgedInteraction,
    load_judged_interactions,
)
from feedbackloop.analysis.failures.slice_counts import load_slice_counts, read_slice_counts
from feedbackloop.analysis.failures.slices import (
    SliceFinding,
    SliceReport,
    count_failure_slices,
    find_failure_slices,
    format_slice_report,
)

__all__ = [
    "UNDETERMINED",
    "detect_input_language",
    "strip_code",
    "DEFAULT_WEIGHTS",
    "SIGNALS",
    "InteractionSignals",
    "NegativeDefinition",
    "FeedbackText",
    "JudgedInteraction",
    "load_judged_interactions",
    "SliceFinding",
    "SliceReport",
    "count_failure_slices",
    "find_failure_slices",
    "format_slice_report",
    "Cluster",
    "cluster_texts",
    "format_clusters",
    "COMPLAINT_KINDS",
    "COMPLAINT_SOURCES",
    "ComplaintReport",
    "find_complaints",
    "POPULATIONS",
    "FailureReport",
    "Labeled",
    "SliceCount",
    "analyze_failures",
    "analyze_slice_counts",
    "failure_report",
    "label_interactions",
    "matches",
    "parse_slice",
    "slice_attributes",
    "load_slice_counts",
    "read_slice_counts",
]
