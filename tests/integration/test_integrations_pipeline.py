"""The three integrations through the real pipeline, each checked in ClickHouse (chDB by
default): provider wrappers -> FeedbackClient -> broker -> sink; OpenTelemetry SDK -> OTLP
exporter -> collector ``/v1/traces`` -> broker -> sink; the browser snippet in headless
Chromium -> collector ``/v1/events`` -> broker -> sink."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import running_worker, settings_for, wait_until

pytest.importorskip("fastapi", reason="the web extra is not installed")
pytest.importorskip("openai", reason="the integrations extra is not installed")
pytest.importorskip("opentelemetry.sdk", reason="the dev extra is not installed")

from provider_mocks import ANSWER, MODEL_ANTHROPIC, MODEL_OPENAI, ProviderMock  # noqa: E402

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.integrations import anthropic as fl_anthropic  # noqa: E402
from feedbackloop.integrations import interaction_id  # noqa: E402
from feedbackloop.integrations import openai as fl_openai  # noqa: E402
from feedbackloop.producers import FeedbackClient  # noqa: E402
from feedbackloop.sinks import SinkConfig, run_query  # noqa: E402
from feedbackloop.web import WebServer  # noqa: E402

pytestmark = pytest.mark.integration

PK, SK = "pk_shop_public", "sk_shop_secret"
APP = "shop"
PAGE_ORIGIN = "http://localhost:5173"  # the app's own site; served by the test's router
CHROMIUM = os.environ.get("FEEDBACKLOOP_TEST_CHROMIUM", "/usr/bin/chromium")


class Stack:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in run_query(self.settings, sql).rows]

    def wait_rows(self, sql: str, n: int) -> list[tuple[Any, ...]]:
        def enough() -> list[tuple[Any, ...]] | None:
            rows = self.rows(sql)
            return rows if len(rows) >= n else None

        return wait_until(enough)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    prefix, db = f"i{uuid.uuid4().hex[:8]}.", f"flint_{uuid.uuid4().hex[:8]}"
    base = settings_for(
        kafka_bootstrap, clickhouse_dsn, db, prefix, tmp_path_factory.mktemp("integrations")
    )
    s = base.model_copy(
        update={
            "app_id": APP,
            "web_public_keys": {APP: PK},
            "web_secret_keys": {APP: SK},
            "web_cors_origins": [PAGE_ORIGIN],
            "producer_linger_ms": 5.0,
        }
    )
    cfg = SinkConfig(raw=True, group_id=f"g-{uuid.uuid4().hex[:6]}", max_age_s=0.2)
    with running_worker(s, cfg), WebServer(s, host="127.0.0.1", port=0) as web:
        yield Stack(s, web.url)


def test_wrapped_provider_calls_land_in_clickhouse_with_their_context(
    stack: Stack, tmp_path: Path
) -> None:
    mock = ProviderMock()
    fc = FeedbackClient(stack.settings, spool_path=tmp_path / "spool.sqlite3")
    openai_client = fl_openai.wrap(mock.openai(), fc, experiment="tone", variant="short")
    anthropic_client = fl_anthropic.wrap(mock.anthropic(), fc)
    with fc.context(session_id="wrap-session", prompt_version="v5") as ctx:
        done = openai_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Q1"}]
        )
        for _ in anthropic_client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            messages=[{"role": "user", "content": "Q2"}],
            stream=True,
        ):
            pass
    fc.thumbs(interaction_id(done), up=True)  # type: ignore[arg-type]
    stats = fc.close(timeout=30)
    assert stats.failed == stats.dropped == 0
    rows = stack.wait_rows(
        "SELECT toString(interaction_id), model, user_input, response, input_tokens, "
        "output_tokens, cost_usd, prompt_version, experiment, variant, "
        "metadata['provider'], metadata['stream'], has(mapKeys(metadata), 'ttft_ms') "
        "FROM interactions FINAL WHERE session_id = 'wrap-session' ORDER BY model DESC",
        2,
    )
    assert len(rows) == 2
    (oid, omodel, oin, oout, oit, oot, ocost, opv, oexp, ovar, oprov, ostream, ottft) = rows[0]
    assert (omodel, oin, oout, oit, oot) == (MODEL_OPENAI, "Q1", ANSWER, 12, 3)
    assert ocost == pytest.approx((10 * 0.15 + 2 * 0.075 + 3 * 0.60) / 1e6)
    assert (opv, oexp, ovar, oprov, ostream, ottft) == ("v5", "tone", "short", "openai", "false", 0)
    assert oid == str(interaction_id(done))
    amodel, ain, aout, ait, aot, aprov, astream, attft = (
        rows[1][i] for i in (1, 2, 3, 4, 5, 10, 11, 12)
    )
    assert (amodel, ain, aout, ait, aot) == (MODEL_ANTHROPIC, "Q2", ANSWER, 40, 5)
    assert (aprov, astream, attft) == ("anthropic", "true", 1)
    assert set(ctx.interaction_ids) == {uuid.UUID(r[0]) for r in rows}
    thumbs = stack.wait_rows(f"SELECT thumbs FROM feedback FINAL WHERE interaction_id = '{oid}'", 1)
    assert thumbs == [(1,)]


def test_spans_from_the_opentelemetry_sdk_land_in_clickhouse(stack: Stack) -> None:
    import otel_spans as spans
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tp = spans.provider(**{"feedbackloop.prompt_version": "otel-v1"})
    tp.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(
                endpoint=f"{stack.url}/v1/traces", headers={"Authorization": f"Bearer {PK}"}
            )
        )
    )
    conversation = f"otel-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        spans.chat_span(
            tp,
            f"question {i}",
            f"answer {i}",
            **{
                "gen_ai.conversation.id": conversation,
                "feedbackloop.experiment": "otel-exp",
                "feedbackloop.variant": "a" if i % 2 else "b",
            },
        )
    spans.other_spans(tp, n=10)
    assert tp.force_flush(30_000)
    tp.shutdown()
    rows = stack.wait_rows(
        "SELECT app_id, user_input, response, model, input_tokens, output_tokens, "
        "prompt_version, experiment, variant, metadata['source'] FROM interactions FINAL "
        f"WHERE session_id = '{conversation}' ORDER BY user_input",
        5,
    )
    assert [r[1] for r in rows] == [f"question {i}" for i in range(5)]
    assert {r[0] for r in rows} == {APP}
    assert all(r[2] == r[1].replace("question", "answer") for r in rows)
    assert {r[3:7] for r in rows} == {("gpt-4o-mini-2024-07-18", 100, 20, "otel-v1")}
    assert sorted(r[8] for r in rows) == ["a", "a", "b", "b", "b"]
    assert {r[9] for r in rows} == {"otlp"}


def _chromium(sync_api: Any, pw: Any) -> Any:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    return pw.chromium.launch(
        executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
        headless=True,
        args=[
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # The test's "public" page (served by the router) talks to a collector on
            # loopback, which Chromium's Local Network Access blocks; a real site's
            # collector is not on the visitor's machine.
            "--disable-features=LocalNetworkAccessChecks,BlockInsecurePrivateNetworkRequests",
        ],
    )


_SELECT_ANSWER = """() => {
  const range = document.createRange();
  range.selectNodeContents(document.getElementById("answer"));
  getSelection().removeAllRanges();
  getSelection().addRange(range);
}"""


def _page_html(collector: str, session: str, ids: list[str], dnt: bool = False) -> str:
    a, b, c, d = ids
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Shop</title></head>
<body>
  <div id="answer" data-feedbackloop-interaction="{a}">Reset it under Settings, Password.</div>
  <div id="thumbs" data-feedbackloop-widget="thumbs" data-feedbackloop-for="{a}"></div>
  <textarea id="draft" data-feedbackloop-interaction="{b}">Dear customer, thanks.</textarea>
  <div id="earlier" data-feedbackloop-interaction="{d}">Followed by more conversation.</div>
  <div id="stars" data-feedbackloop-widget="rating" data-feedbackloop-for="{d}"></div>
  <div id="ignored" data-feedbackloop-interaction="{c}">An answer nobody touches.</div>
  <button id="elsewhere">ok</button>
  <script src="{collector}/sdk/feedbackloop.js" data-key="{PK}" data-session="{session}"
          data-respect-dnt="{"true" if dnt else "false"}"></script>
</body></html>"""


