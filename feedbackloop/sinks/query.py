"""Read-only analyst queries: ``feedbackloop sql "SELECT ..."``.

Embedded chDB admits one process per data directory, so while the sink worker runs it owns
the directory and serves queries itself: :class:`QueryEndpoint` listens on 127.0.0.1 (an
ephemeral port) and advertises ``{url, token, pid}`` in ``<data_dir>/sink-query.json``
(mode 0600; the token keeps other local users out). :func:`run_query` uses that endpoint
when a live worker advertises one, and otherwise opens ClickHouse itself.

Read-only is enforced by ClickHouse, never by rewriting the text (issue 13):

* the statement is parsed by ClickHouse's own parser (``formatQuerySingleLine`` with the text
  as a bound parameter): exactly one statement, and its normalized form must start with
  SELECT / WITH / SHOW / DESCRIBE / EXPLAIN / EXISTS and have no ``INTO OUTFILE``;
* its syntax tree (``EXPLAIN AST``) may name no table function but the few that read nothing
  outside the engine (:data:`SAFE_TABLE_FUNCTIONS`), and no function that reads files
  (:data:`DENIED_FUNCTIONS`): ``DESCRIBE file(...)``, ``DESCRIBE url(...)`` and
  ``SELECT file('/etc/passwd')`` pass ClickHouse's ``readonly`` check, so they are refused
  here;
* it runs exactly as written, in a session with ``readonly=1`` and limits the query cannot
  lift (``max_execution_time``, ``max_memory_usage``, ``max_result_rows`` with ``break``,
  ``max_threads``: :class:`~feedbackloop.config.Settings` ``sql_*``), so ClickHouse refuses
  writes, setting changes and file / network table functions, and stops runaway reads.

The endpoint runs one analyst query at a time on its own ClickHouse session (the sink's
inserts run on another and are not queued behind it); a query that waits more than a few
seconds for its turn is answered "busy". Against a server, also give the analysts' URL a
read-only user (``--url`` / ``FEEDBACKLOOP_SQL_URL``).
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
import queue
import re
import secrets
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from feedbackloop.config import Settings
from feedbackloop.errors import ClickHouseError, FeedbackLoopError

__all__ = [
    "QueryEndpoint",
    "QueryResult",
    "ThreadRunner",
    "ReadOnlyViolation",
    "SAFE_TABLE_FUNCTIONS",
    "READ_SETTINGS",
    "analyst_settings",
    "check_read_only",
    "discovery_path",
    "inspect_statement",
    "format_result",
    "run_query",
]

log = logging.getLogger(__name__)

DISCOVERY_FILE = "sink-query.json"
_ALLOWED = ("select", "with", "show", "describe", "desc", "explain", "exists")
#: Table functions that only generate or reshape values: nothing outside the engine.
SAFE_TABLE_FUNCTIONS = frozenset(
    {"numbers", "numbers_mt", "zeros", "zeros_mt", "values", "generate_series", "generateSeries"}
)
#: Ordinary functions that read files or the network (``file('/etc/passwd')`` returns the
#: file's text, and ``readonly`` allows it), refused wherever they appear.
DENIED_FUNCTIONS = frozenset({"file", "reversednsquery"})
_LEADING = re.compile(r"\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\(", re.S)
_AST_LINE = re.compile(r"^( *)(\S+)(?: (\S+))?")
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`(?:[^`\\]|\\.)*`")
#: How long a query waits for one of the endpoint's sessions before it is answered "busy".
BUSY_WAIT_S = 5.0
#: Queries the endpoint runs at once, each on a session of its own with its own limits (a
#: report read sends its independent statements side by side: derived.READ_LANES). Each
#: may use ``sql_max_memory_bytes`` and ``sql_max_threads``, so this bounds what analysts
#: can take from the sink's process.
ENDPOINT_SESSIONS = 4
#: The endpoint drops a client that sends nothing for this long.
READ_TIMEOUT_S = 10.0
MAX_REQUEST_BYTES = 1_000_000
#: Most rows one query may return (the analysis layer asks for up to 100,000).
MAX_ROWS = 1_000_000


class ReadOnlyViolation(FeedbackLoopError):
    """The statement would write or change state; analyst queries are read-only."""


@dataclass(frozen=True)
class QueryResult:
    """Column names, ClickHouse type names and rows of one query; ``truncated`` when the
    result had more rows than asked for."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    truncated: bool = False


