"""``feedbackloop demo``: the pipeline on embedded defaults with simulated traffic.

Starts the stack (embedded broker and the services given), drives the traffic simulator
through the real SDK, reads every event back from Kafka with an independent consumer to
account for it, and prints what the experiment shows.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from feedbackloop.config import Settings
from feedbackloop.errors import BrokerError
from feedbackloop.infra.stack import Service, ServiceStatus, Stack
from feedbackloop.producers import FeedbackClient
from feedbackloop.schemas import Topics, decode
from feedbackloop.schemas.events import Feedback, Interaction
from feedbackloop.simulator import SimulationResult, Simulator, TrafficSpec

__all__ = [
    "DemoResult",
    "account_in_clickhouse",
    "read_back",
    "results_text",
    "run_demo",
    "status_line",
    "summary_text",
]

Echo = Callable[[str], None]


@dataclass
class DemoResult:
    """What the demo sent and what it found on the broker."""

    simulation: SimulationResult
    sdk_stats: dict[str, int]
    read_back: int
    by_type: Counter[str] = field(default_factory=Counter)
    malformed_read: int = 0
    thumbs: dict[str, tuple[int, int]] = field(default_factory=dict)  # variant -> (up, rated)
    missing: int = 0
    settings: Settings | None = None
    #: Distinct events and dead letters found in ClickHouse (when a sink ran).
    stored_events: int | None = None
    stored_dead_letters: int | None = None
    results: str = ""
    #: The services' status while they ran (ready lines carry their URLs).
    services: list[ServiceStatus] = field(default_factory=list)


def read_back(
    settings: Settings, expected_ids: set[uuid.UUID], expected_malformed: int, timeout: float = 60
) -> DemoResult:
    """Consume the raw events topic from the start until every expected event was seen."""
    from confluent_kafka import Consumer, TopicPartition

    topic = Topics(settings.topic_prefix).events
    consumer = Consumer(
        {
            **settings.kafka_client_config(),
            "group.id": f"feedbackloop-demo-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "log_level": 0,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
        seen: set[uuid.UUID] = set()
        by_type: Counter[str] = Counter()
        variant_of: dict[uuid.UUID, str] = {}
        thumbs: list[tuple[uuid.UUID, int]] = []
        malformed = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (
            not expected_ids <= seen or malformed < expected_malformed
        ):
            for msg in consumer.consume(5000, 0.5):
                if msg.error() is not None:
                    continue
                try:
                    event = decode(msg.value() or b"")
                except Exception:
                    malformed += 1
                    continue
                seen.add(event.event_id)
                by_type[event.event_type] += 1
                if isinstance(event, Interaction) and event.variant is not None:
                    variant_of[event.interaction_id] = event.variant
                elif isinstance(event, Feedback) and event.thumbs is not None:
                    thumbs.append((event.interaction_id, event.thumbs))
    finally:
        consumer.close()
    per_variant: dict[str, list[int]] = {}
    for iid, value in thumbs:
        v = variant_of.get(iid)
        if v is not None:
            counts = per_variant.setdefault(v, [0, 0])
            counts[0] += value > 0
            counts[1] += 1
    return DemoResult(
        simulation=SimulationResult(),
        sdk_stats={},
        read_back=len(seen & expected_ids),
        by_type=by_type,
        malformed_read=malformed,
        thumbs={v: (c[0], c[1]) for v, c in sorted(per_variant.items())},
        missing=len(expected_ids - seen),
    )


def run_demo(
    settings: Settings,
    duration_s: float = 20.0,
    rate: float | None = None,
    spec: TrafficSpec | None = None,
    services: Sequence[Service] = (),
    echo: Echo = print,
    progress: Callable[[SimulationResult], None] | None = None,
    while_running: Callable[[DemoResult], None] | None = None,
) -> DemoResult:
    """Start the stack, simulate ``duration_s`` seconds of traffic, account for every event.

    With a sink among ``services``, also wait until ClickHouse holds every event (and every
    malformed payload as a dead letter) and compute the experiment report, failure slices and
    impact. ``while_running(result)`` is called before the stack stops (e.g. to keep the
    dashboard up until Ctrl-C).

    The embedded broker keeps its log in memory here unless ``broker_storage`` was set: the
    demo's 3,000 events/s through the stream jobs are visible within seconds that way, where
    the durable embedded broker lags by tens of seconds on a small machine
    (docs/PERFORMANCE.md, "Durable embedded broker"); `up` keeps the durable default."""
    from feedbackloop.infra.files import owner_only

    if "broker_storage" not in settings.model_fields_set:
        settings = settings.model_copy(update={"broker_storage": "memory://tansu/"})
    owner_only(settings.data_dir)
    stack = Stack(settings, services, on_status=lambda st: echo(status_line(st)))
    run_settings = stack.start()
    try:
        sent_ids: set[uuid.UUID] = set()
        client = FeedbackClient(
            run_settings,
            app_id=(spec or TrafficSpec()).app_id,
            on_event=lambda e, _: sent_ids.add(e.event_id),
        )
        raw = _raw_sender(run_settings)
        sim = Simulator(client, spec, raw_send=raw.send)
        result = sim.run(duration_s=duration_s, rate=rate, progress=progress)
        raw.close()
        stats = client.close(timeout=30)
        if stats.spool_pending:
            raise BrokerError(f"{stats.spool_pending} events still spooled; is the broker up?")
        demo = read_back(run_settings, sent_ids, result.malformed)
        demo.simulation = result
        demo.sdk_stats = {
            k: getattr(stats, k) for k in ("enqueued", "delivered", "spooled", "failed", "dropped")
        }
        demo.settings = run_settings
        if any(s.name == "sink" for s in services):
            echo("  waiting for ClickHouse to hold every event ...")
            demo.stored_events, demo.stored_dead_letters = account_in_clickhouse(
                run_settings, len(sent_ids), result.malformed
            )
            demo.results = results_text(run_settings, spec or TrafficSpec())
        demo.services = stack.status()
        if while_running is not None:
            while_running(demo)
        return demo
    finally:
        stack.stop()


_ACCOUNTING_SQL = """
SELECT
  (SELECT uniqExact(event_id) FROM interactions)
  + (SELECT uniqExact(event_id) FROM feedback)
  + (SELECT uniqExact(event_id) FROM implicit)
  + (SELECT uniqExact(event_id) FROM outcomes) AS events,
  (SELECT count() FROM dead_letters FINAL WHERE reason != '') AS dead_letters
