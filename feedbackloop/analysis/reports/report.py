"""The experiment report: every variant against control, on every metric, SRM first.

:func:`build_report` is pure: it takes :class:`~feedbackloop.analysis.reads.queries.ExperimentStats`
(per-variant sufficient statistics, as :func:`~feedbackloop.analysis.reads.queries.fetch_experiment`
reads them from ClickHouse, or built by hand in a test) and returns a typed
:class:`ExperimentReport`; :func:`format_report` renders it as text, ``to_dict`` as JSON.

Choices, and why:

* **The session is the unit.** Variants are assigned per session, and one session's
  interactions are correlated, so every comparison is a delta-method test on per-session
  ratios (:func:`~feedbackloop.analysis.statistics.ratio_metrics.ratio_ztest`) and every sample size
  counts sessions. Interaction counts (rated, positive) are shown too, with a Wilson
  interval, because that is the number teams recognise; the decision never uses them.
* **Two p-values per comparison.** The fixed-horizon p is valid once, at the planned sample
  size; the always-valid mSPRT p (:mod:`~.statistics.sequential`) is valid at every
  look, which is how a live report is read.
* **Multiplicity.** A report tests (treatments x metrics) hypotheses. Each metric row is
  adjusted across that whole family (Benjamini-Hochberg by default, Holm on request; both are
  shown). The headline decision per treatment is the *primary* metric (satisfaction unless
  told otherwise), adjusted with Holm across treatments only: one pre-declared metric decides,
  the others inform.
* **SRM overrides everything.** With a sample-ratio mismatch every verdict becomes "do not
  trust", whatever the p-values say (Fabijan et al., KDD 2019).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scipy import stats

from feedbackloop.analysis.reads.queries import ExperimentStats, MetricSpec, VariantStats
from feedbackloop.analysis.reports.plaintext import estimate, number, table
from feedbackloop.analysis.statistics.bayesian import BayesianResult, beta_binomial
from feedbackloop.analysis.statistics.decision import Decision, Verdict, decide
from feedbackloop.analysis.statistics.multiple import benjamini_hochberg, holm
from feedbackloop.analysis.statistics.power import (
    PowerStatus,
    SampleSize,
    power_status,
    required_sample_size,
)
from feedbackloop.analysis.statistics.proportions import wilson_interval
from feedbackloop.analysis.statistics.ratio_metrics import RatioComparison, ratio_ztest
from feedbackloop.analysis.statistics.results import ErrorCode, Estimate, TestResult, to_jsonable
from feedbackloop.analysis.statistics.sequential import (
    DEFAULT_TAU,
    SequentialResult,
    sequential_test_ratios,
)
from feedbackloop.analysis.statistics.srm import (
    DEFAULT_SRM_THRESHOLD,
    SrmResult,
    sample_ratio_mismatch,
)
from feedbackloop.analysis.statistics.sufficient import BinaryStats, RatioStats
from feedbackloop.errors import ConfigError

__all__ = [
    "MetricValue",
    "MetricComparison",
    "VariantRow",
    "TreatmentDecision",
    "ExperimentReport",
    "build_report",
    "format_report",
    "pick_control",
]

CORRECTIONS = ("bh", "holm", "none")


@dataclass(frozen=True)
class MetricValue:
    """One metric in one variant, with a session-level (delta-method) interval."""

    metric: str
    value: Estimate
    sessions: int
    events: float


@dataclass(frozen=True)
class MetricComparison:
    """``treatment - control`` on one metric.

    ``p_value`` / ``sequential.p_value`` are raw; ``p_holm`` / ``p_bh`` (and the ``seq_``
    pair) are adjusted across all treatments x metrics; ``decision`` uses the report's
    ``correction``. ``required`` counts sessions per variant for ``required_for`` (the MDE
    when given for the primary metric, else the observed difference) at the report's power.
    """

    metric: str
    label: str
    kind: str
    treatment: str
    control_value: float
    treatment_value: float
    difference: Estimate
    lift: float
    fixed: TestResult
    sequential: SequentialResult
    p_holm: float
    p_bh: float
    seq_p_holm: float
    seq_p_bh: float
    required_for: float
    required: SampleSize
    power: PowerStatus
    decision: Decision


@dataclass(frozen=True)
class VariantRow:
    """The per-variant table: sizes, satisfaction (interaction-level Wilson), every metric."""

    variant: str
    sessions: int
    interactions: int
    rated: int
    positive: int
    satisfaction: Estimate
    metrics: dict[str, MetricValue]
    latency_quantiles: dict[str, float]
    cost_total: float


@dataclass(frozen=True)
class TreatmentDecision:
    """The headline for one treatment: its primary metric's verdict and power status."""

    treatment: str
    metric: str
    decision: Decision
    difference: Estimate
    p_value: float
    sequential_p_value: float
    power: PowerStatus
    bayesian: BayesianResult | None


