"""The shadow report: is a candidate closer than the live answer to what users wanted?

Pure assembly over :func:`~feedbackloop.analysis.reads.shadow.fetch_shadow_pairs`. Each pair
is judged against what the user did with the *live* answer (the candidate's was never shown):

* **corrected**: the user wrote the answer they wanted. The candidate *wins* when it is closer
  to that correction than the live answer was (by more than :data:`TIE_MARGIN`), *loses* when
  it is further, else ties. Net win rate with a matched-pairs interval.
* **rejected** (thumbs down, low rating, a report, regenerate, abandon): how often and how much the
  candidate differs from the answer users rejected, and, where the user then edited the
  answer or asked again, whether the candidate is closer to that follow-up.
* **accepted** (thumbs up, copy, a good outcome; nothing negative): does the candidate stay
  close to the answer users kept? A candidate that drifts from accepted answers is a
  regression risk even when it wins on corrections.
* **cost**: per-pair latency, token and cost differences with paired intervals.
* **slices**: the failure analysis' dimensions (prompt version, model, language, code, input
  length, metadata) where the candidate wins or loses most, each pair judged once (against
  its correction, else, for an accepted answer, kept = tie and departed = loss), with
  Benjamini-Hochberg over all slices.

The recommendation rests on the same judgements: only corrections can show a candidate
better; accepted answers can only show it worse; follow-ups are reported, never decisive.

Similarity is :func:`similarity`: rapidfuzz's normalized Indel similarity (``fuzz.ratio``)
on lower-cased words (punctuation and layout dropped). It measures *surface* closeness of
characters, not meaning: docs/ARCHITECTURE.md, "Shadow deployments" says what that can and
cannot tell.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from feedbackloop.analysis.reads.queries import Runner
from feedbackloop.analysis.reads.shadow import (
    ShadowPair,
    ShadowScope,
    fetch_shadow_pairs,
    fetch_shadow_totals,
)
from feedbackloop.analysis.reports.plaintext import estimate, number, table
from feedbackloop.analysis.statistics.multiple import benjamini_hochberg
from feedbackloop.analysis.statistics.paired import (
    PairedCounts,
    WinTieLoss,
    paired_mean_difference,
    win_tie_loss,
)
from feedbackloop.analysis.statistics.proportions import wilson_interval
from feedbackloop.analysis.statistics.results import ErrorCode, Estimate, to_jsonable
from feedbackloop.analysis.statistics.sufficient import BinaryStats, MeanStats
from feedbackloop.errors import MissingDependency

__all__ = [
    "ACCEPTED_CLOSE",
    "MIN_JUDGED",
    "PROMOTE_RECOMMENDATION",
    "TIE_MARGIN",
    "AcceptedSection",
    "CorrectedSection",
    "DeltaRow",
    "RejectedSection",
    "ShadowReport",
    "SliceRow",
    "build_shadow_report",
    "format_shadow_report",
    "normalize",
    "run_shadow_report",
    "similarity",
]

#: Similarity differences (0-1 scale) at most this large count as a tie.
TIE_MARGIN = 0.02
#: An accepted answer is "kept" by the candidate at this similarity or more.
ACCEPTED_CLOSE = 0.6
#: Below this similarity to the live answer, the candidate "differs" on a rejected answer.
DIFFERS_BELOW = 0.8
#: Fewer judged pairs than this and the report recommends to keep shadowing.
MIN_JUDGED = 30
#: A slice needs this many judged pairs to be ranked.
MIN_SLICE = 20
#: Accepted answers departed from more often than this (lower bound) block a promotion.
DRIFT_LIMIT = 0.2
#: The recommendation under which ``shadow report --promote`` starts a canary.
PROMOTE_RECOMMENDATION = "promote to canary"


@functools.cache
def _process() -> Callable[[str], str]:
    try:
        from rapidfuzz.utils import default_process
    except ImportError as e:  # pragma: no cover - the analysis extra installs it
        raise MissingDependency("rapidfuzz", "analysis") from e
    return default_process  # type: ignore[no-any-return]


def normalize(text: str) -> str:
    """Lower-case words joined by single spaces: punctuation and layout do not count.

    rapidfuzz's ``utils.default_process`` (C++: non-alphanumerics to spaces, lower case),
    then runs of spaces collapsed.
    """
    return " ".join(_process()(text).split())


def similarity(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Pairwise similarity in [0, 1] of ``a[i]`` and ``b[i]``.

    rapidfuzz ``fuzz.ratio`` (1 - Indel distance / total length: twice the longest common
    subsequence over the summed lengths) of the texts after :func:`normalize`. Two empty texts
    are identical (1.0).
    """
    if len(a) != len(b):
        raise ValueError("similarity needs two sequences of equal length")
    return _ratio([normalize(x) for x in a], [normalize(x) for x in b])


