"""SDK enqueue throughput and latency, beside raw ``confluent_kafka.Producer.produce``.

Both sides run in this process against the same embedded broker, with the same librdkafka
settings (idempotence, acks=all, lz4, linger 20 ms, a queue large enough that neither side
hits back-pressure). The raw side produces bytes that were encoded beforehand: it measures
librdkafka alone. Our side makes the ids and the timestamp, validates and encodes each event
(the SDK's fast path; the pydantic models for anything it cannot prove valid), remembers the
session and produces it: what an app pays per ``log_interaction`` / ``thumbs`` call.

"ours" is the client as an app gets it by default: following the live experiment config
on a background thread (the default since live config became opt-out), the app naming the
variant. Two more columns run our side again: with live config off
(``live_experiments=False``, the default before), and assigning each interaction's variant
itself from a live experiment (``variant`` omitted): the SDK's call cost with the control
plane on and used.

The target "within 2x of raw produce" is read on the sustained rate (enqueue + flush, events
actually delivered): ours >= 0.5 x raw. A raw produce of ready bytes does no Python work at all,
so the per-call ratio is printed too but is not the target (see docs/PERFORMANCE.md).

    .venv/bin/python bench/bench_sdk.py [--events 200000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Producer

from feedbackloop.config import Settings
from feedbackloop.infra import EmbeddedBroker, ensure_topics
from feedbackloop.producers import FeedbackClient
from feedbackloop.schemas import Feedback, Interaction, Topics, encode

QUEUE = 2_000_000


def _percentiles(samples_ns: list[int]) -> tuple[float, float]:
    samples_ns.sort()
    n = len(samples_ns)
    return samples_ns[n // 2] / 1000, samples_ns[int(n * 0.99)] / 1000


def bench_raw(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> dict[str, float]:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": 20,
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": QUEUE,
            "on_delivery": lambda err, msg: None,
            "log_level": 0,
        }
    )
    lat: list[int] = []
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for i, (key, value) in enumerate(payloads):
        a = clock()
        producer.produce(topic, value, key)
        lat.append(clock() - a)
        if i % 1000 == 0:
            producer.poll(0)
    enqueue_s = time.perf_counter() - t0
    producer.flush(120)
    total_s = time.perf_counter() - t0
    p50, p99 = _percentiles(lat)
    return {
        "enqueue_rate": len(payloads) / enqueue_s,
        "total_rate": len(payloads) / total_s,
        "p50_us": p50,
        "p99_us": p99,
        "mean_us": statistics.fmean(lat) / 1000,
    }


def bench_ours(
    settings: Settings, n: int, live: bool | None = None, assign: bool = False
) -> dict[str, float]:
    """``live``: the client's ``live_experiments`` (None: the default, following);
    ``assign``: the client assigns the variant itself from a live experiment (what an app
    pays with the control plane on and used)."""
    lat: list[int] = []
    clock = time.perf_counter_ns
    client = FeedbackClient(
        settings,
        producer_config={"queue.buffering.max.messages": QUEUE},
        live_experiments=live,
    )
    variant: str | None = "treatment"
    if assign:
        assert client.live_config is not None
        assert client.live_config.wait_for(lambda lc: lc.version("support-prompt"), timeout=30)
        variant = None
    # warm up: producer start, first connection
    client.thumbs(uuid.uuid4(), True, session_id="warm")
    client.flush(10)
    t0 = time.perf_counter()
    iid = uuid.uuid4()
    for i in range(n // 2):
        a = clock()
        iid = client.log_interaction(
            session_id=f"s{i % 1000}",
            user_input="How do I reset my password?",
            response="Go to Settings, then Security, and choose Reset password.",
            model="gpt-4o-mini",
            prompt_version="v1.1",
            experiment="support-prompt",
            variant=variant,
            latency_ms=812.5,
            input_tokens=12,
            output_tokens=40,
        )
        b = clock()
        client.thumbs(iid, True)
        c = clock()
        lat.append(b - a)
        lat.append(c - b)
    enqueue_s = time.perf_counter() - t0
    client.flush(120)
    total_s = time.perf_counter() - t0
    stats = client.close()
    assert stats.spooled == 0 and stats.dropped == 0, stats
    p50, p99 = _percentiles(lat)
    return {
        "enqueue_rate": n / enqueue_s,
        "total_rate": n / total_s,
        "p50_us": p50,
        "p99_us": p99,
        "mean_us": statistics.fmean(lat) / 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument(
        "--rounds", type=int, default=1, help="alternate ours / ours-off this many times (medians)"
    )
    args = parser.parse_args()
    n = args.events - args.events % 2
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers, topic_prefix="bench.", data_dir=Path(tmp)
        )
        topics = Topics("bench.")
        ensure_topics(settings.kafka_client_config(), [topics.events, "bench.raw"], 4)
        # the same events, encoded up front, for the raw baseline
        payloads: list[tuple[bytes, bytes]] = []
        for i in range(n // 2):
            ia = Interaction(
                app_id="default",
                session_id=f"s{i % 1000}",
                user_input="How do I reset my password?",
                response="Go to Settings, then Security, and choose Reset password.",
                model="gpt-4o-mini",
                prompt_version="v1.1",
                experiment="support-prompt",
                variant="treatment",
                latency_ms=812.5,
                input_tokens=12,
                output_tokens=40,
            )
            fb = Feedback(
                app_id="default",
                session_id=f"s{i % 1000}",
                interaction_id=ia.interaction_id,
                kind="thumbs",
                thumbs=1,
            )
            payloads += [(ia.partition_key, encode(ia)), (fb.partition_key, encode(fb))]
        raw = bench_raw(broker.bootstrap_servers, "bench.raw", payloads)
        del payloads
        # Alternated, the median of each figure over the rounds: on a shared machine the load
        # moves between phases, and default vs off differ by far less than it does.
        rounds = [
            (bench_ours(settings, n), bench_ours(settings, n, live=False))
            for _ in range(args.rounds)
        ]
        ours = {k: statistics.median(r[0][k] for r in rounds) for k in rounds[0][0]}
        off = {k: statistics.median(r[1][k] for r in rounds) for k in rounds[0][1]}
        from feedbackloop.control import ControlPlane, new_experiment

        ControlPlane(settings).create(
            new_experiment(
                settings.app_id,
                "support-prompt",
                {"control": 0.5, "treatment": 0.5},
                changed_by="bench",
            )
        )
        live = bench_ours(settings, n, assign=True)
    print(
        f"SDK enqueue benchmark, {n:,} events (half log_interaction, half thumbs); "
        f"ours and ours-off: medians of {args.rounds} alternated rounds"
    )
    print(
        f"{'':22}{'ours':>14}{'raw produce':>14}{'ratio':>8}{'ours, off':>12}{'ratio':>8}"
        f"{'ours, assign':>14}{'ratio':>8}"
    )
    for key, label, fmt in [
        ("enqueue_rate", "enqueue events/s", "{:>14,.0f}"),
        ("total_rate", "incl. flush events/s", "{:>14,.0f}"),
        ("mean_us", "mean call us", "{:>14.2f}"),
        ("p50_us", "p50 call us", "{:>14.2f}"),
        ("p99_us", "p99 call us", "{:>14.2f}"),
    ]:
        ratio = ours[key] / raw[key]
        print(
            f"{label:22}{fmt.format(ours[key])}{fmt.format(raw[key])}{ratio:>8.2f}"
            f"{fmt.format(off[key])[2:]}{off[key] / raw[key]:>8.2f}"
            f"{fmt.format(live[key])}{live[key] / raw[key]:>8.2f}"
        )
    sustained = ours["total_rate"] / raw["total_rate"]
    print(
        f"sustained: ours delivers {sustained:.2f}x raw's rate (target >= 0.5, i.e. within 2x); "
        f"enqueue rate {ours['enqueue_rate']:,.0f}/s (target >= 100,000/s); one SDK call costs "
        f"{ours['mean_us'] / raw['mean_us']:.2f}x a raw produce of ready bytes"
    )
    print(
        "ours: the default client (follows the control topic in the background; the app "
        "names the variant); ours, off: live_experiments=False; ours, assign: the client "
        "assigns each interaction's variant from a live experiment"
    )


if __name__ == "__main__":
    main()
