"""Regression suites from real failures, and a runner for a candidate fix.

**Export** (``feedbackloop regressions export``): the negative interactions of a prompt version
become eval cases, one JSON object per line::

    {"id", "input", "system_prompt", "bad_response", "correction" (or null), "slice",
     "prompt_version", "model", "signals", "occurrences", "interaction_ids"}

Cases are grouped by input (whitespace and case aside): an input that failed five times is
one case with ``occurrences`` 5. Each case is labelled with the highest-ranked *significant*
failure slice it belongs to (:mod:`.slices`, computed on that prompt version's traffic), and
the suite takes cases round-robin over those slices, most excess failures first and within a
slice the most frequent inputs first, so twenty cases cover the patterns rather than twenty
variants of the first one. Cases outside every significant slice come last.

**Run** (``feedbackloop regressions run``): for each case a user-supplied candidate produces
a new response, and a side-by-side report (old response, correction, new response) is
written for review. A candidate is either

* a command: it gets the case as JSON on stdin and prints the response on stdout (exit code
  0; anything else is recorded as an error for that case), or
* a Python callable ``module:function`` taking the case dict and returning a string.

feedbackloop calls no model provider itself. The report's "closer to the correction" column
is a character-similarity hint (difflib ratio) for ordering the review, not a verdict.
"""

from __future__ import annotations

import difflib
import importlib
import json
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedbackloop.analysis.failures.analyze import Labeled, label_interactions, matches
from feedbackloop.analysis.failures.negative import NegativeDefinition
from feedbackloop.analysis.failures.records import JudgedInteraction, new_case_id, normalized
from feedbackloop.analysis.failures.slices import SliceReport, find_failure_slices
from feedbackloop.errors import ConfigError, FeedbackLoopError

__all__ = [
    "CandidateError",
    "RegressionCase",
    "RegressionResult",
    "format_run_report",
    "load_suite",
    "resolve_candidate",
    "run_suite",
    "select_regression_cases",
    "write_run_report",
    "write_suite",
]

Candidate = Callable[[dict[str, Any]], str]


class CandidateError(FeedbackLoopError):
    """The candidate failed on one case (non-zero exit, timeout, exception)."""


@dataclass(frozen=True)
class RegressionCase:
    """One eval case made from real failures."""

    id: str
    input: str
    system_prompt: str
    bad_response: str
    correction: str | None
    slice: str
    prompt_version: str
    model: str
    signals: tuple[str, ...]
    occurrences: int
    interaction_ids: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "input": self.input,
            "system_prompt": self.system_prompt,
            "bad_response": self.bad_response,
            "correction": self.correction,
            "slice": self.slice,
            "prompt_version": self.prompt_version,
            "model": self.model,
            "signals": list(self.signals),
            "occurrences": self.occurrences,
            "interaction_ids": list(self.interaction_ids),
        }


