"""``feedbackloop regressions`` and ``export``: eval suites and training data made from real
failures and corrections (:mod:`feedbackloop.analysis.loop`)."""

from __future__ import annotations

from typing import Any

import click

from feedbackloop.cli.base import scope_of, settings_of
from feedbackloop.cli.options import (
    app_option,
    limit_option,
    min_support_option,
    negative_options,
    prompt_version_option,
    since_option,
    url_option,
)

__all__ = ["export", "regressions"]


@click.group()
def regressions() -> None:
    """Regression suites made from real failures, and a runner for candidate fixes."""


@regressions.command("export")
@prompt_version_option(required=True)
@click.option(
    "--top", type=click.IntRange(min=1), default=20, show_default=True, help="Number of cases."
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Suite file (JSONL). Default: regressions-<version>.jsonl.",
)
@since_option
@app_option
@min_support_option
@negative_options
@limit_option
@url_option
@click.pass_context
def regressions_export(
    ctx: click.Context,
    prompt_version: str,
    top: int,
    out: str | None,
    since: str,
    app: str | None,
    min_support: int,
    definition: Any,
    limit: int | None,
    url: str | None,
) -> None:
    """Write the most common failure cases of a prompt version as a JSONL eval set."""
    from feedbackloop.analysis.failures.records import load_judged_interactions
    from feedbackloop.analysis.loop.regressions import select_regression_cases, write_suite

    scope = scope_of(since, app=app, prompt_version=prompt_version, limit=limit)
    judged = load_judged_interactions(settings_of(ctx), scope, full_text=True, url=url)
    cases, _ = select_regression_cases(judged, definition, top=top, min_support=min_support)
    path = write_suite(cases, out or f"regressions-{prompt_version}.jsonl")
    slices = sorted({c.slice for c in cases if c.slice})
    click.echo(
        f"{len(cases)} cases from {len(judged)} interactions of {prompt_version} "
        f"-> {path}" + (f"; slices: {'; '.join(slices)}" if slices else "")
    )


@regressions.command("run")
@click.option(
    "--suite",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="Suite file from `regressions export` (JSONL).",
)
@click.option(
    "--candidate",
    required=True,
    envvar="FEEDBACKLOOP_CANDIDATE",
    help="A command (case JSON on stdin, response on stdout) or a Python callable module:function.",
)
@click.option(
    "--kind",
    type=click.Choice(["auto", "command", "callable"]),
    default="auto",
    show_default=True,
    help="How to read --candidate.",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Report base name: writes OUT.md and OUT.jsonl. Default: <suite>-report.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds per case for a command.",
)
@click.option(
    "--jobs", type=click.IntRange(min=1), default=2, show_default=True, help="Cases run at once."
)
def regressions_run(
    suite: str, candidate: str, kind: str, out: str | None, timeout: float, jobs: int
) -> None:
    """Run a candidate on every case and write a side-by-side report for review.

    \b
    Example:
      feedbackloop regressions run --suite regressions-v1.2.jsonl \\
          --candidate 'python my_app/answer.py --prompt prompts/v1.3.txt'
    """
    from pathlib import Path

    from feedbackloop.analysis.loop.regressions import (
        load_suite,
        resolve_candidate,
        run_suite,
        summarize,
        write_run_report,
    )

    cases = load_suite(suite)
    results = run_suite(cases, resolve_candidate(candidate, timeout=timeout, kind=kind), jobs=jobs)
    base = out or str(Path(suite).with_suffix("")) + "-report"
    md, jl = write_run_report(results, base, suite=suite, candidate=candidate)
    s = summarize(results)
    click.echo(
        f"{s.cases} cases, {s.errors} errors, {s.unchanged} unchanged, "
        f"{s.closer}/{s.with_correction} closer to the correction -> {md}, {jl}"
    )


@click.group("export")
def export() -> None:
    """Training data made from feedback."""


@export.command("finetune")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="finetune",
    show_default=True,
    help="Directory for the JSONL files, provenance and manifest.",
)
@since_option
@prompt_version_option()
@click.option("--model", default=None, help="Only corrections of this model.")
@app_option
@click.option(
    "--min-chars",
    type=click.IntRange(min=0),
    default=20,
    show_default=True,
    help="Shortest correction kept.",
)
@click.option(
    "--max-chars",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Longest correction kept.",
)
@click.option(
    "--validation",
    "validation_fraction",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Share for validation.",
)
@click.option(
    "--seed", default="feedbackloop", show_default=True, help="Seed of the deterministic split."
)
@click.option(
    "--system-prompt-file",
    type=click.File("r", encoding="utf-8"),
    default=None,
    help="Use this system prompt in every example (e.g. the new version's text).",
)
@click.option("--no-scrub", is_flag=True, help="Keep e-mails, phone numbers and API keys.")
@click.option("--no-preference", is_flag=True, help="Skip the preference (DPO) pairs.")
@click.option("--include-edits", is_flag=True, help="Also use users' edits of a response.")
@limit_option
@url_option
@click.pass_context
def finetune(
    ctx: click.Context,
    out_dir: str,
    since: str,
    prompt_version: str | None,
    model: str | None,
    app: str | None,
    min_chars: int,
    max_chars: int,
    validation_fraction: float,
    seed: str,
    system_prompt_file: Any,
    no_scrub: bool,
    no_preference: bool,
    include_edits: bool,
    limit: int | None,
    url: str | None,
) -> None:
    """Corrections as OpenAI chat JSONL and preference pairs, with provenance beside them."""
    from feedbackloop.analysis.failures.records import load_judged_interactions
    from feedbackloop.analysis.loop.finetune import (
        FinetuneOptions,
        build_finetune_export,
        corrections_of,
        write_finetune_export,
    )

    opts = FinetuneOptions(
        min_chars=min_chars,
        max_chars=max_chars,
        validation_fraction=validation_fraction,
        seed=seed,
        scrub=not no_scrub,
        preference=not no_preference,
        system_prompt=system_prompt_file.read() if system_prompt_file else None,
        include_edits=include_edits,
    )
    scope = scope_of(
        since, app=app, prompt_version=prompt_version, model=model, limit=limit, with_text=True
    )
    judged = load_judged_interactions(settings_of(ctx), scope, full_text=True, url=url)
    export = build_finetune_export(corrections_of(judged, include_edits=include_edits), opts)
    paths = write_finetune_export(export, out_dir, opts)
    m = export.manifest(opts)
    dropped = ", ".join(f"{k} {v}" for k, v in m["dropped"].items()) or "none"
    click.echo(
        f"{m['candidates']} corrections; dropped: {dropped}; "
        f"train {m['counts']['train']}, validation {m['counts']['validation']}, "
        f"preference {m['counts']['preference_train']}+"
        f"{m['counts']['preference_validation']}; scrubbed {m['scrubbed']} -> "
        f"{paths['manifest'].parent}"
    )