def test_the_browser_snippet_reports_feedback_and_implicit_signals_to_clickhouse(
    stack: Stack,
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    session = f"browser-{uuid.uuid4().hex[:8]}"
    ids = [str(uuid.uuid4()) for _ in range(4)]
    a, b, c, d = ids
    posted: list[int] = []
    console: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = _chromium(sync_api, pw)
        try:
            page = browser.new_page()
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            html = _page_html(stack.url, session, ids)
            page.route(
                f"{PAGE_ORIGIN}/**",
                lambda route: route.fulfill(status=200, body=html, content_type="text/html"),
            )
            refused = {"n": 0}

            def collector(route: Any) -> None:
                # The collector is briefly unavailable: the first batch must be retried.
                if route.request.method == "POST" and refused["n"] == 0:
                    refused["n"] += 1
                    route.fulfill(
                        status=503,
                        body='{"error":"spool_full","message":"retry"}',
                        headers={"Access-Control-Allow-Origin": PAGE_ORIGIN},
                    )
                    return
                if route.request.method == "POST":
                    posted.append(len(route.request.post_data or ""))
                route.continue_()

            page.route(f"{stack.url}/v1/events*", collector)
            page.goto(f"{PAGE_ORIGIN}/chat")
            page.wait_for_selector("#thumbs button[data-feedbackloop-thumbs='up']")
            # copy: select the answer's text and press Ctrl+C
            page.evaluate(_SELECT_ANSWER)
            page.keyboard.press("Control+C")
            page.locator("#thumbs button[data-feedbackloop-thumbs='up']").click()
            # edit: change the editable answer, then leave it
            page.locator("#draft").click()
            page.keyboard.press("End")
            page.keyboard.type(" Regards")
            page.locator("#elsewhere").click()
            page.evaluate(f"feedbackloop.rate('{b}', 4)")
            page.locator("#stars button[data-feedbackloop-rating='5']").click()
            page.evaluate("feedbackloop.outcome('purchase', {value: 20})")
            for _ in range(100):  # the refused batch goes out again after its back-off
                if posted:
                    break
                page.wait_for_timeout(100)
            page.wait_for_timeout(1000)  # on screen for a while: dwell
            # leaving the page: dwell and abandon go out with sendBeacon
            page.goto("about:blank")
            page.wait_for_timeout(500)
        finally:
            browser.close()
    assert refused["n"] == 1 and posted, "the refused batch was not retried"
    feedback = stack.wait_rows(
        "SELECT toString(interaction_id), kind, thumbs, rating FROM feedback FINAL "
        f"WHERE session_id = '{session}' ORDER BY kind, rating",
        3,
    )
    assert feedback == [(b, "rating", 0, 4), (d, "rating", 0, 5), (a, "thumbs", 1, None)]
    outcomes = stack.wait_rows(
        f"SELECT outcome, value FROM outcomes FINAL WHERE session_id = '{session}'", 1
    )
    assert outcomes == [("purchase", 20.0)]
    sql = (
        "SELECT toString(interaction_id), signal, copied_chars, edited_text, edit_distance, "
        f"dwell_ms FROM implicit FINAL WHERE session_id = '{session}' ORDER BY signal, "
        "interaction_id"
    )

    def complete() -> list[tuple[Any, ...]] | None:
        rows = stack.rows(sql)
        signals = {r[1] for r in rows}
        dwelt = {r[0] for r in rows if r[1] == "dwell"}
        done = {"copy", "edit", "abandon"} <= signals and len(dwelt) == 4
        return rows if done else None

    implicit = wait_until(complete)
    by_signal: dict[str, list[tuple[Any, ...]]] = {}
    for row in implicit:
        by_signal.setdefault(row[1], []).append(row)
    assert [(r[0], r[2]) for r in by_signal["copy"]] == [
        (a, len("Reset it under Settings, Password."))
    ]
    assert [(r[0], r[3], r[4]) for r in by_signal["edit"]] == [
        (b, "Dear customer, thanks. Regards", len(" Regards"))
    ]
    # only the latest answer, untouched, was abandoned; an earlier untouched one was not
    assert [r[0] for r in by_signal["abandon"]] == [c]
    dwell: dict[str, float] = {}
    for r in by_signal["dwell"]:  # sent as increments (page hidden, then left)
        dwell[r[0]] = dwell.get(r[0], 0.0) + r[5]
    assert set(dwell) == {a, b, c, d} and all(ms >= 1000 for ms in dwell.values()), dwell
    errors = [m for m in console if m.startswith(("error", "pageerror"))]
    # the one refused batch is a console error of the browser's own (a 503); nothing else
    assert all("503" in m for m in errors), errors


def test_the_browser_snippet_sends_nothing_when_do_not_track_is_respected(stack: Stack) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    ids = [str(uuid.uuid4()) for _ in range(4)]
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = _chromium(sync_api, pw)
        try:
            page = browser.new_page()
            page.add_init_script(
                "Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})"
            )
            html = _page_html(stack.url, "dnt-session", ids, dnt=True)
            page.route(
                f"{PAGE_ORIGIN}/**",
                lambda route: route.fulfill(status=200, body=html, content_type="text/html"),
            )
            page.on("request", lambda r: requests.append(r.url) if "/v1/" in r.url else None)
            page.goto(f"{PAGE_ORIGIN}/chat")
            page.wait_for_function("window.feedbackloop !== undefined")
            assert page.evaluate("feedbackloop.enabled") is False
            page.evaluate(f"feedbackloop.thumbs('{ids[0]}', true); feedbackloop.flush()")
            page.locator("#answer").click(click_count=3)
            page.keyboard.press("Control+C")
            page.goto("about:blank")
            page.wait_for_timeout(300)
        finally:
            browser.close()
    assert requests == []
