"""Closing the loop against real ClickHouse (embedded chDB by default): failures, complaints,
the prompt registry, regression suites and fine-tuning exports, through the CLI.

Data goes in the way the sink writes it: planted events become enriched-topic messages, the
sink's own router turns them into rows, and rows are inserted into migrated tables. (The
Kafka path itself is covered by test_sink_pipeline.py; here the subject is what is read.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "unit"))
from planted_failures import planted_events  # noqa: E402

from feedbackloop.analysis.loop.formats import validate_jsonl  # noqa: E402
from feedbackloop.cli import cli  # noqa: E402
from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.infra import get_client  # noqa: E402
from feedbackloop.schemas import EnrichedEvent, Interaction, RequestContext, Topics  # noqa: E402
from feedbackloop.schemas.derive import derive  # noqa: E402
from feedbackloop.sinks import COLUMNS, TopicRouter, migrate  # noqa: E402

pytestmark = pytest.mark.integration

N = 6000


def _rows(prefix: str) -> dict[str, list[Any]]:
    topics = Topics(prefix)
    router = TopicRouter(topics)
    tables: dict[str, list[Any]] = {}
    offset = 0
    for it, evs in planted_events(N, seed=11):
        derived = derive(it)
        ctx = RequestContext(
            interaction_id=it.interaction_id,
            interaction_occurred_at=it.occurred_at,
            model=it.model,
            prompt_version=it.prompt_version,
            experiment=it.experiment,
            variant=it.variant,
            system_prompt=it.system_prompt,
            user_input=it.user_input,
            response=it.response,
            metadata=it.metadata,
        )
        for ev in [it, *evs]:
            enriched = EnrichedEvent(
                event=ev,
                context=None if isinstance(ev, Interaction) else ctx,
                derived=derived,
                source_partition=0,
                source_offset=offset,
            )
            for table, row in router.route(
                topics.enriched, 0, offset, enriched.model_dump_json().encode()
            ).rows:
                tables.setdefault(table, []).append(row)
            offset += 1
    return tables


@pytest.fixture(scope="module")
def loaded(clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    db = f"flloop_{uuid.uuid4().hex[:8]}"
    client = get_client(clickhouse_dsn)
    migrate(client, db)
    for table, rows in _rows("t.").items():
        client.insert(table, rows, database=db, column_names=list(COLUMNS[table]))
    settings = Settings(
        clickhouse_url=clickhouse_dsn,
        clickhouse_database=db,
        data_dir=tmp_path_factory.mktemp("loop"),
    )
    yield settings
    client.command(f"DROP DATABASE IF EXISTS {db}")
    client.close()


def _env(s: Settings) -> dict[str, str]:
    return {
        "FEEDBACKLOOP_CLICKHOUSE_URL": s.clickhouse_dsn,
        "FEEDBACKLOOP_CLICKHOUSE_DATABASE": s.clickhouse_database,
        "FEEDBACKLOOP_DATA_DIR": str(s.data_dir),
        "FEEDBACKLOOP_CONFIG": "",
    }


def _run(s: Settings, *args: str, ok: bool = True) -> Any:
    res = CliRunner().invoke(cli, list(args), env=_env(s), catch_exceptions=False)
    if ok:
        assert res.exit_code == 0, res.output
    return res


def test_failures_finds_planted_slices_and_prints_a_finding(loaded: Settings) -> None:
    res = _run(loaded, "failures", "--since", "30d", "--json")
    report = json.loads(res.output)
    assert report["total"] == N
    sig = [f for f in report["findings"] if f["significant"]]
    top = [f["slice"] for f in sig[:4]]
    assert "language_group=not-en & prompt_version=v1.2" in top
    assert "has_code=yes & prompt_version=v1.2" in top
    # Null dimensions: nothing about plan, model or variant is a finding.
    for f in sig:
        assert not any(d in f["conditions"] for d in ("meta.plan", "model", "variant")), f
    text = _run(loaded, "failures", "--since", "30d").output
    assert "Findings:" in text and "prompt_version=v1.2" in text
    assert "negative = weighted signals" in text


def test_complaints_cluster_the_planted_topics(loaded: Settings) -> None:
    res = _run(
        loaded,
        "complaints",
        "--since",
        "30d",
        "--slice",
        "prompt_version=v1.2&language_group=not-en",
        "--json",
    )
    out = json.loads(res.output)
    assert out["texts"] > 20
    terms = " ".join(" ".join(c["top_terms"]) for c in out["clusters"][:2])
    assert "language" in terms or "english" in terms


def test_prompt_registry_add_list_show_diff(loaded: Settings, tmp_path: Path) -> None:
    v1 = tmp_path / "v1.2.txt"
    v1.write_text("You are a helpful assistant.\nAnswer briefly.\n")
    v2 = tmp_path / "v1.3.txt"
    v2.write_text(
        "You are a helpful assistant.\nAnswer briefly.\n"
        "Always answer in the language of the question.\n"
    )
    out = _run(loaded, "prompts", "add", "v1.2", "--name", "support", "--file", str(v1)).output
    assert "registered" in out
    out = _run(loaded, "prompts", "add", "v1.2", "--name", "support", "--file", str(v1)).output
    assert "already registered" in out
    bad = _run(loaded, "prompts", "add", "v1.2", "--name", "support", "--file", str(v2), ok=False)
    assert bad.exit_code == 1 and "immutable" in bad.output
    _run(
        loaded,
        "prompts",
        "add",
        "v1.3",
        "--name",
        "support",
        "--file",
        str(v2),
        "--parent",
        "v1.2",
        "--note",
        "non-English inputs failed twice as often",
    )
    listed = json.loads(_run(loaded, "prompts", "list", "--json").output)
    assert [(p["version"], p["parent_version"]) for p in listed] == [("v1.2", ""), ("v1.3", "v1.2")]
    assert "Always answer in the language" in _run(loaded, "prompts", "show", "v1.3").output
    diff = _run(loaded, "prompts", "diff", "v1.3").output
    assert "+Always answer in the language of the question." in diff


def test_prompt_add_refuses_while_a_worker_holds_embedded_chdb(
    loaded: Settings, tmp_path: Path
) -> None:
    if not loaded.clickhouse_dsn.startswith("chdb:"):
        pytest.skip("only embedded chDB has the one-process rule")
    from feedbackloop.sinks.query import discovery_path

    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    path = discovery_path(loaded)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"url": "http://127.0.0.1:9", "token": "x", "pid": holder.pid}))
        f = tmp_path / "p.txt"
        f.write_text("text")
        res = _run(loaded, "prompts", "add", "v9", "--name", "x", "--file", str(f), ok=False)
        assert res.exit_code == 1
        assert f"pid {holder.pid}" in res.output and "Stop the worker" in res.output
    finally:
        path.unlink(missing_ok=True)
        holder.kill()
        holder.wait()


STAND_IN = textwrap.dedent(
    """
    import json, sys
    case = json.load(sys.stdin)
    if "fail-me" in case["input"]:
        sys.exit(3)
    print("Antwort in der Sprache der Frage: " + case["input"][:40])
    """
)


def test_regressions_export_and_run_end_to_end(loaded: Settings, tmp_path: Path) -> None:
    suite = tmp_path / "suite.jsonl"
    out = _run(
        loaded,
        "regressions",
        "export",
        "--prompt-version",
        "v1.2",
        "--top",
        "12",
        "--since",
        "30d",
        "--out",
        str(suite),
    ).output
    assert "12 cases" in out
    cases = [json.loads(line) for line in suite.read_text().splitlines()]
    assert len(cases) == 12
    assert all(c["prompt_version"] == "v1.2" and c["bad_response"] for c in cases)
    assert {c["slice"] for c in cases[:2]} >= {"language_group=not-en", "has_code=yes"} or all(
        c["slice"] for c in cases[:4]
    )
    assert any(c["correction"] for c in cases)
    # One case makes the stand-in fail: recorded as that case's error, the run goes on.
    cases[3]["input"] = "fail-me"
    suite.write_text("".join(json.dumps(c) + "\n" for c in cases))
    script = tmp_path / "candidate.py"
    script.write_text(STAND_IN)
    report = tmp_path / "report"
    out = _run(
        loaded,
        "regressions",
        "run",
        "--suite",
        str(suite),
        "--candidate",
        f"{sys.executable} {script}",
        "--out",
        str(report),
    ).output
    assert "12 cases, 1 errors" in out
    results = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert [r["id"] for r in results] == [c["id"] for c in cases]
    assert results[0]["new_response"].startswith("Antwort in der Sprache")
    assert results[3]["error"].startswith("exit code 3")
    md = (tmp_path / "report.md").read_text()
    assert "| old response | correction | new response |" in md


def test_export_finetune_files_validate_and_map_back(loaded: Settings, tmp_path: Path) -> None:
    import jsonschema

    out_dir = tmp_path / "ft"
    out = _run(loaded, "export", "finetune", "--since", "30d", "--out", str(out_dir)).output
    assert "corrections" in out
    for name, kind in (
        ("train.jsonl", "chat"),
        ("validation.jsonl", "chat"),
        ("preference_train.jsonl", "preference"),
        ("preference_validation.jsonl", "preference"),
    ):
        assert validate_jsonl(str(out_dir / name), kind) == [], name
    from openai_schemas import CHAT_SCHEMA, PREFERENCE_SCHEMA

    train = [json.loads(x) for x in (out_dir / "train.jsonl").read_text().splitlines()]
    assert train
    for rec in train:
        jsonschema.validate(rec, CHAT_SCHEMA)
        assert "event_id" not in json.dumps(rec)
    for line in (out_dir / "preference_train.jsonl").read_text().splitlines():
        jsonschema.validate(json.loads(line), PREFERENCE_SCHEMA)
    prov = [json.loads(x) for x in (out_dir / "provenance.jsonl").read_text().splitlines()]
    train_prov = [p for p in prov if p["file"] == "train.jsonl"]
    assert [p["line"] for p in train_prov] == list(range(1, len(train) + 1))
    # Provenance maps back to the stored correction events.
    client = get_client(loaded.clickhouse_dsn)
    try:
        ids = ",".join(f"'{p['feedback_event_id']}'" for p in train_prov[:50])
        texts = dict(
            client.query(
                f"SELECT toString(event_id), text FROM {loaded.clickhouse_database}.feedback FINAL "
                f"WHERE kind = 'correction' AND toString(event_id) IN ({ids})"
            ).result_rows
        )
    finally:
        client.close()
    for p, rec in zip(train_prov[:50], train[:50], strict=True):
        assert texts[p["feedback_event_id"]].strip() == rec["messages"][-1]["content"]
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["counts"]["train"] == len(train)
    assert os.path.getsize(out_dir / "validation.jsonl") > 0
