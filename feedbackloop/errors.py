"""One exception hierarchy for the whole package.

Only the CLI's root (``feedbackloop.cli.root``) turns a :class:`FeedbackLoopError` into a
message and exit code 1; library code raises these, re-raising driver errors ``from e``.
"""

from __future__ import annotations

import re

__all__ = [
    "FeedbackLoopError",
    "ConfigError",
    "VersionConflict",
    "SchemaError",
    "InfraError",
    "BrokerError",
    "ClickHouseError",
    "BackPressure",
    "MissingDependency",
]


class FeedbackLoopError(Exception):
    """Root of every error feedbackloop raises on purpose."""


class ConfigError(FeedbackLoopError):
    """A setting is missing or contradicts another one."""


class VersionConflict(ConfigError):
    """A change to a live experiment was not made because another writer's change came
    first: the experiment is not at the version the change was based on (``expected``), or
    another change of the same version reached the control topic first. ``current`` is the
    version in force (0: none)."""

    def __init__(self, message: str, *, current: int, expected: int | None = None) -> None:
        super().__init__(message)
        self.current = current
        self.expected = expected


class SchemaError(FeedbackLoopError):
    """An event does not satisfy the contract in :mod:`feedbackloop.schemas`.

    ``reason`` is a short machine-readable code (``invalid_json``, ``unknown_event_type``,
    ``validation_error``, ``oversized``, ``unsupported_schema_version``); ``str(err)`` is
    the human-readable message.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InfraError(FeedbackLoopError):
    """An embedded component could not be started, reached or stopped."""


class BrokerError(InfraError):
    """The Kafka broker could not be started or reached."""


_CODE = re.compile(r"\bCode:\s*(\d+)")
_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)")


class ClickHouseError(InfraError):
    """ClickHouse refused or failed a request; carries the server's code and name if known.

    ``code`` is the server's numeric error code (60) and ``name`` its symbolic name
    (``UNKNOWN_TABLE``); both are None when no server answered (a refused connection).
    Match on ``name``, never on the message text.
    """

    def __init__(self, message: str, code: int | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name = name

    @classmethod
    def from_driver(cls, e: BaseException, message: str | None = None) -> ClickHouseError:
        """Ours for a driver error ``e`` (``message`` defaults to ``str(e)``).

        clickhouse-connect sets ``code`` and ``name`` on its errors; when a path loses them
        (an older driver, a message relayed as text) they are read back from the text
        ClickHouse writes: ``Code: 60. DB::Exception: ... (UNKNOWN_TABLE)``.
        """
        if isinstance(e, ClickHouseError):
            code, name = e.code, e.name
        else:
            code, name = getattr(e, "code", None), getattr(e, "name", None)
        text = str(e)
        if not isinstance(code, int):
            m = _CODE.search(text)
            code = int(m.group(1)) if m else None
        if not isinstance(name, str) or not name:
            names = _NAME.findall(text) if code is not None else []
            name = names[-1] if names else None
        return cls(text if message is None else message, code=code, name=name)


class BackPressure(FeedbackLoopError):
    """A downstream system asks us to slow down; retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MissingDependency(FeedbackLoopError):
    """An optional heavy dependency is not installed; the message says which extra to add."""

    def __init__(self, module: str, extra: str) -> None:
        super().__init__(
            f"{module} is not installed; install it with: pip install 'feedbackloop[{extra}]'"
        )
        self.module = module
        self.extra = extra