@dataclass(frozen=True)
class ExperimentReport:
    experiment: str | None
    since: str | None
    alpha: float
    power: float
    correction: str
    control: str
    primary: str
    weights: dict[str, float] | None
    srm: SrmResult
    cross_variant_sessions: int
    variants: list[VariantRow]
    metrics: list[MetricSpec]
    comparisons: list[MetricComparison]
    decisions: list[TreatmentDecision]
    warnings: list[str] = field(default_factory=list)

    @property
    def trustworthy(self) -> bool:
        return not self.srm.mismatch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as strings, ``nan`` as ``None``."""
        out = to_jsonable(self)
        assert isinstance(out, dict)
        out["trustworthy"] = self.trustworthy
        return out

    def to_text(self) -> str:
        return format_report(self)


def pick_control(variants: Sequence[str], control: str | None = None) -> str:
    """``control`` if given, else a variant named ``control``, else the first in order."""
    if control is not None:
        if control not in variants:
            raise ConfigError(
                f"control variant {control!r} has no data; variants seen: {', '.join(variants)}"
            )
        return control
    return "control" if "control" in variants else variants[0]


def _ratio_interval(spec: MetricSpec, r: RatioStats, alpha: float) -> Estimate:
    method, level = "delta method (sessions)", 1.0 - alpha
    if r.n < 2 or r.sum_den == 0:
        return Estimate.failed(
            method, level, ErrorCode.TOO_FEW_SAMPLES, "needs >= 2 sessions with events"
        )
    var = r.variance
    half = float(stats.norm.isf(alpha / 2.0)) * math.sqrt(var) if var > 0 else 0.0
    lo, hi = r.ratio - half, r.ratio + half
    if spec.kind == "proportion":
        lo, hi = max(0.0, lo), min(1.0, hi)
    return Estimate(method, r.ratio, lo, hi, level)


def _required(control: RatioStats, effect: float, alpha: float, power: float) -> SampleSize:
    """Sessions per variant to detect ``effect`` in a ratio metric.

    The per-session standard deviation of the linearised metric is ``sqrt(n Var(R))``
    (Deng et al. 2018), so the standardised effect is ``effect / sqrt(n Var(R_c))``.
    """
    var = control.variance
    if not (math.isfinite(var) and var > 0 and math.isfinite(effect)):
        return SampleSize.failed(
            effect, alpha, power, ErrorCode.UNDEFINED, "no control variance or effect to plan for"
        )
    return required_sample_size(effect / math.sqrt(var * control.n), alpha, power)


def _words(d: Decision, spec: MetricSpec, estimate: float) -> Decision:
    """Neutral metrics: a significant change is an increase or a decrease, not a verdict."""
    if spec.higher_is_better is None and d.verdict in (
        Verdict.SIGNIFICANT_IMPROVEMENT,
        Verdict.SIGNIFICANT_REGRESSION,
    ):
        return replace(d, text="significant increase" if estimate > 0 else "significant decrease")
    return d


def _adjust(ps: list[float], method: str, alpha: float) -> list[float]:
    """Adjust the finite p-values of a family; undefined ones stay ``nan``."""
    idx = [i for i, p in enumerate(ps) if math.isfinite(p)]
    out = [math.nan] * len(ps)
    if not idx:
        return out
    fn = holm if method == "holm" else benjamini_hochberg
    adjusted = fn([ps[i] for i in idx], alpha).adjusted
    for i, a in zip(idx, adjusted, strict=True):
        out[i] = a
    return out


def build_report(
    data: ExperimentStats,
    *,
    control: str | None = None,
    weights: Mapping[str, float] | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    mde: float | None = None,
    primary: str = "satisfaction",
    correction: str = "bh",
    srm_threshold: float = DEFAULT_SRM_THRESHOLD,
    tau: float = DEFAULT_TAU,
) -> ExperimentReport:
    """Assemble the report from per-variant sufficient statistics.

    ``weights`` maps variant to its configured share (any scale); variants it names but with
    no data count as 0 sessions, variants it omits get weight 0 (traffic there is a certain
    mismatch). Without weights an equal split is assumed, and the report says so. ``mde`` is
    the absolute effect to plan the primary metric's sample size for (default: observed).
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ConfigError("alpha and power must lie in (0, 1)")
    if correction not in CORRECTIONS:
        raise ConfigError(f"correction must be one of {', '.join(CORRECTIONS)}")
    warnings: list[str] = []
    names = list(data.variants)
    if weights:
        names += [v for v in weights if v not in data.variants]
    if not names:
        raise ConfigError(
            f"no interactions found for experiment {data.scope.experiment!r}"
            + (f" since {data.scope.since.isoformat()}" if data.scope.since else "")
        )
    ctl = pick_control([n for n in names if n in data.variants] or names, control)
    names = [ctl] + [n for n in names if n != ctl]
    # A variant configured in --weights that received no traffic still belongs in the SRM.
    variants = {
        n: data.variants.get(n) or VariantStats(n, 0, 0, BinaryStats(0, 0), {}) for n in names
    }

    # SRM: sessions are the unit of assignment.
    if weights:
        w = [float(weights.get(n, 0.0)) for n in names]
    else:
        w = [1.0] * len(names)
        warnings.append("no --weights given: assuming an equal split for the sample-ratio check")
    srm = sample_ratio_mismatch([variants[n].sessions for n in names], w, srm_threshold)
    if data.cross_variant_sessions:
        warnings.append(
            f"{data.cross_variant_sessions:,} session(s) appear in more than one variant: "
            "assignment is not sticky per session"
        )
    if primary not in {m.name for m in data.metrics}:
        raise ConfigError(
            f"primary metric {primary!r} is not in this report: "
            f"{', '.join(m.name for m in data.metrics)}"
        )

    rows = [_variant_row(variants[n], data, alpha) for n in names]
    treatments = names[1:]
    c = variants[ctl]

    # Raw comparisons first; adjusted p-values need the whole family.
    raw: list[tuple[MetricSpec, str, RatioComparison, SequentialResult, float, SampleSize]] = []
    for t in treatments:
        vt = variants[t]
        for spec in data.metrics:
            rc, rt = c.metrics.get(spec.name), vt.metrics.get(spec.name)
            if rc is None or rt is None:
                continue
            comp = ratio_ztest(rc, rt, alpha)
            seq = sequential_test_ratios(rc, rt, alpha, tau)
            effect = mde if (mde is not None and spec.name == primary) else comp.difference.value
            req = _required(rc, effect, alpha, power)
            raw.append((spec, t, comp, seq, effect, req))
    fixed_p = [r[2].test.p_value for r in raw]
    seq_p = [r[3].p_value for r in raw]
    adj = {
        "holm": (_adjust(fixed_p, "holm", alpha), _adjust(seq_p, "holm", alpha)),
        "bh": (_adjust(fixed_p, "bh", alpha), _adjust(seq_p, "bh", alpha)),
        "none": (fixed_p, seq_p),
    }
    comparisons: list[MetricComparison] = []
    for i, (spec, t, comp, seq, effect, req) in enumerate(raw):
        vt = variants[t]
        status = power_status(req, c.sessions, vt.sessions)
        fp, sp = adj[correction][0][i], adj[correction][1][i]
        error = next((r.message for r in (comp.test, comp.difference) if not r.ok), None)
        d = decide(
            estimate=comp.difference.value,
            alpha=alpha,
            sequential_p=sp if math.isfinite(sp) else 1.0,
            fixed_p=fp if math.isfinite(fp) else 1.0,
            n_smallest=min(c.sessions, vt.sessions),
            n_required=req.per_variant,
            srm_mismatch=srm.mismatch,
            error=error,
            higher_is_better=spec.higher_is_better is not False,
        )
        lift = comp.treatment_ratio / comp.control_ratio - 1.0 if comp.control_ratio else math.nan
        comparisons.append(
            MetricComparison(
                metric=spec.name,
                label=spec.label,
                kind=spec.kind,
                treatment=t,
                control_value=comp.control_ratio,
                treatment_value=comp.treatment_ratio,
                difference=comp.difference,
                lift=lift,
                fixed=comp.test,
                sequential=seq,
                p_holm=adj["holm"][0][i],
                p_bh=adj["bh"][0][i],
                seq_p_holm=adj["holm"][1][i],
                seq_p_bh=adj["bh"][1][i],
                required_for=effect,
                required=req,
                power=status,
                decision=_words(d, spec, comp.difference.value),
            )
        )

    decisions = _headline(comparisons, data, variants, ctl, treatments, primary, alpha, srm)
    return ExperimentReport(
        experiment=data.scope.experiment,
        since=data.scope.since.isoformat() if data.scope.since else None,
        alpha=alpha,
        power=power,
        correction=correction,
        control=ctl,
        primary=primary,
        weights=dict(zip(names, w, strict=True)) if weights else None,
        srm=srm,
        cross_variant_sessions=data.cross_variant_sessions,
        variants=rows,
        metrics=list(data.metrics),
        comparisons=comparisons,
        decisions=decisions,
        warnings=warnings,
    )


