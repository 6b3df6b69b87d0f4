"""Negative-signal definition, input language, and failure slices on planted data."""

from __future__ import annotations

import random

import pytest
from planted_failures import planted_judged

from feedbackloop.analysis.failures.analyze import analyze_failures, label_interactions, parse_slice
from feedbackloop.analysis.failures.language import detect_input_language, strip_code
from feedbackloop.analysis.failures.negative import InteractionSignals, NegativeDefinition
from feedbackloop.analysis.failures.slices import (
    _one_sided_p,
    find_failure_slices,
    format_slice_report,
)
from feedbackloop.errors import ConfigError


@pytest.fixture(scope="module")
def planted() -> list:
    return planted_judged(6000, seed=3)


# --- negative definition ------------------------------------------------------------------


def test_default_definition() -> None:
    d = NegativeDefinition()
    assert d.is_negative(InteractionSignals(thumbs_down=1))
    assert d.is_negative(InteractionSignals(ratings=(2,)))
    assert not d.is_negative(InteractionSignals(ratings=(3,)))
    assert d.is_negative(InteractionSignals(corrections=1))
    assert d.is_negative(InteractionSignals(report_categories=("harmful",)))
    assert d.is_negative(InteractionSignals(regenerates=3))
    # An abandon alone is not a failure; positive signals never cancel a negative one.
    assert not d.is_negative(InteractionSignals(abandons=1))
    assert d.is_negative(InteractionSignals(thumbs_up=1, copies=1, thumbs_down=1))
    assert not d.is_negative(InteractionSignals(comments=1, edits=1))
    assert "thumbs_down×1" in d.describe() and "abandon×0.5" in d.describe()


def test_definition_knobs() -> None:
    d = NegativeDefinition.build(weights=["abandon=1", "edit=0.5"])
    assert d.is_negative(InteractionSignals(abandons=1))
    assert not d.is_negative(InteractionSignals(edits=1))
    only = NegativeDefinition.build(signals=["thumbs_down", "edit"])
    assert not only.is_negative(InteractionSignals(corrections=1, regenerates=1))
    assert only.is_negative(InteractionSignals(edits=1))  # listed means counted
    strict = NegativeDefinition.build(threshold=2.0)
    assert not strict.is_negative(InteractionSignals(thumbs_down=1))
    assert strict.is_negative(InteractionSignals(thumbs_down=1, corrections=1))
    cats = NegativeDefinition.build(report_categories=["harmful"])
    assert not cats.is_negative(InteractionSignals(report_categories=("spam",)))
    low3 = NegativeDefinition.build(low_rating_max=3)
    assert low3.is_negative(InteractionSignals(ratings=(3,)))
    with pytest.raises(ConfigError, match="unknown negative signal"):
        NegativeDefinition.build(weights=["thumbsdown=1"])
    with pytest.raises(ConfigError, match="SIGNAL=WEIGHT"):
        NegativeDefinition.build(weights=["abandon"])
    with pytest.raises(ConfigError):
        NegativeDefinition.build(signals=["nope"])


# --- language --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("How can I export the table and send it to my team every Monday?", "en"),
        ("Wie kann ich die Tabelle exportieren und an mein Team schicken?", "de"),
        ("¿Cómo puedo exportar la tabla y enviarla a mi equipo?", "es"),
        ("Comment puis-je exporter le tableau et l'envoyer à mon équipe ?", "fr"),
        ("Как экспортировать таблицу и отправить её команде?", "ru"),
        ("テーブルをエクスポートしてチームに送るにはどうすればいいですか", "ja"),
        ("ok thanks", "und"),
    ],
)
def test_language(text: str, lang: str) -> None:
    assert detect_input_language(text) == lang


def test_code_does_not_make_an_input_english() -> None:
    text = (
        "Warum funktioniert meine Funktion nicht, wenn ich die Datei lese?\n"
        "```python\ndef load(path):\n    return open(path).read()\n```"
    )
    assert "def load" not in strip_code(text)
    assert detect_input_language(text) == "de"
    assert detect_input_language("```\nSELECT * FROM t;\n```") == "und"


# --- slices ----------------------------------------------------------------------------------


def test_one_sided_p_matches_statsmodels_and_scipy() -> None:
    from scipy.stats import fisher_exact
    from statsmodels.stats.proportion import proportions_ztest

    p, test = _one_sided_p(120, 600, 300, 2400)
    _, ref = proportions_ztest([120, 300], [600, 2400], alternative="larger")
    assert test == "z" and p == pytest.approx(ref, rel=1e-9)
    p, test = _one_sided_p(4, 10, 20, 400)
    _, ref = fisher_exact([[4, 6], [20, 380]], alternative="greater")
    assert test == "fisher" and p == pytest.approx(ref, rel=1e-12)


