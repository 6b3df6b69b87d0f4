"""The client facade over its two transports: both keep the Transport contract, and the same
calls give the same answers, counts and bytes whichever one carries them.

The Kafka transport runs against a broker that is down (loopback port 1: everything ends in
the spool); the HTTP transport against a stand-in collector on loopback that records what it
is posted and answers as the real one does.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from feedbackloop.config import Settings
from feedbackloop.errors import ConfigError, SchemaError
from feedbackloop.producers import (
    CollectorClient,
    FeedbackClient,
    HttpTransport,
    KafkaTransport,
    Transport,
)
from feedbackloop.producers.spool import Spool
from feedbackloop.schemas import Envelope, Topics

PROTOCOL_METHODS = ["send_event", "send_dead_letter", "stats", "flush", "close"]


class FakeCollector:
    """``POST /v1/events`` on loopback: records every posted event's bytes, in order, and
    answers each with ``accepted``, or with what ``answer`` says for the next requests."""

    def __init__(self) -> None:
        self.events: list[bytes] = []
        self.answers: list[tuple[int, bytes]] = []  # (status, body) for the next requests
        self.requests = 0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests += 1
                if fake.answers:
                    status, answer = fake.answers.pop(0)
                else:
                    items = json.loads(body)
                    # the raw bytes of each event: split the array the client joined with ","
                    fake.events += _split_array(body, len(items))
                    results = [{"index": i, "status": "accepted"} for i in range(len(items))]
                    status, answer = 202, json.dumps({"results": results}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _split_array(body: bytes, n: int) -> list[bytes]:
    """The elements of ``[e1,e2,...]`` exactly as the client wrote them."""
    text, decoder, parts, i = body.decode(), json.JSONDecoder(), [], 1
    while text[i] != "]":
        _, end = decoder.raw_decode(text, i)
        parts.append(text[i:end].encode())
        i = end + (text[end] == ",")
    assert len(parts) == n
    return parts


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    fake = FakeCollector()
    yield fake
    fake.stop()


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        bootstrap_servers="127.0.0.1:1",  # nothing listens: the broker is down
        data_dir=tmp_path,
        app_id="unit",
        producer_message_timeout_ms=1000,
        close_timeout_s=1.0,
    )


class Tap:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def __call__(self, _event: Envelope, payload: bytes) -> None:
        self.sent.append(payload)


def _both(
    tmp_path: Path, collector: FakeCollector, **kwargs: Any
) -> dict[str, tuple[FeedbackClient, Tap]]:
    kafka_tap, http_tap = Tap(), Tap()
    settings = _settings(tmp_path)
    return {
        "kafka": (FeedbackClient(settings, on_event=kafka_tap, **kwargs), kafka_tap),
        "http": (
            CollectorClient(collector.url, None, settings, on_event=http_tap, **kwargs),
            http_tap,
        ),
    }


def _script(client: FeedbackClient) -> list[Any]:
    """A session of calls, valid and not, through the fast and the model path; what each
    returned, as a kind (an id or None) the two transports must agree on."""
    iid = client.log_interaction(session_id="s1", user_input="q", response="a", model="m")
    calls: list[Callable[[], Any]] = [
        lambda: client.thumbs(iid, True),
        lambda: client.rate(iid, 4),
        lambda: client.rate(iid, 9),  # invalid: dead letter
        lambda: client.correct(iid, "better"),
        lambda: client.comment(iid, "x", user_id="u1"),
        lambda: client.report(iid, "harmful", "why"),
        lambda: client.implicit(iid, "copy", copied_chars=3),
        lambda: client.implicit(iid, "dwell"),  # invalid: dwell needs dwell_ms
        lambda: client.outcome("code_accepted", interaction_id=iid),
        lambda: client.outcome("Not Valid", session_id="s1"),  # invalid name
        lambda: client.thumbs(uuid.uuid4(), True),  # unknown interaction: no session
        lambda: client.thumbs(iid, True, sesion_id="typo"),  # unexpected keyword
        lambda: client.log_interaction(
            session_id="s2", user_input="q", response="a", model="m", latency_ms="12"
        ),  # invalid: the contract is strict, a number is not text (issue 13)
    ]
    return [type(iid).__name__] + [type(call()).__name__ for call in calls]


# ------------------------------------------------------------------ the contract


@pytest.mark.parametrize("cls", [KafkaTransport, HttpTransport])
def test_both_transports_satisfy_the_transport_protocol(cls: type, tmp_path: Path) -> None:
    transport = cls(_settings(tmp_path)) if cls is KafkaTransport else cls("http://127.0.0.1:1")
    assert isinstance(transport, Transport)
    for name in PROTOCOL_METHODS:
        want = inspect.signature(getattr(Transport, name))
        got = inspect.signature(getattr(cls, name))
        assert list(got.parameters) == list(want.parameters), name
        assert [p.kind for p in got.parameters.values()] == [
            p.kind for p in want.parameters.values()
        ], name
        assert [p.default for p in got.parameters.values()] == [
            p.default for p in want.parameters.values()
        ], name
    # nothing is started before the first event; closing an unused transport is quiet
    assert transport.stats().spool_pending == 0 and transport.flush(0) == 0
    transport.close(0)
    transport.close(0)


def test_a_collector_url_without_a_scheme_is_refused_at_construction() -> None:
    with pytest.raises(ConfigError, match="http:// or https://"):
        HttpTransport("localhost:8000")


def test_kafka_options_beside_another_transport_are_refused_not_ignored(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="configure the default Kafka transport"):
        CollectorClient("http://127.0.0.1:1", spool_path=tmp_path / "s.sqlite3")
    with pytest.raises(TypeError, match="configure the default Kafka transport"):
        FeedbackClient(
            _settings(tmp_path),
            transport=HttpTransport("http://127.0.0.1:1"),
            producer_config={"linger.ms": 5},
        )


# ------------------------------------------------------------------ parity


def test_the_same_calls_give_the_same_answers_and_counts_on_both_transports(
    tmp_path: Path, collector: FakeCollector
) -> None:
    clients = _both(tmp_path, collector)
    answers = {name: _script(client) for name, (client, _) in clients.items()}
    stats = {name: client.close(timeout=1) for name, (client, _) in clients.items()}
    assert answers["kafka"] == answers["http"]
    assert answers["kafka"].count("NoneType") == 5  # log_interaction returns its id anyway
    for name in clients:
        assert (stats[name].enqueued, stats[name].invalid) == (8, 6), (name, stats[name])
        assert stats[name].dropped == stats[name].failed == 0, (name, stats[name])
    assert stats["http"].delivered == 8 and stats["http"].spool_pending == 0
    assert stats["kafka"].delivered == 0 and stats["kafka"].spool_pending == 14

    # Every accepted event reaches the destination as the tap saw it, in order. Kafka also
    # dead-letters the invalid calls; the collector validates on its side, so none is posted.
    kafka_tap, http_tap = clients["kafka"][1], clients["http"][1]
    assert collector.events == http_tap.sent
    settings = _settings(tmp_path)
    spool = Spool(settings.spool_path, settings.spool_max_bytes)
    records = spool.head(100)
    spool.close()
    events_topic = Topics(settings.topic_prefix).events
    assert [r.value for r in records if r.topic == events_topic] == kafka_tap.sent
    assert len([r for r in records if r.topic != events_topic]) == 6


def _strict_errors(client: FeedbackClient) -> list[str]:
    iid = client.log_interaction(session_id="s", user_input="q", response="a", model="m")
    errors = []
    for call in (
        lambda: client.rate(iid, 6),
        lambda: client.thumbs(uuid.uuid4(), True),
        lambda: client.thumbs(iid, True, sesion_id="typo"),
    ):
        with pytest.raises(SchemaError) as e:
            call()
        errors.append(f"{e.value.reason}: {e.value}")
    return errors


def test_strict_mode_raises_the_same_errors_on_both_transports(
    tmp_path: Path, collector: FakeCollector
) -> None:
    errors = {}
    for name, (client, tap) in _both(tmp_path, collector, strict=True).items():
        errors[name] = _strict_errors(client)
        stats = client.close(timeout=1)
        assert (stats.enqueued, stats.invalid) == (1, 0) and len(tap.sent) == 1
    assert errors["kafka"] == errors["http"]
    assert "less than or equal to 5" in errors["kafka"][0]


def test_events_sent_after_close_are_dropped_and_counted_on_both_transports(
    tmp_path: Path, collector: FakeCollector
) -> None:
    for name, (client, _) in _both(tmp_path, collector).items():
        client.close(timeout=1)
        iid = client.log_interaction(session_id="s", user_input="q", response="a", model="m")
        assert isinstance(iid, uuid.UUID)  # the app is never told off with an exception
        stats = client.close(timeout=1)  # idempotent
        assert (stats.enqueued, stats.dropped) == (1, 1), (name, stats)


# ------------------------------------------------------------------ the HTTP transport


def test_http_transport_retries_a_busy_collector_in_order(collector: FakeCollector) -> None:
    collector.answers = [(503, b"{}"), (429, b"{}")]
    transport = HttpTransport(collector.url, batch_size=2, linger_s=0.01)
    values = [json.dumps({"n": i}).encode() for i in range(5)]
    for value in values:
        assert transport.send_event(None, value)
    assert transport.flush(10) == 0
    transport.close(1)
    assert collector.events == values
    # both refusals were answered, then every event was posted once (batches of 1 or 2)
    assert collector.answers == [] and 2 + 3 <= collector.requests <= 2 + 5
    snapshot = transport.stats()
    assert (snapshot.delivered, snapshot.failed, snapshot.dropped) == (5, 0, 0)


def test_a_collector_answering_garbage_does_not_stop_the_sender(
    collector: FakeCollector,
) -> None:
    # 200 with a body that is not the collector's answer, then a list: counted failed
    collector.answers = [(200, b"<html>proxy</html>"), (200, b"[1, 2]")]
    transport = HttpTransport(collector.url, batch_size=1, linger_s=0.01)
    for i in range(4):
        transport.send_event(None, json.dumps({"n": i}).encode())
    assert transport.flush(10) == 0
    transport.close(1)
    snapshot = transport.stats()
    assert (snapshot.delivered, snapshot.failed) == (2, 2)
    assert collector.events == [b'{"n": 2}', b'{"n": 3}']


def test_http_transport_drops_and_counts_beyond_max_pending() -> None:
    # An unreachable collector (port 1) and room for three events.
    transport = HttpTransport("http://127.0.0.1:1", max_pending=3, linger_s=60)
    sent = [transport.send_event(None, b"{}") for _ in range(5)]
    transport.close(0)
    assert sent == [True, True, True, False, False]
    snapshot = transport.stats()
    assert snapshot.dropped == 2 + 3  # two refused at once, three not posted by close


# ------------------------------------------------------------------ close at exit

_EXIT_WITHOUT_CLOSE = """
import sys
from feedbackloop.producers import CollectorClient, FeedbackClient
client = (
    CollectorClient(sys.argv[2], linger_s=60) if sys.argv[1] == "http" else FeedbackClient()
)
for i in range(7):
    client.log_interaction(session_id="s", user_input="q", response="a", model="m")
# no close(): the interpreter exits with the events still queued in memory
"""


@pytest.mark.parametrize("transport", ["kafka", "http"])
def test_an_app_that_exits_without_close_loses_nothing(
    transport: str, tmp_path: Path, collector: FakeCollector
) -> None:
    env = {
        **os.environ,
        "FEEDBACKLOOP_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "FEEDBACKLOOP_DATA_DIR": str(tmp_path),
        "FEEDBACKLOOP_APP_ID": "unit",
        "FEEDBACKLOOP_CLOSE_TIMEOUT_S": "1",
    }
    started = time.monotonic()
    subprocess.run(
        [sys.executable, "-c", _EXIT_WITHOUT_CLOSE, transport, collector.url],
        env=env,
        check=True,
        timeout=60,
    )
    assert time.monotonic() - started < 30
    if transport == "http":
        assert len(collector.events) == 7
    else:
        settings = Settings(data_dir=tmp_path, app_id="unit")
        spool = Spool(settings.spool_path, settings.spool_max_bytes)
        assert spool.count == 7
        spool.close()
