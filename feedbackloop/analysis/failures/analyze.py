"""Failure analysis: judged interactions → slice attributes → ranked failure slices.

The dimensions of a slice (what ``feedbackloop failures`` ranks by):

================  ==========================================================================
prompt_version    the interaction's prompt version ("(none)" when unset)
model             the model name
variant           ``experiment/variant`` for interactions in an experiment
language          language of the input's prose (py3langid, :mod:`.language`), "und" if unsure
language_group    the most common language vs ``not-<it>``: "non-English fails more" is
                  often the finding, and no single other language is big enough to show it
has_code          "yes" when the input contains code (stored by the stream jobs)
input_length      the input length bucket (:data:`feedbackloop.schemas.LENGTH_BUCKETS`)
meta.<key>        each metadata key's value; keys with many values (ids) are left out
================  ==========================================================================

Derived attributes come from the stored columns when the row was enriched by the stream jobs
and are recomputed with the same functions (:mod:`feedbackloop.schemas.derive`) when it was
stored raw.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feedbackloop.analysis.failures.language import UNDETERMINED, detect_input_language
from feedbackloop.analysis.failures.negative import InteractionSignals, NegativeDefinition
from feedbackloop.analysis.failures.records import JudgedInteraction
from feedbackloop.analysis.failures.slices import (
    SliceReport,
    find_failure_slices,
    format_slice_report,
)
from feedbackloop.errors import ConfigError
from feedbackloop.schemas.derive import has_code, length_bucket

__all__ = [
    "POPULATIONS",
    "FailureReport",
    "Labeled",
    "analyze_failures",
    "failure_report",
    "label_interactions",
    "matches",
    "parse_slice",
]

POPULATIONS = ("all", "with-feedback")


@dataclass(frozen=True)
class Labeled:
    """An interaction with its slice attributes and whether it counts as negative."""

    interaction: JudgedInteraction
    attributes: Mapping[str, str]
    negative: bool
    signals: tuple[str, ...]


def _base_attributes(ji: JudgedInteraction) -> dict[str, str]:
    enriched = bool(ji.input_length_bucket)
    code = ji.input_has_code if enriched else has_code(ji.user_input)
    bucket = ji.input_length_bucket if enriched else length_bucket(ji.input_chars)
    attrs = {
        "prompt_version": ji.prompt_version or "(none)",
        "model": ji.model,
        "language": detect_input_language(ji.user_input),
        "has_code": "yes" if code else "no",
        "input_length": bucket,
    }
    if ji.experiment:
        attrs["variant"] = f"{ji.experiment}/{ji.variant}"
    for k, v in ji.metadata.items():
        attrs[f"meta.{k}"] = v
    return attrs


def label_interactions(
    interactions: Iterable[JudgedInteraction],
    definition: NegativeDefinition | None = None,
    *,
    population: str = "all",
) -> list[Labeled]:
    """Attributes and negative flag of each interaction in ``population``.

    ``all`` judges every interaction (one without any signal counts as not negative: the
    rate is failures per interaction served); ``with-feedback`` keeps only those that got at
    least one signal (the rate among interactions users reacted to).
    """
    if population not in POPULATIONS:
        raise ConfigError(f"population must be one of {', '.join(POPULATIONS)}")
    definition = definition or NegativeDefinition()
    kept = [ji for ji in interactions if population == "all" or ji.signals.any_feedback]
    base = [_base_attributes(ji) for ji in kept]
    langs = Counter(a["language"] for a in base if a["language"] != UNDETERMINED)
    majority = langs.most_common(1)[0][0] if langs else None
    out = []
    # Most interactions received the same few sets of signals (none, one thumbs): judge each
    # set once (signals are frozen values).
    judged: dict[InteractionSignals, tuple[bool, tuple[str, ...]]] = {}
    for ji, attrs in zip(kept, base, strict=True):
        if majority is not None:
            lang = attrs["language"]
            attrs["language_group"] = (
                lang if lang in (majority, UNDETERMINED) else f"not-{majority}"
            )
        verdict = judged.get(ji.signals)
        if verdict is None:
            present = tuple(definition.present(ji.signals))
            verdict = judged[ji.signals] = (definition.is_negative(ji.signals), present)
        out.append(Labeled(ji, attrs, *verdict))
    return out


def analyze_failures(
    interactions: Iterable[JudgedInteraction],
    definition: NegativeDefinition | None = None,
    *,
    population: str = "all",
    pairs: bool = True,
    min_support: int = 30,
    alpha: float = 0.05,
    exclude_dimensions: Sequence[str] = (),
) -> SliceReport:
    """Rank the failure slices of ``interactions`` (see :mod:`.slices`)."""
    labeled = label_interactions(interactions, definition, population=population)
    drop = set(exclude_dimensions)
    units = [
        (
            {d: v for d, v in lab.attributes.items() if d not in drop} if drop else lab.attributes,
            lab.negative,
        )
        for lab in labeled
    ]
    return find_failure_slices(units, pairs=pairs, min_support=min_support, alpha=alpha)


@dataclass(frozen=True)
class FailureReport:
    """The ranked failure slices, with the window read and what counted as negative."""

    slices: SliceReport
    definition: NegativeDefinition
    #: The window as the user gave it (``7d``, an ISO date, ``all``) and the experiment.
    since: str | None
    experiment: str | None
    #: The read stopped at this many interactions (newest first); None: everything read.
    truncated_at: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "experiment": self.experiment,
            "definition": self.definition.to_dict(),
            **self.slices.to_dict(),
        }

    def to_text(self, *, top: int = 15, show_all: bool = False) -> str:
        window = f"since {self.since or 'all'}"
        window += f", experiment {self.experiment}" if self.experiment else ""
        if self.truncated_at is not None:
            window += f" (newest {self.truncated_at:,} only: raise --limit)"
        heading = f"Failure slices, {window}\n{self.definition.describe()}\n"
        return format_slice_report(self.slices, top=top, show_all=show_all, heading=heading)


def failure_report(
    interactions: Sequence[JudgedInteraction],
    definition: NegativeDefinition | None = None,
    *,
    since: str | None = None,
    experiment: str | None = None,
    limit: int | None = None,
    **options: Any,
) -> FailureReport:
    """:func:`analyze_failures` of ``interactions`` (``options`` are its keywords), with the
    window they were read from; ``limit`` is the read's row limit, to say when it was hit."""
    definition = definition or NegativeDefinition()
    slices = analyze_failures(interactions, definition, **options)
    truncated = limit if limit is not None and len(interactions) >= limit else None
    return FailureReport(slices, definition, since, experiment, truncated)


def parse_slice(text: str | None) -> tuple[tuple[str, str], ...]:
    """``"prompt_version=v1.2 & language=de"`` (``&`` or ``,`` between) → conditions."""
    if not text:
        return ()
    conds = []
    for part in text.replace("&", ",").split(","):
        if not part.strip():
            continue
        dim, sep, value = part.partition("=")
        if not sep or not dim.strip():
            raise ConfigError(f"expected DIMENSION=VALUE in --slice, got {part.strip()!r}")
        conds.append((dim.strip(), value.strip()))
    return tuple(conds)


def matches(attributes: Mapping[str, str], conditions: Sequence[tuple[str, str]]) -> bool:
    return all(attributes.get(d) == v for d, v in conditions)
