"""Hostile input against the real stack (issue 13): each reproduction, and what must happen.

HTTP → FeedbackClient → embedded broker → SinkWorker (raw) → ClickHouse (chDB), with public
and secret keys configured, as ``feedbackloop up`` runs it. Every test names the attack.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka_reading import read_topic
from sink_helpers import running_worker, settings_for, wait_until

pytest.importorskip("fastapi", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx")

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.errors import ClickHouseError  # noqa: E402
from feedbackloop.infra import ensure_topics  # noqa: E402
from feedbackloop.producers import FeedbackClient  # noqa: E402
from feedbackloop.producers.spool import Spool  # noqa: E402
from feedbackloop.schemas import DeadLetter, Topics  # noqa: E402
from feedbackloop.sinks import ReadOnlyViolation, SinkConfig, run_query  # noqa: E402
from feedbackloop.web import WebServer  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.hostile]

PK, SK = "pk_hostile_public", "sk_hostile_secret"
APP = "shop"


class Stack:
    def __init__(self, settings: Settings, url: str, worker: Any = None) -> None:
        self.settings = settings
        self.url = url
        self.worker = worker
        self.http = httpx.Client(base_url=url, timeout=60)

    def post(self, path: str, body: Any, key: str = PK, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}", **kw.pop("headers", {})}
        if isinstance(body, (bytes, str)):
            return self.http.post(
                path, content=body, headers={"Content-Type": "application/json", **headers}
            )
        return self.http.post(path, json=body, headers=headers)

    def scalar(self, sql: str) -> Any:
        return run_query(self.settings, sql).rows[0][0]


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    prefix, db = f"h{uuid.uuid4().hex[:8]}.", f"flhostile_{uuid.uuid4().hex[:8]}"
    base = settings_for(
        kafka_bootstrap, clickhouse_dsn, db, prefix, tmp_path_factory.mktemp("hostile")
    )
    s = base.model_copy(
        update={
            "web_public_keys": {APP: PK},
            "web_secret_keys": {APP: SK},
            "producer_linger_ms": 5.0,
            "sql_max_execution_s": 3.0,
            "sql_max_memory_bytes": 200_000_000,
            "web_cache_s": 0.0,
            "web_read_timeout_s": 2.0,
        }
    )
    cfg = SinkConfig(raw=True, group_id=f"g-{uuid.uuid4().hex[:6]}", max_age_s=0.2)
    with running_worker(s, cfg) as worker, WebServer(s, host="127.0.0.1", port=0) as web:
        st = Stack(s, web.url, worker)
        yield st
        st.http.close()


def interaction(**kw: Any) -> dict[str, Any]:
    return {
        "event_type": "interaction",
        "event_id": str(uuid.uuid4()),
        "session_id": "s-1",
        "user_input": "hello",
        "response": "hi",
        "model": "m",
        **kw,
    }


def stored(stack: Stack, event_ids: list[str], table: str = "interactions") -> int:
    ids = ",".join(f"'{i}'" for i in event_ids)
    return int(stack.scalar(f"SELECT count() FROM {table} FINAL WHERE event_id IN ({ids})"))


def dead_letters(stack: Stack, marker: str) -> list[list[Any]]:
    return run_query(
        stack.settings,
        "SELECT reason, length(payload), error FROM dead_letters "
        f"WHERE source = 'collector' AND position(payload, '{marker}') > 0",
    ).rows


# ---------------------------------------------------------------- 1: the spool never blocks


def test_an_oversized_event_or_body_is_dead_lettered_bounded_and_later_events_still_flow(
    stack: Stack,
) -> None:
    marker = uuid.uuid4().hex
    huge = interaction(response=marker + "x" * 1_100_000)
    r = stack.post("/v1/events", [huge])
    assert r.status_code == 422, r.text
    garbage = (marker + "{" * 1_500_000).encode()
    r = stack.post("/v1/events", garbage)
    assert r.status_code == 400 and r.json()["error"] == "invalid_json"
    valid = [interaction() for _ in range(5)]
    assert stack.post("/v1/events", valid).status_code == 202
    ids = [e["event_id"] for e in valid]
    wait_until(lambda: stored(stack, ids) == 5, timeout=60)
    rows = wait_until(lambda: len(dead_letters(stack, marker)) == 2 and dead_letters(stack, marker))
    for _, length, error in rows:
        assert length <= 64 * 1024 and "payload truncated" in error and "sha256" in error
    assert {r[0] for r in rows} == {"validation_error", "invalid_json"}
    health = stack.http.get("/healthz").json()
    assert health["spool"] == {"pending": 0, "quarantined": 0} and health["status"] == "ok"


def test_a_spooled_record_the_broker_refuses_is_quarantined_and_the_rest_is_delivered(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prefix = f"q{uuid.uuid4().hex[:8]}."
    settings = Settings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix, app_id=APP)
    ensure_topics(settings.kafka_client_config(), Topics(prefix).all(), 1)
    spool_path = tmp_path / "spool" / "sdk.sqlite3"
    # A spool left by an earlier run: good events around one record no broker will take.
    events_topic = Topics(prefix).events
    spool = Spool(spool_path, max_bytes=10_000_000)
    spool.append(events_topic, None, b'{"n":1}')
    spool.append(events_topic, None, b"p" * 1_200_000)
    spool.append(events_topic, None, b'{"n":2}')
    spool.close()
    client = FeedbackClient(settings, spool_path=spool_path)
    try:
        # The client starts lazily: any send opens the spool and starts the replay.
        client.send_dead_letter(DeadLetter(reason="x", error="y", payload=b"z"))
        wait_until(lambda: client.stats().spool_pending == 0, timeout=60)
        stats = client.stats()
        assert stats.spool_quarantined == 1 and stats.failed == 1
    finally:
        client.close()
    values = [m.value() for m in read_topic(kafka_bootstrap, events_topic, expect=2)]
    assert values == [b'{"n":1}', b'{"n":2}']
    kept = Spool(spool_path, max_bytes=10_000_000)
    [(record, reason)] = kept.quarantined_records()
    assert len(record.value) == 1_200_000 and "MSG_SIZE_TOO_LARGE" in reason
    kept.close()


# ---------------------------------------------------------------- 2-4, 7: analyst SQL


def _refused(stack: Stack, sql: str, match: str) -> None:
    with pytest.raises(ReadOnlyViolation, match=match):
        run_query(stack.settings, sql)


def test_a_heredoc_cannot_smuggle_a_second_statement_and_the_endpoint_keeps_working(
    stack: Stack,
) -> None:
    _refused(stack, "SELECT $$'$$; USE system; SELECT $$'$$", "one statement")
    _refused(stack, "SELECT $$'$$; SELECT 2; SELECT $$'$$", "one statement")
    _refused(stack, "SELECT 1; DROP TABLE interactions", "one statement")
    db = stack.settings.clickhouse_database
    assert stack.scalar("SELECT currentDatabase()") == db
    r = stack.http.get("/api/experiments", headers={"Authorization": f"Bearer {SK}"})
    assert r.status_code == 200, r.text


def test_describe_cannot_read_local_files_or_make_the_server_fetch_urls(stack: Stack) -> None:
    import http.server
    import threading

    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"a\tb\n1\t2\n")

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        _refused(stack, "DESCRIBE file('/etc/passwd','TSVWithNames')", r"file\(\) is not allowed")
        _refused(
            stack,
            f"DESCRIBE url('http://127.0.0.1:{port}/x','TSVWithNames', "
            "headers('X-Injected'='yes'))",
            r"url\(\) is not allowed",
        )
        _refused(
            stack, f"SELECT * FROM (SELECT 1) AS a, url('http://127.0.0.1:{port}/y', 'TSV')", "url"
        )
        _refused(stack, "DESC remote('127.0.0.1:9000', system.one)", "remote")
        _refused(stack, "SELECT file('/etc/passwd')", r"file\(\) is not allowed")
        _refused(stack, "SELECT length(FILE('/etc/hostname')) AS n", "not allowed")
    finally:
        server.shutdown()
    assert hits == []


def test_into_outfile_is_refused_and_writes_nothing(stack: Stack, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    _refused(stack, f"SELECT 1 INTO OUTFILE '{target}'", "INTO OUTFILE")
    _refused(stack, f"SHOW TABLES INTO OUTFILE '{target}'", "INTO OUTFILE")
    assert not target.exists()
    # ...but the words inside a literal or a quoted name are just text
    res = run_query(stack.settings, "SELECT 'INTO OUTFILE' AS `INTO OUTFILE`")
    assert res.rows == [["INTO OUTFILE"]]


def test_comment_markers_inside_string_literals_reach_clickhouse_untouched(stack: Stack) -> None:
    assert run_query(stack.settings, "SELECT 'a/*b*/c', 'x--y'").rows == [["a/*b*/c", "x--y"]]
    events = [interaction(session_id="lit-1") for _ in range(3)]
    assert stack.post("/v1/events", events).status_code == 202
    ids = [e["event_id"] for e in events]
    wait_until(lambda: stored(stack, ids) == 3)
    in_ids = ",".join(f"'{i}'" for i in ids)
    # The app filter sits between two literals that look like a comment's ends.
    sql = (
        f"SELECT count() FROM interactions FINAL WHERE event_id IN ({in_ids}) "
        "AND 'x/*' = 'x/*' AND app_id = 'another-app' AND '*/y' = '*/y'"
    )
    assert stack.scalar(sql) == 0


def test_an_experiment_named_with_a_double_dash_opens_on_the_dashboard(stack: Stack) -> None:
    name = f"exp--{uuid.uuid4().hex[:6]}"
    events = [
        interaction(session_id=f"dd-{i}", experiment=name, variant="control") for i in range(3)
    ]
    assert stack.post("/v1/events", events).status_code == 202
    wait_until(lambda: stored(stack, [e["event_id"] for e in events]) == 3)
    auth = {"Authorization": f"Bearer {SK}"}
    listed = stack.http.get("/api/experiments", headers=auth).json()
    assert name in {e["experiment"] for e in listed}
    r = stack.http.get(f"/api/experiments/{APP}/{name}", headers=auth)
    assert r.status_code == 200, r.text


def test_analyst_queries_stop_at_the_time_memory_and_row_limits(stack: Stack) -> None:
    with pytest.raises(ClickHouseError, match="TIMEOUT_EXCEEDED|Timeout exceeded"):
        run_query(stack.settings, "SELECT count() FROM system.numbers")
    with pytest.raises(ClickHouseError, match="MEMORY_LIMIT_EXCEEDED|memory limit"):
        run_query(stack.settings, "SELECT groupArray(number) FROM numbers(100000000)")
    _refused(stack, "SELECT 1 SETTINGS max_execution_time = 1000", "readonly|READONLY")
    res = run_query(stack.settings, "SELECT number FROM numbers(1000000)", max_rows=50)
    assert len(res.rows) == 50 and res.truncated
    # and the sink still stores events afterwards
    events = [interaction(session_id="after-limits")]
    assert stack.post("/v1/events", events).status_code == 202
    wait_until(lambda: stored(stack, [events[0]["event_id"]]) == 1)


# ---------------------------------------------------------------- 6, 9: malformed bodies


def _dead_letter_count(stack: Stack, reason: str) -> int:
    return int(
        stack.scalar(
            f"SELECT count() FROM dead_letters WHERE source = 'collector' AND reason = '{reason}'"
        )
    )


def test_malformed_json_is_a_4xx_with_a_reason_and_a_dead_letter_never_a_500(
    stack: Stack,
) -> None:
    before = _dead_letter_count(stack, "invalid_json")
    bodies = [
        b"[" * 100_000 + b"]" * 100_000,
        b'[{"event_type": "interaction", "input_tokens": ' + b"9" * 5000 + b"}]",
        '[{"event_type": "interaction"}]'.encode("utf-16"),
    ]
    for body in bodies:
        r = stack.post("/v1/events", body)
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "invalid_json"
    wait_until(lambda: _dead_letter_count(stack, "invalid_json") >= before + len(bodies))


def test_a_batch_with_unusable_items_stores_its_valid_events_and_says_so_per_event(
    stack: Stack,
) -> None:
    good = interaction()
    bad = [
        interaction(event_type={"nested": "object"}),
        interaction(event_type=["a", "list"]),
        interaction(input_tokens=2**32),
        interaction(shadow="yes"),
    ]
    r = stack.post("/v1/events", [bad[0], good, *bad[1:]])
    assert r.status_code == 202, r.text
    statuses = [x["status"] for x in r.json()["results"]]
    assert statuses == ["rejected", "accepted", "rejected", "rejected", "rejected"]
    wait_until(lambda: stored(stack, [good["event_id"]]) == 1)
    ids = ",".join(f"'{e['event_id']}'" for e in bad)
    sql = (
        "SELECT count() FROM dead_letters WHERE source = 'collector' "
        f"AND JSONExtractString(payload, 'event_id') IN ({ids})"
    )
    wait_until(lambda: stack.scalar(sql) == len(bad))
    assert stored(stack, [e["event_id"] for e in bad]) == 0


def test_a_client_that_promises_a_body_and_stalls_is_answered_408_and_dropped(
    stack: Stack,
) -> None:
    import socket
    import time
    from urllib.parse import urlparse

    u = urlparse(stack.url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {PK}\r\nContent-Length: 4000000\r\n\r\n[{{".encode()
        )
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(4096):  # until the server closes the connection
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b"request_timeout" in answer
    assert waited < 20  # web_read_timeout_s is 2 s here; main held it for more than 75 s


# ---------------------------------------------------------------- 5: owner-only local state


def test_data_files_spool_and_logs_are_owner_only(tmp_path: Path) -> None:
    import subprocess
    import sys
    import textwrap

    data = tmp_path / "var"
    (data / "old").mkdir(parents=True)
    (data / "old" / "left-by-an-earlier-run.log").write_text("event text")
    (data / "old").chmod(0o755)
    (data / "old" / "left-by-an-earlier-run.log").chmod(0o644)
    # In a child: the umask is per process, and chDB admits one data path per process.
    script = textwrap.dedent(
        f"""
        import logging
        from pathlib import Path
        from feedbackloop.infra import get_client
        from feedbackloop.infra.files import owner_only
        from feedbackloop.producers.spool import Spool
        data = Path({str(data)!r})
        owner_only(data)
        logging.basicConfig(filename=data / "logs.txt")
        logging.getLogger().warning("event text")
        ch = get_client(f"chdb://{{data / 'clickhouse'}}")
        ch.command("CREATE DATABASE IF NOT EXISTS d")
        ch.command("CREATE TABLE d.t (s String) ENGINE = MergeTree ORDER BY s")
        ch.command("INSERT INTO d.t VALUES ('secret event text')")
        Spool(data / "spool" / "x.sqlite3", 10_000).append("t", None, b"secret")
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    loose = [
        (str(p.relative_to(data)), oct(p.stat().st_mode & 0o777))
        for p in [data, *data.rglob("*")]
        if not p.is_symlink() and p.stat().st_mode & 0o077
    ]
    assert loose == []
    assert any(p.suffix == ".bin" or p.name.endswith(".bin") for p in data.rglob("*.bin"))


