"""Compare-and-set on the real broker: concurrent writers of one experiment never overwrite
each other unseen. The first message of a version wins for every reader; a writer whose
change lost is told so (VersionConflict, CLI exit 1, HTTP 409 / 412) and nothing of it is
served; with --if-version / If-Match a change based on a stale version is refused before it
is written."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from feedbackloop.cli import cli
from feedbackloop.config import Settings
from feedbackloop.control import ControlPlane, LiveConfig, apply, new_experiment
from feedbackloop.control.live import KafkaSource
from feedbackloop.errors import VersionConflict
from feedbackloop.infra import ensure_topics
from feedbackloop.schemas import Topics

pytestmark = pytest.mark.integration

WRITERS = 5


def _settings(bootstrap: str, prefix: str, tmp_path: Path) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap, topic_prefix=prefix, data_dir=tmp_path, app_id="shop"
    )


def test_concurrent_writers_each_land_as_their_own_version_and_none_is_lost(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    s = _settings(kafka_bootstrap, topic_prefix, tmp_path)
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    ControlPlane(s).create(
        new_experiment("shop", "e", {"a": 0.5, "b": 0.5}, changed_by="setup", reason="start")
    )
    start = threading.Barrier(WRITERS)
    won: dict[int, int] = {}  # writer -> version it got
    lost: dict[int, int] = {}  # writer -> conflicts it was told about

    def writer(i: int) -> None:
        plane = ControlPlane(s)
        start.wait()
        while True:  # an operator re-reading after a conflict and trying again
            try:
                new = plane.change(
                    "shop",
                    "e",
                    "weights",
                    changed_by=f"w{i}",
                    reason=f"writer {i}",
                    weights={"a": 0.1 * (i + 1), "b": 1 - 0.1 * (i + 1)},
                )
            except VersionConflict:
                lost[i] = lost.get(i, 0) + 1
                continue
            won[i] = new.version
            return

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(won) == list(range(WRITERS))
    assert sum(lost.values()) > 0  # they did race
    history = ControlPlane(s).history()
    # one version per successful change, in order, each the change its writer was told of
    assert [h.version for h in history] == list(range(1, WRITERS + 2))
    for i, version in won.items():
        h = history[version - 1]
        assert h.changed_by == f"w{i}" and h.variants["a"] == pytest.approx(0.1 * (i + 1))
    # a late writer that skips the check (publishing a stale version directly) is ignored by
    # every reader: the first message of a version stays in force
    stale = apply(history[0], "weights", changed_by="rogue", weights={"a": 0.9, "b": 0.1})
    ControlPlane(s).publish(stale)
    current = ControlPlane(s).current()["shop|e"]
    assert current.version == WRITERS + 1 and current.changed_by != "rogue"
    live = LiveConfig("shop")
    source = KafkaSource(s)
    source.start(live.offer)
    try:
        assert live.wait_for(lambda lc: lc.version("e") == WRITERS + 1, timeout=20)
        assert live.configs["e"] == current
        assert all(h.changed_by != "rogue" for h in ControlPlane(s).history())
    finally:
        source.close()


def test_a_stale_if_version_or_if_match_changes_nothing(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    from feedbackloop.web import WebServer

    s = _settings(kafka_bootstrap, topic_prefix, tmp_path).model_copy(
        update={"web_port": 0, "web_secret_keys": {"shop": "sk-shop"}}
    )
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    env = {
        "FEEDBACKLOOP_BOOTSTRAP_SERVERS": s.bootstrap_servers or "",
        "FEEDBACKLOOP_TOPIC_PREFIX": s.topic_prefix,
        "FEEDBACKLOOP_APP_ID": s.app_id,
        "FEEDBACKLOOP_DATA_DIR": str(s.data_dir),
    }

    def cli_run(*args: str) -> tuple[int, str]:
        r = CliRunner().invoke(cli, ["experiments", *args], env=env)
        return r.exit_code, r.output

    code, out = cli_run("create", "e", "--variants", "a=0.5,b=0.5", "--reason", "start")
    assert code == 0, out
    code, out = cli_run("pause", "e", "--reason", "look", "--if-version", "1")
    assert code == 0 and "v2 paused" in out, out
    # a second operator who read v1 too
    code, out = cli_run("weights", "e", "a=0.9", "b=0.1", "--reason", "x", "--if-version", "1")
    assert code == 1 and "is at v2 (pause by" in out and "nothing changed" in out
    assert [h.version for h in ControlPlane(s).history()] == [1, 2]

    server = WebServer(s, "127.0.0.1", 0).start()

    def post(path: str, body: dict, if_match: str | None) -> tuple[int, dict, str | None]:
        headers = {"Authorization": "Bearer sk-shop", "Content-Type": "application/json"}
        if if_match is not None:
            headers["If-Match"] = if_match
        req = urllib.request.Request(
            server.url + path, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read()), resp.headers.get("ETag")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read()), e.headers.get("ETag")

    try:
        status, err, etag = post("/v1/experiments/e/resume", {"reason": "x"}, '"v1"')
        assert (status, err["error"], etag) == (412, "version_conflict", '"v2"')
        status, err, _ = post("/v1/experiments/e/resume", {"reason": "x"}, "yesterday")
        assert (status, err["error"]) == (400, "invalid_if_match")
        status, body, etag = post("/v1/experiments/e/resume", {"reason": "ok"}, '"v2"')
        assert (status, body["version"], etag) == (200, 3, '"v3"')
    finally:
        server.stop()
    assert [h.action for h in ControlPlane(s).history()] == ["create", "pause", "resume"]
