"""Operations: the logging setup (text / JSON lines), the metrics registry and its
multiprocess exposition, and the settings list in docs/CONFIGURATION.md."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from feedbackloop.config import Settings
from feedbackloop.infra import metrics
from feedbackloop.infra.logs import setup_logging

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def restore_logging() -> object:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_parse_and_carry_the_fields(restore_logging: object) -> None:
    out = io.StringIO()
    setup_logging("sink", "json", "DEBUG", stream=out)
    log = logging.getLogger("feedbackloop.sinks.worker")
    log.info("stored %d rows", 12, extra={"table": "feedback", "rows": 12})
    log.debug("no extras")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    first = lines[0]
    assert first["message"] == "stored 12 rows"
    assert first["level"] == "INFO" and first["logger"] == "feedbackloop.sinks.worker"
    assert first["service"] == "sink" and first["table"] == "feedback" and first["rows"] == 12
    assert first["ts"].endswith("+00:00") and "T" in first["ts"]
    assert set(lines[1]) == {"ts", "level", "logger", "message", "service"}
    assert lines[2]["level"] == "ERROR" and "ValueError: boom" in lines[2]["exc"]


def test_text_format_and_level_and_reconfiguring_does_not_duplicate(
    restore_logging: object,
) -> None:
    out = io.StringIO()
    setup_logging("web", "text", "WARNING", stream=io.StringIO())
    setup_logging("web", "text", "warning", stream=out)
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert out.getvalue().count("shown") == 1 and "hidden" not in out.getvalue()
    assert " WARNING web x: shown" in out.getvalue()
    with pytest.raises(ValueError):
        setup_logging("web", "yaml", stream=out)  # type: ignore[arg-type]


def test_log_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEEDBACKLOOP_LOG_FORMAT", "json")
    monkeypatch.setenv("FEEDBACKLOOP_LOG_LEVEL", "debug")
    s = Settings()
    assert (s.log_format, s.log_level) == ("json", "DEBUG")
    monkeypatch.setenv("FEEDBACKLOOP_LOG_FORMAT", "xml")
    with pytest.raises(ValueError):
        Settings()


def _value(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_registry_publishes_deltas_of_the_stage_counters() -> None:
    before = metrics.exposition(None).decode()
    stats = SimpleNamespace(
        records_in=10,
        valid=8,
        dead_letters=2,
        enriched=7,
        orphaned=1,
        late_events=0,
        pending=1,
        aggregates=3,
        by_reason={"validation_error": 2},
    )
    alert = SimpleNamespace(dimension="variant")
    jobs = SimpleNamespace(
        pipeline=SimpleNamespace(stats=stats), alerts_sent=[alert], app=None, topics=None
    )
    sm = metrics.StreamMetrics()
    sm.update(jobs)
    stats.records_in, stats.valid = 15, 13
    sm.update(jobs)  # only the growth is added
    metrics.record_collector([("accepted", None), ("rejected", "validation_error")])
    after = metrics.exposition(None).decode()

    def grew(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    assert grew("feedbackloop_stream_events_total", kind="in") == 15
    assert grew("feedbackloop_stream_events_total", kind="valid") == 13
    assert grew("feedbackloop_dead_letters_total", source="stream", reason="validation_error") == 2
    assert (
        grew("feedbackloop_dead_letters_total", source="collector", reason="validation_error") == 1
    )
    assert grew("feedbackloop_collector_events_total", outcome="accepted") == 1
    assert grew("feedbackloop_alerts_total", dimension="variant") == 1
    assert grew("feedbackloop_stream_aggregates_total") == 3


def test_sink_metrics_rows_latency_and_lag() -> None:
    from confluent_kafka import TopicPartition

    class FakeConsumer:
        def assignment(self) -> list[TopicPartition]:
            return [TopicPartition("t.enriched", 0)]

        def position(self, tps: list[TopicPartition]) -> list[TopicPartition]:
            return [TopicPartition("t.enriched", 0, 40)]

        def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
            return 0, 100

    stats = SimpleNamespace(
        messages=5,
        rows={"feedback": 5},
        by_reason={"bad_json": 1},
        inserts=1,
        transient_errors=0,
        insert_seconds=0.01,
    )
    worker = SimpleNamespace(
        sink=SimpleNamespace(stats=stats, pending=0),
        _consumer=FakeConsumer(),
        config=SimpleNamespace(group_id="g1"),
    )
    before = metrics.exposition(None).decode()
    sm = metrics.SinkMetrics()
    sm.observe_batch(0.3)
    sm.update(worker)
    after = metrics.exposition(None).decode()
    assert (
        _value(after, "feedbackloop_sink_rows_total", table="feedback")
        - _value(before, "feedbackloop_sink_rows_total", table="feedback")
    ) == 5
    assert (
        _value(after, "feedbackloop_consumer_lag", group="g1", topic="t.enriched", partition="0")
        == 60
    )
    assert (
        _value(after, "feedbackloop_sink_batch_latency_seconds_bucket", le="0.5")
        - _value(before, "feedbackloop_sink_batch_latency_seconds_bucket", le="0.5")
    ) == 1


def test_multiprocess_exposition_sums_processes_and_drops_dead_live_gauges(
    tmp_path: Path,
) -> None:
    code = (
        "import sys; from pathlib import Path; from feedbackloop.infra import metrics as m; "
        "m.enable_multiprocess(Path(sys.argv[1])); f = m.families(); "
        "f.sink_rows.labels('feedback').inc(3); f.service_up.labels(sys.argv[2]).set(1); "
        "print(__import__('os').getpid())"
    )
    pids = [
        int(
            subprocess.run(
                [sys.executable, "-c", code, str(tmp_path), svc],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
        )
        for svc in ("sink", "sink")
    ]
    text = metrics.exposition(tmp_path).decode()
    assert _value(text, "feedbackloop_sink_rows_total", table="feedback") == 6
    assert _value(text, "feedbackloop_service_up", service="sink") == 2
    metrics.mark_process_dead(pids[0], tmp_path)
    text = metrics.exposition(tmp_path).decode()
    assert _value(text, "feedbackloop_service_up", service="sink") == 1
    assert _value(text, "feedbackloop_sink_rows_total", table="feedback") == 6  # counters stay


def test_every_setting_is_documented() -> None:
    doc = (ROOT / "docs" / "CONFIGURATION.md").read_text("utf-8")
    missing = [
        name for name in Settings.model_fields if f"`FEEDBACKLOOP_{name.upper()}`" not in doc
    ]
    assert not missing, f"settings missing from docs/CONFIGURATION.md: {missing}"
    # and the table is the generated one (regenerate: feedbackloop config docs)
    from feedbackloop.config import settings_table

    assert settings_table() in doc
