"""Satisfaction over release cycles: each ``prompt_version`` per day (or week), with intervals.

Pure assembly over :func:`~feedbackloop.analysis.reads.queries.fetch_versions` (buckets) and
:func:`~feedbackloop.analysis.reads.queries.fetch_version_totals` (whole-period totals). Buckets
carry Wilson intervals on rated interactions, the number a trend chart shows. The step from
one version to the next (in order of first appearance) is tested with sessions as units
(delta method), because a release comparison is exactly where a few chatty sessions would
otherwise look like a significant change.

Consecutive versions are not randomised against each other: they ran at different times,
so a difference mixes the prompt change with whatever else changed (traffic, season, model
updates). Read it as a trend, and run an experiment to attribute it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feedbackloop.analysis.reads.queries import VersionBucket, VersionTotals
from feedbackloop.analysis.reports.plaintext import estimate, table
from feedbackloop.analysis.statistics.proportions import wilson_interval
from feedbackloop.analysis.statistics.ratio_metrics import ratio_ztest
from feedbackloop.analysis.statistics.results import Estimate, TestResult, to_jsonable

__all__ = ["BucketRow", "VersionRow", "VersionsReport", "build_versions", "format_versions"]


@dataclass(frozen=True)
class BucketRow:
    bucket: str
    interactions: int
    sessions: int
    rated: int
    positive: int
    satisfaction: Estimate


@dataclass(frozen=True)
class VersionRow:
    """One prompt version: totals, its buckets, and the change from the previous version."""

    prompt_version: str
    first_seen: str
    last_seen: str
    interactions: int
    sessions: int
    rated: int
    positive: int
    satisfaction: Estimate
    previous: str | None
    change: Estimate | None
    change_test: TestResult | None
    buckets: list[BucketRow]


@dataclass(frozen=True)
class VersionsReport:
    experiment: str | None
    since: str | None
    bucket: str
    alpha: float
    versions: list[VersionRow]

    def to_dict(self) -> dict[str, Any]:
        out = to_jsonable(self)
        assert isinstance(out, dict)
        return out

    def to_text(self) -> str:
        return format_versions(self)


def build_versions(
    buckets: list[VersionBucket],
    totals: list[VersionTotals],
    *,
    bucket: str = "day",
    alpha: float = 0.05,
    experiment: str | None = None,
    since: str | None = None,
) -> VersionsReport:
    """Versions in order of first appearance, each compared with the one before it."""
    by_version: dict[str, list[BucketRow]] = {}
    for b in buckets:
        by_version.setdefault(b.prompt_version, []).append(
            BucketRow(
                b.bucket,
                b.interactions,
                b.sessions,
                b.satisfaction.n,
                b.satisfaction.successes,
                wilson_interval(b.satisfaction, alpha),
            )
        )
    rows: list[VersionRow] = []
    prev: VersionTotals | None = None
    for t in totals:
        change = test = None
        if prev is not None:
            comp = ratio_ztest(prev.sessions, t.sessions, alpha)
            change, test = comp.difference, comp.test
        rows.append(
            VersionRow(
                prompt_version=t.prompt_version,
                first_seen=t.first_seen,
                last_seen=t.last_seen,
                interactions=t.interactions,
                sessions=t.sessions.n,
                rated=t.satisfaction.n,
                positive=t.satisfaction.successes,
                satisfaction=wilson_interval(t.satisfaction, alpha),
                previous=prev.prompt_version if prev else None,
                change=change,
                change_test=test,
                buckets=sorted(by_version.get(t.prompt_version, []), key=lambda b: b.bucket),
            )
        )
        prev = t
    return VersionsReport(experiment, since, bucket, alpha, rows)


def format_versions(r: VersionsReport) -> str:
    level = f"{1 - r.alpha:.0%}"
    scope = f"experiment {r.experiment!r}" if r.experiment else "all interactions"
    out = [
        f"Satisfaction by prompt version ({scope}"
        + (f", since {r.since}" if r.since else "")
        + ")",
        "",
    ]
    rows = []
    for v in r.versions:
        change = "" if v.change is None else estimate(v.change, signed=True)
        p = "" if v.change_test is None or not v.change_test.ok else f"{v.change_test.p_value:.4f}"
        rows.append(
            [
                v.prompt_version or "(none)",
                v.first_seen[:16],
                f"{v.sessions:,}",
                f"{v.positive:,}/{v.rated:,}",
                estimate(v.satisfaction),
                change,
                p,
            ]
        )
    out += table(
        [
            "version",
            "first seen",
            "sessions",
            "positive/rated",
            f"satisfaction ({level} Wilson)",
            "vs previous (sessions, delta)",
            "p",
        ],
        rows,
    )
    out.append("")
    out.append(f"Per {r.bucket}")
    rows = []
    for v in r.versions:
        for b in v.buckets:
            rows.append(
                [
                    v.prompt_version or "(none)",
                    b.bucket,
                    f"{b.interactions:,}",
                    f"{b.positive:,}/{b.rated:,}",
                    estimate(b.satisfaction),
                ]
            )
    out += table(
        ["version", r.bucket, "interactions", "positive/rated", f"satisfaction ({level} Wilson)"],
        rows,
    )
    return "\n".join(out)
