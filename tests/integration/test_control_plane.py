"""The live control plane on the real broker: the CLI changes an experiment and every SDK
(over Kafka and over the HTTP collector, with ETags) serves the new version within seconds;
a process that starts while the broker is down serves its cached config; a malformed control
message is refused by every reader, dead-lettered by the sink, and the last good version
stays."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from feedbackloop.cli import cli
from feedbackloop.config import Settings
from feedbackloop.control import ControlPlane, LiveConfig, Status
from feedbackloop.infra import ensure_topics
from feedbackloop.producers import FeedbackClient
from feedbackloop.producers.collector_client import CollectorClient
from feedbackloop.schemas import Topics

pytestmark = pytest.mark.integration


def _settings(bootstrap: str, prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap, topic_prefix=prefix, data_dir=tmp_path, app_id="shop"
    )


def _env(s: Settings) -> dict[str, str]:
    return {
        "FEEDBACKLOOP_BOOTSTRAP_SERVERS": s.bootstrap_servers or "",
        "FEEDBACKLOOP_TOPIC_PREFIX": s.topic_prefix,
        "FEEDBACKLOOP_APP_ID": s.app_id,
        "FEEDBACKLOOP_DATA_DIR": str(s.data_dir),
    }


def _invoke(settings: Settings, *args: str) -> object:
    return CliRunner().invoke(cli, ["experiments", *args], env=_env(settings))


def _run(settings: Settings, *args: str) -> str:
    result = _invoke(settings, *args)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    return result.output  # type: ignore[attr-defined]


def test_cli_changes_reach_kafka_and_http_sdks_and_show_prints_the_audit_trail(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    from feedbackloop.web import WebServer

    s = _settings(kafka_bootstrap, topic_prefix, tmp_path)
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    out = _run(
        s,
        "create",
        "prompt",
        "--variants",
        "v1=1,v2=0",
        "--canary",
        "--steps",
        "0.05,0.25,0.5",
        "--guardrail",
        "satisfaction:0.02",
        "--guardrail",
        "latency_ms:200",
        "--by",
        "alice",
        "--reason",
        "new prompt",
    )
    assert "v1 running: v1 95%, v2 5% (canary step 1/3)" in out
    server = WebServer(s.model_copy(update={"web_port": 0}), "127.0.0.1", 0).start()
    # no live_experiments argument: following the live config is the default
    kafka_sdk = FeedbackClient(s.model_copy(update={"data_dir": tmp_path / "k"}))
    http_sdk = CollectorClient(server.url, None, s.model_copy(update={"data_dir": tmp_path / "h"}))
    sdks = [kafka_sdk, http_sdk]
    try:
        for sdk in sdks:
            assert sdk.live_config is not None
            assert sdk.live_config.wait_for(lambda lc: lc.version("prompt") == 1, timeout=20)
        _run(s, "ramp", "prompt", "0.25", "--by", "bob", "--reason", "looks fine")
        t0 = time.monotonic()
        for sdk in sdks:
            assert sdk.live_config is not None
            assert sdk.live_config.wait_for(lambda lc: lc.version("prompt") == 2, timeout=10)
        assert time.monotonic() - t0 < 10
        share = sum(http_sdk.assign_variant("prompt", f"u{i}") == "v2" for i in range(4000)) / 4000
        assert share == pytest.approx(0.25, abs=0.03)
        _run(s, "rollback", "prompt", "--by", "carol", "--reason", "complaints")
        for sdk in sdks:
            assert sdk.live_config is not None
            assert sdk.live_config.wait_for(lambda lc: lc.version("prompt") == 3, timeout=10)
            assert {sdk.assign_variant("prompt", f"u{i}") for i in range(2000)} == {"v1"}
        # the HTTP source was answered 304 while nothing changed
        source = http_sdk.live_config._source  # type: ignore[union-attr]
        deadline = time.monotonic() + 10
        while source.responses.get(304, 0) == 0:
            assert time.monotonic() < deadline, source.responses
            time.sleep(0.2)
    finally:
        for sdk in sdks:
            sdk.close()
        server.stop()
    show = _run(s, "show", "prompt")
    assert "v3 rolled_back: v1 100%, v2 0%" in show
    assert "v2 " in show and "ramp     by bob" in show and "-- complaints" in show
    shown = json.loads(_run(s, "show", "prompt", "--json"))
    assert [h["changed_by"] for h in shown["history"]] == ["alice", "bob", "carol"]
    refused = _invoke(s, "resume", "prompt", "--reason", "x")
    assert refused.exit_code == 1  # type: ignore[attr-defined]
    assert "only a paused one resumes" in refused.output  # type: ignore[attr-defined]


def test_the_http_api_changes_experiments_with_secret_keys_only(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    import urllib.error
    import urllib.request

    from feedbackloop.web import WebServer

    s = _settings(kafka_bootstrap, topic_prefix, tmp_path).model_copy(
        update={
            "web_port": 0,
            "web_public_keys": {"shop": "pk-shop"},
            "web_secret_keys": {"shop": "sk-shop", "*": "sk-operator"},
        }
    )
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    server = WebServer(s, "127.0.0.1", 0).start()

    def call(path: str, key: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            server.url + path,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        spec = {"name": "e", "variants": {"a": 0.5, "b": 0.5}, "reason": "start", "by": "dana"}
        assert call("/v1/experiments", "pk-shop", spec)[0] == 403  # public keys cannot write
        status, created = call("/v1/experiments", "sk-shop", spec)
        assert status == 201 and created["changed_by"] == "dana (secret:shop)"
        status, body = call(
            "/v1/experiments/e/weights",
            "sk-operator",
            {"app_id": "shop", "reason": "shift", "weights": {"a": 0.8, "b": 0.2}},
        )
        assert status == 200 and body["version"] == 2
        assert call("/v1/experiments/e/resume", "sk-shop", {"reason": "x"})[0] == 409
        assert call("/v1/experiments/nope/pause", "sk-shop", {"reason": "x"})[0] == 404
        deadline = time.monotonic() + 10
        while True:
            status, listed = call("/v1/experiments", "pk-shop")
            if listed["experiments"] and listed["experiments"][0]["version"] == 2:
                break
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert listed["experiments"][0]["changed_by"] == "-"  # public keys see no who/why
        # Bodies go through the collector's limits and JSON rules: never a 500.
        huge = {"reason": "x" * 70_000}
        status, err = call("/v1/experiments/e/pause", "sk-shop", huge)
        assert status == 413 and err["error"] == "body_too_large"
        status, err = call("/v1/experiments/e/pause", "sk-shop", {"reason": "x", "oops": 1})
        assert status == 422 and "oops" in err["message"]
        req = urllib.request.Request(
            server.url + "/v1/experiments",
            data='{"name": "x"}'.encode("utf-16"),
            headers={"Authorization": "Bearer sk-shop", "Content-Type": "application/json"},
            method="POST",
        )
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(req, timeout=30)
        assert bad.value.code == 400
    finally:
        server.stop()


@pytest.mark.fault
def test_an_app_starting_while_the_broker_is_down_serves_its_cached_config(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    s = _settings(kafka_bootstrap, topic_prefix, tmp_path)
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    _run(s, "create", "prompt", "--variants", "v1=0.5,v2=0.5", "--reason", "start")
    _run(s, "weights", "prompt", "v1=0.9", "v2=0.1", "--reason", "less")
    first = FeedbackClient(s, live_experiments=True)
    assert first.live_config is not None
    assert first.live_config.wait_for(lambda lc: lc.version("prompt") == 2, timeout=20)
    first.close()
    # The same app restarts with the control plane unreachable (nothing listens there).
    down = s.model_copy(update={"bootstrap_servers": "127.0.0.1:1"})
    t0 = time.monotonic()
    app = FeedbackClient(down, live_experiments=True)
    started = time.monotonic() - t0
    try:
        live = app.live_config
        assert live is not None and live.from_cache and live.version("prompt") == 2
        assert started < 2.0  # the app did not wait for the broker
        share = sum(app.assign_variant("prompt", f"u{i}") == "v2" for i in range(4000)) / 4000
        assert share == pytest.approx(0.1, abs=0.02)
    finally:
        app.close(timeout=0.5)


@pytest.mark.fault
def test_a_malformed_control_message_is_refused_and_the_last_good_version_stays(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    from feedbackloop.errors import SchemaError
    from feedbackloop.sinks.rows import TopicRouter

    s = _settings(kafka_bootstrap, topic_prefix, tmp_path)
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    _run(s, "create", "prompt", "--variants", "v1=0.5,v2=0.5", "--reason", "start")
    sdk = FeedbackClient(s, live_experiments=True)
    live = sdk.live_config
    assert live is not None
    try:
        assert live.wait_for(lambda lc: lc.version("prompt") == 1, timeout=20)
        plane = ControlPlane(s)
        bad = json.loads(plane.get("shop", "prompt").model_dump_json())
        bad.update(version=2, variants={"v1": 0.2, "v2": 0.2})  # weights do not sum to 1
        for value in (json.dumps(bad).encode(), b"{not json"):
            plane.publish_raw(b"shop|prompt", value)
        assert live.wait_for(lambda lc: lc.rejected == 2, timeout=10)
        assert live.version("prompt") == 1 and live.configs["prompt"].status is Status.running
        assert plane.get("shop", "prompt").version == 1  # every reader skips it
        # the sink turns each into a dead letter (SchemaError -> dead_letters row)
        router = TopicRouter(Topics(topic_prefix))
        for value in (json.dumps(bad).encode(), b"{not json"):
            with pytest.raises(SchemaError) as e:
                router.rows(Topics(topic_prefix).control, 0, 0, value)
            assert e.value.reason == "invalid_config"
        # a good version after it is served again
        _run(s, "pause", "prompt", "--reason", "hold")
        assert live.wait_for(lambda lc: lc.version("prompt") == 2, timeout=10)
    finally:
        sdk.close()
    assert isinstance(LiveConfig, type)


def test_an_app_started_before_any_live_experiment_follows_the_first_one_created(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The default client, started while the control topic does not exist yet, neither
    waits nor fails, serves its code-defined experiment, then follows an experiment created
    from the CLI afterwards: no code change, no restart."""
    from feedbackloop.producers.assignment import Experiment

    s = _settings(kafka_bootstrap, topic_prefix, tmp_path)
    ensure_topics(s.kafka_client_config(), [Topics(topic_prefix).events], 2)  # no control topic
    app = FeedbackClient(s, experiments=[Experiment("tone", {"plain": 1.0, "warm": 0.0})])
    try:
        assert app.live_config is not None and app.live_config.configs == {}
        assert app.assign_variant("tone", "u1") == "plain"
        _run(s, "create", "prompt", "--variants", "v1=0,v2=1", "--reason", "all on v2")
        assert app.live_config.wait_for(lambda lc: lc.version("prompt") == 1, timeout=30)
        assert {app.assign_variant("prompt", f"u{i}") for i in range(200)} == {"v2"}
        assert app.assign_variant("tone", "u1") == "plain"  # the code-defined one is untouched
    finally:
        app.close()
