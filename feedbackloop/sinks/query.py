"""Read-only analyst queries: ``feedbackloop sql "SELECT ..."``.

Embedded chDB admits one process per data directory, so while the sink worker runs it owns
the directory and serves queries itself: :class:`QueryEndpoint` listens on 127.0.0.1 (an
ephemeral port) and advertises ``{url, token, pid}`` in ``<data_dir>/sink-query.json``
(mode 0600; the token keeps other local users out). :func:`run_query` uses that endpoint
when a live worker advertises one, and otherwise opens ClickHouse itself.

Read-only twice over: statements other than SELECT / WITH / SHOW / DESCRIBE / EXPLAIN /
EXISTS are refused before they are sent, and the client that runs them has ``readonly=1``
in its session, so ClickHouse refuses writes and setting changes as well. Against a server,
also give the analysts' URL a read-only user (``--url`` / ``FEEDBACKLOOP_SQL_URL``).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import threading
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from feedbackloop.config import Settings
from feedbackloop.errors import ClickHouseError, FeedbackLoopError

__all__ = [
    "QueryEndpoint",
    "QueryResult",
    "ReadOnlyViolation",
    "check_read_only",
    "discovery_path",
    "format_result",
    "run_query",
]

log = logging.getLogger(__name__)

DISCOVERY_FILE = "sink-query.json"
_ALLOWED = ("select", "with", "show", "describe", "desc", "explain", "exists")
_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.S)


class ReadOnlyViolation(FeedbackLoopError):
    """The statement would write or change state; analyst queries are read-only."""


@dataclass(frozen=True)
class QueryResult:
    """Column names, ClickHouse type names and rows of one query."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]


