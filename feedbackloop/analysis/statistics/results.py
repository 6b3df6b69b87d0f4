"""Typed results shared by every statistical test, and their JSON form.

A test never raises on degenerate data (no samples, no variance): it returns a result whose
``error`` is an :class:`ErrorCode` and whose ``message`` says why, with numbers set to ``nan``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["ErrorCode", "TestResult", "Estimate", "to_jsonable"]


class ErrorCode(str, Enum):
    """Why a result carries no numbers."""

    ZERO_SAMPLES = "zero_samples"
    TOO_FEW_SAMPLES = "too_few_samples"
    ZERO_VARIANCE = "zero_variance"
    UNDEFINED = "undefined"
    INVALID_INPUT = "invalid_input"


@dataclass(frozen=True)
class TestResult:
    """A hypothesis test: the statistic and its p-value (two-sided unless the method says so)."""

    __test__ = False  # keep pytest from collecting this class because of its name

    method: str
    statistic: float
    p_value: float
    df: float | None = None
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def significant(self, alpha: float) -> bool:
        return self.ok and self.p_value <= alpha

    @classmethod
    def failed(cls, method: str, error: ErrorCode, message: str) -> TestResult:
        return cls(method, math.nan, math.nan, None, error, message)


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval at confidence ``level`` (e.g. 0.95)."""

    method: str
    value: float
    lower: float
    upper: float
    level: float
    error: ErrorCode | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None

    def contains(self, x: float) -> bool:
        return self.ok and self.lower <= x <= self.upper

    @classmethod
    def failed(cls, method: str, level: float, error: ErrorCode, message: str) -> Estimate:
        return cls(method, math.nan, math.nan, math.nan, level, error, message)


def to_jsonable(value: Any) -> Any:
    """Dataclasses to dicts, enums to their value, ``nan``/``inf`` to ``None`` (valid JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value
