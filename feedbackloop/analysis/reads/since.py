"""The ``--since`` window every analysis command takes."""

from __future__ import annotations

import datetime as dt
import re

from feedbackloop.errors import ConfigError

__all__ = ["parse_since"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(value: str | None, now: dt.datetime | None = None) -> dt.datetime | None:
    """``7d`` / ``24h`` / ``30m`` / ``2w`` before ``now``, or an ISO date / datetime (UTC if
    it has no zone); ``None`` (no lower bound) for ``None``, ``""`` or ``all``."""
    if value is None or value.strip().lower() in ("", "all"):
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    m = _DURATION.match(value)
    if m:
        return now - dt.timedelta(seconds=float(m.group(1)) * _UNIT_SECONDS[m.group(2).lower()])
    try:
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(
            f"--since: expected a duration such as 7d, 24h, 30m, 2w, an ISO date or 'all', "
            f"got {value!r}"
        ) from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)
