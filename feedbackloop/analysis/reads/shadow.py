"""Shadow pairs read from ClickHouse: each candidate answer beside the live answer it shadowed
and everything the user later did with the live answer.

A shadow interaction is an ``interactions`` row with ``shadow = true`` whose
``metadata['shadow_of']`` names the live interaction it was computed for (the SDK's
:meth:`~feedbackloop.producers.FeedbackClient.shadow` and the collector write it so). The
read joins, by ``interaction_id`` and never by time, so late feedback is included exactly as
in every other report:

* the live interaction (never a shadow) with its request context and derived attributes;
* its feedback: the latest correction, the latest explicit verdict (thumbs or rating), thumbs
  down and low ratings; its implicit signals (regenerate, abandon, copy, the latest edited
  text); the outcomes tied to it;
* the user's next input in the same session (what they asked for after this answer).

Tables are read with ``FINAL`` (a redelivered event counts once). A live interaction shadowed
twice by the same candidate keeps the candidate's latest answer. Texts are cut to
:data:`TEXT_CHARS` characters (enough to compare answers, bounded in memory) and are only
returned for pairs whose live answer the user reacted to: nothing else is compared.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from feedbackloop.analysis.reads.literals import datetime_literal, quote
from feedbackloop.analysis.reads.queries import _OUTCOME_DIRECTION, POSITIVE_RATING, Runner
from feedbackloop.schemas.events import SHADOW_OF

__all__ = [
    "LOW_RATING",
    "SHADOW_OF",
    "TEXT_CHARS",
    "ShadowCandidateRow",
    "ShadowPair",
    "ShadowScope",
    "fetch_shadow_candidates",
    "fetch_shadow_pairs",
    "fetch_shadow_totals",
    "row_to_pair",
    "shadow_totals_sql",
    "shadow_pairs_sql",
]

#: Texts longer than this are compared on their first characters only.
TEXT_CHARS = 4000
#: Ratings at or below this count as a low rating.
LOW_RATING = 2
#: Outcomes that mean the live answer did its job (positive in the impact report).
_GOOD_OUTCOMES = tuple(sorted(k for k, v in _OUTCOME_DIRECTION.items() if v))
_FEEDBACK_SLACK = "INTERVAL 1 DAY"


@dataclass(frozen=True)
class ShadowScope:
    """Which shadow pairs to read: one candidate, optionally against one live version."""

    #: The candidate: a shadow's ``prompt_version`` or, failing that, its ``model``.
    candidate: str
    #: The live side: a ``prompt_version`` or ``model``; ``None`` takes every live version.
    against: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    app_id: str | None = None
    #: At most this many pairs are read, the newest first.
    limit: int = 1_000_000


@dataclass(slots=True)
class ShadowPair:
    """A candidate's answer beside the live answer, and what the user did with the live one.

    Treat it as immutable. Not ``frozen``: a frozen dataclass sets each of its 24 fields
    through ``object.__setattr__``, which made building 100,000 pairs take seconds.
    """

    live_id: str
    shadow_id: str
    live_version: str
    live_model: str
    user_input: str
    live_response: str
    shadow_response: str
    live_latency_ms: float
    shadow_latency_ms: float
    live_tokens: float
    shadow_tokens: float
    live_cost_usd: float
    shadow_cost_usd: float
    #: The latest correction the user wrote, ``""`` if none.
    correction: str
    #: The latest text the user edited the answer into, ``""`` if none.
    edited_text: str
    #: The user's next input in the session, ``""`` if none.
    next_input: str
    thumbs_down: int
    low_ratings: int
    #: Reports (harmful, incorrect, ...) filed against the live answer.
    reports: int
    regenerates: int
    abandons: int
    copies: int
    #: ``True`` / ``False``: the latest thumbs or rating was positive / negative; ``None``: none.
    last_verdict_positive: bool | None
    good_outcomes: int
    #: Slice attributes of the live interaction (dimension -> value).
    attributes: Mapping[str, str]

    @property
    def corrected(self) -> bool:
        return bool(self.correction)

    @property
    def negative(self) -> bool:
        """The user rejected the live answer: thumbs down, low rating, a report, regenerate,
        abandon."""
        rejected = (
            self.thumbs_down
            or self.low_ratings
            or self.reports
            or self.regenerates
            or self.abandons
        )
        return bool(rejected) or self.last_verdict_positive is False

    @property
    def accepted(self) -> bool:
        """The user kept the live answer: thumbs up (latest verdict), copy, or a good outcome,
        and did not reject it."""
        kept = self.last_verdict_positive is True or self.copies > 0 or self.good_outcomes > 0
        return kept and not self.negative and not self.corrected

    @property
    def follow_up(self) -> str:
        """What the user asked for after rejecting the answer: their edit, else their next
        input in the session."""
        return self.edited_text or self.next_input


@dataclass(frozen=True)
class ShadowCandidateRow:
    """One candidate seen in shadow: how many shadow answers, over which period."""

    candidate: str
    model: str
    shadows: int
    linked: int
    first_at: str
    last_at: str


def _candidate_filter(value: str, alias: str) -> str:
    v = quote(value)
    return f"({alias}prompt_version = {v} OR (({alias}prompt_version = '') AND {alias}model = {v}))"


def shadow_pairs_sql(scope: ShadowScope) -> str:
    """The one statement :func:`fetch_shadow_pairs` runs."""
    n = TEXT_CHARS
    sh_where = [
        "shadow",
        f"mapContains(metadata, {quote(SHADOW_OF)})",
        _candidate_filter(scope.candidate, ""),
    ]
    ev_where = ["interaction_id IN ids"]
    if scope.since is not None:
        sh_where.append(f"occurred_at >= {datetime_literal(scope.since)}")
        ev_where.append(f"occurred_at >= {datetime_literal(scope.since)} - {_FEEDBACK_SLACK}")
    if scope.until is not None:
        sh_where.append(f"occurred_at < {datetime_literal(scope.until)}")
    if scope.app_id is not None:
        sh_where.append(f"app_id = {quote(scope.app_id)}")
        ev_where.append(f"app_id = {quote(scope.app_id)}")
    live_where = ["NOT shadow", "interaction_id IN ids"]
    if scope.against is not None:
        live_where.append(_candidate_filter(scope.against, ""))
    ev = " AND ".join(ev_where)
    sh = " AND ".join(sh_where)
    good = ", ".join(quote(o) for o in _GOOD_OUTCOMES) or "''"
    # ``ids`` and ``sess`` restrict the other reads; they are sets, read without FINAL (a
    # duplicate row adds nothing to a set) and without the sort that picks the latest answer.
    return f"""
