"""The experiment report: every variant against control, on every metric, SRM first.

:func:`build_report` is pure: it takes :class:`~feedbackloop.analysis.reads.queries.ExperimentStats`
(per-variant sufficient statistics, as :func:`~feedbackloop.analysis.reads.queries.fetch_experiment`
reads them from ClickHouse, or built by hand in a test) and the experiment's
:class:`~feedbackloop.analysis.statistics.design.ExperimentDesign`, and returns a typed
:class:`ExperimentReport`; :func:`format_report` renders it as text, ``to_dict`` as JSON.

Choices, and why:

* **The design decides how to judge.** Primary metric, guardrails, MDE, alpha, power and the
  analysis mode come from the registered design (:mod:`~feedbackloop.analysis.reads.designs`); a
  report without one says which defaults it assumed. Every verdict comes from
  :func:`~feedbackloop.analysis.statistics.decision.decide`, the function the dashboard, ``stats
  compare`` and the alerts use too.
* **The session is the unit.** Variants are assigned per session, and one session's
  interactions are correlated, so every comparison is a delta-method test on per-session
  ratios (:func:`~feedbackloop.analysis.statistics.ratio_metrics.ratio_ztest`), every sample size
  counts sessions, and P(treatment beats control) and the expected loss are those of the
  session-level estimate (normal posterior of the difference). Interaction counts (rated,
  positive) are shown too, with a Wilson interval, because that is the number teams
  recognise; no decision uses them.
* **Two p-values per comparison.** The fixed-horizon p is valid once, at the planned sample
  size; the always-valid mSPRT p (:mod:`~.statistics.sequential`) is valid at every look.
  The design's mode says which one decides; the other is shown, not used.
* **Multiplicity.** A report tests (treatments x metrics) hypotheses. Each metric row is
  adjusted across that whole family (Benjamini-Hochberg by default, Holm on request; both are
  shown). The headline verdict per treatment is the *primary* metric's, adjusted with Holm
  across treatments only: one pre-declared metric decides, guardrails are listed beside it.
* **SRM overrides everything.** With a sample-ratio mismatch every verdict becomes "do not
  trust", whatever the p-values say (Fabijan et al., KDD 2019).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from feedbackloop.analysis.reads.designs import fetch_design
from feedbackloop.analysis.reads.queries import (
    ExperimentStats,
    MetricSpec,
    Runner,
    VariantStats,
    fetch_experiment,
)
from feedbackloop.analysis.reads.scope import Scope
from feedbackloop.analysis.reports.plaintext import estimate, number, table
from feedbackloop.analysis.statistics.bayesian import BayesianResult, normal_difference_posterior
from feedbackloop.analysis.statistics.decision import Decision, Evidence, Rules, decide
from feedbackloop.analysis.statistics.design import ExperimentDesign
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
    "report_experiment",
    "metric_rules",
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
    ``correction``. ``mde`` is the design's MDE on this metric's scale (primary metric only);
    ``required`` the sessions per variant a fixed-horizon test needs for it at the design's
    power (the planned horizon in fixed mode), never sized from the observed difference.
    """

    metric: str
    label: str
    kind: str
    role: str
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
    mde: float | None
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
    """The headline for one treatment: its primary metric's verdict, the guardrails' verdicts
    and the session-level posterior (P(beats control), expected loss)."""

    treatment: str
    metric: str
    decision: Decision
    difference: Estimate
    p_value: float
    sequential_p_value: float
    confidence_sequence: Estimate
    power: PowerStatus
    bayesian: BayesianResult | None
    guardrails: dict[str, Decision] = field(default_factory=dict)


