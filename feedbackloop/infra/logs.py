"""One logging setup for every long-running command: text for people, JSON lines for machines.

``feedbackloop worker``, ``sink run``, ``web``, ``up`` and ``broker`` call
:func:`setup_logging` once, with the service name and ``Settings.log_format`` /
``Settings.log_level``. A JSON line carries ``ts`` (UTC, ISO 8601), ``level``, ``logger``,
``message``, ``service``, any ``extra={...}`` fields of the call, and ``exc`` for a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import IO, Any, Literal

__all__ = ["JsonFormatter", "LogFormat", "TEXT_FORMAT", "setup_logging"]

LogFormat = Literal["text", "json"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(service)s %(name)s: %(message)s"

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "service"}
)

# Loggers that install handlers of their own; with ours on the root logger they must
# propagate instead, or their lines would bypass the format (or appear twice).
_SELF_CONFIGURED = ("uvicorn", "uvicorn.error", "uvicorn.access", "faust", "mode", "aiokafka")


class _ServiceFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "service"):
            record.service = self.service
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, service, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "service": getattr(record, "service", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra field that JSON cannot carry still logs, as its str().
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(
    service: str,
    fmt: LogFormat = "text",
    level: str | int = "INFO",
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every logger's records to ``stream`` (default stderr) in ``fmt``; returns the handler.

    Replaces the root logger's handlers, so calling it again (tests, a command run twice in
    one process) reconfigures rather than duplicates.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(_ServiceFilter(service))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    else:
        raise ValueError(f"unknown log format {fmt!r}: expected 'text' or 'json'")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in _SELF_CONFIGURED:
        lg = logging.getLogger(name)
        for old in list(lg.handlers):
            lg.removeHandler(old)
        lg.propagate = True
    logging.captureWarnings(True)
    return handler
