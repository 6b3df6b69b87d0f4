"""Collector and dashboard on the real pipeline: HTTP → FeedbackClient → broker → SinkWorker
(raw mode) → ClickHouse (chDB by default) → read API → a real headless browser."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sink_helpers import running_worker, settings_for, wait_until

pytest.importorskip("fastapi", reason="the web extra is not installed")
httpx = pytest.importorskip("httpx")

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.sinks import SinkConfig, run_query  # noqa: E402
from feedbackloop.web import WebServer  # noqa: E402

pytestmark = pytest.mark.integration

PK, SK = "pk_demo_public", "sk_demo_secret"
APP, EXPERIMENT = "demoapp", "prompt-v2"
CHROMIUM = os.environ.get("FEEDBACKLOOP_TEST_CHROMIUM", "/usr/bin/chromium")


class Stack:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings = settings
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, path: str, body: Any, key: str = PK) -> httpx.Response:
        return self.http.post(path, json=body, headers={"Authorization": f"Bearer {key}"})

    def count(self, sql: str) -> int:
        return int(run_query(self.settings, sql).rows[0][0])


@pytest.fixture(scope="module")
def stack(
    kafka_bootstrap: str, clickhouse_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """One sink worker and one web server for the module (starting them is the slow part)."""
    prefix, db = f"w{uuid.uuid4().hex[:8]}.", f"flweb_{uuid.uuid4().hex[:8]}"
    data_dir = tmp_path_factory.mktemp("web")
    base = settings_for(kafka_bootstrap, clickhouse_dsn, db, prefix, data_dir)
    s = base.model_copy(
        update={
            "web_public_keys": {APP: PK},
            "web_secret_keys": {APP: SK},
            "producer_linger_ms": 5.0,
        }
    )
    cfg = SinkConfig(raw=True, group_id=f"g-{uuid.uuid4().hex[:6]}", max_age_s=0.2)
    with running_worker(s, cfg), WebServer(s, host="127.0.0.1", port=0) as web:
        st = Stack(s, web.url)
        yield st
        st.http.close()


def _seed(n_sessions: int = 120, seed: int = 3) -> list[dict[str, Any]]:
    """An experiment over the last hour: treatment is liked more (0.8 vs 0.6), copies more
    and purchases more; every event as the JSON a browser would send."""
    rng = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc)
    events: list[dict[str, Any]] = []
    for s in range(n_sessions):
        variant = "control" if s % 2 == 0 else "treatment"
        session = f"sess-{seed}-{s}"
        for k in range(3):
            t = now - dt.timedelta(minutes=60 - (s * 3 + k) * 50 / (n_sessions * 3))
            iid = str(uuid.uuid4())
            code = rng.random() < 0.3
            events.append(
                {
                    "event_type": "interaction",
                    "session_id": session,
                    "interaction_id": iid,
                    "occurred_at": t.isoformat(),
                    "user_input": "def f(x): return x" if code else "How do I reset my password?",
                    "response": "Here is how.",
                    "model": "m-large",
                    "prompt_version": "v2" if variant == "treatment" else "v1",
                    "experiment": EXPERIMENT,
                    "variant": variant,
                    "latency_ms": 300 + 50 * k,
                }
            )
            p_up = (0.8 if variant == "treatment" else 0.6) - (0.2 if code else 0.0)
            fb_t = (t + dt.timedelta(seconds=5)).isoformat()
            events.append(
                {
                    "event_type": "feedback",
                    "session_id": session,
                    "interaction_id": iid,
                    "occurred_at": fb_t,
                    "kind": "thumbs",
                    "thumbs": 1 if rng.random() < p_up else -1,
                }
            )
            if rng.random() < (0.5 if variant == "treatment" else 0.3):
                events.append(
                    {
                        "event_type": "implicit",
                        "session_id": session,
                        "interaction_id": iid,
                        "occurred_at": fb_t,
                        "signal": "copy",
                        "copied_chars": 40,
                    }
                )
        if rng.random() < (0.4 if variant == "treatment" else 0.25):
            events.append(
                {
                    "event_type": "outcome",
                    "session_id": session,
                    "outcome": "purchase",
                    "value": 20.0,
                    "occurred_at": now.isoformat(),
                }
            )
    return events


def test_collector_batches_land_in_clickhouse_and_invalid_ones_in_dead_letters(
    stack: Stack,
) -> None:
    db = stack.settings.clickhouse_database
    good = _seed(20, seed=11)
    interactions = sum(1 for e in good if e["event_type"] == "interaction")
    feedback = sum(1 for e in good if e["event_type"] == "feedback")
    bad = [
        {
            "event_type": "feedback",
            "session_id": "x",
            "interaction_id": str(uuid.uuid4()),
            "kind": "rating",
            "rating": 11,
        }
    ]
    accepted = 0
    for i in range(0, len(good), 40):
        r = stack.post("/v1/events", {"events": good[i : i + 40] + (bad if i == 0 else [])})
        assert r.status_code == 202, r.text
        accepted += r.json()["accepted"]
    assert accepted == len(good)
    one = {
        "session_id": "single",
        "interaction_id": str(uuid.uuid4()),
        "kind": "comment",
        "text": "great answer",
    }
    assert stack.post("/v1/feedback", one).status_code == 202
    wait_until(
        lambda: (
            stack.count("SELECT count() FROM interactions FINAL WHERE session_id LIKE 'sess-11-%'")
            == interactions
        )
    )
    # Feedback may land one flush after its interactions (the sink worker's compactor shares
    # embedded chDB): wait for the exact count as for the interactions.
    wait_until(
        lambda: (
            stack.count("SELECT count() FROM feedback FINAL WHERE session_id LIKE 'sess-11-%'")
            == feedback
        )
    )
    wait_until(
        lambda: stack.count("SELECT count() FROM feedback FINAL WHERE session_id = 'single'") == 1
    )
    assert stack.count(f"SELECT uniqExact(app_id) FROM {db}.interactions") == 1
    # The invalid one reached the dead-letter table with the collector as its source.
    row = wait_until(
        lambda: (
            run_query(
                stack.settings,
                "SELECT reason, source, error FROM dead_letters WHERE source = 'collector'",
            ).rows
        )
    )
    assert row[0][0] == "validation_error" and "rating" in row[0][2]


def test_dashboard_in_a_real_browser(stack: Stack, artifacts_dir: Path) -> None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    events = _seed()
    # A shadow candidate over the collector: every answer it gives is the live one reworded.
    shadows = [
        {
            "event_type": "interaction",
            "session_id": e["session_id"],
            "occurred_at": e["occurred_at"],
            "user_input": "",
            "response": "Here is how to do it.",
            "model": "m-next",
            "prompt_version": "v3-shadow",
            "latency_ms": 250,
            "shadow": True,
            "metadata": {"shadow_of": e["interaction_id"]},
        }
        for e in events
        if e["event_type"] == "interaction"
    ]
    events += shadows
    for i in range(0, len(events), 500):
        r = stack.post("/v1/events", events[i : i + 500])
        assert r.status_code == 202 and r.json()["rejected"] == 0, r.text
    n_inter = sum(1 for e in events if e["event_type"] == "interaction") - len(shadows)
    wait_until(
        lambda: (
            stack.count("SELECT count() FROM interactions FINAL WHERE session_id LIKE 'sess-3-%'")
            == n_inter + len(shadows)
        )
    )
    wait_until(
        lambda: (
            stack.count("SELECT count() FROM feedback FINAL WHERE session_id LIKE 'sess-3-%'")
            == n_inter
        )
    )

    # The read API first (clearer failures than the page), with the secret key only.
    auth = {"Authorization": f"Bearer {SK}"}
    assert (
        stack.http.get("/api/experiments", headers={"Authorization": f"Bearer {PK}"}).status_code
        == 403
    )
    exps = stack.http.get("/api/experiments", headers=auth).json()
    assert [(e["experiment"], e["variants"]) for e in exps] == [
        (EXPERIMENT, ["control", "treatment"])
    ]
    detail = stack.http.get(f"/api/experiments/{APP}/{EXPERIMENT}", headers=auth).json()
    rep = detail["report"]
    assert [v["variant"] for v in rep["variants"]] == ["control", "treatment"]
    assert rep["decisions"][0]["treatment"] == "treatment"
    assert all(len(detail["series"][v]) >= 5 for v in ("control", "treatment"))
    assert {"implicit.copy", "outcome.purchase.session"} <= {m["name"] for m in rep["metrics"]}
    for path in ("/api/failures", "/api/alerts", "/api/prompt-versions"):
        assert stack.http.get(path, headers=auth).status_code == 200, path
    # shadow answers never enter the experiment, and the shadow report pairs them
    live = stack.count(f"SELECT count() FROM interactions FINAL WHERE experiment = '{EXPERIMENT}'")
    assert sum(v["interactions"] for v in rep["variants"]) == live
    assert stack.count("SELECT count() FROM interactions FINAL WHERE shadow") == len(shadows)
    cands = stack.http.get("/api/shadow", headers=auth).json()
    assert [(c["candidate"], c["shadows"]) for c in cands] == [("v3-shadow", len(shadows))]
    shadow_rep = stack.http.get(
        "/api/shadow/report", params={"candidate": "v3-shadow"}, headers=auth
    ).json()
    assert shadow_rep["pairs"] == len(shadows) and shadow_rep["accepted"]["n"] > 0
    assert "Recommendation:" in shadow_rep["text"]
    too_long = stack.http.get("/api/shadow/report", params={"candidate": "x" * 201}, headers=auth)
    assert too_long.status_code == 422

    console: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
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
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.on(
                "console",
                lambda m: (
                    console.append(f"{m.type}: {m.text}")
                    if m.type in ("error", "warning")
                    else None
                ),
            )
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.on("requestfailed", lambda r: console.append(f"requestfailed: {r.url}"))
            # The key travels in the fragment: never sent to the server, moved to storage.
            page.goto(f"{stack.url}/dashboard/#key={SK}")
            page.wait_for_selector("body[data-ready='1']", timeout=30_000)
            page.wait_for_timeout(300)  # let Chart.js finish its first layout
            variants = page.locator("[data-testid=variants] [data-variant]").all_inner_texts()
            assert variants == ["control", "treatment"]
            assert page.locator("#exp-list li").count() == 1
            decision = page.locator("[data-testid=decisions] .decision").first
            assert "treatment vs control" in decision.inner_text()
            assert "sequential p" in decision.inner_text()
            n_sets = page.evaluate(
                "Chart.getChart('chart-satisfaction').data.datasets.filter(d => !d.band).length"
            )
            assert n_sets == 2
            shadow_row = page.locator("[data-testid=shadow] tr").nth(1).inner_text()
            assert "v3-shadow" in shadow_row and "keep shadowing" in shadow_row
            assert "#key=" not in page.url
            shot = artifacts_dir / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 20_000
    assert console == [], "\n".join(console)
    json.dumps(detail)  # JSON-ready all the way down (no NaN)
