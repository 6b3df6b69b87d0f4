"""What users said about the failures of a slice: the negative interactions that match it,
their complaint texts (or their inputs), clustered into topics.

A complaint is a free text a user wrote about a response: a comment, a correction or the text
of a report. An edit of the response is not one (it is the better answer, not a complaint:
:mod:`feedbackloop.analysis.loop.finetune` uses edits). With ``source="inputs"`` the failing
inputs themselves are clustered instead, to see what the users asked when it went wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from feedbackloop.analysis.failures.analyze import label_interactions, matches
from feedbackloop.analysis.failures.clusters import Cluster, cluster_texts, format_clusters
from feedbackloop.analysis.failures.negative import NegativeDefinition
from feedbackloop.analysis.failures.records import JudgedInteraction
from feedbackloop.errors import ConfigError

__all__ = ["COMPLAINT_KINDS", "COMPLAINT_SOURCES", "ComplaintReport", "find_complaints"]

#: Kinds of free text that are complaints about a response.
COMPLAINT_KINDS = ("comment", "correction", "report")
#: What can be clustered: the users' complaint texts, or the failing inputs.
COMPLAINT_SOURCES = ("feedback", "inputs")


@dataclass(frozen=True)
class ComplaintReport:
    """The clusters of one slice's complaints, with the counts they came from."""

    conditions: tuple[tuple[str, str], ...]
    source: str
    negatives: int
    texts: int
    clusters: tuple[Cluster, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "slice": dict(self.conditions),
            "source": self.source,
            "negatives": self.negatives,
            "texts": self.texts,
            "clusters": [c.to_dict() for c in self.clusters],
        }

    def to_text(self, window: str = "") -> str:
        """``window`` says which interactions were read, e.g. ``since 7d``."""
        where = " & ".join(f"{d}={v}" for d, v in self.conditions) or "all interactions"
        heading = f"{self.texts} texts from {self.negatives} negative interactions in {where}"
        return format_clusters(
            self.clusters, heading=f"{heading}{', ' + window if window else ''}:"
        )


def find_complaints(
    interactions: Iterable[JudgedInteraction],
    definition: NegativeDefinition | None = None,
    *,
    conditions: Sequence[tuple[str, str]] = (),
    source: str = "feedback",
    k: int | None = None,
    examples: int = 3,
) -> ComplaintReport:
    """Cluster the complaints (or inputs) of the negative interactions matching
    ``conditions`` (from :func:`~feedbackloop.analysis.failures.analyze.parse_slice`)."""
    if source not in COMPLAINT_SOURCES:
        raise ConfigError(f"source must be one of {', '.join(COMPLAINT_SOURCES)}")
    labeled = label_interactions(interactions, definition)
    bad = [lab for lab in labeled if lab.negative and matches(lab.attributes, conditions)]
    if source == "inputs":
        texts = [lab.interaction.user_input for lab in bad]
    else:
        texts = [t.text for lab in bad for t in lab.interaction.texts if t.kind in COMPLAINT_KINDS]
    clusters = cluster_texts(texts, k=k, examples=examples)
    return ComplaintReport(tuple(conditions), source, len(bad), len(texts), tuple(clusters))
