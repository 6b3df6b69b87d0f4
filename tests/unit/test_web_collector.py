"""The HTTP collector and read API without a broker: validation, keys, limits, OpenAPI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.schemas import DeadLetter, Envelope  # noqa: E402
from feedbackloop.sinks.query import QueryResult  # noqa: E402
from feedbackloop.web import create_app  # noqa: E402
from feedbackloop.web.dashboard import STATIC_DIR  # noqa: E402
from feedbackloop.web.ratelimit import RateLimited, RateLimiter  # noqa: E402

PK, SK, OPS = "pk_shop_123", "sk_shop_456", "sk_ops_789"
PUBLIC = {"Authorization": f"Bearer {PK}"}
SECRET = {"Authorization": f"Bearer {SK}"}


class Recorder:
    """Stands in for FeedbackClient: records what would go to Kafka."""

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.dead: list[DeadLetter] = []
        self.accept = True

    def send(self, event: Envelope) -> bool:
        if self.accept:
            self.events.append(event)
        return self.accept

    def send_dead_letter(self, letter: DeadLetter) -> bool:
        self.dead.append(letter)
        return True


def _settings(tmp_path: Path, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(
        data_dir=tmp_path,
        web_public_keys={"shop": PK},
        web_secret_keys={"shop": SK, "*": OPS},
        web_max_body_bytes=64_000,
        web_max_batch_events=50,
        web_rate_limit_per_s=0,
    )
    return Settings(**{**base, **kw})


def _query(sql: str) -> QueryResult:
    # Enough for the list endpoint; the real queries run in the integration test.
    return QueryResult(["app_id"], ["String"], [])


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def client(tmp_path: Path, rec: Recorder) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path), client=rec, query=_query)) as c:
        yield c


def interaction(**kw: Any) -> dict[str, Any]:
    return {
        "event_type": "interaction",
        "session_id": "s1",
        "user_input": "hi",
        "response": "hello",
        "model": "m1",
        "interaction_id": str(uuid.uuid4()),
        **kw,
    }


def thumbs(iid: str, up: int = 1, **kw: Any) -> dict[str, Any]:
    return {
        "event_type": "feedback",
        "session_id": "s1",
        "interaction_id": iid,
        "kind": "thumbs",
        "thumbs": up,
        **kw,
    }


# --- accepted ------------------------------------------------------------------------------


@pytest.mark.parametrize("wrap", [False, True], ids=["array", "object"])
def test_valid_batch_is_accepted_and_app_id_filled_in(
    client: TestClient, rec: Recorder, wrap: bool
) -> None:
    it = interaction(experiment="e1", variant="a")
    batch = [
        it,
        thumbs(it["interaction_id"]),
        {"event_type": "outcome", "session_id": "s1", "outcome": "purchase", "value": 9.5},
    ]
    r = client.post("/v1/events", json={"events": batch} if wrap else batch, headers=PUBLIC)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["accepted"] == 3 and body["rejected"] == 0
    assert [x["status"] for x in body["results"]] == ["accepted"] * 3
    assert [str(e.event_id) for e in rec.events] == [x["event_id"] for x in body["results"]]
    assert {e.app_id for e in rec.events} == {"shop"}  # filled in from the key
    assert rec.dead == []


def test_single_feedback_call_with_key_in_query_for_send_beacon(
    client: TestClient, rec: Recorder
) -> None:
    body = json.dumps(
        {"session_id": "s", "interaction_id": str(uuid.uuid4()), "kind": "rating", "rating": 4}
    )
    # sendBeacon sends text/plain and cannot set headers.
    r = client.post(
        f"/v1/feedback?key={PK}", content=body, headers={"Content-Type": "text/plain;charset=UTF-8"}
    )
    assert r.status_code == 202, r.text
    assert r.json()["event_id"] == str(rec.events[0].event_id)
    assert rec.events[0].event_type == "feedback"


# --- bad requests: each a clear 4xx with its reason ----------------------------------------


BAD_REQUESTS = [
    # (name, content, headers, status, reason, message fragment)
    ("not json", b"{nope", {}, 400, "invalid_json", "not valid UTF-8 JSON"),
    ("empty body", b"", {}, 400, "empty_body", "empty"),
    ("wrong shape", b'"hello"', {}, 400, "bad_shape", "got a JSON str"),
    ("object without events", b'{"event_type": "x"}', {}, 400, "bad_shape", "JSON array"),
    ("empty batch", b"[]", {}, 400, "empty_batch", "no events"),
    ("too many events", json.dumps([{}] * 51).encode(), {}, 413, "too_many_events", "limit is 50"),
    ("body too large", b"[" + b" " * 70_000 + b"{}]", {}, 413, "body_too_large", "64000"),
    (
        "form data",
        b"a=1",
        {"Content-Type": "application/x-www-form-urlencoded"},
        415,
        "unsupported_media_type",
        "send JSON",
    ),
    ("gzip", b"[{}]", {"Content-Encoding": "gzip"}, 415, "unsupported_encoding", "compressed"),
]


@pytest.mark.parametrize(
    ("name", "content", "headers", "status", "reason", "fragment"),
    BAD_REQUESTS,
    ids=[b[0] for b in BAD_REQUESTS],
)
def test_bad_batch_requests_get_a_clear_4xx(
    client: TestClient,
    rec: Recorder,
    name: str,
    content: bytes,
    headers: dict[str, str],
    status: int,
    reason: str,
    fragment: str,
) -> None:
    hdrs = {"Content-Type": "application/json", **PUBLIC, **headers}
    r = client.post("/v1/events", content=content, headers=hdrs)
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason
    assert fragment in r.json()["message"]
    assert rec.events == []
    if reason == "invalid_json":  # unparseable bodies still reach the dead-letter topic
        assert [d.reason for d in rec.dead] == ["invalid_json"]
        assert rec.dead[0].source == "collector" and rec.dead[0].payload == content


def test_chunked_body_over_the_limit_is_refused(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"["
        for _ in range(100):
            yield b" " * 1000
        yield b"]"

    r = client.post(
        "/v1/events", content=chunks(), headers={**PUBLIC, "Content-Type": "application/json"}
    )
    assert r.status_code == 413 and r.json()["error"] == "body_too_large"


def test_invalid_events_are_rejected_per_event_and_dead_lettered(
    client: TestClient, rec: Recorder
) -> None:
    it = interaction()
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)).isoformat()
    batch = [
        it,
        thumbs(it["interaction_id"], up=7),
        {"event_type": "nope", "session_id": "s"},
        interaction(schema_version=99),
        interaction(occurred_at=future),
        "not an object",
        thumbs(it["interaction_id"], app_id="other-app"),
    ]
    r = client.post("/v1/events", json=batch, headers=PUBLIC)
    assert r.status_code == 202  # something was accepted
    res = r.json()["results"]
    assert [x["status"] for x in res] == [
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "forbidden",
    ]
    assert [x["reason"] for x in res[1:]] == [
        "validation_error",
        "unknown_event_type",
        "unsupported_schema_version",
        "validation_error",
        "validation_error",
        "forbidden_app_id",
    ]
    assert "feedback.thumbs" in res[1]["error"]
    assert "in the future" in res[4]["error"]
    # Invalid events go to the dead-letter topic; another app's events do not.
    assert [d.reason for d in rec.dead] == [x["reason"] for x in res[1:6]]
    assert all(d.source == "collector" for d in rec.dead)
    assert json.loads(rec.dead[0].payload)["thumbs"] == 7
    assert r.json()["accepted"] == 1 and r.json()["rejected"] == 6


def test_batch_status_when_nothing_was_accepted(client: TestClient, rec: Recorder) -> None:
    r = client.post("/v1/events", json=[thumbs("not-a-uuid")], headers=PUBLIC)
    assert r.status_code == 422 and r.json()["results"][0]["reason"] == "validation_error"
    r = client.post("/v1/events", json=[interaction(app_id="other")], headers=PUBLIC)
    assert r.status_code == 403 and r.json()["results"][0]["reason"] == "forbidden_app_id"
    r = client.post("/v1/feedback", json={"session_id": "s", "kind": "thumbs"}, headers=PUBLIC)
    assert r.status_code == 422 and r.json()["error"] == "validation_error"
    r = client.post("/v1/feedback", json=interaction(), headers=PUBLIC)
    assert r.status_code == 422 and "takes event_type 'feedback'" in r.json()["message"]


def test_spool_full_answers_503_with_retry_after(client: TestClient, rec: Recorder) -> None:
    rec.accept = False
    r = client.post("/v1/events", json=[interaction()], headers=PUBLIC)
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["results"][0]["reason"] == "spool_full"


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "path", "status", "reason"),
    [
        ({}, "/v1/events", 401, "missing_key"),
        ({"Authorization": "Bearer wrong"}, "/v1/events", 401, "unknown_key"),
        ({"Authorization": "Basic abc"}, "/v1/events", 401, "bad_authorization"),
        ({"X-API-Key": "wrong"}, "/v1/events", 401, "unknown_key"),
        ({}, f"/v1/events?key={SK}", 401, "secret_key_in_url"),
        ({}, "/api/experiments", 401, "missing_key"),
        ({"Authorization": "Bearer wrong"}, "/api/experiments", 401, "unknown_key"),
        (PUBLIC, "/api/experiments", 403, "write_only_key"),
        ({}, f"/api/experiments?key={PK}", 401, "missing_key"),
        (SECRET, "/api/experiments?app_id=other", 403, "forbidden_app_id"),
    ],
)
def test_wrong_or_missing_keys_are_rejected_and_public_keys_cannot_read(
    client: TestClient, headers: dict[str, str], path: str, status: int, reason: str
) -> None:
    if path.startswith("/v1"):
        r = client.post(path, json=[interaction()], headers=headers)
    else:
        r = client.get(path, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason
    if status == 401:
        assert r.headers["WWW-Authenticate"] == "Bearer"


def test_secret_keys_read_and_write(client: TestClient, rec: Recorder) -> None:
    assert client.get("/api/experiments", headers=SECRET).status_code == 200
    assert (
        client.get(
            "/api/experiments?app_id=any", headers={"Authorization": f"Bearer {OPS}"}
        ).status_code
        == 200
    )
    assert client.get("/api/experiments", headers={"X-API-Key": SK}).status_code == 200
    r = client.post("/v1/events", json=[interaction()], headers=SECRET)
    assert r.status_code == 202
    # An operator key names the app explicitly; an event without one is invalid.
    r = client.post("/v1/events", json=[interaction()], headers={"Authorization": f"Bearer {OPS}"})
    assert r.status_code == 422 and "app_id" in r.json()["results"][0]["error"]


def test_local_mode_serves_loopback_only(tmp_path: Path, rec: Recorder) -> None:
    s = _settings(tmp_path, web_public_keys={}, web_secret_keys={})
    app = create_app(s, client=rec, query=_query)
    with TestClient(app, client=("127.0.0.1", 5000)) as local:
        assert local.get("/api/experiments").status_code == 200
        assert local.post("/v1/events", json=[interaction(app_id="x")]).status_code == 202
    with TestClient(app, client=("10.1.2.3", 5000)) as remote:
        r = remote.get("/api/experiments")
        assert r.status_code == 401 and r.json()["error"] == "local_mode"


# --- rate limit, CORS ----------------------------------------------------------------------


def test_rate_limit_per_key_answers_429_with_retry_after(tmp_path: Path, rec: Recorder) -> None:
    s = _settings(tmp_path, web_rate_limit_per_s=0.5, web_rate_limit_burst=3)
    with TestClient(create_app(s, client=rec, query=_query)) as c:
        r = c.post("/v1/events", json=[interaction(), interaction()], headers=PUBLIC)
        assert r.status_code == 202
        assert c.post("/v1/events", json=[interaction()], headers=PUBLIC).status_code == 202
        r = c.post("/v1/events", json=[interaction()], headers=PUBLIC)  # 4th event
        assert r.status_code == 429 and r.json()["error"] == "rate_limited"
        assert int(r.headers["Retry-After"]) >= 1
        # Buckets are per key: the secret key still has its burst.
        assert c.get("/api/experiments", headers=SECRET).status_code == 200
    assert len(rec.events) == 3


def test_rate_limiter_refills_and_caps_cost() -> None:
    now = [0.0]
    lim = RateLimiter(rate=2.0, burst=4, clock=lambda: now[0])
    lim.acquire("k", 4)
    with pytest.raises(RateLimited) as e:
        lim.acquire("k", 1)
    assert e.value.retry_after == pytest.approx(0.5)
    now[0] = 1.0
    lim.acquire("k", 2)  # refilled 2 tokens
    now[0] = 100.0
    lim.acquire("k", 1000)  # charged as the burst, so a big batch can pass eventually
    RateLimiter(rate=0, burst=1).acquire("k", 10**9)  # disabled


def test_cors_preflight_allows_configured_origins_only(tmp_path: Path, rec: Recorder) -> None:
    s = _settings(tmp_path, web_cors_origins=["https://app.example"])
    with TestClient(create_app(s, client=rec, query=_query)) as c:
        pre = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        ok = c.options("/v1/events", headers={"Origin": "https://app.example", **pre})
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example"
        bad = c.options("/v1/events", headers={"Origin": "https://evil.example", **pre})
        assert "access-control-allow-origin" not in bad.headers
        r = c.post(
            "/v1/events", json=[interaction()], headers={**PUBLIC, "Origin": "https://app.example"}
        )
        assert r.headers["access-control-allow-origin"] == "https://app.example"


# --- OpenAPI and the static page -----------------------------------------------------------


def test_openapi_document_lists_exactly_the_endpoints(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    from fastapi.routing import APIRoute

    from feedbackloop.web import collector, control, dashboard, otlp, snippet

    # Every route the app serves, from the routers it is built from plus its own.
    own = [r for r in client.app.routes if isinstance(r, APIRoute)]  # type: ignore[attr-defined]
    all_routes = own + [
        route
        for module in (collector, control, dashboard, otlp, snippet)
        for route in module.router().routes
    ]
    routes = {
        (m.lower(), r.path)
        for r in all_routes
        if isinstance(r, APIRoute) and r.include_in_schema
        for m in r.methods - {"HEAD"}
    }
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == routes
    assert {"/v1/events", "/v1/feedback", "/api/experiments"} <= set(doc["paths"])
    # The request bodies point at the event contract, which is in the components.
    schemas = doc["components"]["schemas"]
    assert {"Event", "Interaction", "Feedback", "Implicit", "Outcome"} <= set(schemas)
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    ev = doc["paths"]["/v1/events"]["post"]
    assert {"202", "400", "401", "403", "413", "415", "422", "429", "503"} <= set(ev["responses"])


def _conformance(operation: Any) -> Any:
    from hypothesis import HealthCheck, given, settings
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    # A bounded number of examples per operation keeps this to a few seconds.
    @settings(
        max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(case=operation.as_strategy())
    def run(case: Any) -> None:
        # Status codes, content types, headers and bodies must match the document, and no
        # 5xx but the documented 503. Not checked: that every schema-valid event is
        # accepted, because the contract has rules JSON Schema cannot state (fields that
        # depend on ``kind``, occurred_at not in the future), which answer a documented 422.
        case.call_and_validate(
            headers={"Authorization": f"Bearer {OPS}"}, excluded_checks=[positive_data_acceptance]
        )

    return run


def test_openapi_conformance_with_schemathesis(tmp_path: Path, rec: Recorder) -> None:
    """Generated requests against every operation: responses match the document."""
    schemathesis = pytest.importorskip("schemathesis")

    # The failed-authentication limit would answer schemathesis' own bad-key probes with 429
    # after a while; it has its own test.
    app = create_app(
        _settings(tmp_path, web_max_batch_events=1000, web_auth_failures_per_min=0),
        client=rec,
        query=_query,
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    # Reads need ClickHouse and are covered by the integration test; here, the collector
    # and the shapes of its answers.
    schema = schema.include(path_regex=r"^/(v1/|healthz)")
    # The control plane's endpoints need a broker (here: none, so 503): they are held to
    # their answers in tests/integration/test_control_plane.py.
    schema = schema.exclude(path_regex=r"^/v1/experiments")
    checked = 0
    for op in schema.get_all_operations():
        _conformance(op.ok())()
        checked += 1
    assert checked == 4  # /v1/events, /v1/feedback, /v1/traces, /healthz


def test_requests_that_violate_the_openapi_document_are_refused(
    tmp_path: Path, rec: Recorder
) -> None:
    """Schemathesis' negative mode: every request the document rules out (a wrong type, a
    string over its maxLength, an id or time outside its pattern, an unknown query
    parameter) is answered 4xx, so the server accepts nothing the document does not."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    app = create_app(
        _settings(
            tmp_path,
            web_max_batch_events=1000,
            web_max_body_bytes=50_000_000,  # a 413 would hide what the contract refuses
            web_auth_failures_per_min=0,
        ),
        client=rec,
        query=_query,
    )
    schema = (
        schemathesis.openapi.from_asgi("/openapi.json", app)
        .include(path_regex=r"^/v1/")
        .exclude(path_regex=r"^/v1/experiments")  # needs a broker: see test_control_plane
    )
    checked = 0
    for op in schema.get_all_operations():
        operation = op.ok()

        @settings(
            max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=operation.as_strategy(generation_mode=GenerationMode.NEGATIVE))
        def run(case: Any) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {OPS}"},
                excluded_checks=[positive_data_acceptance],
            )

        run()
        checked += 1
    assert checked == 3  # /v1/events, /v1/feedback, /v1/traces


