"""The dashboard's live-experiment buttons in a real browser: confirm, give a reason, and the
change is a new version on the control topic, with who and why."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from feedbackloop.config import Settings
from feedbackloop.control import ControlPlane, Status, new_experiment
from feedbackloop.infra import ensure_topics
from feedbackloop.schemas import Topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = os.environ.get("FEEDBACKLOOP_TEST_CHROMIUM", "/usr/bin/chromium")


def test_a_dashboard_button_pauses_a_live_experiment_after_confirmation(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> None:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    from feedbackloop.web import WebServer

    s = Settings(
        bootstrap_servers=kafka_bootstrap,
        topic_prefix=topic_prefix,
        data_dir=tmp_path,
        web_port=0,
        web_secret_keys={"shop": "sk-shop"},
    )
    ensure_topics(s.kafka_client_config(), Topics(topic_prefix).all(), 2)
    plane = ControlPlane(s)
    plane.create(
        new_experiment(
            "shop",
            "prompt",
            {"v1": 0.5, "v2": 0.5},
            changed_by="alice",
            reason="start",
            canary_steps=(0.05, 0.5),
        )
    )
    server = WebServer(s, "127.0.0.1", 0).start()
    dialogs: list[str] = []
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                headless=True,
                args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            )
            try:
                page = browser.new_page()

                def answer(d: object) -> None:
                    dialogs.append(d.type)  # type: ignore[attr-defined]
                    if d.type == "prompt":  # type: ignore[attr-defined]
                        d.accept("users complain")  # type: ignore[attr-defined]
                    else:
                        d.accept()  # type: ignore[attr-defined]

                page.on("dialog", answer)
                page.goto(f"{server.url}/dashboard/#key=sk-shop")
                item = page.locator("#live-list li[data-experiment='prompt']")
                item.wait_for(timeout=30_000)
                assert "v1 running" in item.inner_text()
                item.locator("button[data-action='pause']").click()
                page.locator(
                    "#live-list li[data-experiment='prompt']", has_text="v2 paused"
                ).wait_for(timeout=30_000)
            finally:
                browser.close()
    finally:
        server.stop()
    assert dialogs == ["confirm", "prompt"]
    deadline = time.monotonic() + 10
    while (cfg := plane.get("shop", "prompt")).version < 2:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert cfg.status is Status.paused and cfg.reason == "users complain"
    assert cfg.changed_by == "dashboard (secret:shop)"