def _variant_row(v: VariantStats, data: ExperimentStats, alpha: float) -> VariantRow:
    metrics = {
        spec.name: MetricValue(spec.name, _ratio_interval(spec, r, alpha), r.n, r.sum_den)
        for spec in data.metrics
        if (r := v.metrics.get(spec.name)) is not None
    }
    q = {
        f"p{round(p * 100):g}": x for p, x in zip(data.quantiles, v.latency_quantiles, strict=False)
    }
    return VariantRow(
        variant=v.variant,
        sessions=v.sessions,
        interactions=v.interactions,
        rated=v.rated.n,
        positive=v.rated.successes,
        satisfaction=wilson_interval(v.rated, alpha),
        metrics=metrics,
        latency_quantiles=q,
        cost_total=v.cost_total,
    )


def _headline(
    comparisons: list[MetricComparison],
    data: ExperimentStats,
    variants: dict[str, VariantStats],
    ctl: str,
    treatments: list[str],
    primary: str,
    alpha: float,
    srm: SrmResult,
) -> list[TreatmentDecision]:
    prim = [c for c in comparisons if c.metric == primary]
    # Holm across treatments only: the ship decision's family is "which treatment beats
    # control on the metric we declared up front".
    fixed = _adjust([c.fixed.p_value for c in prim], "holm", alpha)
    seq = _adjust([c.sequential.p_value for c in prim], "holm", alpha)
    spec = next(m for m in data.metrics if m.name == primary)
    out = []
    for c, fp, sp in zip(prim, fixed, seq, strict=True):
        error = next((r.message for r in (c.fixed, c.difference) if not r.ok), None)
        d = decide(
            estimate=c.difference.value,
            alpha=alpha,
            sequential_p=sp if math.isfinite(sp) else 1.0,
            fixed_p=fp if math.isfinite(fp) else 1.0,
            n_smallest=min(variants[ctl].sessions, variants[c.treatment].sessions),
            n_required=c.required.per_variant,
            srm_mismatch=srm.mismatch,
            error=error,
            higher_is_better=spec.higher_is_better is not False,
        )
        bayes = (
            beta_binomial(variants[ctl].rated, variants[c.treatment].rated)
            if primary == "satisfaction"
            else None
        )
        out.append(
            TreatmentDecision(
                treatment=c.treatment,
                metric=primary,
                decision=_words(d, spec, c.difference.value),
                difference=c.difference,
                p_value=fp,
                sequential_p_value=sp,
                power=c.power,
                bayesian=bayes,
            )
        )
    return out