def test_vendored_chart_js_is_untouched_and_the_page_loads_nothing_remote(
    client: TestClient,
) -> None:
    vendored = (STATIC_DIR / "vendor" / "VENDORED.md").read_text()
    recorded = re.search(r"chart\.umd\.min\.js \| [^|]+ \| [\d.]+ \| ([0-9a-f]{64})", vendored)
    assert recorded
    data = (STATIC_DIR / "vendor" / "chart.umd.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == recorded.group(1)
    page = client.get("/dashboard/")
    assert page.status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", page.text)
    for asset in ("static/vendor/chart.umd.min.js", "static/dashboard.js", "static/dashboard.css"):
        assert client.get(f"/dashboard/{asset}").status_code == 200
    assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard/"


# ------------------------------------------------------------------ hostile input (issue 13)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[" * 5_000 + b"]" * 5_000, "depth"),
        (b'[{"event_type": "interaction", "input_tokens": ' + b"9" * 5000 + b"}]", "number"),
        ('[{"event_type": "interaction"}]'.encode("utf-16"), "byte-order mark"),
        ('[{"event_type": "interaction"}]'.encode("utf-16-le"), "unexpected character"),
        (b'\xef\xbb\xbf[{"event_type": "interaction"}]', "byte-order mark"),
    ],
)
def test_bodies_that_are_not_utf8_json_are_a_400_and_dead_lettered(
    client: TestClient, rec: Recorder, body: bytes, reason: str
) -> None:
    r = client.post(
        "/v1/events", content=body, headers={**PUBLIC, "Content-Type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_json" and reason in r.json()["message"]
    assert [d.reason for d in rec.dead] == ["invalid_json"] and not rec.events


def test_an_event_type_that_is_an_object_or_list_is_rejected_per_event_and_the_rest_stored(
    client: TestClient, rec: Recorder
) -> None:
    good = interaction()
    batch = [interaction(event_type={"x": 1}), good, interaction(event_type=[1, 2])]
    r = client.post("/v1/events", json=batch, headers=PUBLIC)
    assert r.status_code == 202
    assert [x["status"] for x in r.json()["results"]] == ["rejected", "accepted", "rejected"]
    assert {x["reason"] for x in r.json()["results"] if x["status"] == "rejected"} == {
        "unknown_event_type"
    }
    assert [str(e.interaction_id) for e in rec.events] == [good["interaction_id"]]
    assert len(rec.dead) == 2


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"input_tokens": 2**32}, "input_tokens"),
        ({"output_tokens": True}, "output_tokens"),
        ({"shadow": "yes"}, "shadow"),
        ({"latency_ms": "12"}, "latency_ms"),
        ({"interaction_id": "a" * 32}, "interaction_id"),
        ({"occurred_at": 1_780_000_000}, "occurred_at"),
        ({"occurred_at": "2019-12-31T23:59:59Z"}, "occurred_at"),
    ],
)
def test_values_the_storage_or_the_schema_does_not_allow_are_a_422(
    client: TestClient, rec: Recorder, fields: dict[str, Any], where: str
) -> None:
    r = client.post("/v1/events", json=[interaction(**fields)], headers=PUBLIC)
    assert r.status_code == 422
    assert where in r.json()["results"][0]["error"]
    assert len(rec.dead) == 1 and not rec.events