def check_read_only(sql: str) -> str:
    """Return ``sql`` stripped if it is one read-only statement, else raise ReadOnlyViolation."""
    text = _COMMENT.sub(" ", sql).strip().rstrip(";").strip()
    if not text:
        raise ReadOnlyViolation("empty query")
    # A second statement could write; quotes make a literal ';' legal, so only reject a
    # semicolon outside string literals.
    if ";" in re.sub(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`", "", text):
        raise ReadOnlyViolation("one statement at a time")
    first = text.split(None, 1)[0].lower().lstrip("(")
    if first not in _ALLOWED:
        raise ReadOnlyViolation(
            f"only read-only statements are allowed ({', '.join(a.upper() for a in _ALLOWED)}); "
            f"got {first.upper()}"
        )
    # SELECT ... INTO OUTFILE writes a file on the server side.
    if re.search(r"\binto\s+outfile\b", text, re.I):
        raise ReadOnlyViolation("INTO OUTFILE writes files; not allowed")
    return text


def discovery_path(settings: Settings) -> Path:
    """Where a running worker advertises its query endpoint."""
    return settings.data_dir / DISCOVERY_FILE


def readonly_client(dsn: str, database: str | None) -> Any:
    """A client whose session has ``readonly=1``: ClickHouse itself refuses any write."""
    from feedbackloop.infra import get_client

    kwargs: dict[str, Any] = {"settings": {"readonly": 1}}
    if database:
        kwargs["database"] = database
    return get_client(dsn, **kwargs)


def execute(client: Any, sql: str, max_rows: int = 10_000) -> QueryResult:
    """Run one checked read-only statement on ``client``."""
    text = check_read_only(sql)
    try:
        res = client.query(text)
    except Exception as e:
        raise ClickHouseError.from_driver(e, _clean(str(e))) from e
    rows = [list(r) for r in res.result_rows[:max_rows]]
    return QueryResult(list(res.column_names), [t.name for t in res.column_types], rows)


class QueryEndpoint:
    """A tiny HTTP endpoint in the sink process that runs read-only queries.

    ``POST /query`` with JSON ``{"sql": ..., "max_rows": ...}`` and header
    ``Authorization: Bearer <token>``; answers ``{"columns", "types", "rows"}`` or
    ``{"error"}`` with status 400 (refused or failed query) / 401 (bad token).
    """

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.token = secrets.token_urlsafe(24)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Open the read-only client, start serving and write the discovery file."""
        self._client = readonly_client(
            self.settings.clickhouse_dsn, self.settings.clickhouse_database
        )
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                endpoint._handle(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("query endpoint: " + format, *args)

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sink-query", daemon=True
        )
        self._thread.start()
        path = discovery_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": self.url, "token": self.token, "pid": os.getpid()}, f)
        os.replace(tmp, path)  # readers never see a half-written file
        log.info("read-only query endpoint on %s", self.url)

    def stop(self) -> None:
        """Stop serving and remove the discovery file (if it is still ours)."""
        path = discovery_path(self.settings)
        try:
            if json.loads(path.read_text()).get("token") == self.token:
                path.unlink()
        except (OSError, ValueError):
            pass
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        if req.path != "/query":
            return _reply(req, 404, {"error": "not found"})
        if not secrets.compare_digest(req.headers.get("Authorization", ""), f"Bearer {self.token}"):
            return _reply(req, 401, {"error": "bad token"})
        try:
            body = json.loads(req.rfile.read(int(req.headers.get("Content-Length", 0))))
            sql, max_rows = str(body["sql"]), int(body.get("max_rows", 10_000))
        except (ValueError, KeyError, TypeError):
            return _reply(req, 400, {"error": 'expected JSON {"sql": ...}'})
        try:
            with self._lock:  # one chDB session handle; serialize its use
                res = execute(self._client, sql, max_rows)
        except FeedbackLoopError as e:
            kind = "refused" if isinstance(e, ReadOnlyViolation) else "failed"
            reply: dict[str, Any] = {"error": str(e), "kind": kind}
            if isinstance(e, ClickHouseError):
                reply |= {"code": e.code, "name": e.name}
            return _reply(req, 400, reply)
        _reply(req, 200, {"columns": res.columns, "types": res.types, "rows": res.rows})


def _reply(req: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
    body = json.dumps(payload, default=_json_default).encode()
    req.send_response(status)
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(body)))
    req.end_headers()
    req.wfile.write(body)


def _json_default(v: Any) -> Any:
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, (uuid.UUID, decimal.Decimal, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    return str(v)


def _clean(msg: str) -> str:
    from clickhouse_connect.driver.exceptions import scrub_error_details

    return scrub_error_details(msg.strip().splitlines()[0] if msg.strip() else msg)


def _live_endpoint(settings: Settings) -> dict[str, Any] | None:
    path = discovery_path(settings)
    try:
        info = json.loads(path.read_text())
        pid = int(info["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a worker that died without cleaning up
    except PermissionError:
        pass  # alive, another user's
    return info


def run_query(
    settings: Settings, sql: str, *, url: str | None = None, max_rows: int = 10_000
) -> QueryResult:
    """Run a read-only query: through a running worker's endpoint if one is live, else directly.

    ``url`` (a ClickHouse URL, ideally with a read-only user) bypasses discovery.
    """
    check_read_only(sql)  # refuse early, whichever path runs it
    if url is None:
        info = _live_endpoint(settings)
        if info is not None:
            return _via_endpoint(info, sql, max_rows)
    dsn = url or settings.clickhouse_dsn
    client = readonly_client(dsn, settings.clickhouse_database)
    try:
        return execute(client, sql, max_rows)
    finally:
        client.close()


def _via_endpoint(info: dict[str, Any], sql: str, max_rows: int) -> QueryResult:
    req = urllib.request.Request(
        f"{info['url']}/query",
        data=json.dumps({"sql": sql, "max_rows": max_rows}).encode(),
        headers={"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            payload = json.loads(resp.read())
    except urllib.error.HTTPError as e:
        try:
            payload = json.loads(e.read())
        except ValueError:
            payload = {"error": str(e)}
        if payload.get("kind") == "refused":
            raise ReadOnlyViolation(payload.get("error", "refused")) from e
        raise ClickHouseError(
            payload.get("error", str(e)), code=payload.get("code"), name=payload.get("name")
        ) from e
    except OSError as e:
        raise ClickHouseError(
            f"the sink worker (pid {info.get('pid')}) advertises {info.get('url')} but it does "
            f"not answer: {e}"
        ) from e
    return QueryResult(payload["columns"], payload["types"], payload["rows"])


def format_result(res: QueryResult, fmt: str = "table") -> str:
    """Render as an aligned text table, CSV or JSON (a list of objects)."""
    if fmt == "json":
        objs = [dict(zip(res.columns, r, strict=True)) for r in res.rows]
        return json.dumps(objs, default=_json_default, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(res.columns)
        w.writerows([[_cell(v) for v in r] for r in res.rows])
        return buf.getvalue().rstrip("\n")
    if fmt != "table":
        raise ValueError(f"unknown format {fmt!r}: table, csv or json")
    cells = [[_cell(v) for v in r] for r in res.rows]
    widths = [
        min(60, max([len(c)] + [len(r[i]) for r in cells])) for i, c in enumerate(res.columns)
    ]

    def line(vals: list[str]) -> str:
        cut = [v if len(v) <= w else v[: w - 1] + "…" for v, w in zip(vals, widths, strict=True)]
        return " | ".join(v.ljust(w) for v, w in zip(cut, widths, strict=True)).rstrip()

    out = [line(res.columns), "-+-".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    out.append(f"({len(res.rows)} row{'s' if len(res.rows) != 1 else ''})")
    return "\n".join(out)


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dt.datetime, dt.date)):
        return v.isoformat()
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v, default=_json_default)
    return str(v).replace("\n", "\\n")
