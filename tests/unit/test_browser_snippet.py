"""``GET /sdk/feedbackloop.js``: served as is, cacheable, small, and self-contained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the web extra is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.web import create_app  # noqa: E402
from feedbackloop.web.snippet import SCRIPT  # noqa: E402


class _Sink:
    def send(self, event: object) -> bool:
        return True

    def send_dead_letter(self, letter: object) -> bool:
        return True


def test_the_snippet_is_served_cacheable_with_an_etag(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path, web_public_keys={"shop": "pk_1"}), client=_Sink())
    with TestClient(app) as http:
        r = http.get("/sdk/feedbackloop.js")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/javascript")
        assert r.content == SCRIPT.read_bytes()
        assert r.headers["cache-control"] == "public, max-age=3600"
        assert r.headers["cross-origin-resource-policy"] == "cross-origin"
        again = http.get("/sdk/feedbackloop.js", headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""


def test_the_snippet_is_small_and_loads_nothing_from_elsewhere() -> None:
    text = SCRIPT.read_text()
    assert len(text.encode()) < 20_000
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)  # comments may show examples
    assert "http://" not in code and "https://" not in code
    assert "import " not in code and "eval(" not in code
    for call in ("thumbs", "rate", "comment", "implicit", "outcome", "widget", "flush"):
        assert re.search(rf"\b{call}: function", code), call
