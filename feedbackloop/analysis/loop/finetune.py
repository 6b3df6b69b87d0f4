"""Fine-tuning data from user corrections (``feedbackloop export finetune``).

Every correction a user wrote becomes a supervised example in OpenAI's chat format:
``system`` = the interaction's system prompt, ``user`` = its input, ``assistant`` = the
correction. When the model's response is known it also becomes a preference pair in
OpenAI's preference (DPO) format: preferred = the correction, non-preferred = the response.

Steps, each counted in ``manifest.json``:

1. **filters**: correction shorter than ``min_chars`` (default 20; "no", "wrong" teach
   nothing) or longer than ``max_chars``; empty input; correction equal to the response
   (whitespace and case aside); optional prompt version / model / time window;
2. **de-duplication** on (system, input, correction) after whitespace/case normalisation of
   the texts as stored (before scrubbing); the oldest correction is kept and the others are
   listed in its provenance;
3. **scrubbing** of e-mail addresses, phone numbers and API keys in every message
   (:mod:`.scrub`), on by default; a record left with an empty message is dropped;
4. **split**: deterministic on a hash of (seed, normalised input), so the same input always
   lands on the same side (no leak of a prompt from train into validation) and re-running
   on more data moves no existing example across the split.

Files: ``train.jsonl``, ``validation.jsonl``, ``preference_train.jsonl``,
``preference_validation.jsonl``, and ``provenance.jsonl``, one line per training line
(``file``, ``line``, feedback and interaction event ids) kept *beside* the training data,
never inside it: providers reject unknown keys, and ids are not for the model to learn.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feedbackloop.analysis.failures.records import JudgedInteraction, normalized
from feedbackloop.analysis.loop.formats import validate_chat_example, validate_preference_example
from feedbackloop.analysis.loop.scrub import ScrubStats, scrub
from feedbackloop.errors import ConfigError

__all__ = [
    "CorrectionExample",
    "FinetuneExport",
    "FinetuneOptions",
    "build_finetune_export",
    "corrections_of",
    "write_finetune_export",
]

FILES = {
    "train": "train.jsonl",
    "validation": "validation.jsonl",
    "preference_train": "preference_train.jsonl",
    "preference_validation": "preference_validation.jsonl",
    "provenance": "provenance.jsonl",
    "manifest": "manifest.json",
}


@dataclass(frozen=True)
class FinetuneOptions:
    """Filters and output choices; defaults as documented in the module docstring."""

    min_chars: int = 20
    max_chars: int = 20_000
    validation_fraction: float = 0.1
    seed: str = "feedbackloop"
    scrub: bool = True
    preference: bool = True
    #: Replace every system prompt (e.g. with the new prompt version's text); None keeps each.
    system_prompt: str | None = None
    #: Also use the implicit ``edit`` signal's edited text as a correction.
    include_edits: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise ConfigError("validation fraction must be in [0, 1)")
        if self.min_chars < 0 or self.max_chars < self.min_chars:
            raise ConfigError("need 0 <= min_chars <= max_chars")


@dataclass(frozen=True)
class CorrectionExample:
    """One correction with the interaction it corrects."""

    system: str
    user: str
    response: str
    correction: str
    feedback_event_id: str
    interaction_id: str
    interaction_event_id: str
    prompt_version: str
    model: str
    occurred_at: str
    kind: str = "correction"


def corrections_of(
    interactions: Iterable[JudgedInteraction], *, include_edits: bool = False
) -> list[CorrectionExample]:
    """Every correction (and, optionally, edit) text of ``interactions``."""
    kinds = {"correction", "edit"} if include_edits else {"correction"}
    out = []
    for ji in interactions:
        for t in ji.texts:
            if t.kind in kinds:
                out.append(
                    CorrectionExample(
                        system=ji.system_prompt,
                        user=ji.user_input,
                        response=ji.response,
                        correction=t.text,
                        feedback_event_id=t.event_id,
                        interaction_id=ji.interaction_id,
                        interaction_event_id=ji.event_id,
                        prompt_version=ji.prompt_version,
                        model=ji.model,
                        occurred_at=t.occurred_at or ji.occurred_at,
                        kind=t.kind,
                    )
                )
    return out


def _validation_side(user: str, seed: str, fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}\x1f{normalized(user)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


@dataclass
class FinetuneExport:
    """The records of every file, their provenance, and the counts of each step."""

    train: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)
    preference_train: list[dict[str, Any]] = field(default_factory=list)
    preference_validation: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    scrubbed: ScrubStats = field(default_factory=ScrubStats)
    candidates: int = 0

    def manifest(self, options: FinetuneOptions) -> dict[str, Any]:
        return {
            "format": {
                "train": "openai-chat-jsonl",
                "preference": "openai-preference-dpo-jsonl",
            },
            "candidates": self.candidates,
            "dropped": dict(sorted(self.dropped.items())),
            "scrubbed": self.scrubbed.to_dict(),
            "counts": {
                k: len(getattr(self, k))
                for k in ("train", "validation", "preference_train", "preference_validation")
            },
            "options": {
                "min_chars": options.min_chars,
                "max_chars": options.max_chars,
                "validation_fraction": options.validation_fraction,
                "seed": options.seed,
                "scrub": options.scrub,
                "preference": options.preference,
                "system_prompt_override": options.system_prompt is not None,
                "include_edits": options.include_edits,
            },
        }


def build_finetune_export(
    examples: Iterable[CorrectionExample], options: FinetuneOptions | None = None
) -> FinetuneExport:
    """Filter, scrub, de-duplicate and split ``examples`` into the export's records."""
    opt = options or FinetuneOptions()
    out = FinetuneExport()
    ordered = sorted(examples, key=lambda e: (e.occurred_at, e.feedback_event_id))
    out.candidates = len(ordered)
    kept: dict[tuple[str, str, str], tuple[CorrectionExample, list[str]]] = {}
    for ex in ordered:
        corr = ex.correction.strip()
        if not ex.user.strip():
            out.dropped["empty_input"] += 1
            continue
        if len(corr) < opt.min_chars:
            out.dropped["correction_too_short"] += 1
            continue
        if len(corr) > opt.max_chars:
            out.dropped["correction_too_long"] += 1
            continue
        if normalized(corr) == normalized(ex.response):
            out.dropped["same_as_response"] += 1
            continue
        system = ex.system if opt.system_prompt is None else opt.system_prompt
        key = (normalized(system), normalized(ex.user), normalized(corr))
        if key in kept:
            out.dropped["duplicate"] += 1
            kept[key][1].append(ex.feedback_event_id)
            continue
        kept[key] = (ex, [])
    clean = (lambda s: scrub(s, out.scrubbed)) if opt.scrub else (lambda s: s)
    for ex, dups in kept.values():
        system = (ex.system if opt.system_prompt is None else opt.system_prompt).strip()
        prompt: list[dict[str, str]] = []
        if system:
            prompt.append({"role": "system", "content": clean(system)})
        prompt.append({"role": "user", "content": clean(ex.user.strip())})
        correction = clean(ex.correction.strip())
        val = _validation_side(ex.user, opt.seed, opt.validation_fraction)
        chat = {"messages": [*prompt, {"role": "assistant", "content": correction}]}
        problems = validate_chat_example(chat)
        if problems:  # e.g. scrubbing left an empty message: never write an invalid line
            out.dropped["invalid_after_scrub"] += 1
            continue
        target = out.validation if val else out.train
        target.append(chat)
        base = {
            "feedback_event_id": ex.feedback_event_id,
            "interaction_id": ex.interaction_id,
            "interaction_event_id": ex.interaction_event_id,
            "duplicate_feedback_event_ids": dups,
            "prompt_version": ex.prompt_version,
            "model": ex.model,
            "kind": ex.kind,
        }
        out.provenance.append(
            {
                "file": FILES["validation" if val else "train"],
                "line": len(target),
                **base,
            }
        )
        if opt.preference and ex.response.strip():
            pair = {
                "input": {"messages": prompt},
                "preferred_output": [{"role": "assistant", "content": correction}],
                "non_preferred_output": [
                    {"role": "assistant", "content": clean(ex.response.strip())}
                ],
            }
            if validate_preference_example(pair):
                out.dropped["invalid_preference_pair"] += 1
                continue
            ptarget = out.preference_validation if val else out.preference_train
            ptarget.append(pair)
            out.provenance.append(
                {
                    "file": FILES["preference_validation" if val else "preference_train"],
                    "line": len(ptarget),
                    **base,
                }
            )
    return out


def write_finetune_export(
    export: FinetuneExport, out_dir: str | Path, options: FinetuneOptions | None = None
) -> dict[str, Path]:
    """Write every file of ``export`` into ``out_dir`` (created); returns their paths."""
    opt = options or FinetuneOptions()
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for key in ("train", "validation", "preference_train", "preference_validation", "provenance"):
        if key.startswith("preference") and not opt.preference:
            continue
        p = d / FILES[key]
        with p.open("w", encoding="utf-8") as f:
            for rec in getattr(export, key):
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
        paths[key] = p
    m = d / FILES["manifest"]
    m.write_text(json.dumps(export.manifest(opt), indent=2) + "\n", encoding="utf-8")
    paths["manifest"] = m
    return paths
