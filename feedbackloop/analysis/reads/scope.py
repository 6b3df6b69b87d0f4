"""Which interactions a read looks at: the one filter object of every analysis read.

The experiment reports, the impact and version trends (:mod:`.queries`) and the failure
analysis and exports (:mod:`feedbackloop.analysis.failures.records`) all take a
:class:`Scope`. Shadow interactions are never in scope: a user never saw them, so no feedback
or effect belongs to them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from feedbackloop.analysis.reads.literals import datetime_literal, quote

__all__ = ["DEFAULT_LIMIT", "Scope"]

#: At most this many interactions are read row by row (failure analysis, exports).
DEFAULT_LIMIT = 200_000

# Feedback can be logged by a device whose clock lags the one that logged the interaction; a
# day of slack keeps partition pruning on feedback tables without losing such rows (the join
# on interaction_id, not this bound, decides what belongs to the scope).
_FEEDBACK_SLACK = "INTERVAL 1 DAY"


@dataclass(frozen=True)
class Scope:
    """Which interactions to read. A field left ``None`` does not filter."""

    experiment: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    app_id: str | None = None
    prompt_version: str | None = None
    model: str | None = None
    #: Row-by-row reads return at most this many interactions (aggregate reads ignore it).
    limit: int = DEFAULT_LIMIT
    #: Row-by-row reads: only interactions with a free text (correction, comment, report
    #: text, edit).
    with_text: bool = False

    def interaction_filter(self, alias: str = "") -> str:
        """The ``WHERE`` condition on ``interactions`` (columns prefixed by ``alias.``)."""
        p = f"{alias}." if alias else ""
        parts = [f"NOT {p}shadow"]
        if self.since is not None:
            parts.append(f"{p}occurred_at >= {datetime_literal(self.since)}")
        if self.until is not None:
            parts.append(f"{p}occurred_at < {datetime_literal(self.until)}")
        for col in ("app_id", "experiment", "prompt_version", "model"):
            v = getattr(self, col)
            if v is not None:
                parts.append(f"{p}{col} = {quote(v)}")
        return " AND ".join(parts)

    def event_filter(self) -> str:
        """Pruning bound for feedback / implicit / outcome rows (membership is by join).

        An event enriched with its request context carries its interaction's experiment; a
        raw copy, an orphan or a session-level outcome carries ``''``. So ``experiment IN
        (x, '')`` keeps every event that can join an interaction of experiment ``x`` and drops
        the other experiments' enriched events, at the cost of reading one LowCardinality
        column (a semi-join on ``interaction_id IN (units)`` instead would evaluate the
        interactions a second time: 2-3x slower at 2M interactions, docs/PERFORMANCE.md).
        Feedback follows its interaction, so nothing older than ``since`` (less a day of
        clock slack) can belong to the scope.
        """
        parts = ["1"]
        if self.experiment is not None:
            parts.append(f"experiment IN ({quote(self.experiment)}, '')")
        if self.since is not None:
            parts.append(f"occurred_at >= {datetime_literal(self.since)} - {_FEEDBACK_SLACK}")
        if self.app_id is not None:
            parts.append(f"app_id = {quote(self.app_id)}")
        return " AND ".join(parts)
