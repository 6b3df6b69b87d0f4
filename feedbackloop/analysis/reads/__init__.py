"""ClickHouse reads: the filter every read takes (:class:`Scope`), the experiment, impact and
version queries, the documented analyst queries, and the experiment design registry. Each
read is one read-only ``SELECT`` through :func:`feedbackloop.sinks.run_query`; registry
writes go through :mod:`.writes`.
"""

from __future__ import annotations

from feedbackloop.analysis.reads.analyst_queries import (
    ANALYST_QUERIES,
    AnalystQuery,
    analyst_query,
    render_examples,
)
from feedbackloop.analysis.reads.designs import (
    fetch_design,
    register_design,
    registered_experiments,
)
from feedbackloop.analysis.reads.literals import (
    datetime_literal,
    quote,
)
from feedbackloop.analysis.reads.queries import (
    CORE_METRICS,
    IMPLICIT_SIGNALS,
    POSITIVE_RATING,
    ExperimentStats,
    ImpactStats,
    MetricSpec,
    OutcomeDistribution,
    Runner,
    SatisfactionBucket,
    VariantImpact,
    VariantStats,
    VersionBucket,
    VersionTotals,
    experiment_sql,
    fetch_experiment,
    fetch_impact,
    fetch_satisfaction_over_time,
    fetch_version_totals,
    fetch_versions,
    impact_sql,
    metric_kind,
    satisfaction_over_time_sql,
    settings_runner,
    version_totals_sql,
    versions_sql,
)
from feedbackloop.analysis.reads.scope import (
    DEFAULT_LIMIT,
    Scope,
)
from feedbackloop.analysis.reads.shadow import (
    ShadowCandidateRow,
    ShadowPair,
    ShadowScope,
    fetch_shadow_candidates,
    fetch_shadow_pairs,
    fetch_shadow_totals,
)
from feedbackloop.analysis.reads.since import (
    parse_since,
)
from feedbackloop.analysis.reads.writes import (
    DatabaseBusy,
    writable_client,
)

__all__ = [
    "datetime_literal",
    "quote",
    "parse_since",
    "DEFAULT_LIMIT",
    "Scope",
    "IMPLICIT_SIGNALS",
    "POSITIVE_RATING",
    "Runner",
    "MetricSpec",
    "CORE_METRICS",
    "VariantStats",
    "ExperimentStats",
    "OutcomeDistribution",
    "VariantImpact",
    "ImpactStats",
    "SatisfactionBucket",
    "VersionBucket",
    "VersionTotals",
    "fetch_version_totals",
    "settings_runner",
    "fetch_experiment",
    "fetch_impact",
    "fetch_satisfaction_over_time",
    "fetch_versions",
    "experiment_sql",
    "impact_sql",
    "versions_sql",
    "version_totals_sql",
    "satisfaction_over_time_sql",
    "ANALYST_QUERIES",
    "AnalystQuery",
    "analyst_query",
    "render_examples",
    "metric_kind",
    "fetch_design",
    "register_design",
    "registered_experiments",
    "DatabaseBusy",
    "writable_client",
    "ShadowCandidateRow",
    "ShadowPair",
    "ShadowScope",
    "fetch_shadow_candidates",
    "fetch_shadow_pairs",
    "fetch_shadow_totals",
]