def select_regression_cases(
    interactions: Iterable[JudgedInteraction],
    definition: NegativeDefinition | None = None,
    *,
    top: int = 20,
    min_support: int = 30,
    alpha: float = 0.05,
) -> tuple[list[RegressionCase], SliceReport]:
    """The ``top`` cases of the module docstring, and the slice report they were ranked by."""
    labeled = label_interactions(interactions, definition)
    report = find_failure_slices(
        [
            ({d: v for d, v in lab.attributes.items() if d != "prompt_version"}, lab.negative)
            for lab in labeled
        ],
        min_support=min_support,
        alpha=alpha,
    )
    sig = report.significant
    groups: dict[str, list[Labeled]] = {}
    for lab in labeled:
        if lab.negative and lab.interaction.user_input.strip():
            groups.setdefault(normalized(lab.interaction.user_input), []).append(lab)
    by_slice: dict[int, list[RegressionCase]] = {}
    for members in groups.values():
        # Newest first; a member with a correction is the better representative.
        members.sort(key=lambda m: m.interaction.occurred_at, reverse=True)
        rep = next((m for m in members if m.interaction.corrections), members[0])
        rank = next(
            (i for i, f in enumerate(sig) if matches(rep.attributes, f.conditions)), len(sig)
        )
        ji = rep.interaction
        corr = ji.corrections[-1].text if ji.corrections else None
        case = RegressionCase(
            id=new_case_id(ji.prompt_version, normalized(ji.user_input)),
            input=ji.user_input,
            system_prompt=ji.system_prompt,
            bad_response=ji.response,
            correction=corr,
            slice=sig[rank].label if rank < len(sig) else "",
            prompt_version=ji.prompt_version,
            model=ji.model,
            signals=tuple(sorted({s for m in members for s in m.signals})),
            occurrences=len(members),
            interaction_ids=tuple(m.interaction.interaction_id for m in members),
        )
        by_slice.setdefault(rank, []).append(case)
    for cases in by_slice.values():
        cases.sort(key=lambda c: (-c.occurrences, c.correction is None, c.id))
    out: list[RegressionCase] = []
    ranked = [by_slice[r] for r in sorted(by_slice) if r < len(sig)]
    while len(out) < top and any(ranked):
        for cases in ranked:
            if cases and len(out) < top:
                out.append(cases.pop(0))
    out += by_slice.get(len(sig), [])[: top - len(out)]
    return out, report


