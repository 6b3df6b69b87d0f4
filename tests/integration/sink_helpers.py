"""Shared helpers of the sink integration tests: events, producing, a worker in a thread."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from feedbackloop.config import Settings
from feedbackloop.schemas import (
    EnrichedEvent,
    Envelope,
    Feedback,
    Implicit,
    Interaction,
    Outcome,
    RequestContext,
    encode,
)
from feedbackloop.sinks import SinkConfig, SinkWorker


def make_events(n_interactions: int, app: str = "app1", seed: int = 0) -> list[Envelope]:
    """Interactions, each followed by a thumbs feedback, every third a rating, implicit, outcome."""
    base = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)
    out: list[Envelope] = []
    for i in range(n_interactions):
        t = base + dt.timedelta(milliseconds=10 * i)
        variant = "a" if i % 2 else "b"
        it = Interaction(
            app_id=app,
            session_id=f"s{seed}-{i % 50}",
            occurred_at=t,
            user_input=f"q{i}",
            response=f"r{i}",
            model="m1",
            prompt_version=f"p{i % 3}",
            experiment="exp",
            variant=variant,
            latency_ms=100.0 + i % 7,
            input_tokens=10,
            output_tokens=20,
            metadata={"k": i, "tag": "x"},
        )
        out.append(it)
        common = dict(
            app_id=app,
            session_id=it.session_id,
            interaction_id=it.interaction_id,
            occurred_at=t + dt.timedelta(seconds=1),
        )
        out.append(Feedback(kind="thumbs", thumbs=1 if i % 4 else -1, **common))
        if i % 3 == 0:
            out.append(Feedback(kind="rating", rating=1 + i % 5, **common))
            out.append(Implicit(signal="copy", copied_chars=5, **common))
            out.append(Outcome(outcome="task_completed", value=1.0, **common))
    return out


def enrich(ev: Envelope, interactions: dict[uuid.UUID, Interaction], offset: int = 0) -> bytes:
    """The enriched-topic message the stream jobs would emit for ``ev``."""
    ctx = None
    iid = getattr(ev, "interaction_id", None)
    if not isinstance(ev, Interaction) and iid in interactions:
        it = interactions[iid]
        ctx = RequestContext(
            interaction_id=it.interaction_id,
            interaction_occurred_at=it.occurred_at,
            model=it.model,
            prompt_version=it.prompt_version,
            experiment=it.experiment,
            variant=it.variant,
            user_input=it.user_input,
            response=it.response,
            latency_ms=it.latency_ms,
        )
    e = EnrichedEvent(event=ev, context=ctx, source_partition=0, source_offset=offset)  # type: ignore[arg-type]
    return e.model_dump_json().encode()


def produce(
    bootstrap: str, topic: str, values: list[Envelope | bytes | tuple[bytes, bytes]]
) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "log_level": 3})
    for v in values:
        if isinstance(v, tuple):
            p.produce(topic, v[1], key=v[0])
        elif isinstance(v, bytes):
            p.produce(topic, v, key=b"k")
        else:
            p.produce(topic, encode(v), key=v.partition_key)
        p.poll(0)
    assert p.flush(30) == 0


def settings_for(bootstrap: str, dsn: str, database: str, prefix: str, data_dir: Path) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap,
        clickhouse_url=dsn,
        clickhouse_database=database,
        topic_prefix=prefix,
        topic_partitions=2,
        data_dir=data_dir,
    )


@contextmanager
def running_worker(
    settings: Settings, config: SinkConfig, client_factory: Callable[[], Any] | None = None
) -> Iterator[SinkWorker]:
    worker = SinkWorker(settings, config, client_factory=client_factory)
    ready = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            worker.run(ready=ready.set)
        except BaseException as e:  # surfaced in the test thread
            errors.append(e)
            ready.set()

    th = threading.Thread(target=target, daemon=True)
    th.start()
    assert ready.wait(60), "worker did not start"
    try:
        yield worker
    finally:
        worker.stop()
        th.join(60)
        assert not th.is_alive(), "worker did not stop"
    if errors:
        raise errors[0]


def wait_until(fn: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s (last: {last!r})")
