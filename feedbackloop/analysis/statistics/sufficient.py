"""Sufficient statistics: exactly what a ClickHouse aggregate returns for one variant.

Every test in :mod:`feedbackloop.analysis` takes these small frozen dataclasses rather than raw
rows, so the same function serves a live query (``count()``, ``sum(x)``, ``sum(x*x)``) and a
unit test. ``a + b`` merges two partial aggregates (e.g. two days, two partitions).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from feedbackloop.errors import FeedbackLoopError

__all__ = ["InvalidStatistics", "BinaryStats", "MeanStats", "RatioStats"]


# Raw-moment arithmetic loses ~12 of float64's ~16 digits in the worst realistic case.
_RELATIVE_FLOOR = 1e-12


class InvalidStatistics(FeedbackLoopError, ValueError):
    """Sufficient statistics that cannot describe any sample (negative counts, successes > n).

    Degenerate-but-possible data (zero samples, zero variance) is *not* an error: the tests
    return a result carrying an error code instead.
    """


def _check_count(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise InvalidStatistics(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class BinaryStats:
    """A binary metric for one variant: ``successes`` out of ``n`` units.

    ClickHouse: ``count() AS n, countIf(positive) AS successes``.
    """

    n: int
    successes: int

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        _check_count("successes", self.successes)
        if self.successes > self.n:
            raise InvalidStatistics(
                f"successes ({self.successes}) cannot exceed the number of units ({self.n})"
            )

    @property
    def failures(self) -> int:
        return self.n - self.successes

    @property
    def rate(self) -> float:
        """Observed proportion; ``nan`` when ``n == 0``."""
        return self.successes / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Bernoulli variance ``p(1-p)`` of one unit (not of the rate)."""
        p = self.rate
        return p * (1.0 - p)

    def __add__(self, other: BinaryStats) -> BinaryStats:
        return BinaryStats(self.n + other.n, self.successes + other.successes)

    @classmethod
    def parse(cls, text: str) -> BinaryStats:
        """Read ``"540/1000"`` (successes/units), the form the CLI accepts."""
        parts = text.strip().split("/")
        if len(parts) != 2:
            raise InvalidStatistics(f"expected SUCCESSES/N such as 540/1000, got {text!r}")
        try:
            successes, n = (int(p.strip()) for p in parts)
        except ValueError:
            raise InvalidStatistics(
                f"expected two whole numbers SUCCESSES/N such as 540/1000, got {text!r}"
            ) from None
        return cls(n=n, successes=successes)