@dataclass(frozen=True)
class ExperimentReport:
    experiment: str | None
    since: str | None
    design: ExperimentDesign
    correction: str
    control: str
    weights: dict[str, float] | None
    srm: SrmResult
    cross_variant_sessions: int
    variants: list[VariantRow]
    metrics: list[MetricSpec]
    comparisons: list[MetricComparison]
    decisions: list[TreatmentDecision]
    warnings: list[str] = field(default_factory=list)

    @property
    def alpha(self) -> float:
        return self.design.alpha

    @property
    def primary(self) -> str:
        return self.design.primary

    @property
    def trustworthy(self) -> bool:
        return not self.srm.mismatch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: enums as strings, ``nan`` as ``None``."""
        out = to_jsonable(self)
        assert isinstance(out, dict)
        out["trustworthy"] = self.trustworthy
        out["alpha"] = self.alpha
        out["primary"] = self.primary
        out["design_text"] = (
            self.design.summary() if self.design.registered else self.design.assumed()
        )
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


def _required(control: RatioStats, mde: float | None, alpha: float, power: float) -> SampleSize:
    """Sessions per variant for a fixed-horizon test to detect ``mde`` in a ratio metric.

    The per-session standard deviation of the linearised metric is ``sqrt(n Var(R))``
    (Deng et al. 2018), so the standardised effect is ``mde / sqrt(n Var(R_c))``.
    """
    if mde is None:
        return SampleSize.failed(
            math.nan, alpha, power, ErrorCode.UNDEFINED, "no MDE registered for this metric"
        )
    var = control.variance
    if not (math.isfinite(var) and var > 0):
        return SampleSize.failed(
            mde, alpha, power, ErrorCode.UNDEFINED, "no control variance to plan with"
        )
    return required_sample_size(mde / math.sqrt(var * control.n), alpha, power)


def _planned(n: int, alpha: float, power: float) -> SampleSize:
    return SampleSize(float(n), float(n), math.nan, alpha, power)


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


def _fmt(kind: str) -> Any:
    return lambda x: number(x, kind, signed=True)


def _role(spec: MetricSpec, design: ExperimentDesign) -> str:
    if spec.name == design.primary:
        return "primary"
    return "guardrail" if spec.name in design.guardrails else "secondary"


def _judge(
    comp: RatioComparison,
    seq: SequentialResult,
    fixed_p: float,
    seq_p: float,
    *,
    spec: MetricSpec,
    mde: float | None,
    design: ExperimentDesign,
    n_smallest: int,
    srm: SrmResult,
) -> Decision:
    """The verdict of one comparison through :func:`decide` (the one decision function)."""
    # The ratio test's message names the unit ("does not vary between sessions"); in
    # sequential mode the sequential test decides, so its failure alone is enough too.
    deciding = (comp.test, comp.difference) + ((seq,) if design.mode == "sequential" else ())
    error = next((r.message for r in deciding if not r.ok), None)
    cs = seq.confidence_sequence
    evidence = Evidence(
        estimate=comp.difference.value,
        sequential_p=seq_p,
        cs_lower=cs.lower if cs.ok else math.nan,
        cs_upper=cs.upper if cs.ok else math.nan,
        fixed_p=fixed_p,
        n_smallest=n_smallest,
        fixed_method=comp.test.method,
        srm_mismatch=srm.mismatch,
        srm_p=srm.p_value,
        error=error,
    )
    return decide(evidence, metric_rules(design, spec, mde))


def metric_rules(design: ExperimentDesign, spec: MetricSpec, mde: float | None) -> Rules:
    """The design's rules for one metric (``mde`` already on the metric's scale)."""
    return Rules(
        mode=design.mode,
        alpha=design.alpha,
        power=design.power,
        mde=mde,
        horizon=design.planned_sessions if design.mode == "fixed" else None,
        higher_is_better=spec.higher_is_better,
        fmt=_fmt(spec.kind),
    )


def build_report(
    data: ExperimentStats,
    *,
    design: ExperimentDesign | None = None,
    control: str | None = None,
    weights: Mapping[str, float] | None = None,
    correction: str = "bh",
    srm_threshold: float = DEFAULT_SRM_THRESHOLD,
    tau: float = DEFAULT_TAU,
) -> ExperimentReport:
    """Assemble the report from per-variant sufficient statistics, judged by ``design``.

    ``design`` defaults to an unregistered :class:`ExperimentDesign` (sequential analysis,
    alpha 0.05, primary satisfaction, no MDE), and the report says so. ``weights`` (else the
    design's) maps variant to its configured share (any scale); variants it names but with no
    data count as 0 sessions, variants it omits get weight 0 (traffic there is a certain
    mismatch). Without weights an equal split is assumed, and the report says so.
    In fixed mode ``data`` must hold the first ``planned_sessions`` sessions per variant in
    its metrics (``fetch_experiment(..., horizon=N)``), and all sessions in the counts.
    """
    design = design or ExperimentDesign()
    alpha, power = design.alpha, design.power
    if correction not in CORRECTIONS:
        raise ConfigError(f"correction must be one of {', '.join(CORRECTIONS)}")
    warnings: list[str] = []
    if not design.registered:
        warnings.append(design.assumed())
    horizon = design.planned_sessions if design.mode == "fixed" else None
    if horizon is not None and data.horizon != horizon:
        warnings.append(
            f"the statistics are not limited to the first {horizon:,} sessions per variant: "
            "the fixed-horizon test is valid only there"
        )
    weights = weights or design.weights or None
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
    # A variant configured in the weights that received no traffic still belongs in the SRM.
    variants = {
        n: data.variants.get(n) or VariantStats(n, 0, 0, BinaryStats(0, 0), {}) for n in names
    }

    # SRM: sessions are the unit of assignment.
    if weights:
        w = [float(weights.get(n, 0.0)) for n in names]
    else:
        w = [1.0] * len(names)
        warnings.append("no weights given: assuming an equal split for the sample-ratio check")
    srm = sample_ratio_mismatch([variants[n].sessions for n in names], w, srm_threshold)
    if data.cross_variant_sessions:
        warnings.append(
            f"{data.cross_variant_sessions:,} session(s) appear in more than one variant: "
            "assignment is not sticky per session"
        )
    known = {m.name for m in data.metrics}
    if design.primary not in known:
        if not design.registered:  # a typo on the command line
            raise ConfigError(
                f"primary metric {design.primary!r} is not in this report: "
                f"{', '.join(sorted(known))}"
            )
        # A registered primary metric (an outcome, say) may simply have no events yet.
        warnings.append(f"primary metric {design.primary!r} has no data yet: no verdict")
    missing = [g for g in design.guardrails if g not in known]
    if missing:
        warnings.append(f"guardrail metric(s) without data yet: {', '.join(missing)}")

    rows = [_variant_row(variants[n], data, alpha) for n in names]
    treatments = names[1:]
    c = variants[ctl]

    # Raw comparisons first; adjusted p-values need the whole family.
    raw: list[tuple[MetricSpec, str, RatioComparison, SequentialResult, float | None]] = []
    for t in treatments:
        vt = variants[t]
        for spec in data.metrics:
            rc, rt = c.metrics.get(spec.name), vt.metrics.get(spec.name)
            if rc is None or rt is None:
                continue
            comp = ratio_ztest(rc, rt, alpha)
            seq = sequential_test_ratios(rc, rt, alpha, tau)
            mde = design.absolute_mde(rc.ratio) if spec.name == design.primary else None
            raw.append((spec, t, comp, seq, mde))
    fixed_p = [r[2].test.p_value for r in raw]
    seq_p = [r[3].p_value for r in raw]
    adj = {
        "holm": (_adjust(fixed_p, "holm", alpha), _adjust(seq_p, "holm", alpha)),
        "bh": (_adjust(fixed_p, "bh", alpha), _adjust(seq_p, "bh", alpha)),
        "none": (fixed_p, seq_p),
    }
    comparisons: list[MetricComparison] = []
    for i, (spec, t, comp, seq, mde) in enumerate(raw):
        vt = variants[t]
        rc = c.metrics[spec.name]
        req = _planned(horizon, alpha, power) if horizon else _required(rc, mde, alpha, power)
        if not req.ok and mde is None and spec.name != design.primary:
            req = SampleSize.failed(
                math.nan, alpha, power, ErrorCode.UNDEFINED, "not planned (not the primary metric)"
            )
        status = power_status(req, c.sessions, vt.sessions)
        d = _judge(
            comp,
            seq,
            adj[correction][0][i],
            adj[correction][1][i],
            spec=spec,
            mde=mde,
            design=design,
            n_smallest=min(c.sessions, vt.sessions),
            srm=srm,
        )
        lift = comp.treatment_ratio / comp.control_ratio - 1.0 if comp.control_ratio else math.nan
        comparisons.append(
            MetricComparison(
                metric=spec.name,
                label=spec.label,
                kind=spec.kind,
                role=_role(spec, design),
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
                mde=mde,
                required=req,
                power=status,
                decision=d,
            )
        )

    decisions = _headline(comparisons, data, variants, ctl, design, srm)
    return ExperimentReport(
        experiment=data.scope.experiment,
        since=data.scope.since.isoformat() if data.scope.since else None,
        design=design,
        correction=correction,
        control=ctl,
        weights=dict(zip(names, w, strict=True)) if weights else None,
        srm=srm,
        cross_variant_sessions=data.cross_variant_sessions,
        variants=rows,
        metrics=list(data.metrics),
        comparisons=comparisons,
        decisions=decisions,
        warnings=warnings,
    )


def report_experiment(
    runner: Runner,
    scope: Scope,
    *,
    options: ExperimentDesign | None = None,
    control: str | None = None,
    weights: Mapping[str, float] | None = None,
    correction: str = "bh",
) -> ExperimentReport:
    """The report ``ab report``, the dashboard and the alerts show: the experiment's
    registered design (:func:`~feedbackloop.analysis.reads.designs.fetch_design`), the
    statistics it needs (capped at its horizon in fixed mode), :func:`build_report`.

    ``options`` is a design given on the command line; it is refused when the experiment
    has a registered one (a report must not judge by rules chosen after the data was seen).
    """
    registered = fetch_design(runner, scope.experiment) if scope.experiment else None
    if registered is not None and options is not None:
        raise ConfigError(
            f"experiment {scope.experiment!r} has a registered design ({registered.summary()}); "
            "it is judged by that design: drop --alpha / --power / --mde / --primary"
        )
    design = registered or options or ExperimentDesign(experiment=scope.experiment or "")
    horizon = design.planned_sessions if design.mode == "fixed" else None
    data = fetch_experiment(runner, scope, horizon)
    return build_report(
        data, design=design, control=control, weights=weights, correction=correction
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
    design: ExperimentDesign,
    srm: SrmResult,
) -> list[TreatmentDecision]:
    primary = design.primary
    prim = [c for c in comparisons if c.metric == primary]
    # Holm across treatments only: the ship decision's family is "which treatment beats
    # control on the metric we declared up front".
    fixed = _adjust([c.fixed.p_value for c in prim], "holm", design.alpha)
    seq = _adjust([c.sequential.p_value for c in prim], "holm", design.alpha)
    spec = next((m for m in data.metrics if m.name == primary), None)
    out: list[TreatmentDecision] = []
    if spec is None:
        return out
    for c, fp, sp in zip(prim, fixed, seq, strict=True):
        rc, rt = variants[ctl].metrics[primary], variants[c.treatment].metrics[primary]
        d = _judge(
            RatioComparison(c.control_value, c.treatment_value, c.fixed, c.difference),
            c.sequential,
            fp,
            sp,
            spec=spec,
            mde=c.mde,
            design=design,
            n_smallest=min(variants[ctl].sessions, variants[c.treatment].sessions),
            srm=srm,
        )
        guards = {
            g.metric: g.decision
            for g in comparisons
            if g.treatment == c.treatment and g.metric in design.guardrails
        }
        out.append(
            TreatmentDecision(
                treatment=c.treatment,
                metric=primary,
                decision=d,
                difference=c.difference,
                p_value=fp,
                sequential_p_value=sp,
                confidence_sequence=c.sequential.confidence_sequence,
                power=c.power,
                bayesian=normal_difference_posterior(rc, rt, spec.higher_is_better),
                guardrails=guards,
            )
        )
    return out


# --- text rendering ---------------------------------------------------------------------


def _p(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return "<0.0001" if x < 1e-4 else f"{x:.4f}"


def format_report(r: ExperimentReport) -> str:
    """Plain text: the SRM verdict first, then the design, variants, differences, verdicts."""
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
    if r.design.registered:
        when = f" (registered {r.design.created_at[:19]})" if r.design.created_at else ""
        out.append(f"Design{when}: {r.design.summary()}")
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
    decides = "sequential p" if r.design.mode == "sequential" else "p at the planned horizon"
    out.append(
        f"Differences vs {r.control} ({level} CI; p adjusted by {adj} across "
        f"{len(r.comparisons)} treatment x metric tests; the verdict reads the {decides})"
    )
    rows = []
    for c in r.comparisons:
        p_adj = {"bh": c.p_bh, "holm": c.p_holm, "none": c.fixed.p_value}[r.correction]
        sp_adj = {"bh": c.seq_p_bh, "holm": c.seq_p_holm, "none": c.sequential.p_value}[
            r.correction
        ]
        rows.append(
            [
                c.label + ("" if c.role == "secondary" else f" ({c.role})"),
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
        out.append(f"  {d.treatment}: {d.decision.text} ({d.decision.reason})")
        parts = [
            f"difference {estimate(d.difference, spec_kind, signed=True)}",
            f"confidence sequence {estimate(d.confidence_sequence, spec_kind, signed=True)}",
            f"p {_p(d.p_value)}, sequential p {_p(d.sequential_p_value)}",
        ]
        if d.power.required_per_variant is not None:
            what = "planned" if r.design.mode == "fixed" else "fixed-horizon size for the MDE"
            parts.append(f"sessions: {d.power.message} ({what})")
        out.append("    " + "; ".join(parts))
        if d.bayesian is not None and d.bayesian.ok:
            b = d.bayesian
            out.append(
                f"    P(beats {r.control}) {b.prob_treatment_beats_control:.1%}; expected loss "
                f"ship / keep {number(b.expected_loss_treatment, spec_kind)} / "
                f"{number(b.expected_loss_control, spec_kind)} (sessions as units)"
            )
        for g, gd in d.guardrails.items():
            out.append(f"    guardrail {g}: {gd.text}")
    return "\n".join(out)
