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

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from feedbackloop.analysis.failures.language import UNDETERMINED, detect_input_language
from feedbackloop.analysis.failures.negative import InteractionSignals, NegativeDefinition
from feedbackloop.analysis.failures.records import JudgedInteraction
from feedbackloop.analysis.failures.slices import (
    SliceReport,
    count_failure_slices,
    format_slice_report,
)
from feedbackloop.errors import ConfigError
from feedbackloop.schemas.derive import has_code, length_bucket

__all__ = [
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
]

POPULATIONS = ("all", "with-feedback")


@dataclass(frozen=True)
class Labeled:
    """An interaction with its slice attributes and whether it counts as negative."""

    interaction: JudgedInteraction
    attributes: Mapping[str, str]
    negative: bool
    signals: tuple[str, ...]


def slice_attributes(
    prompt_version: str,
    model: str,
    experiment: str,
    variant: str,
    language: str,
    code: bool,
    length: str,
    metadata: Mapping[str, str],
) -> dict[str, str]:
    """The slice attributes of one interaction but ``language_group`` (which depends on all
    of them): one place for both reads, by interaction and counted in ClickHouse."""
    attrs = {
        "prompt_version": prompt_version or "(none)",
        "model": model,
        "language": language,
        "has_code": "yes" if code else "no",
        "input_length": length,
    }
    if experiment:
        attrs["variant"] = f"{experiment}/{variant}"
    for k, v in metadata.items():
        attrs[f"meta.{k}"] = v
    return attrs


def _base_attributes(ji: JudgedInteraction) -> dict[str, str]:
    enriched = bool(ji.input_length_bucket)
    return slice_attributes(
        ji.prompt_version,
        ji.model,
        ji.experiment,
        ji.variant,
        detect_input_language(ji.user_input),
        ji.input_has_code if enriched else has_code(ji.user_input),
        ji.input_length_bucket if enriched else length_bucket(ji.input_chars),
        ji.metadata,
    )


def _majority(langs: Counter[str]) -> str | None:
    """The most common determined language; a tie goes to the first name in alphabetical
    order (the same whatever order the interactions were read in)."""
    return min(langs, key=lambda lang: (-langs[lang], lang)) if langs else None


def _with_group(attrs: dict[str, str], majority: str | None) -> dict[str, str]:
    if majority is not None:
        lang = attrs["language"]
        attrs["language_group"] = lang if lang in (majority, UNDETERMINED) else f"not-{majority}"
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
    majority = _majority(Counter(a["language"] for a in base if a["language"] != UNDETERMINED))
    out = []
    # Most interactions received the same few sets of signals (none, one thumbs): judge each
    # set once (signals are frozen values).
    judged: dict[InteractionSignals, tuple[bool, tuple[str, ...]]] = {}
    for ji, attrs in zip(kept, base, strict=True):
        _with_group(attrs, majority)
        verdict = judged.get(ji.signals)
        if verdict is None:
            present = tuple(definition.present(ji.signals))
            verdict = judged[ji.signals] = (definition.is_negative(ji.signals), present)
        out.append(Labeled(ji, attrs, *verdict))
    return out


def analyze_failures(
    interactions: Iterable[JudgedInteraction],
    definition: NegativeDefinition | None = None,
    **options: Any,
) -> SliceReport:
    """Rank the failure slices of ``interactions`` (see :mod:`.slices`; ``options`` are the
    keywords of :func:`analyze_slice_counts`): each interaction a count of one, tagged with
    a random draw (fixed seed)."""
    definition = definition or NegativeDefinition()
    tags = random.Random(0)
    # Most interactions received the same few sets of signals: judge each set once.
    present: dict[InteractionSignals, tuple[str, ...]] = {}
    counts = []
    for ji in interactions:
        signals = present.get(ji.signals)
        if signals is None:
            signals = present[ji.signals] = tuple(definition.present(ji.signals))
        counts.append(
            SliceCount(
                _base_attributes(ji),
                signals,
                ji.signals.any_feedback,
                1,
                tags.getrandbits(62),
            )
        )
    return analyze_slice_counts(counts, definition, **options)


@dataclass(frozen=True)
class SliceCount:
    """Interactions with the same slice attributes and the same signals, counted together:
    what :mod:`.slice_counts` reads (one interaction is a count of one)."""

    #: Every attribute but ``language_group`` (:func:`slice_attributes`).
    attributes: Mapping[str, str]
    #: The signals present (names of :data:`~.negative.SIGNALS`, under the definition read).
    present: tuple[str, ...]
    #: Whether the user reacted at all (``InteractionSignals.any_feedback``).
    any_feedback: bool
    interactions: int
    #: The sum of the interactions' 62-bit tags, modulo 2**64
    #: (:func:`.slices.count_failure_slices`).
    tag: int


def analyze_slice_counts(
    counts: Iterable[SliceCount],
    definition: NegativeDefinition | None = None,
    *,
    population: str = "all",
    exclude_dimensions: Sequence[str] = (),
    **options: Any,
) -> SliceReport:
    """:func:`analyze_failures` of interactions counted by attributes and signals: the same
    report (each interaction's tag is a hash of it instead of a random draw; either only
    tells slices holding exactly the same interactions apart). ``options``: the keywords
    of :func:`.slices.count_failure_slices` (``pairs``, ``min_support``, ``alpha``)."""
    if population not in POPULATIONS:
        raise ConfigError(f"population must be one of {', '.join(POPULATIONS)}")
    definition = definition or NegativeDefinition()
    kept = [c for c in counts if population == "all" or c.any_feedback]
    langs: Counter[str] = Counter()
    for c in kept:
        if c.attributes["language"] != UNDETERMINED:
            langs[c.attributes["language"]] += c.interactions
    majority = _majority(langs)
    drop = set(exclude_dimensions)
    rows = []
    for c in kept:
        attrs = _with_group(dict(c.attributes), majority)
        if drop:
            attrs = {d: v for d, v in attrs.items() if d not in drop}
        bad = c.interactions if definition.is_negative_of(c.present) else 0
        rows.append((attrs, c.interactions, bad, c.tag))
    return count_failure_slices(rows, **options)


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
    read: Sequence[JudgedInteraction] | Sequence[SliceCount],
    definition: NegativeDefinition | None = None,
    *,
    since: str | None = None,
    experiment: str | None = None,
    limit: int | None = None,
    **options: Any,
) -> FailureReport:
    """The failure slices (``options`` are the keywords of :func:`analyze_failures`) of what
    was read, interactions or their counts (:mod:`.slice_counts`), with the window they were
    read from; ``limit`` is the read's row limit, to say when it was hit."""
    definition = definition or NegativeDefinition()
    if all(isinstance(r, SliceCount) for r in read):
        counts = cast("Sequence[SliceCount]", read)
        slices = analyze_slice_counts(counts, definition, **options)
        n = sum(c.interactions for c in counts)
    else:
        slices = analyze_failures(cast("Sequence[JudgedInteraction]", read), definition, **options)
        n = len(read)
    truncated = limit if limit is not None and n >= limit else None
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