@dataclass(frozen=True)
class MeanStats:
    """A numeric metric for one variant (rating, latency, time to outcome).

    ClickHouse: ``count() AS n, sum(x) AS sum, sum(x * x) AS sum_squares``.
    """

    n: int
    sum: float
    sum_squares: float

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        if not (math.isfinite(self.sum) and math.isfinite(self.sum_squares)):
            raise InvalidStatistics("sum and sum_squares must be finite")
        if self.sum_squares < 0:
            raise InvalidStatistics(f"sum_squares must be >= 0, got {self.sum_squares!r}")

    @property
    def mean(self) -> float:
        """Sample mean; ``nan`` when ``n == 0``."""
        return self.sum / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance (ddof=1); ``nan`` when ``n < 2``.

        Computed from raw moments, which cannot reliably resolve a variance below about 1e-12
        of the mean square (a standard deviation under ~1e-6 of the mean): cancellation in
        ``sum_squares - sum**2/n`` leaves rounding noise of either sign for constant data.
        Anything under that floor is reported as exactly 0, so constant data is recognised as
        zero-variance instead of yielding a huge t statistic.
        """
        if self.n < 2:
            return math.nan
        centered = self.sum_squares - self.sum * self.sum / self.n
        if centered <= _RELATIVE_FLOOR * self.sum_squares:
            return 0.0
        return centered / (self.n - 1)

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def __add__(self, other: MeanStats) -> MeanStats:
        return MeanStats(
            self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares
        )

    @classmethod
    def from_values(cls, values: Iterable[float] | npt.ArrayLike) -> MeanStats:
        x = np.asarray(values, dtype=float).ravel()
        return cls(n=int(x.size), sum=float(x.sum()), sum_squares=float((x * x).sum()))


@dataclass(frozen=True)
class RatioStats:
    """A ratio metric whose unit of randomisation (the session) holds several events.

    Per session ``i`` there is a numerator ``Y_i`` (e.g. positive ratings) and a denominator
    ``N_i`` (e.g. rated interactions). The metric is ``sum(Y) / sum(N)``; the test must treat
    the *session*, not the event, as the independent unit. ClickHouse, over a per-session
    subquery: ``count() AS n, sum(y), sum(d), sum(y*y), sum(d*d), sum(y*d)``.
    """

    n: int
    sum_num: float
    sum_den: float
    sum_num_sq: float
    sum_den_sq: float
    sum_num_den: float

    def __post_init__(self) -> None:
        _check_count("n", self.n)
        for name in ("sum_num", "sum_den", "sum_num_sq", "sum_den_sq", "sum_num_den"):
            if not math.isfinite(getattr(self, name)):
                raise InvalidStatistics(f"{name} must be finite")
        if self.sum_den < 0 or self.sum_num_sq < 0 or self.sum_den_sq < 0:
            raise InvalidStatistics("sum_den, sum_num_sq and sum_den_sq must be >= 0")

    @property
    def ratio(self) -> float:
        """``sum(Y) / sum(N)``; ``nan`` when there are no events."""
        return self.sum_num / self.sum_den if self.sum_den else math.nan

    @property
    def events(self) -> float:
        return self.sum_den

    def _cov(self, sxy: float, sx: float, sy: float) -> float:
        return (sxy - sx * sy / self.n) / (self.n - 1)

    @property
    def variance(self) -> float:
        """Delta-method variance of :attr:`ratio` across sessions; ``nan`` when ``n < 2``.

        Source: Deng, Knoblich & Lu (2018), "Applying the Delta Method in Metric Analytics",
        KDD: ``Var(Ybar/Nbar) ~ (s_Y^2 - 2 R s_YN + R^2 s_N^2) / (n * Nbar^2)`` with
        sample (co)variances across sessions.
        """
        if self.n < 2 or self.sum_den == 0:
            return math.nan
        r = self.ratio
        s_yy = self._cov(self.sum_num_sq, self.sum_num, self.sum_num)
        s_nn = self._cov(self.sum_den_sq, self.sum_den, self.sum_den)
        s_yn = self._cov(self.sum_num_den, self.sum_num, self.sum_den)
        mean_den = self.sum_den / self.n
        spread = s_yy - 2.0 * r * s_yn + r * r * s_nn
        # Same cancellation floor as MeanStats.variance, relative to the *raw* second moments:
        # for sessions all at the same ratio the centred terms are themselves rounding noise
        # (one ulp of sum(Y*N) made a constant cost of 0.0011 per interaction look variable,
        # with a "required" sample size of 6e15 sessions).
        raw = (self.sum_num_sq + r * r * self.sum_den_sq) / (self.n - 1)
        if spread <= _RELATIVE_FLOOR * raw:
            return 0.0
        return spread / (self.n * mean_den * mean_den)

    def __add__(self, other: RatioStats) -> RatioStats:
        return RatioStats(
            self.n + other.n,
            self.sum_num + other.sum_num,
            self.sum_den + other.sum_den,
            self.sum_num_sq + other.sum_num_sq,
            self.sum_den_sq + other.sum_den_sq,
            self.sum_num_den + other.sum_num_den,
        )

    @classmethod
    def from_sessions(cls, numerators: npt.ArrayLike, denominators: npt.ArrayLike) -> RatioStats:
        """Build from per-session totals (one entry per session)."""
        y = np.asarray(numerators, dtype=float).ravel()
        d = np.asarray(denominators, dtype=float).ravel()
        if y.shape != d.shape:
            raise InvalidStatistics("numerators and denominators must have the same length")
        return cls(
            n=int(y.size),
            sum_num=float(y.sum()),
            sum_den=float(d.sum()),
            sum_num_sq=float((y * y).sum()),
            sum_den_sq=float((d * d).sum()),
            sum_num_den=float((y * d).sum()),
        )

    @classmethod
    def from_events(cls, session_ids: npt.ArrayLike, values: npt.ArrayLike) -> RatioStats:
        """Aggregate event-level values to sessions: ``Y_i = sum(values)``, ``N_i = #events``.

        This is the step that stops a chatty session from counting as many independent units.
        """
        ids = np.asarray(session_ids).ravel()
        v = np.asarray(values, dtype=float).ravel()
        if ids.shape != v.shape:
            raise InvalidStatistics("session_ids and values must have the same length")
        _, inverse = np.unique(ids, return_inverse=True)
        return cls.from_sessions(np.bincount(inverse, weights=v), np.bincount(inverse))
