"""Where the sink writer's time goes: wall and calling-thread CPU seconds per phase.

Run:  .venv/bin/python bench/sink_phases.py [--modes enriched,raw] [--rows 200000]

Wraps the writer's phases (``ClickHouseSink._prepare`` on the consumer thread; the identity
check, its lookup and the inserts on the insert thread) with timers and writes the messages
of bench/bench_sink.py through one sink into embedded chDB, as its writer part does. Wall
seconds include waiting for the other thread and for the machine; thread CPU seconds
(``time.thread_time``) count the calling thread only, so they show the Python work a phase
holds the GIL for (chDB's own threads are not in them). A profile to read beside
bench_sink's rows/s, not a baseline comparison.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_sink  # noqa: E402

from feedbackloop.infra import get_client  # noqa: E402
from feedbackloop.schemas import Topics  # noqa: E402
from feedbackloop.sinks import ClickHouseSink, SinkMessage, migrate  # noqa: E402

PHASES = (
    "_prepare",
    "_insert_batch",
    "_check_identity",
    "_lookup",
    "_line_keys",
    "_refuse_conflicts",
    "_insert_parsed",
    "_insert_all",
)


def _wrap(wall: Counter[str], cpu: Counter[str]) -> None:
    for name in PHASES:
        f = getattr(ClickHouseSink, name)

        def timed(*a: Any, _f: Any = f, _name: str = name, **k: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            try:
                return _f(*a, **k)
            finally:
                wall[_name] += time.perf_counter() - t0
                cpu[_name] += time.thread_time() - c0

        setattr(ClickHouseSink, name, functools.wraps(f)(timed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", default="enriched,raw")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=50_000)
    args = ap.parse_args()
    wall: Counter[str] = Counter()
    cpu: Counter[str] = Counter()
    _wrap(wall, cpu)
    topics = Topics("bench.")
    raw = bench_sink._messages(args.rows)
    with tempfile.TemporaryDirectory(prefix="sink-phases-") as tmp:
        dsn = f"chdb:///{tmp}/chdb"
        client = get_client(dsn)
        for mode in args.modes.split(","):
            if mode == "enriched":
                topic, values = topics.enriched, bench_sink._enriched_messages(raw)
            else:
                topic, values = topics.events, raw
            client.command("DROP DATABASE IF EXISTS phases")
            migrate(client, "phases")
            bench_sink._settle(client)
            wall.clear()
            cpu.clear()
            sink = ClickHouseSink(
                "",
                "phases",
                topics,
                max_rows=args.batch,
                max_age_s=60,
                client_factory=lambda: get_client(dsn),
            )
            sink.setup()
            t0, c0 = time.perf_counter(), time.process_time()
            for off, v in enumerate(values):
                sink.add(topic, 0, off, SinkMessage(v, None, None, 0, off))
            sink.flush()
            elapsed, used = time.perf_counter() - t0, time.process_time() - c0
            sink.close()
            print(
                f"[{mode}] {len(values):,} messages in {elapsed:.2f} s "
                f"({len(values) / elapsed:,.0f} rows/s), process CPU {used:.2f} s, "
                f"load average {os.getloadavg()[0]:.1f}"
            )
            for name in PHASES:
                if name in wall:
                    print(f"  {name:18s} wall {wall[name]:6.3f} s   thread CPU {cpu[name]:6.3f} s")
        client.close()


if __name__ == "__main__":
    main()