# --- text rendering ---------------------------------------------------------------------


def _p(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def format_report(r: ExperimentReport) -> str:
    """Plain text: the SRM verdict first, then variants, differences and decisions."""
    level = f"{1 - r.alpha:.0%}"
    out: list[str] = []
    title = f"Experiment {r.experiment!r}" if r.experiment else "All interactions"
    out.append(
        f"{title}"
        + (f" since {r.since}" if r.since else "")
        + f"; control: {r.control}; alpha {r.alpha:g}; sessions are the unit"
    )
    out.append("")
    if r.srm.mismatch:
        out.append("!! SAMPLE-RATIO MISMATCH: DO NOT TRUST THIS EXPERIMENT !!")
    split = ", ".join(f"{v.variant} {v.sessions:,}" for v in r.variants)
    srm_text = r.srm.message if r.srm.ok else f"n/a ({r.srm.message})"
    out.append(
        f"Sample ratio: {srm_text} [sessions: {split}"
        + (
            f"; weights: {', '.join(f'{k} {v:g}' for k, v in r.weights.items())}"
            if r.weights
            else "; weights: equal (assumed)"
        )
        + "]"
    )
    out += [f"warning: {w}" for w in r.warnings]
    out.append("")

    out.append("Variants")
    head = ["variant", "sessions", "interactions", "rated", f"satisfaction ({level} Wilson)"]
    lat = bool(r.variants and r.variants[0].latency_quantiles)
    if lat:
        head.append("latency p50 / p90 ms")
    head.append("cost USD")
    rows = []
    for v in r.variants:
        row = [
            v.variant,
            f"{v.sessions:,}",
            f"{v.interactions:,}",
            f"{v.positive:,}/{v.rated:,}",
            estimate(v.satisfaction, "proportion"),
        ]
        if lat:
            q = v.latency_quantiles
            row.append(
                f"{number(q.get('p50', math.nan), 'mean')} / "
                f"{number(q.get('p90', math.nan), 'mean')}"
            )
        row.append(f"{v.cost_total:.4g}")
        rows.append(row)
    out += table(head, rows)
    out.append("")

    out.append(f"Metrics per variant (session-level {level} intervals)")
    rows = []
    for m in r.metrics:
        rows.append(
            [m.label]
            + [
                estimate(v.metrics[m.name].value, m.kind) if m.name in v.metrics else "n/a"
                for v in r.variants
            ]
        )
    out += table(["metric"] + [v.variant for v in r.variants], rows)
    out.append("")

    adj = {"bh": "BH", "holm": "Holm", "none": "unadjusted"}[r.correction]
    out.append(
        f"Differences vs {r.control} ({level} CI; p adjusted by {adj} across "
        f"{len(r.comparisons)} treatment x metric tests)"
    )
    rows = []
    for c in r.comparisons:
        p_adj = {"bh": c.p_bh, "holm": c.p_holm, "none": c.fixed.p_value}[r.correction]
        sp_adj = {"bh": c.seq_p_bh, "holm": c.seq_p_holm, "none": c.sequential.p_value}[
            r.correction
        ]
        rows.append(
            [
                c.label,
                c.treatment,
                estimate(c.difference, c.kind, signed=True),
                "n/a" if not math.isfinite(c.lift) else f"{c.lift:+.1%}",
                _p(c.fixed.p_value),
                _p(p_adj),
                _p(c.sequential.p_value),
                _p(sp_adj),
                c.decision.text,
            ]
        )
    out += table(
        ["metric", "variant", "difference", "lift", "p", "p adj", "seq p", "seq p adj", "verdict"],
        rows,
    )
    out.append("")

    out.append(f"Decision (primary metric: {r.primary}; Holm across treatments)")
    for d in r.decisions:
        spec_kind = next((m.kind for m in r.metrics if m.name == d.metric), "mean")
        parts = [
            f"{d.treatment}: {d.decision.text}",
            f"difference {estimate(d.difference, spec_kind, signed=True)}",
            f"p {_p(d.p_value)}, sequential p {_p(d.sequential_p_value)}",
            f"sessions: {d.power.message}",
        ]
        if d.bayesian is not None and d.bayesian.ok:
            parts.append(f"P(beats {r.control}) {d.bayesian.prob_treatment_beats_control:.1%}")
        out.append("  " + "; ".join(parts))
    return "\n".join(out)