def check_read_only(sql: str) -> str:
    """``sql`` unchanged if its first keyword is a read-only one, else ReadOnlyViolation.

    A quick refusal before anything is sent; the authority is :func:`inspect_statement`,
    which asks ClickHouse's parser (:func:`execute` always runs it).
    """
    pos = 0
    while m := _LEADING.match(sql, pos):  # comments and "(" may precede the keyword
        if m.end() == pos:
            break
        pos = m.end()
    words = sql[pos:].split(None, 1)
    if not words or not words[0].strip(";"):
        raise ReadOnlyViolation("empty query")
    first = re.split(r"[^A-Za-z]", words[0], maxsplit=1)[0].lower()
    if first not in _ALLOWED:
        raise ReadOnlyViolation(
            f"only read-only statements are allowed ({', '.join(a.upper() for a in _ALLOWED)}); "
            f"got {words[0][:40].upper()}"
        )
    return sql


def inspect_statement(parser: Any, sql: str) -> str:
    """Check ``sql`` with ClickHouse's own parser on the client ``parser``; returns its
    normalized form. Raises :class:`ReadOnlyViolation` (see the module docstring)."""
    check_read_only(sql)
    try:
        res = parser.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": sql})
        normalized = str(res.result_rows[0][0])
    except Exception as e:
        msg = _clean(str(e))
        if "Multi-statements" in msg:
            raise ReadOnlyViolation("one statement at a time") from e
        raise ReadOnlyViolation(f"not a valid statement: {_syntax_error(msg)}") from e
    check_read_only(normalized)
    if re.search(r"\bINTO\s+OUTFILE\b", _QUOTED.sub("''", normalized), re.I):
        raise ReadOnlyViolation("INTO OUTFILE writes files; not allowed")
    try:
        lines = [str(r[0]) for r in parser.query("EXPLAIN AST " + sql).result_rows]
    except Exception as e:
        msg = _syntax_error(_clean(str(e)))
        if "READONLY" in msg:  # e.g. SETTINGS readonly = 0 in the statement
            raise ReadOnlyViolation(f"refused by ClickHouse's read-only session: {msg}") from e
        raise ReadOnlyViolation(f"not a valid statement: {msg}") from e
    for fn in table_functions(lines):
        if fn not in SAFE_TABLE_FUNCTIONS:
            raise ReadOnlyViolation(
                f"table function {fn}() is not allowed (it reads files or the network); "
                f"allowed: {', '.join(sorted(SAFE_TABLE_FUNCTIONS))}"
            )
    for fn in functions(lines):
        if fn.lower() in DENIED_FUNCTIONS:
            raise ReadOnlyViolation(f"function {fn}() is not allowed (it reads files)")
    return normalized


def table_functions(ast_lines: list[str]) -> list[str]:
    """Names of the table functions in an ``EXPLAIN AST`` dump: a ``Function`` node directly
    under a ``TableExpression``."""
    found: list[str] = []
    parents: list[tuple[int, str]] = []
    for line in ast_lines:
        m = _AST_LINE.match(line)
        if not m:
            continue
        depth, node = len(m.group(1)), m.group(2)
        while parents and parents[-1][0] >= depth:
            parents.pop()
        if node == "Function" and parents and parents[-1][1] == "TableExpression":
            found.append(m.group(3) or "")
        parents.append((depth, node))
    return found


def functions(ast_lines: list[str]) -> list[str]:
    """Names of every function call in an ``EXPLAIN AST`` dump (operators included)."""
    found = []
    for line in ast_lines:
        m = _AST_LINE.match(line)
        if m and m.group(2) == "Function":
            found.append(m.group(3) or "")
    return found


def _syntax_error(msg: str) -> str:
    # "Code: 62. DB::Exception: Syntax error: failed at position 8 ... : In scope SELECT ..."
    msg = re.sub(r"^(Code: \d+\. DB::Exception: )+", "", msg)
    return msg.split(": In scope", 1)[0][:300]


def discovery_path(settings: Settings) -> Path:
    """Where a running worker advertises its query endpoint."""
    return settings.data_dir / DISCOVERY_FILE


