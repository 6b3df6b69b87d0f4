"""One exception hierarchy for the whole package.

Only ``feedbackloop.cli`` turns a :class:`FeedbackLoopError` into a message and exit code 1;
library code raises these, re-raising driver errors ``from e``.
"""

from __future__ import annotations

__all__ = [
    "FeedbackLoopError",
    "ConfigError",
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


class ClickHouseError(InfraError):
    """ClickHouse refused or failed a request; carries the server's code and name if known."""

    def __init__(self, message: str, code: int | None = None, name: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.name = name


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
