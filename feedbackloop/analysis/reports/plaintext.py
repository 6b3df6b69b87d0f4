"""Numbers, intervals and tables as plain text, for the terminal reports (experiment report,
business impact, release cycles): one rendering, so the three read alike."""

from __future__ import annotations

import math
from collections.abc import Sequence

from feedbackloop.analysis.statistics.results import Estimate

__all__ = ["estimate", "number", "table"]


def number(x: float, kind: str = "proportion", signed: bool = False) -> str:
    """``x`` for a reader: a proportion in percent (a signed one, a difference, in
    percentage points), anything else with digits to suit its size; ``n/a`` if not finite."""
    if not math.isfinite(x):
        return "n/a"
    if kind == "proportion":
        return f"{x * 100:+.1f} pp" if signed else f"{x:.1%}"
    mag = abs(x)
    digits = ".2f" if 1 <= mag < 1000 else (".0f" if mag >= 1000 else ".4g")
    return f"{x:+{digits}}" if signed else f"{x:{digits}}"


def estimate(e: Estimate, kind: str = "proportion", signed: bool = False) -> str:
    """``value [lower, upper]``, or ``n/a (why)`` for a failed estimate."""
    if not e.ok:
        return f"n/a ({e.message})"
    return (
        f"{number(e.value, kind, signed)} [{number(e.lower, kind, signed)}, "
        f"{number(e.upper, kind, signed)}]"
    )


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, a dashed rule under the header."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(vals: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)]