WITH ids AS (
    SELECT toUUIDOrZero(metadata[{quote(SHADOW_OF)}]) FROM interactions WHERE {sh}
), sess AS (
    SELECT session_id FROM interactions WHERE {sh}
), sh AS (
    SELECT toUUIDOrZero(metadata[{quote(SHADOW_OF)}]) AS live_id, interaction_id AS shadow_id,
           substring(response, 1, {n}) AS response, latency_ms,
           toFloat64(ifNull(input_tokens, 0) + ifNull(output_tokens, 0)) AS tokens,
           input_tokens IS NOT NULL OR output_tokens IS NOT NULL AS has_tokens, cost_usd
    FROM interactions FINAL
    WHERE {sh}
    ORDER BY occurred_at DESC, event_id DESC
    LIMIT 1 BY live_id
), live AS (
    SELECT interaction_id, session_id, occurred_at, event_id, prompt_version, model,
           experiment, variant, substring(user_input, 1, {n}) AS user_input,
           substring(response, 1, {n}) AS response, latency_ms,
           toFloat64(ifNull(input_tokens, 0) + ifNull(output_tokens, 0)) AS tokens,
           input_tokens IS NOT NULL OR output_tokens IS NOT NULL AS has_tokens, cost_usd,
           input_language, input_has_code, input_length_bucket, metadata
    FROM interactions FINAL
    WHERE {" AND ".join(live_where)}
), fb AS (
    SELECT interaction_id,
           argMaxIf(text, (occurred_at, event_id), kind = 'correction') AS correction,
           countIf(kind = 'thumbs' AND thumbs = -1) AS thumbs_down,
           countIf(kind = 'rating' AND ifNull(rating, 5) <= {LOW_RATING}) AS low_ratings,
           countIf(kind = 'report') AS reports,
           countIf(kind IN ('thumbs', 'rating')) AS verdicts,
           argMaxIf(if(kind = 'thumbs', thumbs = 1, ifNull(rating, 0) >= {POSITIVE_RATING}),
                    (occurred_at, event_id), kind IN ('thumbs', 'rating')) AS last_positive
    FROM feedback FINAL
    WHERE {ev}
    GROUP BY interaction_id
), im AS (
    SELECT interaction_id,
           countIf(signal = 'regenerate') AS regenerates,
           countIf(signal = 'abandon') AS abandons,
           countIf(signal = 'copy') AS copies,
           argMaxIf(substring(ifNull(edited_text, ''), 1, {n}), (occurred_at, event_id),
                    signal = 'edit' AND ifNull(edited_text, '') != '') AS edited_text
    FROM implicit FINAL
    WHERE {ev}
    GROUP BY interaction_id
), oc AS (
    SELECT assumeNotNull(interaction_id) AS interaction_id,
           countIf(outcome IN ({good})) AS good_outcomes
    FROM outcomes FINAL
    WHERE {ev}
    GROUP BY interaction_id
), nxt AS (
    SELECT interaction_id, next_input FROM (
        SELECT interaction_id,
               leadInFrame(substring(user_input, 1, {n})) OVER (
                   PARTITION BY session_id ORDER BY occurred_at, event_id
                   ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING) AS next_input
        FROM interactions FINAL
        WHERE NOT shadow AND session_id IN sess)
    WHERE interaction_id IN ids
)
SELECT toString(live.interaction_id), toString(sh.shadow_id), live.prompt_version, live.model,
       live.experiment, live.variant,
       -- texts only where the user did something with the live answer: nothing else is judged
       fb.verdicts > 0 OR fb.correction != '' OR im.regenerates + im.abandons + im.copies > 0
           OR im.edited_text != '' OR oc.good_outcomes > 0 AS reacted,
       if(reacted, live.user_input, ''), if(reacted, live.response, ''),
       if(reacted, sh.response, ''),
       live.latency_ms, sh.latency_ms, if(live.has_tokens, live.tokens, NULL),
       if(sh.has_tokens, sh.tokens, NULL), live.cost_usd, sh.cost_usd,
       fb.correction, im.edited_text, if(reacted, nxt.next_input, ''),
       fb.thumbs_down, fb.low_ratings, fb.reports, im.regenerates, im.abandons, im.copies,
       if(fb.verdicts > 0, toInt8(fb.last_positive), toInt8(-1)), oc.good_outcomes,
       live.input_language, live.input_has_code, live.input_length_bucket,
       toJSONString(live.metadata)
