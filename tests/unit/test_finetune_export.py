"""Fine-tuning export: formats (against OpenAI's documented shape), filters, scrubbing,
de-duplication, the deterministic split and provenance."""

from __future__ import annotations

import json
import random
from pathlib import Path

import jsonschema
import pytest
from openai_schemas import CHAT_SCHEMA, PREFERENCE_SCHEMA

from feedbackloop.analysis.loop.finetune import (
    CorrectionExample,
    FinetuneOptions,
    build_finetune_export,
    write_finetune_export,
)
from feedbackloop.analysis.loop.formats import (
    validate_chat_example,
    validate_jsonl,
    validate_preference_example,
)
from feedbackloop.analysis.loop.scrub import ScrubStats, scrub
from feedbackloop.errors import ConfigError


def ex(
    i: int,
    user: str | None = None,
    corr: str | None = None,
    resp: str = "bad answer",
    system: str = "You are helpful.",
) -> CorrectionExample:
    return CorrectionExample(
        system=system,
        user=user or f"question number {i} about exports",
        response=resp,
        correction=corr or f"The right answer to question {i} is: use export.",
        feedback_event_id=f"fb-{i:04d}",
        interaction_id=f"ia-{i:04d}",
        interaction_event_id=f"ev-{i:04d}",
        prompt_version="v1.2",
        model="m",
        occurred_at=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}",
    )


def test_records_have_the_documented_shape() -> None:
    out = build_finetune_export([ex(i) for i in range(50)])
    assert len(out.train) + len(out.validation) == 50
    for rec in out.train + out.validation:
        jsonschema.validate(rec, CHAT_SCHEMA)
        assert validate_chat_example(rec) == []
        assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant"]
    for rec in out.preference_train + out.preference_validation:
        jsonschema.validate(rec, PREFERENCE_SCHEMA)
        assert validate_preference_example(rec) == []
        assert rec["preferred_output"][0]["content"].startswith("The right answer")
        assert rec["non_preferred_output"][0]["content"] == "bad answer"


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"messages": []}, "non-empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "assistant"),
        (
            {
                "messages": [
                    {"role": "robot", "content": "x"},
                    {"role": "assistant", "content": "y"},
                ]
            },
            "role",
        ),
        ({"messages": [{"role": "assistant", "content": "y"}], "id": 1}, "unexpected"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q", "weight": 1},
                    {"role": "assistant", "content": "a"},
                ]
            },
            "weight",
        ),
    ],
)
def test_chat_validator_rejects(record: dict, problem: str) -> None:
    errs = validate_chat_example(record)
    assert errs and any(problem in e for e in errs)
    if problem != "weight":  # a rule of the prose docs that the schema does not carry
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(record, CHAT_SCHEMA)


def test_preference_validator_rejects() -> None:
    good = {
        "input": {"messages": [{"role": "user", "content": "q"}]},
        "preferred_output": [{"role": "assistant", "content": "a"}],
        "non_preferred_output": [{"role": "assistant", "content": "b"}],
    }
    assert validate_preference_example(good) == []
    two = {**good, "preferred_output": good["preferred_output"] * 2}
    assert validate_preference_example(two)
    wrong_role = {**good, "non_preferred_output": [{"role": "user", "content": "b"}]}
    assert validate_preference_example(wrong_role)
    ends_with_assistant = {**good, "input": {"messages": [{"role": "assistant", "content": "x"}]}}
    assert validate_preference_example(ends_with_assistant)
    assert validate_preference_example({**good, "provenance": "x"})


def test_filters_and_dedup() -> None:
    items = [
        ex(1, corr="too short"),  # < 20 chars
        ex(2, corr="x" * 50, resp="x" * 50),  # same as response
        ex(3, user="  "),  # empty input
        ex(4, user="same question", corr="The same long correction text."),
        ex(5, user="Same   QUESTION", corr="the same long correction text."),  # duplicate
        ex(6, corr="y" * 300),
    ]
    out = build_finetune_export(items, FinetuneOptions(max_chars=200, validation_fraction=0))
    assert dict(out.dropped) == {
        "correction_too_short": 1,
        "same_as_response": 1,
        "empty_input": 1,
        "duplicate": 1,
        "correction_too_long": 1,
    }
    assert len(out.train) == 1 and out.validation == []
    prov = [p for p in out.provenance if p["file"] == "train.jsonl"]
    assert prov == [
        {
            "file": "train.jsonl",
            "line": 1,
            "feedback_event_id": "fb-0004",
            "interaction_id": "ia-0004",
            "interaction_event_id": "ev-0004",
            "duplicate_feedback_event_ids": ["fb-0005"],
            "prompt_version": "v1.2",
            "model": "m",
            "kind": "correction",
        }
    ]
    out10 = build_finetune_export([ex(1, corr="exactly ten")], FinetuneOptions(min_chars=10))
    assert len(out10.train) + len(out10.validation) == 1


