"""Failure slices: where do negative interactions concentrate? (pure, no database)

Input: one ``(attributes, negative)`` pair per interaction, ``attributes`` mapping a
dimension (``prompt_version``, ``language``, ``has_code``, ``meta.plan`` ...) to a value.
Every value of every dimension is a **slice**, and so is every pair of values of two
different dimensions (``prompt_version=v1.2 & language_group=not-en``): interactions fail
through combinations that neither attribute shows alone.

For each slice with at least ``min_support`` interactions:

* negative rate with a Wilson interval, **lift** = rate / overall rate, **share** of all
  failures, and **excess** failures = negatives − support × rate-of-the-rest: how many
  failures would disappear if the slice did as well as everything else;
* a one-sided test that the slice's rate exceeds the rest's (two-proportion z-test, or
  Fisher's exact test when an expected cell count is below 5 — Cochran's rule). A *pair*
  must beat more than the rest: it is tested against each parent's remainder
  (``A & B`` vs ``A & not B``, and vs ``B & not A``) and its p-value is the larger of the two
  (an intersection-union test, level alpha). Otherwise every pair that contains a bad single
  (``v1.2 & variant=b`` when v1.2 alone is bad) would come out significant;
* Benjamini-Hochberg over *all* tested slices, singles and pairs together
  (:func:`feedbackloop.analysis.statistics.multiple.benjamini_hochberg`), so that among a thousand
  slices the lucky small ones do not come out as findings. A slice is *significant* when
  its BH-adjusted q-value is at most ``alpha`` (false discovery rate).

Ranking: significant slices by excess failures (size times effect: what matters most
first), then the rest by p-value. A pair is only tested when it differs from both its parents
(not the same rows), and a single whose excess is mostly (>= 80 %) inside one significant pair
is marked ``explained_by`` that pair and placed right after it: the pair is the finding.
Slice finding in this form follows Chung et al. (2019), "Slice Finder: Automated Data Slicing
for Model Validation", ICDE, with BH in place of their alpha-investing.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

from feedbackloop.analysis.statistics.multiple import benjamini_hochberg
from feedbackloop.analysis.statistics.proportions import small_counts, wilson_interval
from feedbackloop.analysis.statistics.sufficient import BinaryStats

__all__ = [
    "SliceFinding",
    "SliceReport",
    "count_failure_slices",
    "find_failure_slices",
    "format_slice_report",
]

Condition = tuple[str, str]
#: A single is "explained" by a pair holding at least this share of its excess failures.
EXPLAINED_SHARE = 0.8


@dataclass(frozen=True)
class SliceFinding:
    """One slice: its conditions, counts, effect and significance."""

    conditions: tuple[Condition, ...]
    support: int
    negatives: int
    negative_rate: float
    rate_lower: float
    rate_upper: float
    rest_rate: float
    lift: float
    share_of_failures: float
    share_of_traffic: float
    excess_failures: float
    p_value: float
    q_value: float
    significant: bool
    test: str
    explained_by: str | None = None

    @property
    def label(self) -> str:
        return " & ".join(f"{d}={v}" for d, v in self.conditions)

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(d for d, _ in self.conditions)

    def sentence(self) -> str:
        """The finding in words."""
        s = (
            f"{self.label}: {self.negative_rate:.1%} negative vs {self.rest_rate:.1%} "
            f"elsewhere ({self.lift:.2g}x the overall rate); {self.share_of_failures:.0%} of "
            f"all failures come from these {self.share_of_traffic:.0%} of interactions "
            f"(~{self.excess_failures:.0f} excess failures, q={_fmt_p(self.q_value)})"
        )
        if self.explained_by:
            s += f"; mostly inside {self.explained_by}"
        return s

    def to_dict(self) -> dict[str, Any]:
        return {
            "slice": self.label,
            "conditions": dict(self.conditions),
            "support": self.support,
            "negatives": self.negatives,
            "negative_rate": self.negative_rate,
            "negative_rate_ci": [self.rate_lower, self.rate_upper],
            "rest_rate": self.rest_rate,
            "lift": self.lift,
            "share_of_failures": self.share_of_failures,
            "share_of_traffic": self.share_of_traffic,
            "excess_failures": self.excess_failures,
            "p_value": self.p_value,
            "q_value": self.q_value,
            "significant": self.significant,
            "test": self.test,
            "explained_by": self.explained_by,
        }


@dataclass(frozen=True)
class SliceReport:
    """Every tested slice, ranked, and the totals they are measured against."""

    total: int
    negatives: int
    alpha: float
    min_support: int
    findings: tuple[SliceFinding, ...]
    untested: int
    dimensions: tuple[str, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def overall_rate(self) -> float:
        return self.negatives / self.total if self.total else math.nan

    @property
    def significant(self) -> tuple[SliceFinding, ...]:
        return tuple(f for f in self.findings if f.significant)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "negatives": self.negatives,
            "overall_rate": self.overall_rate if self.total else None,
            "alpha": self.alpha,
            "min_support": self.min_support,
            "tested": len(self.findings),
            "untested": self.untested,
            "dimensions": list(self.dimensions),
            "notes": list(self.notes),
            "findings": [f.to_dict() for f in self.findings],
        }


#: Which name to keep when two dimensions cut the same rows: the more specific first.
_PRIORITY = (
    "prompt_version",
    "model",
    "variant",
    "language",
    "has_code",
    "input_length",
    "language_group",
)


def _priority(dim: str) -> int:
    return _PRIORITY.index(dim) if dim in _PRIORITY else len(_PRIORITY)


def _one_sided_p(x1: int, n1: int, x2: int, n2: int) -> tuple[float, str]:
    """P-value of H1: rate1 > rate2 for two independent binomial samples."""
    if n1 == 0 or n2 == 0:
        return 1.0, "none"
    if small_counts(BinaryStats(n1, x1), BinaryStats(n2, x2)):
        from scipy.stats import fisher_exact

        _, p = fisher_exact([[x1, n1 - x1], [x2, n2 - x2]], alternative="greater")
        return float(p), "fisher"
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0, "z"
    z = (x1 / n1 - x2 / n2) / se
    # Normal upper tail; erfc keeps precision far out in the tail.
    return 0.5 * math.erfc(z / math.sqrt(2)), "z"


def find_failure_slices(
    units: Iterable[tuple[Mapping[str, str], bool]], **options: Any
) -> SliceReport:
    """Test and rank every slice (and pair of slices) of ``units``; see the module docstring
    (``options``: the keywords of :func:`count_failure_slices`)."""
    # A fingerprint of each slice's rows (sum of random per-row tags) finds slices that hold
    # exactly the same interactions under two names (language=en and language_group=en, a
    # model used by one prompt version only); only the first name is tested.
    tags = random.Random(0)
    return count_failure_slices(
        ((a, 1, int(bool(neg)), tags.getrandbits(62)) for a, neg in units), **options
    )


def count_failure_slices(
    counts: Iterable[tuple[Mapping[str, str], int, int, int]],
    *,
    pairs: bool = True,
    min_support: int = 30,
    alpha: float = 0.05,
    max_values: int = 30,
) -> SliceReport:
    """:func:`find_failure_slices` of interactions counted by their attributes: each item is
    ``(attributes, interactions, negatives, tag)``, ``tag`` the sum of the interactions'
    random tags (any 62-bit hash of each; a sum taken modulo 2**64 is as good).

    Dimensions with more than ``max_values`` distinct values (ids, free text) are left out
    and named in the report's notes: a slice of one user is not a pattern.
    """
    rows = list(counts)
    dims_seen: dict[str, set[str]] = {}
    for a, *_ in rows:
        for d, v in a.items():
            dims_seen.setdefault(d, set()).add(v)
    notes: list[str] = []
    dims = sorted(d for d, vals in dims_seen.items() if 1 < len(vals) <= max_values)
    for d in sorted(dims_seen):
        if len(dims_seen[d]) > max_values:
            notes.append(f"dimension {d} left out: {len(dims_seen[d])} distinct values")
    keep = set(dims)

    # Rows with the same values of the kept dimensions are counted once with their number,
    # negatives and tag sum (integers: the same totals in any order): 200,000 interactions
    # hold a few thousand such sets, and the pairs are counted per set, not per row.
    groups: dict[tuple[Condition, ...], list[int]] = {}
    total = negatives = 0
    for a, n, bad, tag in rows:
        total += n
        negatives += bad
        attrs = tuple(c for c in a.items() if c[0] in keep)
        group = groups.get(attrs)
        if group is None:
            groups[attrs] = [n, bad, tag]
        else:
            group[0] += n
            group[1] += bad
            group[2] += tag

    n_single: Counter[Condition] = Counter()
    x_single: Counter[Condition] = Counter()
    f_single: Counter[Condition] = Counter()
    for attrs, (n, x, f) in groups.items():
        for c in attrs:
            n_single[c] += n
            x_single[c] += x
            f_single[c] += f
    big = {c for c, n in n_single.items() if n >= min_support}
    n_pair: Counter[tuple[Condition, Condition]] = Counter()
    x_pair: Counter[tuple[Condition, Condition]] = Counter()
    f_pair: Counter[tuple[Condition, Condition]] = Counter()
    if pairs:
        for attrs, (n, x, f) in groups.items():
            present = sorted(c for c in attrs if c in big)
            for pair in combinations(present, 2):
                n_pair[pair] += n
                x_pair[pair] += x
                f_pair[pair] += f

    candidates: list[tuple[tuple[Condition, ...], int, int]] = []
    untested = 0
    seen: set[tuple[int, int, int]] = set()
    for c in sorted(n_single, key=lambda c: (_priority(c[0]), c)):
        n = n_single[c]
        if n < min_support:
            untested += 1
        elif n < total and (key := (1, n, f_single[c])) not in seen:
            seen.add(key)
            candidates.append(((c,), n, x_single[c]))
    for pair in sorted(n_pair, key=lambda p: (_priority(p[0][0]) + _priority(p[1][0]), p)):
        n = n_pair[pair]
        if n < min_support:
            untested += 1
            continue
        if n == n_single[pair[0]] or n == n_single[pair[1]]:
            continue  # the same rows as a parent: nothing new to test
        if (key := (2, n, f_pair[pair])) in seen:
            continue
        seen.add(key)
        candidates.append((pair, n, x_pair[pair]))

    raw: list[tuple[tuple[Condition, ...], int, int, float, str]] = []
    for conds, n, x in candidates:
        p, test = _one_sided_p(x, n, negatives - x, total - n)
        for parent in conds if len(conds) == 2 else ():
            pp, ptest = _one_sided_p(x, n, x_single[parent] - x, n_single[parent] - n)
            if pp > p:
                p, test = pp, ptest
        raw.append((conds, n, x, p, test))
    adj = benjamini_hochberg([r[3] for r in raw], alpha) if raw else None
    overall = negatives / total if total else 0.0
    found: list[SliceFinding] = []
    for i, (conds, n, x, p, test) in enumerate(raw):
        rest_n, rest_x = total - n, negatives - x
        rest_rate = rest_x / rest_n if rest_n else math.nan
        ci = wilson_interval(BinaryStats(n, x), alpha)
        q = adj.adjusted[i] if adj else 1.0
        found.append(
            SliceFinding(
                conditions=conds,
                support=n,
                negatives=x,
                negative_rate=x / n,
                rate_lower=ci.lower,
                rate_upper=ci.upper,
                rest_rate=rest_rate,
                lift=(x / n) / overall if overall else math.nan,
                share_of_failures=x / negatives if negatives else 0.0,
                share_of_traffic=n / total,
                excess_failures=x - n * rest_rate,
                p_value=p,
                q_value=q,
                significant=bool(q <= alpha and x / n > rest_rate),
                test=test,
            )
        )
    return SliceReport(
        total=total,
        negatives=negatives,
        alpha=alpha,
        min_support=min_support,
        findings=tuple(_rank(found)),
        untested=untested,
        dimensions=tuple(dims),
        notes=tuple(notes),
    )


def _rank(found: Sequence[SliceFinding]) -> list[SliceFinding]:
    sig = [f for f in found if f.significant]
    rest = sorted((f for f in found if not f.significant), key=lambda f: (f.p_value, -f.support))
    sig_pairs = [f for f in sig if len(f.conditions) == 2]
    # A single mostly inside one significant pair sorts right after that pair.
    key: dict[int, tuple[float, int, float]] = {}
    out: list[SliceFinding] = []
    for f in sig:
        parent_of = [
            p
            for p in sig_pairs
            if len(f.conditions) == 1
            and f.conditions[0] in p.conditions
            and f.excess_failures > 0
            and p.excess_failures >= EXPLAINED_SHARE * f.excess_failures
        ]
        if parent_of:
            best = max(parent_of, key=lambda p: p.excess_failures)
            f = _with_explained(f, best.label)
            key[id(f)] = (best.excess_failures, 1, -f.lift)
        else:
            key[id(f)] = (f.excess_failures, 0, f.lift)
        out.append(f)
    out.sort(key=lambda f: (-key[id(f)][0], key[id(f)][1], -key[id(f)][2]))
    return out + rest


def _with_explained(f: SliceFinding, label: str) -> SliceFinding:
    from dataclasses import replace

    return replace(f, explained_by=label)


def _fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_slice_report(
    report: SliceReport, *, top: int = 15, show_all: bool = False, heading: str = ""
) -> str:
    """A ranked table that reads like a finding: the top slices in words, then the numbers."""
    out: list[str] = []
    if heading:
        out.append(heading)
    if report.total == 0:
        out.append("No interactions in this window.")
        return "\n".join(out)
    out.append(
        f"{report.total:,} interactions, {report.negatives:,} negative "
        f"({report.overall_rate:.1%}). Tested {len(report.findings)} slices with "
        f"support >= {report.min_support}; {len(report.significant)} significant at a "
        f"false discovery rate of {report.alpha:.0%} (Benjamini-Hochberg)."
    )
    sig = report.significant
    if sig:
        out.append("")
        out.append("Findings:")
        for i, f in enumerate(sig[:3], 1):
            out.append(f"  {i}. {f.sentence()}")
    else:
        out.append("No slice fails significantly more often than the rest.")
    rows = list(report.findings if show_all else sig)[:top]
    if rows:
        out.append("")
        header = ("#", "slice", "support", "neg rate", "lift", "share fail", "excess", "q", "")
        table = [header]
        for i, f in enumerate(rows, 1):
            table.append(
                (
                    str(i),
                    f.label if len(f.label) <= 60 else f.label[:59] + "…",
                    f"{f.support:,}",
                    f"{f.negative_rate:.1%}",
                    f"{f.lift:.2f}x",
                    f"{f.share_of_failures:.1%}",
                    f"{f.excess_failures:.0f}",
                    _fmt_p(f.q_value),
                    "" if f.significant else "n.s.",
                )
            )
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        right = {0, 2, 3, 4, 5, 6, 7}
        for r in table:
            cells = [
                c.rjust(w) if i in right else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            ]
            out.append("  ".join(cells).rstrip())
        hidden = len(report.findings) - len(rows)
        if hidden > 0:
            more = "--all shows the rest" if not show_all else "--top shows more"
            out.append(f"({hidden} more slices not shown; {more})")
    for note in report.notes:
        out.append(f"note: {note}")
    return "\n".join(out)