#: What the report reads need of their session beside the limits: their restricted
#: statements find the touched sessions' events once per statement
#: (:func:`~feedbackloop.sinks.report_rows.restricted_sql`); without it they are inlined at
#: every use (the same answers, slower).
READ_SETTINGS: dict[str, Any] = {"enable_materialized_cte": 1}


def analyst_settings(settings: Settings | None, max_rows: int | None = None) -> dict[str, Any]:
    """Session settings of an analyst query: limits first, ``readonly`` last (once it is
    set, ClickHouse refuses to change any other setting, the query's own SETTINGS included)."""
    s = settings or Settings()
    out: dict[str, Any] = {
        "max_execution_time": s.sql_max_execution_s,
        "max_memory_usage": s.sql_max_memory_bytes,
        "max_threads": s.sql_max_threads,
        **READ_SETTINGS,
    }
    if max_rows is not None:
        # "break": stop reading once enough rows are there, rather than materialize them all
        out.update(max_result_rows=max_rows + 1, result_overflow_mode="break")
    out["readonly"] = 1
    return out


def readonly_client(
    dsn: str,
    database: str | None,
    settings: Settings | None = None,
    max_rows: int | None = 10_000,
) -> Any:
    """A client whose session is read-only and limited (:func:`analyst_settings`)."""
    from feedbackloop.infra import get_client

    kwargs: dict[str, Any] = {"settings": analyst_settings(settings, max_rows)}
    if database:
        kwargs["database"] = database
    return get_client(dsn, **kwargs)


class _Running:
    """How many statements :func:`execute` runs in this process now."""

    def __init__(self) -> None:
        self.n = 0
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        with self._lock:
            self.n += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self.n -= 1


_running = _Running()


def reading() -> bool:
    """Whether an analyst statement (:func:`execute`) runs in this process now: the sink's
    compactor stands aside meanwhile (``report_rows.Compactor``'s ``reading``)."""
    return _running.n > 0


def execute(client: Any, sql: str, max_rows: int = 10_000, parser: Any = None) -> QueryResult:
    """Run one read-only statement on ``client`` exactly as written, after
    :func:`inspect_statement` on ``parser`` (default: ``client``)."""
    with _running:
        inspect_statement(parser if parser is not None else client, sql)
        try:
            res = client.query(sql)
        except Exception as e:
            raise ClickHouseError.from_driver(e, _clean(str(e))) from e
    rows = [list(r) for r in res.result_rows[: max_rows + 1]]
    return QueryResult(
        list(res.column_names),
        [t.name for t in res.column_types],
        rows[:max_rows],
        truncated=len(rows) > max_rows,
    )


class ThreadRunner:
    """A concurrent :data:`~feedbackloop.analysis.reads.queries.Runner` (``concurrent``):
    each statement runs (:func:`execute`) on a client of the calling thread, opened by
    ``open_client()`` the first time that thread calls; a clickhouse-connect client runs one
    statement at a time, so a report read's lanes need one each. ``close()`` closes them."""

    concurrent = True

    def __init__(self, open_client: Callable[[], Any], max_rows: int = 100_000) -> None:
        self._open = open_client
        self.max_rows = max_rows
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def client(self) -> Any:
        """The calling thread's client."""
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._open()
            with self._lock:
                self._opened.append(client)
        return client

    def __call__(self, sql: str) -> QueryResult:
        return execute(self.client(), sql, self.max_rows)

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for client in opened:
            client.close()