FROM sh
INNER JOIN live ON live.interaction_id = sh.live_id
LEFT JOIN fb ON fb.interaction_id = sh.live_id
LEFT JOIN im ON im.interaction_id = sh.live_id
LEFT JOIN oc ON oc.interaction_id = sh.live_id
LEFT JOIN nxt ON nxt.interaction_id = sh.live_id
ORDER BY live.occurred_at DESC, live.event_id DESC
LIMIT {int(scope.limit)}
"""


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _metadata(raw: Any) -> dict[str, str]:
    if isinstance(raw, str):  # read as JSON text (toJSONString): cheaper than a Map
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return {str(k): str(v) for k, v in dict(raw or {}).items()}


def row_to_pair(row: list[Any]) -> ShadowPair:
    """One result row of :func:`shadow_pairs_sql`."""
    (
        live_id,
        shadow_id,
        pv,
        model,
        exp,
        var,
        _reacted,
        user_input,
        live_resp,
        shadow_resp,
        live_lat,
        shadow_lat,
        live_tok,
        shadow_tok,
        live_cost,
        shadow_cost,
        correction,
        edited,
        next_input,
        t_down,
        low,
        reports,
        regen,
        abandon,
        copies,
        last_pos,
        good,
        lang,
        has_code,
        bucket,
        meta,
    ) = row
    # The slice dimensions of the failure analysis (feedbackloop failures), from the columns
    # the stream jobs stored: see docs/ARCHITECTURE.md, "Shadow deployments".
    attrs = {
        "prompt_version": str(pv) or "(none)",
        "model": str(model),
        "language": str(lang) or "und",
        "has_code": "yes" if has_code else "no",
        "input_length": str(bucket),
    }
    if exp:
        attrs["variant"] = f"{exp}/{var}"
    for k, v in _metadata(meta).items():
        if k != SHADOW_OF:
            attrs[f"meta.{k}"] = v
    lp = int(last_pos) if last_pos is not None else -1
    return ShadowPair(
        live_id=str(live_id),
        shadow_id=str(shadow_id),
        live_version=str(pv),
        live_model=str(model),
        user_input=str(user_input or ""),
        live_response=str(live_resp or ""),
        shadow_response=str(shadow_resp or ""),
        live_latency_ms=_num(live_lat),
        shadow_latency_ms=_num(shadow_lat),
        live_tokens=_num(live_tok),
        shadow_tokens=_num(shadow_tok),
        live_cost_usd=_num(live_cost),
        shadow_cost_usd=_num(shadow_cost),
        correction=str(correction or ""),
        edited_text=str(edited or ""),
        next_input=str(next_input or ""),
        thumbs_down=int(t_down or 0),
        low_ratings=int(low or 0),
        reports=int(reports or 0),
        regenerates=int(regen or 0),
        abandons=int(abandon or 0),
        copies=int(copies or 0),
        last_verdict_positive=None if lp < 0 else bool(lp),
        good_outcomes=int(good or 0),
        attributes=attrs,
    )


def fetch_shadow_pairs(runner: Runner, scope: ShadowScope) -> list[ShadowPair]:
    """Every shadow pair of ``scope``'s candidate whose live interaction is stored, newest
    first, at most ``scope.limit``."""
    res = runner(shadow_pairs_sql(scope))
    return [row_to_pair(list(r)) for r in res.rows]


def fetch_shadow_candidates(
    runner: Runner, since: dt.datetime | None = None, app_id: str | None = None
) -> list[ShadowCandidateRow]:
    """Every candidate with shadow answers, most answers first."""
    where = ["shadow"]
    if since is not None:
        where.append(f"occurred_at >= {datetime_literal(since)}")
    if app_id is not None:
        where.append(f"app_id = {quote(app_id)}")
    sql = f"""
