"""An experiment's design: what it is judged on, fixed before it is judged.

A verdict keeps its error rates only if the rules it follows were chosen before the data
was seen. :class:`ExperimentDesign` holds those rules: the primary metric, guardrail
metrics, the minimum detectable effect (MDE, absolute or relative, said explicitly), alpha,
power and the analysis mode:

* ``sequential`` (the default): every verdict comes from the always-valid p-value and
  confidence sequence (:mod:`~feedbackloop.analysis.statistics.sequential`), valid however often the
  report is looked at;
* ``fixed``: the fixed-horizon test is evaluated once, on the first ``planned_sessions``
  sessions per variant, a number computed here from the registered MDE (never from the
  observed effect). Before the horizon the verdict is "keep running (n of N)".

Pure: validation and planning only. The registry (ClickHouse table ``experiment_designs``)
is :mod:`feedbackloop.analysis.reads.designs`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from feedbackloop.errors import ConfigError

__all__ = [
    "MODES",
    "ExperimentDesign",
    "check_positive",
    "check_alpha",
    "check_power",
    "check_mde",
]

MODES = ("sequential", "fixed")


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return x


def check_positive(value: Any, name: str) -> float:
    """A finite number > 0 (a standard deviation, a size)."""
    x = _finite(name, value)
    if x <= 0.0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return x


def check_alpha(value: Any, name: str = "alpha") -> float:
    """A significance level: strictly between 0 and 0.5 (a two-sided test above 0.5 is noise)."""
    x = _finite(name, value)
    if not 0.0 < x < 0.5:
        raise ConfigError(f"{name} must lie in (0, 0.5), got {value!r}")
    return x


def check_power(value: Any, alpha: float, name: str = "power") -> float:
    """Power: strictly between alpha/2 and 1 (below alpha/2 no test is worth planning)."""
    x = _finite(name, value)
    if not alpha / 2.0 < x < 1.0:
        raise ConfigError(f"{name} must lie in ({alpha / 2:g}, 1), got {value!r}")
    return x


def check_mde(value: Any, relative: bool, proportion: bool, name: str = "mde") -> float:
    """A minimum detectable effect: positive and finite; an absolute change in a rate is at
    most 1 and a relative one at most 10 (a 1,000% lift is not a *minimum* effect)."""
    x = _finite(name, value)
    if x <= 0.0:
        raise ConfigError(
            f"{name} must be > 0 (the smallest change worth detecting, in either direction), "
            f"got {value!r}"
        )
    if relative and x > 10.0:
        raise ConfigError(f"{name} is relative (a share of the baseline): at most 10, got {x:g}")
    if not relative and proportion and x >= 1.0:
        raise ConfigError(
            f"{name} is an absolute change in a rate and must be < 1, got {x:g} "
            "(for a relative change say so: --mde-relative)"
        )
    return x


@dataclass(frozen=True)
class ExperimentDesign:
    """The rules an experiment is judged by.

    ``mde`` is absolute (``0.02``: two percentage points of a rate) unless ``mde_relative``
    (``0.05``: 5% of the control's value). ``baseline`` (the control's expected value of the
    primary metric) and ``sd`` (the per-session standard deviation of the primary metric,
    default ``sqrt(baseline (1 - baseline))`` for a rate) plan the fixed horizon;
    ``planned_sessions`` may also be given directly. ``registered`` says whether the design
    came from the registry (``False``: the defaults a report assumed).
    """

    experiment: str = ""
    primary: str = "satisfaction"
    guardrails: tuple[str, ...] = ()
    mde: float | None = None
    mde_relative: bool = False
    alpha: float = 0.05
    power: float = 0.8
    mode: str = "sequential"
    baseline: float | None = None
    sd: float | None = None
    planned_sessions: int | None = None
    weights: dict[str, float] = field(default_factory=dict)
    note: str = ""
    registered: bool = False
    created_by: str = ""
    created_at: str = ""

    def __post_init__(self) -> None:
        alpha = check_alpha(self.alpha)
        check_power(self.power, alpha)
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.primary.strip():
            raise ConfigError("a design needs a primary metric")
        if self.primary in self.guardrails:
            raise ConfigError(f"{self.primary!r} is the primary metric and cannot be a guardrail")
        if self.baseline is not None:
            _finite("baseline", self.baseline)
        if self.mde is not None:
            rate = self.baseline is not None and 0.0 <= self.baseline <= 1.0 and self.sd is None
            check_mde(self.mde, self.mde_relative, rate)
        if self.sd is not None:
            check_positive(self.sd, "sd")
        if self.planned_sessions is not None and (
            isinstance(self.planned_sessions, bool)
            or not isinstance(self.planned_sessions, int)
            or self.planned_sessions < 2
        ):
            raise ConfigError(
                f"planned sessions must be a whole number >= 2, got {self.planned_sessions!r}"
            )
        for k, w in self.weights.items():
            if not (_finite(f"weight of {k}", w) >= 0):
                raise ConfigError(f"weight of {k} must be >= 0, got {w!r}")
        if self.mode == "sequential" and self.planned_sessions is not None:
            raise ConfigError(
                "a planned number of sessions applies to fixed-horizon mode only (--mode fixed)"
            )
        if self.mode == "fixed":
            if self.mde is None:
                raise ConfigError(
                    "fixed-horizon mode needs an MDE: the planned sample size is computed from it"
                )
            if self.planned_sessions is None and self.baseline is None:
                raise ConfigError(
                    "fixed-horizon mode needs the primary metric's baseline (--baseline, and "
                    "--sd for a mean) to plan the sample size, or --sessions per variant"
                )
            if self.mde_relative and self.baseline is None:
                raise ConfigError("a relative MDE in fixed-horizon mode needs --baseline")
            if self.planned_sessions is None:
                planned = self.plan()
                if planned is None:
                    raise ConfigError(
                        "cannot plan the sample size: baseline + MDE must stay a rate in [0, 1] "
                        "(or give --sd for a mean metric)"
                    )
                object.__setattr__(self, "planned_sessions", planned)

    # --- planning ----------------------------------------------------------------------
    def absolute_mde(self, control_value: float | None = None) -> float | None:
        """The MDE on the metric's own scale; a relative MDE scales the registered baseline,
        else ``control_value`` (the control's observed value). ``None``: no MDE."""
        if self.mde is None:
            return None
        if not self.mde_relative:
            return self.mde
        base = self.baseline if self.baseline is not None else control_value
        if base is None or not math.isfinite(base) or base == 0:
            return None
        return abs(self.mde * base)

    def plan(self) -> int | None:
        """Sessions per variant for ``power`` at the MDE, from ``baseline`` / ``sd``.

        A rate with no ``sd`` is planned for the test the report will use at the horizon:
        Fisher's exact test when an expected cell count there is below 5 (exact power),
        else the z-test (Cohen's h); a mean (or a rate with ``sd``) with ``d = mde / sd``.
        """
        from feedbackloop.analysis.statistics.power import (
            required_sample_size_means,
            required_sample_size_proportions_exact,
        )

        mde = self.absolute_mde()
        if mde is None or self.baseline is None:
            return None
        if self.sd is not None:
            return required_sample_size_means(self.sd, mde, self.alpha, self.power).per_variant
        if not 0.0 <= self.baseline <= 1.0:
            return None
        target = self.baseline + mde if self.baseline + mde <= 1.0 else self.baseline - mde
        if not 0.0 <= target <= 1.0:
            return None
        size = required_sample_size_proportions_exact(
            self.baseline, target - self.baseline, self.alpha, self.power
        )
        return size.per_variant

    # --- words -------------------------------------------------------------------------
    def mde_text(self, fmt: Any = None) -> str:
        if self.mde is None:
            return "none"
        if self.mde_relative:
            return f"{self.mde:.4g} relative ({self.mde:.2%} of the control's value)"
        return f"{self.mde:.4g} absolute" if fmt is None else f"{fmt(self.mde)} absolute"

    def summary(self) -> str:
        """One line: the rules in force."""
        mode = (
            "sequential (always-valid)"
            if self.mode == "sequential"
            else f"fixed horizon at {self.planned_sessions:,} sessions per variant"
        )
        guard = f"; guardrails {', '.join(self.guardrails)}" if self.guardrails else ""
        return (
            f"primary {self.primary}{guard}; MDE {self.mde_text()}; alpha {self.alpha:g}; "
            f"power {self.power:g}; {mode}"
        )

    def assumed(self) -> str:
        """What a report without a registered design assumed, in words."""
        futility = (
            "no MDE, so no futility verdict"
            if self.mde is None
            else f"MDE {self.mde_text()} (given as an option)"
        )
        return (
            f"no design registered for this experiment; assumed: primary {self.primary}, "
            f"{futility}, alpha {self.alpha:g}, power {self.power:g}, "
            f"{'sequential (always-valid)' if self.mode == 'sequential' else 'fixed horizon'}"
            " analysis (register one with `feedbackloop experiments design`)"
        )

    def to_dict(self) -> dict[str, Any]:
        from feedbackloop.analysis.statistics.results import to_jsonable

        out = to_jsonable(self)
        assert isinstance(out, dict)
        return out
