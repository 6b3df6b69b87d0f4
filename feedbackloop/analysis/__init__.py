"""Analysis: statistics over sufficient statistics, failures, impact, exports, analyst queries.

The statistics need the ``analysis`` extra (numpy, scipy): ``pip install 'feedbackloop[analysis]'``.
"""

from __future__ import annotations

from feedbackloop.analysis.analyst_queries import (
    ANALYST_QUERIES,
    AnalystQuery,
    analyst_query,
    render_examples,
)
from feedbackloop.analysis.bayesian import (
    BayesianResult,
    beta_binomial,
    expected_loss,
    prob_beta_greater,
)
from feedbackloop.analysis.comparison import (
    CountComparison,
    VariantSummary,
    compare_counts,
    format_comparison,
)
from feedbackloop.analysis.decision import Decision, Verdict, decide
from feedbackloop.analysis.impact import ImpactReport, build_impact, format_impact
from feedbackloop.analysis.means import (
    MeanComparison,
    RankTestResult,
    mann_whitney,
    welch_ttest,
)
from feedbackloop.analysis.multiple import AdjustedPValues, benjamini_hochberg, holm
from feedbackloop.analysis.power import (
    PowerStatus,
    SampleSize,
    cohens_h,
    power_status,
    power_two_sample,
    required_sample_size,
    required_sample_size_means,
    required_sample_size_proportions,
)
from feedbackloop.analysis.proportions import (
    chi_square_test,
    fisher_exact_test,
    newcombe_interval,
    relative_lift_interval,
    small_counts,
    two_proportion_ztest,
    wilson_interval,
)
from feedbackloop.analysis.queries import (
    ExperimentStats,
    Scope,
    fetch_experiment,
    fetch_impact,
    fetch_version_totals,
    fetch_versions,
    parse_since,
    settings_runner,
)
from feedbackloop.analysis.ratio_metrics import RatioComparison, ratio_ztest
from feedbackloop.analysis.report import ExperimentReport, build_report, format_report
from feedbackloop.analysis.results import ErrorCode, Estimate, TestResult, to_jsonable
from feedbackloop.analysis.sequential import (
    DEFAULT_TAU,
    SequentialResult,
    always_valid_p_values,
    confidence_sequence_halfwidth,
    msprt_p_value,
    sequential_test,
    sequential_test_means,
    sequential_test_proportions,
    sequential_test_ratios,
)
from feedbackloop.analysis.srm import DEFAULT_SRM_THRESHOLD, SrmResult, sample_ratio_mismatch
from feedbackloop.analysis.sufficient import BinaryStats, InvalidStatistics, MeanStats, RatioStats
from feedbackloop.analysis.versions import VersionsReport, build_versions, format_versions

__all__ = [
    "ANALYST_QUERIES",
    "AnalystQuery",
    "analyst_query",
    "render_examples",
    # sufficient statistics
    "BinaryStats",
    "MeanStats",
    "RatioStats",
    "InvalidStatistics",
    # result types
    "ErrorCode",
    "Estimate",
    "TestResult",
    "to_jsonable",
    # binary metrics
    "two_proportion_ztest",
    "chi_square_test",
    "fisher_exact_test",
    "small_counts",
    "wilson_interval",
    "newcombe_interval",
    "relative_lift_interval",
    # numeric metrics
    "MeanComparison",
    "welch_ttest",
    "RankTestResult",
    "mann_whitney",
    # ratio metrics, session as unit
    "RatioComparison",
    "ratio_ztest",
    # power
    "SampleSize",
    "PowerStatus",
    "cohens_h",
    "power_two_sample",
    "required_sample_size",
    "required_sample_size_proportions",
    "required_sample_size_means",
    "power_status",
    # sample-ratio mismatch
    "DEFAULT_SRM_THRESHOLD",
    "SrmResult",
    "sample_ratio_mismatch",
    # sequential
    "DEFAULT_TAU",
    "SequentialResult",
    "msprt_p_value",
    "confidence_sequence_halfwidth",
    "always_valid_p_values",
    "sequential_test",
    "sequential_test_proportions",
    "sequential_test_means",
    "sequential_test_ratios",
    # multiple testing
    "AdjustedPValues",
    "holm",
    "benjamini_hochberg",
    # Bayesian
    "BayesianResult",
    "beta_binomial",
    "prob_beta_greater",
    "expected_loss",
    # decision and the full comparison
    "Verdict",
    "Decision",
    "decide",
    "VariantSummary",
    "CountComparison",
    "compare_counts",
    "format_comparison",
    # experiment reports over ClickHouse
    "Scope",
    "parse_since",
    "settings_runner",
    "ExperimentStats",
    "fetch_experiment",
    "fetch_impact",
    "fetch_versions",
    "fetch_version_totals",
    "ExperimentReport",
    "build_report",
    "format_report",
    "ImpactReport",
    "build_impact",
    "format_impact",
    "VersionsReport",
    "build_versions",
    "format_versions",
]

# Closing the loop: failures, complaint clusters, prompt registry, regression suites, exports.
# (Heavy parts, py3langid and scikit-learn, import lazily inside these modules.)
from feedbackloop.analysis.clusters import Cluster, cluster_texts  # noqa: E402
from feedbackloop.analysis.failures import analyze_failures, label_interactions  # noqa: E402
from feedbackloop.analysis.finetune import (  # noqa: E402
    FinetuneOptions,
    build_finetune_export,
    write_finetune_export,
)
from feedbackloop.analysis.negative import InteractionSignals, NegativeDefinition  # noqa: E402
from feedbackloop.analysis.prompts import PromptVersion, add_prompt, list_prompts  # noqa: E402
from feedbackloop.analysis.records import (  # noqa: E402
    JudgedInteraction,
    Selection,
    load_judged_interactions,
)
from feedbackloop.analysis.regressions import run_suite, select_regression_cases  # noqa: E402
from feedbackloop.analysis.slices import (  # noqa: E402
    SliceFinding,
    SliceReport,
    find_failure_slices,
    format_slice_report,
)

__all__ += [
    "Cluster",
    "FinetuneOptions",
    "InteractionSignals",
    "JudgedInteraction",
    "NegativeDefinition",
    "PromptVersion",
    "Selection",
    "SliceFinding",
    "SliceReport",
    "add_prompt",
    "analyze_failures",
    "build_finetune_export",
    "cluster_texts",
    "find_failure_slices",
    "format_slice_report",
    "label_interactions",
    "list_prompts",
    "load_judged_interactions",
    "run_suite",
    "select_regression_cases",
    "write_finetune_export",
]
