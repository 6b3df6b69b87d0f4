"""What counts as a *negative* interaction: one documented definition, with knobs.

The unit is the interaction. Every feedback or implicit event about it is reduced to the
presence of a **signal** (repeats count once: three regenerates are one ``regenerate``):

============  ==========================================================  ==============
signal        present when the interaction received ...                   default weight
============  ==========================================================  ==============
thumbs_down   a thumbs feedback with ``thumbs = -1``                       1.0
low_rating    a rating ``<= low_rating_max`` (default 2 of 5)              1.0
correction    a correction (the user wrote what the answer should be)      1.0
report        a report (optionally only some categories)                   1.0
regenerate    the implicit signal ``regenerate``                           1.0
abandon       the implicit signal ``abandon``                              0.5
edit          the implicit signal ``edit`` (user edited the response)      0.0
comment       a free-text comment (tone unknown: used for clusters only)   0.0
============  ==========================================================  ==============

The interaction is **negative** when the sum of the weights of its present signals reaches
``threshold`` (default 1.0). With the defaults any one explicit complaint or a regenerate
suffices, while an abandon alone does not (people also leave when they got what they
needed) but an abandon together with an edit weighted 0.5 would. Positive signals (thumbs up,
high ratings, copy) never cancel a negative one: a user who copied half an answer and then
reported it still had a failure worth looking at.

Change the weights (``--weight abandon=1``), keep only some signals (``--signals
thumbs_down,correction``), or raise the threshold; :meth:`NegativeDefinition.describe`
prints the definition in force so every report says what it counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from feedbackloop.errors import ConfigError

__all__ = [
    "DEFAULT_WEIGHTS",
    "SIGNALS",
    "InteractionSignals",
    "NegativeDefinition",
]

SIGNALS: tuple[str, ...] = (
    "thumbs_down",
    "low_rating",
    "correction",
    "report",
    "regenerate",
    "abandon",
    "edit",
    "comment",
)

DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {
        "thumbs_down": 1.0,
        "low_rating": 1.0,
        "correction": 1.0,
        "report": 1.0,
        "regenerate": 1.0,
        "abandon": 0.5,
        "edit": 0.0,
        "comment": 0.0,
    }
)


@dataclass(frozen=True)
class InteractionSignals:
    """What one interaction received: counts per kind, ratings and report categories."""

    thumbs_up: int = 0
    thumbs_down: int = 0
    ratings: tuple[int, ...] = ()
    corrections: int = 0
    comments: int = 0
    report_categories: tuple[str, ...] = ()
    regenerates: int = 0
    abandons: int = 0
    edits: int = 0
    copies: int = 0

    @property
    def any_feedback(self) -> bool:
        """Whether the user reacted at all (explicitly or through a behavioural signal)."""
        return bool(
            self.thumbs_up
            or self.thumbs_down
            or self.ratings
            or self.corrections
            or self.comments
            or self.report_categories
            or self.regenerates
            or self.abandons
            or self.edits
            or self.copies
        )


@dataclass(frozen=True)
class NegativeDefinition:
    """Weights per signal and the threshold that makes an interaction negative."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    threshold: float = 1.0
    low_rating_max: int = 2
    #: Report categories that count; ``None`` counts every category.
    report_categories: frozenset[str] | None = None

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(SIGNALS)
        if unknown:
            raise ConfigError(
                f"unknown negative signal(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(SIGNALS)}"
            )
        if any(w < 0 for w in self.weights.values()):
            raise ConfigError("negative-signal weights must be >= 0")
        if self.threshold <= 0:
            raise ConfigError("the negative threshold must be > 0")
        if not 1 <= self.low_rating_max <= 4:
            raise ConfigError("low_rating_max must be between 1 and 4 (ratings are 1..5)")

    @classmethod
    def build(
        cls,
        *,
        weights: Iterable[str] = (),
        signals: Iterable[str] | None = None,
        threshold: float = 1.0,
        low_rating_max: int = 2,
        report_categories: Iterable[str] | None = None,
    ) -> NegativeDefinition:
        """From command-line style options: ``weights`` as ``name=w``, ``signals`` to keep.

        ``signals`` (when given) zeroes every signal not listed; a listed signal whose
        default weight is 0 gets weight 1 so that listing it means counting it.
        """
        w = dict(DEFAULT_WEIGHTS)
        if signals is not None:
            keep = {s.strip() for s in signals if s.strip()}
            unknown = keep - set(SIGNALS)
            if unknown:
                raise ConfigError(
                    f"unknown negative signal(s) {', '.join(sorted(unknown))}; "
                    f"known: {', '.join(SIGNALS)}"
                )
            w = {s: (w[s] or 1.0) if s in keep else 0.0 for s in SIGNALS}
        for item in weights:
            name, sep, value = item.partition("=")
            try:
                if not sep:
                    raise ValueError
                w[name.strip()] = float(value)
            except ValueError:
                raise ConfigError(
                    f"expected SIGNAL=WEIGHT such as abandon=1, got {item!r}"
                ) from None
        cats = frozenset(c.strip() for c in report_categories) if report_categories else None
        return cls(w, threshold, low_rating_max, cats)

    def present(self, s: InteractionSignals) -> list[str]:
        """The signals present on ``s`` (whatever their weight), in :data:`SIGNALS` order."""
        reports = (
            s.report_categories
            if self.report_categories is None
            else tuple(c for c in s.report_categories if c in self.report_categories)
        )
        flags = {
            "thumbs_down": s.thumbs_down > 0,
            "low_rating": any(r <= self.low_rating_max for r in s.ratings),
            "correction": s.corrections > 0,
            "report": bool(reports),
            "regenerate": s.regenerates > 0,
            "abandon": s.abandons > 0,
            "edit": s.edits > 0,
            "comment": s.comments > 0,
        }
        return [name for name in SIGNALS if flags[name]]

    def score(self, s: InteractionSignals) -> float:
        """Sum of the weights of the signals present on ``s``."""
        return self.score_of(self.present(s))

    def score_of(self, present: Iterable[str]) -> float:
        """Sum of the weights of the ``present`` signals (names of :data:`SIGNALS`)."""
        return sum(self.weights.get(name, 0.0) for name in present)

    def is_negative(self, s: InteractionSignals) -> bool:
        return self.is_negative_of(self.present(s))

    def is_negative_of(self, present: Iterable[str]) -> bool:
        """Whether the ``present`` signals (names of :data:`SIGNALS`) make an interaction
        negative."""
        # A small tolerance so that 0.5 + 0.5 reaches 1.0 despite binary fractions.
        return self.score_of(present) >= self.threshold - 1e-9

    def describe(self) -> str:
        """One line saying what was counted, for the head of every report."""
        parts = [f"{n}×{w:g}" for n in SIGNALS if (w := self.weights.get(n, 0.0)) > 0]
        extra = f"; low rating = 1..{self.low_rating_max}"
        if self.report_categories is not None:
            extra += f"; reports: {', '.join(sorted(self.report_categories))}"
        return f"negative = weighted signals >= {self.threshold:g} ({', '.join(parts)}{extra})"

    def to_dict(self) -> dict[str, object]:
        return {
            "weights": {n: self.weights.get(n, 0.0) for n in SIGNALS},
            "threshold": self.threshold,
            "low_rating_max": self.low_rating_max,
            "report_categories": sorted(self.report_categories)
            if self.report_categories is not None
            else None,
        }