SELECT if(prompt_version != '', prompt_version, model) AS candidate, any(model) AS candidate_model,
       count() AS shadows, countIf(mapContains(metadata, {quote(SHADOW_OF)})) AS linked,
       toString(min(occurred_at)) AS first_at, toString(max(occurred_at)) AS last_at
FROM interactions FINAL
WHERE {" AND ".join(where)}
GROUP BY candidate
ORDER BY shadows DESC, candidate
LIMIT 1000
"""
    res = runner(sql)
    return [
        ShadowCandidateRow(str(c), str(m), int(s), int(ln), str(f), str(la))
        for c, m, s, ln, f, la in (list(r) for r in res.rows)
    ]


def shadow_totals_sql(scope: ShadowScope) -> str:
    """How many shadow answers the candidate has, and how many name a stored live one."""
    where = ["s.shadow", _candidate_filter(scope.candidate, "s.")]
    if scope.since is not None:
        where.append(f"s.occurred_at >= {datetime_literal(scope.since)}")
    if scope.until is not None:
        where.append(f"s.occurred_at < {datetime_literal(scope.until)}")
    if scope.app_id is not None:
        where.append(f"s.app_id = {quote(scope.app_id)}")
    return f"""
SELECT count() AS shadows, countIf(mapContains(s.metadata, {quote(SHADOW_OF)})) AS linked
FROM interactions AS s FINAL
WHERE {" AND ".join(where)}
"""


def fetch_shadow_totals(runner: Runner, scope: ShadowScope) -> Mapping[str, int]:
    res = runner(shadow_totals_sql(scope))
    row = list(res.rows[0]) if res.rows else [0, 0]
    return {"shadows": int(row[0] or 0), "linked": int(row[1] or 0)}