def test_a_rating_of_true_or_thumbs_of_1_0_are_refused(client: TestClient, rec: Recorder) -> None:
    iid = str(uuid.uuid4())
    for body in (
        {"session_id": "s", "interaction_id": iid, "kind": "rating", "rating": True},
        {"session_id": "s", "interaction_id": iid, "kind": "thumbs", "thumbs": 1.0},
    ):
        r = client.post("/v1/feedback", json=body, headers=PUBLIC)
        assert r.status_code == 422, body
    assert not rec.events and len(rec.dead) == 2


def test_failed_authentications_are_limited_per_client_address(
    tmp_path: Path, rec: Recorder
) -> None:
    s = _settings(tmp_path, web_auth_failures_per_min=1.0, web_auth_failures_burst=3)
    with TestClient(create_app(s, client=rec, query=_query)) as c:
        bad = {"Authorization": "Bearer guess"}
        assert c.post("/v1/events", json=[interaction()], headers=bad).status_code == 401
        for _ in range(2):
            assert c.get("/api/experiments", headers=bad).status_code == 401
        r = c.post("/v1/events", json=[interaction()], headers=bad)
        assert r.status_code == 429 and r.json()["error"] == "too_many_failed_authentications"
        assert int(r.headers["retry-after"]) >= 1
        # Now even the right key is refused: a guesser learns nothing from this address.
        assert c.post("/v1/events", json=[interaction()], headers=PUBLIC).status_code == 429
    assert not rec.events


