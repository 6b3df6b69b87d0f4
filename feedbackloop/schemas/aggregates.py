"""Per-variant window aggregates: sufficient statistics of one tumbling event-time window.

Written by the stream jobs to ``Topics.aggregates`` (JSON, keyed by
``app_id|experiment|variant``).

**Rows are partials, one per source partition.** The stream jobs aggregate each partition of
the raw topic where it is read (no repartitioning hop), so a (window, group) total is the sum
of its rows over ``source_partition``. Every count and sum here is additive, so windows and
partitions combine exactly: ``SUM(thumbs_up)``, ``SUM(rating_sum_squares)`` and so on.

**A row is a full snapshot, not a delta.** A row for one
(group, ``window_start``, ``source_partition``) may be emitted more than once (a restart
replays, an allowed-late event reopens it); the later ``revision`` replaces the earlier one.
In ClickHouse: ``ReplacingMergeTree(revision)`` ordered by
``(app_id, experiment, variant, prompt_version, model, window_start, source_partition)``.

**Distinct sessions** are not additive. ``distinct_sessions`` is exact for the row while it
has fewer than :data:`SESSION_SKETCH_K` sessions, the sketch's estimate above;
``session_sketch`` is a K-minimum-values sketch (Bar-Yossef et al. 2002; Beyer et al. 2007):
the :data:`SESSION_SKETCH_K` smallest 64-bit hashes (:func:`session_hash`) of the row's
session ids. Merge rows by taking the union of their sketches and keeping the K smallest; the
union's distinct count is exact when it holds fewer than K hashes, else estimated as
``(K - 1) / (kth_smallest / 2**64)`` with a relative standard error of about
``1 / sqrt(K - 2)`` (~3 %).

Events are attributed to the window of their own ``occurred_at`` and to the group of their
interaction. Events whose interaction never arrived (orphans) and session-level outcomes
count under the group with empty experiment, variant, prompt_version and model.
"""

from __future__ import annotations

import hashlib

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "AGGREGATE_SCHEMA_VERSION",
    "SESSION_SKETCH_K",
    "WindowAggregate",
    "session_hash",
]

AGGREGATE_SCHEMA_VERSION = 1
#: Size of the K-minimum-values session sketch.
SESSION_SKETCH_K = 1024


def session_hash(session_id: str) -> int:
    """Stable 64-bit unsigned hash of a session id (BLAKE2b-64), the unit of the sketch."""
    return int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=8).digest(), "big")


class WindowAggregate(BaseModel):
    """Sufficient statistics of one group in one window, from one source partition."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    aggregate_schema_version: int = AGGREGATE_SCHEMA_VERSION

    # --- where and when ------------------------------------------------------------------
    window_start: AwareDatetime
    window_end: AwareDatetime
    #: Group key. "" means "not set" (ClickHouse-friendly: no Nullable in the sort key).
    app_id: str
    experiment: str = ""
    variant: str = ""
    prompt_version: str = ""
    model: str = ""
    source_partition: int
    #: Higher revisions of the same (group, window, partition) replace lower ones.
    revision: int = 1
    emitted_at: AwareDatetime

    # --- interactions ----------------------------------------------------------------------
    #: User-facing interactions (shadow ones are counted apart and nowhere else).
    interactions: int = 0
    shadow_interactions: int = 0
    latency_count: int = 0
    latency_sum: float = 0.0
    latency_sum_squares: float = 0.0
    input_tokens_sum: int = 0
    output_tokens_sum: int = 0
    cost_usd_sum: float = 0.0

    # --- explicit feedback -----------------------------------------------------------------
    thumbs_up: int = 0
    thumbs_down: int = 0
    rating_count: int = 0
    rating_sum: int = 0
    rating_sum_squares: int = 0
    corrections: int = 0
    comments: int = 0
    reports: int = 0

    # --- implicit signals (one count per ImplicitSignal) ---------------------------------
    implicit_copy: int = 0
    implicit_edit: int = 0
    implicit_follow_up: int = 0
    implicit_regenerate: int = 0
    implicit_abandon: int = 0
    implicit_dwell: int = 0
    dwell_ms_sum: float = 0.0

    # --- outcomes (open set of names) ----------------------------------------------------
    outcome_counts: dict[str, int] = Field(default_factory=dict)
    #: Sum of ``Outcome.value`` per outcome name (outcomes without a value add 0).
    outcome_value_sums: dict[str, float] = Field(default_factory=dict)

    # --- join quality and sessions -------------------------------------------------------
    #: Feedback / implicit / outcome events counted here whose interaction never arrived.
    orphaned: int = 0
    #: Distinct session ids among this row's events: exact below SESSION_SKETCH_K, else the
    #: KMV estimate.
    distinct_sessions: int = 0
    #: K smallest :func:`session_hash` values of this row's sessions, ascending.
    session_sketch: list[int] = Field(default_factory=list)