def test_the_query_endpoint_drops_a_client_that_stalls(stack: Stack) -> None:
    import socket
    import time
    from urllib.parse import urlparse

    from feedbackloop.sinks.query import READ_TIMEOUT_S, discovery_path

    info = json.loads(discovery_path(stack.settings).read_text())
    u = urlparse(info["url"])
    with socket.create_connection((u.hostname, u.port), timeout=READ_TIMEOUT_S * 3) as sock:
        sock.sendall(
            b"POST /query HTTP/1.1\r\nHost: x\r\nContent-Length: 4000000\r\n"
            + f"Authorization: Bearer {info['token']}\r\n\r\n{{".encode()
        )
        started = time.monotonic()
        rest = sock.recv(4096)  # b"" once the endpoint closes the connection
        waited = time.monotonic() - started
    assert rest == b"" or rest.startswith(b"HTTP/1.")
    assert waited < READ_TIMEOUT_S * 2
    # and it still answers
    assert stack.scalar("SELECT 1") == 1


def test_events_are_stored_while_a_long_analyst_query_runs(stack: Stack) -> None:
    import threading
    import time

    ended: list[float] = []

    def long_query() -> None:
        # Runs until the stack's 3 s max_execution_time stops it.
        with pytest.raises(ClickHouseError, match="TIMEOUT_EXCEEDED|Timeout exceeded"):
            run_query(stack.settings, "SELECT count() FROM system.numbers")
        ended.append(time.monotonic())

    # The pipeline is warm first (consumer assigned, tables there), so what is measured
    # below is the analyst query's effect, not the sink's start.
    rows = stack.worker.sink.stats.rows
    warm = rows.get("interactions", 0)
    assert stack.post("/v1/events", [interaction(session_id="warm-up")]).status_code == 202
    wait_until(lambda: rows.get("interactions", 0) > warm, timeout=60, interval=0.05)
    t = threading.Thread(target=long_query)
    t.start()
    time.sleep(0.3)  # the query holds the endpoint's session now
    # Not asked through the endpoint (the long query holds it): the sink's own count of
    # rows it inserted.
    before = rows.get("interactions", 0)
    assert stack.post("/v1/events", [interaction(session_id="during-query")]).status_code == 202
    wait_until(lambda: rows.get("interactions", 0) > before, timeout=30, interval=0.05)
    stored_at = time.monotonic()
    t.join(30)
    assert ended and stored_at < ended[0]


