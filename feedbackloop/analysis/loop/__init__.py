"""Closing the loop: the prompt registry, regression suites from real failures, fine-tuning
and preference exports (with scrubbing and format checks).
"""

from __future__ import annotations

from feedbackloop.analysis.loop.finetune import (
    CorrectionExample,
    FinetuneExport,
    FinetuneOptions,
    build_finetune_export,
    corrections_of,
    write_finetune_export,
)
from feedbackloop.analysis.loop.formats import (
    validate_chat_example,
    validate_jsonl,
    validate_preference_example,
)
from feedbackloop.analysis.loop.prompts import (
    DatabaseBusy,
    PromptVersion,
    add_prompt,
    diff_prompts,
    diff_versions,
    get_prompt,
    list_prompts,
)
from feedbackloop.analysis.loop.regressions import (
    CandidateError,
    RegressionCase,
    RegressionResult,
    format_run_report,
    load_suite,
    resolve_candidate,
    run_suite,
    select_regression_cases,
    write_run_report,
    write_suite,
)
from feedbackloop.analysis.loop.scrub import (
    ScrubStats,
    scrub,
)

__all__ = [
    "ScrubStats",
    "scrub",
    "validate_chat_example",
    "validate_jsonl",
    "validate_preference_example",
    "DatabaseBusy",
    "PromptVersion",
    "add_prompt",
    "diff_prompts",
    "diff_versions",
    "get_prompt",
    "list_prompts",
    "CandidateError",
    "RegressionCase",
    "RegressionResult",
    "format_run_report",
    "load_suite",
    "resolve_candidate",
    "run_suite",
    "select_regression_cases",
    "write_run_report",
    "write_suite",
    "CorrectionExample",
    "FinetuneExport",
    "FinetuneOptions",
    "build_finetune_export",
    "corrections_of",
    "write_finetune_export",
]
