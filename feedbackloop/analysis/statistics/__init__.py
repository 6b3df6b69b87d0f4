"""Pure statistics: sufficient statistics in, typed results out. No SQL, no I/O.

Every test takes the small frozen dataclasses of :mod:`.sufficient` (what a SQL aggregate
returns) and returns a result with an error code instead of raising on degenerate data.
They need the ``analysis`` extra (numpy, scipy).
"""

from __future__ import annotations

from feedbackloop.analysis.statistics.bayesian import (
    BayesianResult,
    beta_binomial,
    expected_loss,
    normal_difference_posterior,
    prob_beta_greater,
)
from feedbackloop.analysis.statistics.comparison import (
    CountComparison,
    VariantSummary,
    compare_counts,
    format_comparison,
)
from feedbackloop.analysis.statistics.decision import (
    VERDICT_PROMISES,
    Decision,
    Evidence,
    Rules,
    Verdict,
    decide,
)
from feedbackloop.analysis.statistics.design import (
    MODES,
    ExperimentDesign,
    check_alpha,
    check_mde,
    check_power,
)
from feedbackloop.analysis.statistics.means import (
    MeanComparison,
    RankTestResult,
    mann_whitney,
    welch_ttest,
)
from feedbackloop.analysis.statistics.multiple import (
    AdjustedPValues,
    benjamini_hochberg,
    holm,
)
from feedbackloop.analysis.statistics.paired import (
    PairedCounts,
    WinTieLoss,
    paired_mean_difference,
    win_tie_loss,
)
from feedbackloop.analysis.statistics.power import (
    PowerStatus,
    SampleSize,
    cohens_h,
    fisher_exact_power,
    power_status,
    power_two_sample,
    required_sample_size,
    required_sample_size_means,
    required_sample_size_proportions,
    required_sample_size_proportions_exact,
)
from feedbackloop.analysis.statistics.proportions import (
    chi_square_test,
    fisher_exact_test,
    newcombe_interval,
    relative_lift_interval,
    small_counts,
    two_proportion_ztest,
    wilson_interval,
)
from feedbackloop.analysis.statistics.ratio_metrics import (
    RatioComparison,
    ratio_ztest,
)
from feedbackloop.analysis.statistics.results import (
    ErrorCode,
    Estimate,
    TestResult,
    to_jsonable,
)
from feedbackloop.analysis.statistics.sequential import (
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
from feedbackloop.analysis.statistics.srm import (
    DEFAULT_SRM_THRESHOLD,
    SrmResult,
    sample_ratio_mismatch,
)
from feedbackloop.analysis.statistics.sufficient import (
    BinaryStats,
    InvalidStatistics,
    MeanStats,
    RatioStats,
)

__all__ = [
    "VERDICT_PROMISES",
    "Evidence",
    "Rules",
    "MODES",
    "ExperimentDesign",
    "check_alpha",
    "check_mde",
    "check_power",
    "fisher_exact_power",
    "required_sample_size_proportions_exact",
    "normal_difference_posterior",
    "InvalidStatistics",
    "BinaryStats",
    "MeanStats",
    "RatioStats",
    "ErrorCode",
    "TestResult",
    "Estimate",
    "to_jsonable",
    "two_proportion_ztest",
    "chi_square_test",
    "fisher_exact_test",
    "wilson_interval",
    "newcombe_interval",
    "relative_lift_interval",
    "small_counts",
    "MeanComparison",
    "welch_ttest",
    "RankTestResult",
    "mann_whitney",
    "RatioComparison",
    "ratio_ztest",
    "BayesianResult",
    "beta_binomial",
    "prob_beta_greater",
    "expected_loss",
    "DEFAULT_TAU",
    "SequentialResult",
    "msprt_p_value",
    "confidence_sequence_halfwidth",
    "always_valid_p_values",
    "sequential_test",
    "sequential_test_proportions",
    "sequential_test_means",
    "sequential_test_ratios",
    "SrmResult",
    "sample_ratio_mismatch",
    "DEFAULT_SRM_THRESHOLD",
    "cohens_h",
    "power_two_sample",
    "required_sample_size",
    "required_sample_size_proportions",
    "required_sample_size_means",
    "SampleSize",
    "PowerStatus",
    "power_status",
    "AdjustedPValues",
    "holm",
    "benjamini_hochberg",
    "Verdict",
    "Decision",
    "decide",
    "VariantSummary",
    "CountComparison",
    "compare_counts",
    "format_comparison",
    "PairedCounts",
    "WinTieLoss",
    "win_tie_loss",
    "paired_mean_difference",
]