def write_suite(cases: Sequence[RegressionCase], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for c in cases:
            f.write(json.dumps(c.to_dict(), ensure_ascii=False) + "\n")
    return p


def load_suite(path: str | Path) -> list[dict[str, Any]]:
    """The cases of a suite file; each needs at least ``id`` and ``input``."""
    cases = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read suite {path}: {e}") from e
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{path}:{n}: not JSON ({e})") from e
        if not isinstance(obj, dict) or "input" not in obj:
            raise ConfigError(f"{path}:{n}: a case is an object with at least 'input'")
        obj.setdefault("id", f"case-{n}")
        cases.append(obj)
    return cases


_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def _command(cmd: str, timeout: float) -> Candidate:
    argv = shlex.split(cmd)
    if not argv:
        raise ConfigError("empty --candidate command")

    def run(case: dict[str, Any]) -> str:
        try:
            proc = subprocess.run(
                argv,
                input=json.dumps(case, ensure_ascii=False),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise CandidateError(f"timed out after {timeout:g} s") from e
        except OSError as e:
            raise CandidateError(f"cannot run {argv[0]}: {e}") from e
        if proc.returncode != 0:
            tail = proc.stderr.strip().splitlines()[-3:]
            raise CandidateError(f"exit code {proc.returncode}: {' | '.join(tail)}")
        return proc.stdout.rstrip("\n")

    return run


def _callable(spec: str) -> Candidate:
    mod, _, fn = spec.partition(":")
    try:
        f = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load candidate {spec}: {e}") from e

    def run(case: dict[str, Any]) -> str:
        try:
            out = f(case)
        except Exception as e:  # the user's code: any failure is that case's error
            raise CandidateError(f"{type(e).__name__}: {e}") from e
        if isinstance(out, dict):
            out = out.get("response", "")
        return str(out)

    return run


def resolve_candidate(spec: str, *, timeout: float = 60.0, kind: str = "auto") -> Candidate:
    """A command line, or ``module:function``; ``kind`` forces one (auto|command|callable)."""
    if kind == "callable" or (kind == "auto" and _CALLABLE.match(spec.strip())):
        return _callable(spec.strip())
    return _command(spec, timeout)


@dataclass(frozen=True)
class RegressionResult:
    """A case with the candidate's new response (or error) next to the old one."""

    case: dict[str, Any]
    new_response: str | None
    error: str | None
    seconds: float
    old_similarity: float | None = None
    new_similarity: float | None = None

    @property
    def closer_to_correction(self) -> bool | None:
        if self.old_similarity is None or self.new_similarity is None:
            return None
        return self.new_similarity > self.old_similarity

    @property
    def unchanged(self) -> bool:
        return self.new_response is not None and normalized(self.new_response) == normalized(
            str(self.case.get("bad_response") or "")
        )

    def to_dict(self) -> dict[str, Any]:
        c = self.case
        return {
            "id": c.get("id"),
            "slice": c.get("slice", ""),
            "input": c.get("input"),
            "old_response": c.get("bad_response"),
            "correction": c.get("correction"),
            "new_response": self.new_response,
            "error": self.error,
            "seconds": round(self.seconds, 3),
            "unchanged": self.unchanged,
            "old_similarity_to_correction": self.old_similarity,
            "new_similarity_to_correction": self.new_similarity,
            "closer_to_correction": self.closer_to_correction,
        }


def _ratio(a: str, b: str) -> float:
    return round(difflib.SequenceMatcher(None, a, b, autojunk=False).ratio(), 4)


def run_suite(
    cases: Sequence[dict[str, Any]], candidate: Candidate, *, jobs: int = 2
) -> list[RegressionResult]:
    """Run ``candidate`` on every case (``jobs`` at a time); results in suite order."""

    def one(case: dict[str, Any]) -> RegressionResult:
        t0 = time.monotonic()
        try:
            new, err = candidate(case), None
        except CandidateError as e:
            new, err = None, str(e)
        dt = time.monotonic() - t0
        corr = case.get("correction")
        if corr and new is not None:
            return RegressionResult(
                case,
                new,
                err,
                dt,
                _ratio(str(case.get("bad_response") or ""), corr),
                _ratio(new, corr),
            )
        return RegressionResult(case, new, err, dt)

    if jobs <= 1:
        return [one(c) for c in cases]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(one, cases))


@dataclass(frozen=True)
class RunSummary:
    cases: int
    errors: int
    unchanged: int
    with_correction: int
    closer: int
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(results: Sequence[RegressionResult]) -> RunSummary:
    return RunSummary(
        cases=len(results),
        errors=sum(r.error is not None for r in results),
        unchanged=sum(r.unchanged for r in results),
        with_correction=sum(r.closer_to_correction is not None for r in results),
        closer=sum(bool(r.closer_to_correction) for r in results),
    )


def _cell(text: Any) -> str:
    if text is None:
        return "—"
    return str(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or "—"


def format_run_report(
    results: Sequence[RegressionResult], *, suite: str = "", candidate: str = ""
) -> str:
    """The side-by-side report in Markdown: a summary, then one table per case."""
    s = summarize(results)
    out = [
        f"# Regression run: {suite}",
        "",
        f"Candidate: `{candidate}`",
        "",
        f"{s.cases} cases, {s.errors} errors, {s.unchanged} responses unchanged; "
        f"{s.closer} of the {s.with_correction} cases with a correction are now closer to it "
        "(character similarity: a hint for ordering the review, not a verdict).",
    ]
    for i, r in enumerate(results, 1):
        c = r.case
        out += [
            "",
            f"## {i}. {c.get('id')}" + (f" — {c['slice']}" if c.get("slice") else ""),
            "",
            "**Input:** " + _cell(c.get("input")),
            "",
            "| old response | correction | new response |",
            "| --- | --- | --- |",
            f"| {_cell(c.get('bad_response'))} | {_cell(c.get('correction'))} | "
            f"{_cell(r.new_response) if r.error is None else '**error:** ' + _cell(r.error)} |",
        ]
        if r.closer_to_correction is not None:
            out.append(
                f"\nsimilarity to correction: old {r.old_similarity:.2f} → new "
                f"{r.new_similarity:.2f}"
            )
    return "\n".join(out) + "\n"


def write_run_report(
    results: Sequence[RegressionResult],
    out: str | Path,
    *,
    suite: str = "",
    candidate: str = "",
) -> tuple[Path, Path]:
    """``out``.md (side by side, for people) and ``out``.jsonl (one result per line)."""
    base = Path(out)
    if base.suffix in (".md", ".jsonl"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    md, jl = base.with_suffix(".md"), base.with_suffix(".jsonl")
    md.write_text(format_run_report(results, suite=suite, candidate=candidate), encoding="utf-8")
    with jl.open("w", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return md, jl
