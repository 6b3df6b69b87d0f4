"""ClickHouse clients: embedded chDB (``chdb:///path``) or a server (``http(s)://...``).

Both go through clickhouse-connect, so callers see one Client API.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from feedbackloop.errors import ClickHouseError, ConfigError, MissingDependency

__all__ = ["get_client", "is_embedded"]


def is_embedded(dsn: str) -> bool:
    return dsn.startswith("chdb:")


def get_client(dsn: str, **kwargs: Any) -> Any:
    """A clickhouse-connect ``Client`` for ``dsn``; creates the chDB data directory if needed.

    Only one process may open a chDB path at a time; see docs/ARCHITECTURE.md for how the
    running pipeline serves analyst queries.
    """
    try:
        import clickhouse_connect
    except ImportError as e:
        raise MissingDependency("clickhouse-connect", "sinks") from e
    parsed = urlparse(dsn)
    if parsed.scheme == "chdb":
        try:
            import chdb  # noqa: F401  (clickhouse-connect loads it; fail with our message)
        except ImportError as e:
            raise MissingDependency("chdb (embedded ClickHouse)", "embedded") from e
        from feedbackloop.infra.files import private_dir

        private_dir(Path(parsed.path))
    elif parsed.scheme not in ("http", "https", "clickhouse", "clickhouses"):
        raise ConfigError(f"unsupported ClickHouse URL {dsn!r}: use chdb:///path or http(s)://")
    try:
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    except Exception as e:
        raise ClickHouseError.from_driver(
            e, f"cannot connect to ClickHouse at {_redact(dsn)}: {e}"
        ) from e


def _redact(dsn: str) -> str:
    p = urlparse(dsn)
    if p.password:
        return dsn.replace(f":{p.password}@", ":***@")
    return dsn
