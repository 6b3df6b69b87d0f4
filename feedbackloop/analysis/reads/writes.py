"""Writing a registry row (a prompt version, an experiment design) from a CLI process.

A ClickHouse server takes writes from any process. Embedded chDB admits one process per data
directory, and a running ``feedbackloop sink run`` holds it; the worker's query endpoint is
read-only by design (it runs with ``readonly=1``), and a write path into it would be a
second, unauthenticated-by-role door into the store. So while a worker holds embedded chDB,
:func:`writable_client` refuses with :class:`DatabaseBusy`, saying which process holds it:
stop the worker for the moment of the write, or use a ClickHouse server.
"""

from __future__ import annotations

import getpass
import json
import os
from typing import Any

from feedbackloop.config import Settings
from feedbackloop.errors import FeedbackLoopError

__all__ = ["DatabaseBusy", "database_name", "worker_holding", "writable_client", "whoami"]


class DatabaseBusy(FeedbackLoopError):
    """Embedded chDB is held by another process (the sink worker); writes cannot go in now."""


def database_name(settings: Settings) -> str:
    from feedbackloop.sinks.migrations import _check_identifier

    return _check_identifier(settings.clickhouse_database)


def worker_holding(settings: Settings) -> int | None:
    """Pid of a live sink worker that advertises the query endpoint for this data dir."""
    from feedbackloop.sinks.query import discovery_path

    try:
        pid = int(json.loads(discovery_path(settings).read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid():
        return None  # this very process holds chDB (tests, embedding): the write is fine
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def writable_client(settings: Settings) -> Any:
    """A clickhouse-connect client able to write, or :class:`DatabaseBusy`."""
    from feedbackloop.infra.clickhouse import get_client, is_embedded

    if is_embedded(settings.clickhouse_dsn) and (pid := worker_holding(settings)) is not None:
        raise DatabaseBusy(
            f"the sink worker (pid {pid}) holds the embedded ClickHouse at "
            f"{settings.clickhouse_dsn}; chDB admits one process per data directory and the "
            "worker only serves read-only queries. Stop the worker (Ctrl-C), run this "
            "again, then restart it; or point FEEDBACKLOOP_CLICKHOUSE_URL at a ClickHouse "
            "server, where writes and the worker coexist."
        )
    return get_client(settings.clickhouse_dsn)


def whoami() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return ""