def test_scrubbing_covers_every_message() -> None:
    item = ex(
        1,
        user="I am jane@example.com, call +1 415 555 0123",
        corr="Use key sk-proj-abcdefghijklmnopqrstuvwx1234 and mail ops@corp.io please",
        resp="Sure, AKIAIOSFODNN7EXAMPLE works",
        system="Contact admin@acme.test",
    )
    out = build_finetune_export([item], FinetuneOptions(validation_fraction=0))
    text = json.dumps(out.train + out.preference_train)
    for secret in ("jane@", "415 555", "sk-proj", "ops@corp", "AKIA", "admin@"):
        assert secret not in text
    assert "[EMAIL]" in text and "[PHONE]" in text and "[API_KEY]" in text
    assert out.scrubbed.to_dict() == {"api_key": 2, "email": 3, "phone": 1}
    raw = build_finetune_export([item], FinetuneOptions(scrub=False, validation_fraction=0))
    assert "jane@example.com" in json.dumps(raw.train)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail me: a.b+c@x-y.co.uk.", "mail me: [EMAIL]."),
        ("call (415) 555-0123 or +44 20 7946 0958", "call [PHONE] or [PHONE]"),
        ("tel. 030 1234 5678", "tel. [PHONE]"),
        ("on 2024-01-15 10:30 from 192.168.1.100 v1.2.3", None),
        ("order 123456789012 costs 1,234.56", None),
        ("token: abcdEFGH12345678xyz", "token: [API_KEY]"),
        ('{"api_key": "0123456789abcdef"}', '{"api_key": "[API_KEY]"}'),
        ("Authorization: Bearer abcdefghijklmnopqrstu", "Authorization: Bearer [API_KEY]"),
        ("ghp_" + "a" * 36 + " and xoxb-1234567890-abcdef", "[API_KEY] and [API_KEY]"),
    ],
)
def test_scrub_patterns(text: str, expected: str | None) -> None:
    assert scrub(text, ScrubStats()) == (expected if expected is not None else text)


def test_split_is_deterministic_and_by_input() -> None:
    items = [ex(i) for i in range(400)]
    opts = FinetuneOptions(validation_fraction=0.2, seed="s1")
    a = build_finetune_export(items, opts)
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    b = build_finetune_export(shuffled, opts)
    assert a.train == b.train and a.validation == b.validation and a.provenance == b.provenance
    assert 50 <= len(a.validation) <= 110  # 20 % of 400, binomial spread
    # More data later moves no existing example across the split.
    c = build_finetune_export([*items, *(ex(i) for i in range(400, 500))], opts)
    assert all(r in c.validation for r in a.validation)
    # The same input with another correction goes to the same side.
    same = [
        ex(1, user="shared input text"),
        ex(2, user="shared input text", corr="A different correction of the answer."),
    ]
    d = build_finetune_export(same, FinetuneOptions(validation_fraction=0.5))
    assert len(d.train) in (0, 2)
    other = build_finetune_export(items, FinetuneOptions(validation_fraction=0.2, seed="s2"))
    assert other.validation != a.validation
    with pytest.raises(ConfigError):
        FinetuneOptions(validation_fraction=1.0)


def test_written_files_validate_and_keep_provenance_outside(tmp_path: Path) -> None:
    items = [ex(i) for i in range(60)]
    opts = FinetuneOptions(validation_fraction=0.25, system_prompt="New prompt v1.3")
    paths = write_finetune_export(build_finetune_export(items, opts), tmp_path, opts)
    assert validate_jsonl(str(paths["train"]), "chat") == []
    assert validate_jsonl(str(paths["validation"]), "chat") == []
    assert validate_jsonl(str(paths["preference_train"]), "preference") == []
    body = paths["train"].read_text() + paths["preference_train"].read_text()
    assert "fb-00" not in body and "ia-00" not in body and "New prompt v1.3" in body
    prov = [json.loads(x) for x in paths["provenance"].read_text().splitlines()]
    files = {p["file"] for p in prov}
    assert files == {
        "train.jsonl",
        "validation.jsonl",
        "preference_train.jsonl",
        "preference_validation.jsonl",
    }
    lines = {
        f: paths[k].read_text().splitlines()
        for k, f in (("train", "train.jsonl"), ("validation", "validation.jsonl"))
    }
    for p in prov:
        if p["file"] in lines:
            rec = json.loads(lines[p["file"]][p["line"] - 1])
            i = int(p["feedback_event_id"][3:])
            assert rec["messages"][-1]["content"] == items[i].correction
    manifest = json.loads(paths["manifest"].read_text())
    assert manifest["counts"]["train"] == len(lines["train.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "q"}]}\nnot json\n')
    errs = validate_jsonl(str(bad), "chat")
    assert any(e.startswith("line 1") for e in errs) and any(e.startswith("line 2") for e in errs)
