"""The browser snippet, ``GET /sdk/feedbackloop.js``: thumbs, ratings, copy, edit, dwell and
abandon from a web page to this collector, with the app's public key.

The script (``web/sdk/feedbackloop.js``) is plain ES5-compatible JavaScript with no
dependencies, served as is: a page includes it with one ``<script>`` tag (README,
"Integrations"). It is cached by browsers for an hour and revalidated by its ETag, and may be
loaded by any origin (``Cross-Origin-Resource-Policy: cross-origin``): it holds no secret.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from fastapi import APIRouter, Request, Response

__all__ = ["SCRIPT", "router"]

SCRIPT = Path(__file__).with_name("sdk") / "feedbackloop.js"
_TYPE = "text/javascript; charset=utf-8"


@functools.cache
def _script() -> tuple[bytes, str]:
    body = SCRIPT.read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def router() -> APIRouter:
    """The snippet's route (``/sdk``)."""
    r = APIRouter(prefix="/sdk", tags=["browser"])

    @r.get(
        "/feedbackloop.js",
        summary="The browser snippet",
        description="Explicit feedback (thumbs, ratings, comments) and implicit signals "
        "(copy, edit, dwell, abandon) from a web page, batched and posted to /v1/events with "
        "the public key. No authentication: the script holds no secret.",
        response_class=Response,
        responses={
            200: {"content": {"text/javascript": {"schema": {"type": "string"}}}},
            304: {"description": "Not modified (If-None-Match matched the ETag)."},
        },
    )
    async def feedbackloop_js(request: Request) -> Response:
        body, etag = _script()
        headers = {
            "ETag": etag,
            "Cache-Control": "public, max-age=3600",
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type=_TYPE, headers=headers)

    return r
