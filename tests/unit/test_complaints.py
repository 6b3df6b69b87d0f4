"""Which texts are a slice's complaints, and what the failures report carries: domain
decisions that used to sit in the commands."""

from __future__ import annotations

import dataclasses

from planted_failures import planted_judged

from feedbackloop.analysis.failures import (
    FeedbackText,
    JudgedInteraction,
    NegativeDefinition,
    failure_report,
    find_complaints,
    parse_slice,
)
from feedbackloop.analysis.failures.negative import InteractionSignals


def _with(
    ji: JudgedInteraction, signals: InteractionSignals, *texts: tuple[str, str]
) -> JudgedInteraction:
    return dataclasses.replace(
        ji, signals=signals, texts=tuple(FeedbackText(k, t, f"e-{k}-{t}") for k, t in texts)
    )


def test_complaints_are_the_comments_corrections_and_report_texts_of_negatives_in_the_slice() -> (
    None
):
    base = planted_judged(40, seed=1)
    bad, edited, good, other = base[0], base[1], base[2], base[3]
    bad = _with(
        dataclasses.replace(bad, prompt_version="v9"),
        InteractionSignals(thumbs_down=1, corrections=1, comments=1),
        ("comment", "wrong language again"),
        ("correction", "the answer is 42"),
        ("report", "offensive wording"),
        ("edit", "my edited response"),  # the better answer, not a complaint
    )
    edited = _with(
        dataclasses.replace(edited, prompt_version="v9"),
        InteractionSignals(edits=1),  # not negative: its texts stay out
        ("comment", "nice but long"),
    )
    good = _with(dataclasses.replace(good, prompt_version="v9"), InteractionSignals(thumbs_up=1))
    other = _with(  # negative, but outside the slice
        dataclasses.replace(other, prompt_version="v1"),
        InteractionSignals(thumbs_down=1, comments=1),
        ("comment", "other slice"),
    )
    report = find_complaints(
        [bad, edited, good, other],
        NegativeDefinition(),
        conditions=parse_slice("prompt_version=v9"),
    )
    assert (report.negatives, report.texts) == (1, 3)
    examples = {t for c in report.clusters for t in c.examples}
    assert examples == {"wrong language again", "the answer is 42", "offensive wording"}
    inputs = find_complaints([bad, other], conditions=(), source="inputs")
    assert (inputs.negatives, inputs.texts) == (2, 2)
    assert inputs.to_dict()["source"] == "inputs" and inputs.to_dict()["slice"] == {}
    assert "2 texts from 2 negative interactions in all interactions, since 7d:" in inputs.to_text(
        "since 7d"
    )


def test_failures_report_json_carries_window_definition_and_every_slice() -> None:
    judged = planted_judged(600, seed=2)
    definition = NegativeDefinition.build(weights=("abandon=1",))
    report = failure_report(judged, definition, since="30d", experiment=None, limit=600)
    out = report.to_dict()
    assert (out["since"], out["experiment"]) == ("30d", None)
    assert out["definition"] == definition.to_dict()
    assert out["total"] == 600 and "findings" in out
    # The read hit its limit: the text says so, and how to read more.
    assert "newest 600 only: raise --limit" in report.to_text()
    assert "raise --limit" not in failure_report(judged, since="all", limit=601).to_text()