class QueryEndpoint:
    """A tiny HTTP endpoint in the sink process that runs read-only queries.

    ``POST /query`` with JSON ``{"sql": ..., "max_rows": ...}`` and header
    ``Authorization: Bearer <token>``; answers ``{"columns", "types", "rows", "truncated"}``
    or ``{"error"}`` with status 400 (refused or failed query), 401 (bad token), 413 (body
    over :data:`MAX_REQUEST_BYTES`) or 503 (busy: :data:`ENDPOINT_SESSIONS` queries held
    every session longer than :data:`BUSY_WAIT_S`). A client that stops sending is dropped
    after :data:`READ_TIMEOUT_S`.
    """

    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 0) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.token = secrets.token_urlsafe(24)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: Free sessions: each a parser and its clients by max_rows (the row limit is a
        #: session setting), opened when first used; one query at a time on each.
        self._free: queue.Queue[_Session] = queue.Queue()
        self._sessions: list[_Session] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        """Open a read-only session (so a bad DSN fails here), start serving and write the
        discovery file."""
        self._sessions = [_Session(self._open) for _ in range(ENDPOINT_SESSIONS)]
        self._sessions[0].parser()
        for session in self._sessions:
            self._free.put(session)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            timeout = READ_TIMEOUT_S  # per socket read: a silent client cannot hold a thread

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
        for session in self._sessions:
            session.close()
        self._sessions, self._free = [], queue.Queue()

    def _open(self, max_rows: int | None) -> Any:
        s = self.settings
        return readonly_client(s.clickhouse_dsn, s.clickhouse_database, s, max_rows)

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        if req.path != "/query":
            return _reply(req, 404, {"error": "not found"})
        if not secrets.compare_digest(req.headers.get("Authorization", ""), f"Bearer {self.token}"):
            return _reply(req, 401, {"error": "bad token"})
        try:
            length = int(req.headers.get("Content-Length", 0))
            if length > MAX_REQUEST_BYTES:
                return _reply(req, 413, {"error": f"request over {MAX_REQUEST_BYTES} bytes"})
            body = json.loads(req.rfile.read(length))
            sql, max_rows = str(body["sql"]), int(body.get("max_rows", 10_000))
            if not 1 <= max_rows <= MAX_ROWS:
                raise ValueError(max_rows)
        except (ValueError, KeyError, TypeError, RecursionError):
            return _reply(
                req, 400, {"error": f'expected JSON {{"sql": ..., "max_rows": 1..{MAX_ROWS}}}'}
            )
        except OSError:  # the client went silent (READ_TIMEOUT_S) or away
            return None
        # One analyst query at a time on each session; the sink inserts on its own.
        try:
            session = self._free.get(timeout=BUSY_WAIT_S)
        except queue.Empty:
            return _reply(req, 503, {"error": "busy: every analyst session is running a query"})
        try:
            res = execute(session.client(max_rows), sql, max_rows, parser=session.parser())
        except FeedbackLoopError as e:
            kind = "refused" if isinstance(e, ReadOnlyViolation) else "failed"
            reply: dict[str, Any] = {"error": str(e), "kind": kind}
            if isinstance(e, ClickHouseError):
                reply |= {"code": e.code, "name": e.name}
            return _reply(req, 400, reply)
        except Exception as e:  # a handler must answer, whatever the driver raised
            log.exception("query endpoint: unexpected error")
            return _reply(
                req, 400, {"error": f"query failed: {type(e).__name__}", "kind": "failed"}
            )
        finally:
            self._free.put(session)
        _reply(
            req,
            200,
            {
                "columns": res.columns,
                "types": res.types,
                "rows": res.rows,
                "truncated": res.truncated,
            },
        )


class _Session:
    """One of :class:`QueryEndpoint`'s read-only sessions: a parser (``EXPLAIN AST``) and a
    client per row limit, opened by ``open(max_rows)`` when first needed."""

    def __init__(self, open_client: Any) -> None:
        self._open = open_client
        self._parser: Any = None
        self._clients: dict[int, Any] = {}

    def parser(self) -> Any:
        if self._parser is None:
            self._parser = self._open(None)
        return self._parser

    def client(self, max_rows: int) -> Any:
        client = self._clients.get(max_rows)
        if client is None:
            if len(self._clients) >= 4:  # callers use a handful of limits; keep it bounded
                _, old = self._clients.popitem()
                old.close()
            client = self._clients[max_rows] = self._open(max_rows)
        return client

    def close(self) -> None:
        for c in [self._parser, *self._clients.values()]:
            if c is not None:
                c.close()
        self._parser, self._clients = None, {}


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
    parser = readonly_client(dsn, settings.clickhouse_database, settings, None)
    try:
        client = readonly_client(dsn, settings.clickhouse_database, settings, max_rows)
        try:
            return execute(client, sql, max_rows, parser=parser)
        finally:
            client.close()
    finally:
        parser.close()


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
    return QueryResult(
        payload["columns"], payload["types"], payload["rows"], bool(payload.get("truncated"))
    )


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
