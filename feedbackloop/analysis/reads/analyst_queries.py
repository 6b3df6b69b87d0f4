"""The documented analyst queries: ready answers to the questions teams ask most.

``feedbackloop sql --example NAME`` runs one, ``feedbackloop sql --examples`` lists them, and
docs/ARCHITECTURE.md ("Analyst access") shows them; a unit test keeps that text equal to this
module, and an integration test runs every one on a real ClickHouse engine against numbers
computed from the events themselves. Each counts an event once: the event tables are read
with ``FINAL`` (ReplacingMergeTree), the rollups hold distinct-count states, and
``failing-inputs`` keeps one row per ``event_id`` with ``LIMIT 1 BY`` (every stored copy of
an event has the same event fields; only the request-context columns differ, and it reads
none of them), which lets ClickHouse stop after the newest rows instead of merging them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from feedbackloop.errors import ConfigError

__all__ = ["ANALYST_QUERIES", "AnalystQuery", "analyst_query", "render_examples"]


@dataclass(frozen=True)
class AnalystQuery:
    name: str
    #: One line: the question the query answers (printed as an SQL comment in the docs).
    title: str
    sql: str


ANALYST_QUERIES: tuple[AnalystQuery, ...] = (
    AnalystQuery(
        "satisfaction-by-day",
        "Satisfaction by variant and day",
        """\
SELECT toDate(occurred_at) AS day, experiment, variant,
       countIf(thumbs = 1) AS up, countIf(thumbs = -1) AS down,
       round(up / nullIf(up + down, 0), 3) AS satisfaction
FROM feedback FINAL
WHERE kind = 'thumbs' AND enrichment = 'enriched' AND NOT shadow
  AND occurred_at >= now() - INTERVAL 14 DAY
GROUP BY day, experiment, variant
ORDER BY day, experiment, variant""",
    ),
    AnalystQuery(
        "satisfaction-by-day-rollup",
        "The same from the hourly rollup",
        """\
SELECT toDate(hour) AS day, experiment, variant,
       uniqExactMerge(thumbs_up) AS up, uniqExactMerge(thumbs_down) AS down,
       round(up / nullIf(up + down, 0), 3) AS satisfaction
FROM feedback_hourly
WHERE hour >= toStartOfHour(now() - INTERVAL 14 DAY)
GROUP BY day, experiment, variant
ORDER BY day, experiment, variant""",
    ),
    AnalystQuery(
        "variant-window-stats",
        "Per-variant sufficient statistics from the stream jobs' windows, last day",
        """\
SELECT experiment, variant, sum(interactions) AS n, sum(thumbs_up) AS up,
       sum(thumbs_down) AS down, sum(rating_count) AS ratings,
       sum(rating_sum) / nullIf(ratings, 0) AS mean_rating,
       sum(latency_sum) / nullIf(sum(latency_count), 0) AS mean_latency_ms
FROM window_aggregates FINAL
WHERE window_start >= now() - INTERVAL 1 DAY
GROUP BY experiment, variant
ORDER BY experiment, variant""",
    ),
    AnalystQuery(
        "failures-by-prompt-version",
        "Failures by prompt version, last 7 days",
        """\
SELECT i.prompt_version AS prompt_version, count() AS interactions,
       countIf(f.down > 0) AS with_thumbs_down, countIf(f.low_rating > 0) AS with_low_rating,
       countIf(f.corrections > 0) AS corrected, countIf(f.reports > 0) AS reported,
       round((with_thumbs_down + with_low_rating + corrected + reported) / interactions, 3)
         AS failure_signals_per_interaction
FROM (SELECT interaction_id, prompt_version FROM interactions FINAL
      WHERE NOT shadow AND occurred_at >= now() - INTERVAL 7 DAY) AS i
LEFT JOIN (SELECT interaction_id, countIf(thumbs = -1) AS down,
                  countIf(rating <= 2) AS low_rating,
                  countIf(kind = 'correction') AS corrections,
                  countIf(kind = 'report') AS reports
           FROM feedback FINAL GROUP BY interaction_id) AS f USING (interaction_id)
GROUP BY prompt_version
ORDER BY failure_signals_per_interaction DESC, prompt_version""",
    ),
    AnalystQuery(
        "failing-inputs",
        "The 20 latest failures with their input, response and prompt version (what to fix)",
        """\
WITH f AS (
    SELECT event_id, occurred_at, interaction_id, kind, thumbs, rating, text
    FROM feedback
    WHERE thumbs = -1 OR kind IN ('correction', 'report') OR rating <= 2
    ORDER BY occurred_at DESC, event_id
    LIMIT 1 BY event_id
    LIMIT 20)
SELECT f.occurred_at AS feedback_at, i.prompt_version AS prompt_version,
       i.user_input AS user_input, i.response AS response, f.kind AS kind,
       f.thumbs AS thumbs, f.rating AS rating, f.text AS text
FROM f
JOIN (SELECT interaction_id, prompt_version, user_input, response FROM interactions FINAL
      WHERE interaction_id IN (SELECT interaction_id FROM f)) AS i USING (interaction_id)
ORDER BY feedback_at DESC, f.event_id""",
    ),
    AnalystQuery(
        "outcome-rates",
        "Outcome rates by variant (interactions with the outcome / interactions)",
        """\
SELECT i.experiment AS experiment, i.variant AS variant, o.outcome AS outcome,
       uniqExact(o.interaction_id) AS with_outcome, any(n.interactions) AS interactions,
       round(with_outcome / interactions, 3) AS rate
FROM outcomes AS o FINAL
JOIN (SELECT interaction_id, experiment, variant FROM interactions FINAL) AS i
     ON o.interaction_id = i.interaction_id
JOIN (SELECT experiment, variant, count() AS interactions FROM interactions FINAL
      GROUP BY experiment, variant) AS n
     ON n.experiment = i.experiment AND n.variant = i.variant
GROUP BY experiment, variant, outcome
ORDER BY experiment, variant, outcome""",
    ),
    AnalystQuery(
        "latency-by-model",
        "Latency percentiles by model and prompt version, per day (hourly rollup)",
        """\
SELECT toDate(hour) AS day, model, prompt_version, uniqExactMerge(interactions) AS n,
       quantilesTDigestMerge(0.5, 0.9, 0.99)(latency_ms) AS latency_p50_p90_p99
FROM interactions_hourly
GROUP BY day, model, prompt_version
ORDER BY day, model, prompt_version""",
    ),
    AnalystQuery(
        "dead-letters",
        "Dead letters by reason and stage, last day",
        """\
SELECT reason, source, count() AS n, any(error) AS example
FROM dead_letters FINAL
WHERE failed_at >= now() - INTERVAL 1 DAY
GROUP BY reason, source
ORDER BY n DESC, reason, source""",
    ),
)

_BY_NAME = {q.name: q for q in ANALYST_QUERIES}


def analyst_query(name: str) -> AnalystQuery:
    """The example called ``name``; a :class:`ConfigError` listing the names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        names = ", ".join(_BY_NAME)
        raise ConfigError(f"no example query {name!r}; the examples are: {names}") from None


def render_examples() -> str:
    """All examples as one SQL text, each under a comment with its name and title."""
    return "\n\n".join(f"-- {q.name}: {q.title}\n{q.sql};" for q in ANALYST_QUERIES)