def _ratio(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """:func:`similarity` of texts already normalized."""
    if not a:
        return np.zeros(0)
    try:
        from rapidfuzz import fuzz
        from rapidfuzz.process import cpdist
    except ImportError as e:  # pragma: no cover - the analysis extra installs it
        raise MissingDependency("rapidfuzz", "analysis") from e
    return np.asarray(cpdist(a, b, scorer=fuzz.ratio, dtype=np.float64), dtype=float) / 100.0


def _outcomes(delta: np.ndarray) -> np.ndarray:
    """+1 win, 0 tie, -1 loss for similarity differences (candidate minus live)."""
    return np.where(delta > TIE_MARGIN, 1, np.where(delta < -TIE_MARGIN, -1, 0))


def _counts(outcomes: np.ndarray) -> PairedCounts:
    return PairedCounts(
        int((outcomes > 0).sum()), int((outcomes == 0).sum()), int((outcomes < 0).sum())
    )


def _mean(values: np.ndarray, alpha: float) -> Estimate:
    v = values[np.isfinite(values)]
    return paired_mean_difference(MeanStats.from_values(v), alpha)


@dataclass(frozen=True)
class CorrectedSection:
    """Pairs whose live answer the user corrected."""

    n: int
    result: WinTieLoss
    #: Mean similarity to the correction: live, candidate, and the paired difference.
    live_similarity: float
    shadow_similarity: float
    similarity_delta: Estimate


@dataclass(frozen=True)
class RejectedSection:
    """Pairs whose live answer the user rejected (thumbs down, low rating, a report,
    regenerate, abandon)."""

    n: int
    share_of_pairs: float
    #: Share of rejected answers the candidate differs from (similarity < DIFFERS_BELOW).
    differs: Estimate
    #: Mean dissimilarity (1 - similarity) of the candidate to the rejected answer.
    distance: Estimate
    #: Pairs with a follow-up (the user's edit or next input) and the judgement against it.
    with_follow_up: int
    follow_up: WinTieLoss


@dataclass(frozen=True)
class AcceptedSection:
    """Pairs whose live answer users kept (thumbs up, copy, good outcome; nothing negative)."""

    n: int
    #: Mean similarity of the candidate to the kept answer.
    similarity: Estimate
    #: Share of kept answers the candidate departs from (similarity < ACCEPTED_CLOSE).
    departs: Estimate


@dataclass(frozen=True)
class DeltaRow:
    """Candidate minus live, per pair, over pairs where both sides logged the number."""

    metric: str
    n: int
    live_mean: float
    shadow_mean: float
    difference: Estimate


@dataclass(frozen=True)
class SliceRow:
    """One slice's judged pairs and how the candidate did on them."""

    slice: str
    n: int
    result: WinTieLoss
    q_value: float
    significant: bool


@dataclass(frozen=True)
class ShadowReport:
    candidate: str
    against: str | None
    alpha: float
    #: Shadow answers of the candidate in scope, those naming a live interaction, and pairs
    #: whose live interaction is stored (the rest are not judged).
    shadows: int
    linked: int
    pairs: int
    corrected: CorrectedSection
    rejected: RejectedSection
    accepted: AcceptedSection
    deltas: tuple[DeltaRow, ...]
    judged: WinTieLoss
    wins_most: tuple[SliceRow, ...]
    loses_most: tuple[SliceRow, ...]
    recommendation: str
    reason: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = to_jsonable(self)
        return out

    def to_text(self) -> str:
        return format_shadow_report(self)


def run_shadow_report(runner: Runner, scope: ShadowScope, alpha: float = 0.05) -> ShadowReport:
    """Read ``scope``'s shadow pairs and judge them: the whole ``feedbackloop shadow report``."""
    pairs = fetch_shadow_pairs(runner, scope)
    totals = fetch_shadow_totals(runner, scope)
    return build_shadow_report(
        pairs, scope, shadows=totals["shadows"], linked=totals["linked"], alpha=alpha
    )


def _slice_rows(
    pairs: Sequence[ShadowPair], outcomes: np.ndarray, judged: np.ndarray, alpha: float
) -> list[SliceRow]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        if judged[i]:
            for dim, value in p.attributes.items():
                groups[f"{dim}={value}"].append(i)
    total = int(judged.sum())
    cands = [(k, idx) for k, idx in groups.items() if MIN_SLICE <= len(idx) < total]
    results = [(k, win_tie_loss(_counts(outcomes[idx]), alpha)) for k, idx in cands]
    if not results:
        return []
    adj = benjamini_hochberg([r.sign_test.p_value for _, r in results], alpha)
    rows = []
    for (k, r), q in zip(results, adj.adjusted, strict=True):
        excludes_zero = r.net.ok and (r.net.lower > 0 or r.net.upper < 0)
        rows.append(SliceRow(k, r.n, r, float(q), bool(q <= alpha and excludes_zero)))
    return rows


def build_shadow_report(
    pairs: Sequence[ShadowPair],
    scope: ShadowScope,
    *,
    shadows: int | None = None,
    linked: int | None = None,
    alpha: float = 0.05,
    top: int = 3,
) -> ShadowReport:
    """Judge ``pairs`` (one candidate's) as described in the module docstring."""
    n = len(pairs)
    corrected = np.array([p.corrected for p in pairs], dtype=bool)
    rejected = np.array([p.negative for p in pairs], dtype=bool)
    accepted = np.array([p.accepted for p in pairs], dtype=bool)
    follow = np.array(
        [p.negative and not p.corrected and bool(p.follow_up) for p in pairs], dtype=bool
    )
    # Each text is normalized once; pairs nobody reacted to are never compared.
    judged_any = corrected | rejected | accepted
    live = [normalize(p.live_response) if j else "" for p, j in zip(pairs, judged_any, strict=True)]
    shadow = [
        normalize(p.shadow_response) if j else "" for p, j in zip(pairs, judged_any, strict=True)
    ]
    sim_sl = np.ones(n)
    both = np.flatnonzero(rejected | accepted)
    sim_sl[both] = _ratio([shadow[i] for i in both], [live[i] for i in both])

    def judge(mask: np.ndarray, target: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Similarity of live and candidate to each pair's ``target`` text, and the difference."""
        idx = np.flatnonzero(mask)
        t = [normalize(getattr(pairs[int(i)], target)) for i in idx]
        to_live, to_shadow = np.full(n, np.nan), np.full(n, np.nan)
        to_live[idx] = _ratio([live[i] for i in idx], t)
        to_shadow[idx] = _ratio([shadow[i] for i in idx], t)
        return to_live, to_shadow, to_shadow - to_live

    live_c, shadow_c, d_corr = judge(corrected, "correction")
    _, _, d_follow = judge(follow, "follow_up")

    # --- corrected
    c_idx = np.flatnonzero(corrected)
    corr_section = CorrectedSection(
        n=len(c_idx),
        result=win_tie_loss(_counts(_outcomes(d_corr[c_idx])), alpha),
        live_similarity=float(live_c[c_idx].mean()) if len(c_idx) else math.nan,
        shadow_similarity=float(shadow_c[c_idx].mean()) if len(c_idx) else math.nan,
        similarity_delta=_mean(d_corr[c_idx], alpha),
    )

    # --- rejected
    r_idx = np.flatnonzero(rejected)
    f_idx = np.flatnonzero(follow)
    rej_section = RejectedSection(
        n=len(r_idx),
        share_of_pairs=len(r_idx) / n if n else math.nan,
        differs=wilson_interval(
            BinaryStats(len(r_idx), int((sim_sl[r_idx] < DIFFERS_BELOW).sum())), alpha
        ),
        distance=_mean(1.0 - sim_sl[r_idx], alpha),
        with_follow_up=len(f_idx),
        follow_up=win_tie_loss(_counts(_outcomes(d_follow[f_idx])), alpha),
    )

    # --- accepted
    a_idx = np.flatnonzero(accepted)
    acc_section = AcceptedSection(
        n=len(a_idx),
        similarity=_mean(sim_sl[a_idx], alpha),
        departs=wilson_interval(
            BinaryStats(len(a_idx), int((sim_sl[a_idx] < ACCEPTED_CLOSE).sum())), alpha
        ),
    )

    # --- cost
    deltas = []
    for metric, lf, sf in (
        ("latency_ms", "live_latency_ms", "shadow_latency_ms"),
        ("tokens", "live_tokens", "shadow_tokens"),
        ("cost_usd", "live_cost_usd", "shadow_cost_usd"),
    ):
        lv = np.array([getattr(p, lf) for p in pairs], dtype=float)
        sv = np.array([getattr(p, sf) for p in pairs], dtype=float)
        both = np.isfinite(lv) & np.isfinite(sv)
        deltas.append(
            DeltaRow(
                metric,
                int(both.sum()),
                float(lv[both].mean()) if both.any() else math.nan,
                float(sv[both].mean()) if both.any() else math.nan,
                _mean(sv[both] - lv[both], alpha),
            )
        )

    # --- one judgement per pair, for the totals and the slices
    outcome = np.zeros(n, dtype=int)
    # Follow-ups stay out: an answer compared with the user's next question is the weakest
    # judgement here, and it must not decide a promotion (docs: "Shadow deployments").
    judged = corrected | accepted
    outcome[corrected] = _outcomes(d_corr[corrected])
    acc_only = accepted & ~corrected
    outcome[acc_only] = np.where(sim_sl[acc_only] >= ACCEPTED_CLOSE, 0, -1)
    judged_result = win_tie_loss(_counts(outcome[judged]), alpha)
    slices = _slice_rows(pairs, outcome, judged, alpha)
    wins_most = sorted(
        (s for s in slices if s.result.net.value > 0),
        key=lambda s: (not s.significant, -s.result.net.value),
    )[:top]
    loses_most = sorted(
        (s for s in slices if s.result.net.value < 0),
        key=lambda s: (not s.significant, s.result.net.value),
    )[:top]

    recommendation, reason = _recommend(
        corr_section, acc_section, judged_result, loses_most, tuple(deltas)
    )
    notes = []
    if shadows is not None and linked is not None and linked < shadows:
        notes.append(
            f"{shadows - linked:,} shadow answers name no live interaction "
            "(logged with shadow=true but without metadata.shadow_of) and are not judged"
        )
    if n >= scope.limit:
        notes.append(f"only the newest {scope.limit:,} pairs were read and judged")
    if linked is not None and n < linked:
        notes.append(
            f"{linked - n:,} shadow answers name a live interaction that is not stored (yet), "
            "or one outside --against"
        )
    return ShadowReport(
        candidate=scope.candidate,
        against=scope.against,
        alpha=alpha,
        shadows=shadows if shadows is not None else n,
        linked=linked if linked is not None else n,
        pairs=n,
        corrected=corr_section,
        rejected=rej_section,
        accepted=acc_section,
        deltas=tuple(deltas),
        judged=judged_result,
        wins_most=tuple(wins_most),
        loses_most=tuple(loses_most),
        recommendation=recommendation,
        reason=reason,
        notes=tuple(notes),
    )


def _net(r: WinTieLoss) -> str:
    return estimate(r.net, "proportion", signed=True)


def _est(e: Estimate, kind: str = "proportion", signed: bool = False) -> str:
    """An estimate; one whose every pair is equal shows its value instead of ``n/a``."""
    if e.error is ErrorCode.ZERO_VARIANCE and math.isfinite(e.value):
        return f"{number(e.value, kind, signed)} (every pair equal)"
    return estimate(e, kind, signed)


def _recommend(
    corr: CorrectedSection,
    acc: AcceptedSection,
    judged: WinTieLoss,
    loses: Sequence[SliceRow],
    deltas: Sequence[DeltaRow],
) -> tuple[str, str]:
    """A one-line recommendation and its reason.

    Only corrections can show the candidate better; accepted answers can only show it worse
    (it departs from what users kept); follow-ups are reported but decide nothing.
    """
    if judged.n < MIN_JUDGED:
        return "keep shadowing", (
            f"only {judged.n} judged pairs (corrected or accepted live answers); "
            f"{MIN_JUDGED} needed before judging"
        )
    c = corr.result
    if corr.n >= MIN_JUDGED and c.net.ok and c.net.upper < 0:
        return "do not promote", f"further from users' corrections than live: net {_net(c)}"
    bad = [s for s in loses if s.significant]
    if bad:
        s = bad[0]
        return "hold", f"loses on {s.slice}: net {_net(s.result)} over {s.n} judged pairs"
    if acc.n and acc.departs.ok and acc.departs.lower > DRIFT_LIMIT:
        return "hold", (
            f"departs from {number(acc.departs.value)} of the answers users accepted "
            f"(regression risk; limit {DRIFT_LIMIT:.0%})"
        )
    worse = [
        d.metric
        for d in deltas
        if d.difference.ok
        and d.difference.lower > 0
        and d.live_mean > 0
        # more than 20 % slower / costlier: a promotion decision, not a footnote
        and d.difference.lower > 0.2 * d.live_mean
    ]
    costs = f"; but costs more {', '.join(worse)}" if worse else ""
    if corr.n < MIN_JUDGED:
        return "keep shadowing", (
            f"only {corr.n} corrected live answers ({MIN_JUDGED} needed): accepted answers "
            f"are kept, but nothing yet shows the candidate better{costs}"
        )
    if c.net.ok and c.net.lower > 0:
        return PROMOTE_RECOMMENDATION, (
            f"closer to users' corrections than live: net {_net(c)}, no slice losing, "
            f"accepted answers kept{costs}"
        )
    return "no difference shown", (
        f"even with live on corrected answers: net {_net(c)} over {corr.n}; promote only on "
        f"cost or latency grounds{costs}"
    )


def _wtl(r: WinTieLoss) -> str:
    if not r.n:
        return "no pairs"
    return (
        f"win {r.win_rate:.1%} / tie {r.tie_rate:.1%} / loss {r.loss_rate:.1%}, "
        f"net {_net(r)}, sign test p={r.sign_test.p_value:.3g}"
    )


def format_shadow_report(rep: ShadowReport) -> str:
    """The report as terminal text."""
    vs = f" against {rep.against}" if rep.against else " against the live answers"
    lines = [
        f"Shadow candidate {rep.candidate}{vs}",
        f"{rep.shadows:,} shadow answers, {rep.linked:,} linked to a live interaction, "
        f"{rep.pairs:,} paired with a stored live answer",
        "",
        f"Recommendation: {rep.recommendation} ({rep.reason})",
        "",
    ]
    c = rep.corrected
    lines.append(
        f"Corrected by the user ({c.n:,} pairs): is the candidate closer to the correction?"
    )
    if c.n:
        lines.append(f"  {_wtl(c.result)}")
        lines.append(
            f"  similarity to the correction: live {c.live_similarity:.2f}, candidate "
            f"{c.shadow_similarity:.2f}, difference "
            f"{_est(c.similarity_delta, 'mean', signed=True)}"
        )
    r = rep.rejected
    lines.append("")
    lines.append(
        f"Rejected by the user ({r.n:,} pairs: thumbs down, low rating, report, regenerate, "
        "abandon)"
    )
    if r.n:
        lines.append(
            f"  candidate differs (similarity < {DIFFERS_BELOW}) from "
            f"{estimate(r.differs)} of them; mean distance {_est(r.distance, 'mean')}"
        )
        lines.append(
            f"  closer to the user's follow-up ({r.with_follow_up:,} with an edit or a next "
            f"input, not corrected): {_wtl(r.follow_up)}"
        )
    a = rep.accepted
    lines.append("")
    lines.append(f"Accepted by the user ({a.n:,} pairs: thumbs up, copy, good outcome)")
    if a.n:
        lines.append(
            f"  similarity to the accepted answer {_est(a.similarity, 'mean')}; departs "
            f"(< {ACCEPTED_CLOSE}) from {estimate(a.departs)} (regression risk)"
        )
    lines.append("")
    rows = [
        [
            d.metric,
            f"{d.n:,}",
            number(d.live_mean, "mean"),
            number(d.shadow_mean, "mean"),
            _est(d.difference, "mean", signed=True),
        ]
        for d in rep.deltas
    ]
    lines += table(["cost", "pairs", "live", "candidate", "difference [95% CI]"], rows)
    lines.append("")
    lines.append(f"All judged pairs ({rep.judged.n:,}, corrected or accepted): {_wtl(rep.judged)}")
    for title, group in (("wins most", rep.wins_most), ("loses most", rep.loses_most)):
        if group:
            lines.append(f"Slices where the candidate {title}:")
            lines += [
                "  " + line
                for line in table(
                    ["slice", "judged", "net [95% CI]", "q", "finding"],
                    [
                        [
                            s.slice,
                            f"{s.n:,}",
                            _net(s.result),
                            f"{s.q_value:.3g}",
                            "significant" if s.significant else "",
                        ]
                        for s in group
                    ],
                )
            ]
    for note in rep.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)
