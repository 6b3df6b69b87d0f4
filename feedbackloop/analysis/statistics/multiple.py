"""Adjustments for many variants or metrics tested at once.

Both work unchanged on always-valid (sequential) p-values: each only needs every input to be
a valid p-value at the moment it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AdjustedPValues", "holm", "benjamini_hochberg"]


@dataclass(frozen=True)
class AdjustedPValues:
    """Adjusted p-values in input order and which hypotheses are rejected at ``alpha``."""

    method: str
    alpha: float
    raw: tuple[float, ...]
    adjusted: tuple[float, ...]
    rejected: tuple[bool, ...]


def _finish(method: str, alpha: float, p: np.ndarray, adj: np.ndarray) -> AdjustedPValues:
    adj = np.minimum(adj, 1.0)
    return AdjustedPValues(
        method,
        alpha,
        tuple(map(float, p)),
        tuple(map(float, adj)),
        tuple(bool(a <= alpha) for a in adj),
    )


def holm(p_values: Sequence[float], alpha: float = 0.05) -> AdjustedPValues:
    """Holm's step-down adjustment; controls the family-wise error rate.

    Source: Holm (1979), Scand. J. Statist. 6:65. With sorted ``p_(1) <= ... <= p_(m)``:
    ``adj_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return AdjustedPValues("holm", alpha, (), (), ())
    order = np.argsort(p, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adj = np.empty(m)
    adj[order] = stepped
    return _finish("holm", alpha, p, adj)


def benjamini_hochberg(p_values: Sequence[float], alpha: float = 0.05) -> AdjustedPValues:
    """Benjamini-Hochberg step-up adjustment; controls the false discovery rate.

    Source: Benjamini & Hochberg (1995), JRSS-B 57:289. With sorted p-values:
    ``adj_(i) = min_{j >= i} min(1, m p_(j) / j)``. Valid for independent or positively
    dependent tests (Benjamini & Yekutieli 2001), which covers variants sharing one control.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return AdjustedPValues("benjamini-hochberg", alpha, (), (), ())
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    adj = np.empty(m)
    adj[order] = stepped
    return _finish("benjamini-hochberg", alpha, p, adj)