"""


def account_in_clickhouse(
    settings: Settings, expected_events: int, expected_dead: int, timeout: float = 120.0
) -> tuple[int, int]:
    """Poll ClickHouse (through the running sink) until it holds ``expected_events`` distinct
    events and at least ``expected_dead`` dead letters, or ``timeout`` passes; returns what
    it found."""
    from feedbackloop.sinks.query import run_query

    deadline = time.monotonic() + timeout
    events = dead = 0
    while time.monotonic() < deadline:
        row = run_query(settings, _ACCOUNTING_SQL).rows[0]
        events, dead = int(row[0]), int(row[1])
        if events >= expected_events and dead >= expected_dead:
            break
        time.sleep(1.0)
    return events, dead


def results_text(settings: Settings, spec: TrafficSpec) -> str:
    """The experiment report, the top failure slices, the business impact and, with a planted
    shadow candidate, its shadow report, as text."""
    from feedbackloop.analysis.failures.analyze import analyze_slice_counts
    from feedbackloop.analysis.failures.slice_counts import load_slice_counts
    from feedbackloop.analysis.failures.slices import format_slice_report
    from feedbackloop.analysis.reads import Scope, fetch_experiment, fetch_impact, settings_runner
    from feedbackloop.analysis.reports.impact import build_impact
    from feedbackloop.analysis.reports.report import build_report

    runner = settings_runner(settings)
    scope = Scope(experiment=spec.experiment, since=None, app_id=spec.app_id)
    report = build_report(fetch_experiment(runner, scope), weights=dict(spec.weights))
    slices = analyze_slice_counts(load_slice_counts(settings, Scope(experiment=spec.experiment)))
    impact = build_impact(fetch_impact(runner, scope))
    parts = [
        report.to_text(),
        format_slice_report(slices, top=5, heading="Top failure patterns\n"),
        impact.to_text(),
    ]
    if spec.shadow is not None:
        from feedbackloop.analysis.reads.shadow import ShadowScope
        from feedbackloop.analysis.reports.shadow import run_shadow_report

        shadow_scope = ShadowScope(candidate=spec.shadow.candidate, app_id=spec.app_id)
        parts.append(run_shadow_report(runner, shadow_scope).to_text())
    return "\n\n".join(parts)


def summary_text(demo: DemoResult, spec: TrafficSpec) -> str:
    """What was sent, read back and stored, the thumbs-up rate by variant, then the results."""
    sim = demo.simulation
    sent = sum(sim.sent.values())
    lines = [
        f"sent through the SDK: {sent:,} events "
        f"({', '.join(f'{k} {v:,}' for k, v in sorted(sim.sent.items()))}) "
        f"+ {sim.malformed} malformed, in {sim.elapsed_s:.1f} s "
        f"({(sent + sim.malformed) / max(sim.elapsed_s, 1e-9):,.0f} events/s)",
        f"SDK counters: {', '.join(f'{k} {v:,}' for k, v in demo.sdk_stats.items())}",
        f"read back from Kafka: {demo.read_back:,} of {sent:,} events by "
        f"event_id ({demo.missing} missing), {demo.malformed_read} malformed payloads",
        "",
        f"experiment {spec.experiment!r}: thumbs-up rate by variant "
        f"(planted: {', '.join(f'{v} {p:.0%}' for v, p in spec.satisfaction.items())})",
    ]
    for variant, (up, rated) in demo.thumbs.items():
        lines.append(f"  {variant:<10} {up:>7,} / {rated:<7,} = {up / max(rated, 1):.1%}")
    if demo.stored_events is not None:
        lines.insert(
            3,
            f"in ClickHouse: {demo.stored_events:,} distinct events, "
            f"{demo.stored_dead_letters:,} dead letters "
            f"(expected {sent:,} and {sim.malformed:,})",
        )
        lines += ["", demo.results]
    elif set(demo.thumbs) >= {"control", "treatment"}:
        from feedbackloop.analysis.statistics import compare_counts

        cmp = compare_counts(control=demo.thumbs["control"], treatment=demo.thumbs["treatment"])
        lines += ["", cmp.to_text()]
    return "\n".join(lines)


class _raw_sender:  # noqa: N801 - a tiny private helper object
    """Sends malformed payloads straight to the raw topic, as a buggy client would."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.topic = Topics(settings.topic_prefix).events
        self.producer = Producer({**settings.kafka_client_config(), "log_level": 0})

    def send(self, payload: bytes) -> None:
        self.producer.produce(self.topic, payload)
        self.producer.poll(0)

    def close(self) -> None:
        self.producer.flush(30)


def status_line(st: ServiceStatus) -> str:
    pid = f" pid {st.pid}" if st.pid else ""
    detail = f"  {st.detail}" if st.detail else ""
    where = f"  (log: {st.log_path})" if st.log_path and st.state == "starting" else ""
    restarts = f"  [restarts: {st.restarts}]" if st.restarts else ""
    return f"  {st.name:<7} {st.state:<9}{pid}{detail}{where}{restarts}"