# ------------------------------------------------ 8: one event id, one key (event identity)


def test_a_resend_of_an_event_id_under_other_key_columns_is_refused_with_a_dead_letter(
    stack: Stack,
) -> None:
    import datetime as dt

    then = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=3)
    first = interaction(
        occurred_at=then.isoformat(), prompt_version="v1", experiment="exp", variant="a"
    )
    eid = first["event_id"]
    assert stack.post("/v1/events", [first]).status_code == 202
    wait_until(lambda: stored(stack, [eid]) == 1)
    resends = [
        {**first, "prompt_version": "v2"},
        {**first, "variant": "b"},
        {**first, "occurred_at": (then - dt.timedelta(hours=1)).isoformat()},
        {**first, "occurred_at": (then - dt.timedelta(days=1)).isoformat()},
    ]
    identical = dict(first)
    for body in [*resends, identical]:
        assert stack.post("/v1/events", [body]).status_code == 202
    sql = (
        "SELECT count() FROM dead_letters FINAL WHERE source = 'sink' "
        f"AND reason = 'conflicting_resend' AND position(payload, '{eid}') > 0"
    )
    wait_until(lambda: stack.scalar(sql) == len(resends))
    # Give the identical resend (sent last) time to be stored too, then read the one row.
    marker = interaction()  # same session, same partition: stored after the resends
    assert stack.post("/v1/events", [marker]).status_code == 202
    wait_until(lambda: stored(stack, [marker["event_id"]]) == 1)
    assert stored(stack, [eid]) == 1
    assert (
        stack.scalar(f"SELECT prompt_version FROM interactions FINAL WHERE event_id = '{eid}'")
        == "v1"
    )
    assert stack.scalar(sql) == len(resends)
