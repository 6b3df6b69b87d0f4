"""Turning test results into one decision in words, in a fixed order of precedence."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Verdict", "Decision", "decide"]


class Verdict(str, Enum):
    INVALID = "invalid"
    SAMPLE_RATIO_MISMATCH = "sample_ratio_mismatch"
    SIGNIFICANT_IMPROVEMENT = "significant_improvement"
    SIGNIFICANT_REGRESSION = "significant_regression"
    TOO_FEW_SAMPLES = "too_few_samples"
    NO_SIGNIFICANT_DIFFERENCE = "no_significant_difference"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    text: str
    basis: str


def decide(
    *,
    estimate: float,
    alpha: float,
    sequential_p: float,
    fixed_p: float,
    n_smallest: int,
    n_required: int | None,
    srm_mismatch: bool,
    error: str | None = None,
    higher_is_better: bool = True,
) -> Decision:
    """One verdict, checked in this order:

    1. an error in the inputs: no verdict;
    2. sample-ratio mismatch: "do not trust", whatever the p-values say;
    3. the always-valid sequential p-value <= alpha: significant (safe under peeking);
    4. fewer units than required: "too few samples (n of N needed)";
    5. at or past the required size, the fixed-horizon p-value <= alpha: significant (the
       fixed-horizon test is valid at its planned horizon);
    6. otherwise "no significant difference".

    ``n_required`` of ``None`` means no size can be computed (e.g. observed effect exactly
    zero); then only the tests decide.
    """
    if error:
        return Decision(Verdict.INVALID, f"cannot decide: {error}", "input")
    if srm_mismatch:
        return Decision(
            Verdict.SAMPLE_RATIO_MISMATCH,
            "sample-ratio mismatch: do not trust this result",
            "srm",
        )

    def significant(basis: str) -> Decision:
        better = (estimate > 0) == higher_is_better
        if better:
            return Decision(Verdict.SIGNIFICANT_IMPROVEMENT, "significant improvement", basis)
        return Decision(Verdict.SIGNIFICANT_REGRESSION, "significant regression", basis)

    if sequential_p <= alpha:
        return significant("sequential")
    if n_required is not None and n_smallest < n_required:
        return Decision(
            Verdict.TOO_FEW_SAMPLES,
            f"too few samples ({n_smallest:,} of {n_required:,} needed per variant)",
            "power",
        )
    if fixed_p <= alpha:
        return significant("fixed-horizon")
    return Decision(Verdict.NO_SIGNIFICANT_DIFFERENCE, "no significant difference", "fixed-horizon")