def test_api_answers_are_not_cached_and_backend_errors_reveal_no_internals(
    tmp_path: Path, rec: Recorder
) -> None:
    from feedbackloop.errors import ClickHouseError

    def failing(sql: str) -> QueryResult:
        raise ClickHouseError(f"Code: 60. Unknown table /var/lib/secret/path in {sql}")

    with TestClient(create_app(_settings(tmp_path), client=rec, query=failing)) as c:
        r = c.get("/api/experiments", headers=SECRET)
        assert r.status_code == 503 and r.headers["cache-control"] == "no-store"
        assert r.json()["error"] == "backend_unavailable"
        assert "SELECT" not in r.text and "/var/lib" not in r.text and "Code" not in r.text
    with TestClient(create_app(_settings(tmp_path), client=rec, query=_query)) as c:
        r = c.get("/api/experiments", headers=SECRET)
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"


def test_healthz_reports_the_spool_backlog_and_quarantine(tmp_path: Path) -> None:
    from feedbackloop.producers.delivery import DeliveryStats

    class Spooling(Recorder):
        def stats(self) -> DeliveryStats:
            return DeliveryStats(spool_pending=7, spool_quarantined=self.q)

        q = 0

    rec = Spooling()
    with TestClient(create_app(_settings(tmp_path), client=rec, query=_query)) as c:
        h = c.get("/healthz").json()
        assert h["status"] == "spooling" and h["spool"] == {"pending": 7, "quarantined": 0}
        rec.q = 1
        h = c.get("/healthz").json()
        assert h["status"] == "degraded" and h["producer"]["spool_quarantined"] == 1