def test_planted_slices_come_out_on_top(planted: list) -> None:
    report = analyze_failures(planted)
    sig = report.significant
    labels = [f.label for f in sig]
    assert "language_group=not-en & prompt_version=v1.2" in labels[:5]
    assert "has_code=yes & prompt_version=v1.2" in labels[:5]
    assert labels[0] in ("prompt_version=v1.2", "language_group=not-en & prompt_version=v1.2")
    pair = next(f for f in sig if f.label == "language_group=not-en & prompt_version=v1.2")
    assert 1.3 < pair.lift < 2.0  # planted 2x against the rest, diluted by the other planted
    assert pair.share_of_failures == pytest.approx(pair.negatives / report.negatives)
    assert pair.rate_lower < pair.negative_rate < pair.rate_upper
    # Null dimensions are never findings, alone or paired with the planted ones.
    for f in sig:
        assert not set(f.dimensions) & {"meta.plan", "model", "variant"}, f.label
    assert any("meta.request" in n for n in report.notes)


def test_every_slice_counts_what_a_row_by_row_count_finds(planted: list) -> None:
    # The slices are counted per set of equal attributes; an independent count over the rows
    # (every finding, and every pair the report tested) must agree, in any row order.
    units = [(lab.attributes, lab.negative) for lab in label_interactions(planted)]
    units += [({**a, "meta.user": f"u{i}"}, neg) for i, (a, neg) in enumerate(units[:500])]
    random.Random(2).shuffle(units)
    report = find_failure_slices(units, min_support=10)
    assert len(report.findings) > 50
    assert any("meta.user" in n for n in report.notes)  # left out, yet in the group keys
    for f in report.findings:
        rows = [neg for a, neg in units if all(a.get(d) == v for d, v in f.conditions)]
        assert (f.support, f.negatives) == (len(rows), sum(rows)), f.label
    assert report.total == len(units) and report.negatives == sum(neg for _, neg in units)
    again = find_failure_slices(list(reversed(units)), min_support=10)
    assert {f.conditions: (f.support, f.negatives) for f in again.findings} == {
        f.conditions: (f.support, f.negatives) for f in report.findings
    }


def test_same_rows_under_two_names_are_tested_once(planted: list) -> None:
    labels = [f.label for f in analyze_failures(planted).findings]
    assert "language=en" in labels and "language_group=en" not in labels


def test_small_noisy_slice_does_not_top_the_list() -> None:
    rng = random.Random(5)
    units = []
    for i in range(4000):
        tiny = i < 40
        neg = rng.random() < (0.25 if tiny else 0.1)
        attrs = {"segment": "tiny" if tiny else "bulk", "region": rng.choice("abcd")}
        units.append((attrs, neg))
    units += [({"segment": "micro", "region": "a"}, True)] * 6  # 6/6 negative, below support
    report = find_failure_slices(units, min_support=30)
    assert not any(f.label == "segment=micro" for f in report.findings)
    assert report.untested >= 1
    assert not any(f.significant for f in report.findings if "region" in f.label)
    if report.significant:
        assert report.significant[0].label != "segment=micro"


def test_null_data_has_no_findings() -> None:
    rng = random.Random(11)
    units = [
        (
            {"a": rng.choice("xyz"), "b": rng.choice("pq"), "c": rng.choice("mnop")},
            rng.random() < 0.12,
        )
        for _ in range(5000)
    ]
    report = find_failure_slices(units)
    assert report.significant == ()
    assert "No slice fails significantly" in format_slice_report(report)


def test_report_reads_like_a_finding(planted: list) -> None:
    text = format_slice_report(analyze_failures(planted), heading="Failure slices")
    assert text.startswith("Failure slices")
    assert "Findings:" in text and "negative vs" in text and "of all failures" in text
    assert "Benjamini-Hochberg" in text


def test_population_with_feedback_and_slice_parsing(planted: list) -> None:
    all_ = label_interactions(planted)
    fb = label_interactions(planted, population="with-feedback")
    assert len(fb) < len(all_) and sum(x.negative for x in fb) == sum(x.negative for x in all_)
    with pytest.raises(ConfigError):
        label_interactions(planted, population="some")
    assert parse_slice("prompt_version=v1.2 & language=de") == (
        ("prompt_version", "v1.2"),
        ("language", "de"),
    )
    with pytest.raises(ConfigError):
        parse_slice("prompt_version")


def test_raw_rows_get_derived_attributes_recomputed(planted: list) -> None:
    from dataclasses import replace

    ji = next(j for j in planted if "```" in j.user_input)
    raw = replace(ji, input_has_code=False, input_length_bucket="")
    lab = label_interactions([raw])[0]
    assert lab.attributes["has_code"] == "yes" and lab.attributes["input_length"] != ""
