"""Collector under load with hostile requests mixed in (issue 13).

Run:  .venv/bin/python bench/bench_hostile_load.py [--seconds 60] [--rate 100] [--batch 10]

One stack in this process, as ``feedbackloop up`` runs it with keys configured: the embedded
Tansu broker, the sink worker (``sink run --raw``, embedded chDB) and the web server. Load
threads offer ``--rate`` requests/s (open loop: each request has its scheduled start, so a
slow answer does not slow the offered load down), each a batch of ``--batch`` valid events
under the public key, for ``--seconds``, twice:

* baseline: valid traffic only;
* hostile: the same, with ``--hostile`` (default 1%) of the requests replaced by one of the
  reproductions of issue 13: a 1.1 MB event, 1.5 MB of invalid JSON, 100k-deep nesting, a
  5000-digit integer, an event_type that is an object, input_tokens of 2^32, a UTF-16 body,
  ``rating: true``, an unknown key, a wrong content type.

Checks, printed as ``ok`` / ``WRONG``: every valid event answered 202 is stored exactly once
(``count()`` under FINAL and ``uniqExact(event_id)`` of the run's sessions both equal the
number sent); every hostile request got a 4xx; every hostile request that carries an event
payload left exactly one dead letter (source ``collector``, each payload unique); nothing
was spooled or quarantined. The figure: p50 / p99 latency of the valid requests in each
phase, side by side, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from feedbackloop.config import Settings
from feedbackloop.infra import EmbeddedBroker
from feedbackloop.sinks import SinkConfig, SinkWorker, run_query
from feedbackloop.web import WebServer

PK = "pk_bench_public"
SK = "sk_bench_secret"
APP = "bench"
JSON = {"Content-Type": "application/json"}


@dataclass
class Hostile:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    dead_letter: bool  # carries an event payload, so it must leave one dead letter


def _event(session: str, **kw: Any) -> dict[str, Any]:
    return {
        "event_type": "interaction",
        "event_id": str(uuid.uuid4()),
        "session_id": session,
        "user_input": "How do I reset my password?",
        "response": "Open settings, then security, then reset.",
        "model": "m-small",
        **kw,
    }


def _hostile(rng: random.Random) -> Hostile:
    mark = uuid.uuid4().hex  # every payload unique: dead letters are counted one by one
    auth = {"Authorization": f"Bearer {PK}"}
    kinds: list[Callable[[], Hostile]] = [
        lambda: Hostile(
            "oversized_event",
            "/v1/events",
            json.dumps([_event(mark, response=mark + "x" * 1_100_000)]).encode(),
            {**auth, **JSON},
            True,
        ),
        lambda: Hostile(
            "invalid_json_1_5mb", "/v1/events", (mark + "{" * 1_500_000).encode(), auth, True
        ),
        lambda: Hostile(
            "deep_nesting",
            "/v1/events",
            f'["{mark}",'.encode() + b"[" * 100_000 + b"]" * 100_000 + b"]",
            {**auth, **JSON},
            True,
        ),
        lambda: Hostile(
            "5000_digit_int",
            "/v1/events",
            f'[{{"m": "{mark}", "input_tokens": '.encode() + b"9" * 5000 + b"}]",
            {**auth, **JSON},
            True,
        ),
        lambda: Hostile(
            "event_type_object",
            "/v1/events",
            json.dumps([_event(mark, event_type={"x": mark})]).encode(),
            {**auth, **JSON},
            True,
        ),
        lambda: Hostile(
            "tokens_2_32",
            "/v1/events",
            json.dumps([_event(mark, input_tokens=2**32)]).encode(),
            {**auth, **JSON},
            True,
        ),
        lambda: Hostile(
            "utf16_body",
            "/v1/events",
            json.dumps([_event(mark)]).encode("utf-16"),
            {**auth, **JSON},
            True,
        ),
        lambda: Hostile(
            "rating_true",
            "/v1/feedback",
            json.dumps(
                {
                    "session_id": mark,
                    "interaction_id": str(uuid.uuid4()),
                    "kind": "rating",
                    "rating": True,
                }
            ).encode(),
            {**auth, **JSON},
            True,
        ),
        lambda: Hostile(
            "unknown_key",
            "/v1/events",
            json.dumps([_event(mark)]).encode(),
            {"Authorization": f"Bearer guess-{mark}", **JSON},
            False,
        ),
        lambda: Hostile(
            "wrong_content_type",
            "/v1/events",
            b"<xml/>",
            {**auth, "Content-Type": "application/xml"},
            False,
        ),
    ]
    return rng.choice(kinds)()


@dataclass
class Phase:
    name: str
    valid_latencies: list[float] = field(default_factory=list)
    valid_events: int = 0
    valid_failed: list[str] = field(default_factory=list)
    hostile: dict[str, int] = field(default_factory=dict)
    hostile_not_4xx: list[str] = field(default_factory=list)
    dead_letters_expected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _load(
    url: str,
    phase: Phase,
    run: str,
    seconds: float,
    rate: float,
    batch: int,
    hostile_share: float,
    threads: int,
    seed: int,
) -> None:
    start = time.monotonic() + 0.5
    n_requests = int(seconds * rate)

    def worker(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        with httpx.Client(base_url=url, timeout=60) as http:
            for i in range(k, n_requests, threads):
                due = start + i / rate
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if rng.random() < hostile_share:
                    h = _hostile(rng)
                    r = http.post(h.path, content=h.body, headers=h.headers)
                    with phase.lock:
                        phase.hostile[h.name] = phase.hostile.get(h.name, 0) + 1
                        if not 400 <= r.status_code < 500:
                            phase.hostile_not_4xx.append(f"{h.name}: {r.status_code}")
                        if h.dead_letter:
                            phase.dead_letters_expected += 1
                    continue
                events = [_event(f"{run}-{i}") for _ in range(batch)]
                t0 = time.perf_counter()
                r = http.post(
                    "/v1/events",
                    content=json.dumps(events).encode(),
                    headers={"Authorization": f"Bearer {PK}", **JSON},
                )
                elapsed = time.perf_counter() - t0
                with phase.lock:
                    # Latency from the scheduled start: queueing behind slow requests counts.
                    phase.valid_latencies.append(elapsed)
                    if r.status_code == 202 and r.json()["accepted"] == batch:
                        phase.valid_events += batch
                    else:
                        phase.valid_failed.append(f"{r.status_code} {r.text[:200]}")

    ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return statistics.quantiles(xs, n=1000, method="inclusive")[int(q * 1000) - 1]


def _wait(fn: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.5)
    return fn()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=100.0, help="requests/s offered")
    ap.add_argument("--batch", type=int, default=10, help="valid events per request")
    ap.add_argument("--hostile", type=float, default=0.01, help="share of hostile requests")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        broker = EmbeddedBroker(port=0, log_path=Path(tmp) / "broker.log").start()
        settings = Settings(
            bootstrap_servers=broker.bootstrap_servers,
            data_dir=Path(tmp) / "var",
            clickhouse_database="bench_hostile",
            topic_prefix="bh.",
            topic_partitions=2,
            web_public_keys={APP: PK},
            web_secret_keys={APP: SK},
            web_rate_limit_per_s=0,
            producer_linger_ms=5.0,
        )
        worker = SinkWorker(settings, SinkConfig(raw=True, group_id="bench", max_age_s=0.2))
        ready = threading.Event()
        sink_thread = threading.Thread(target=worker.run, kwargs={"ready": ready.set})
        sink_thread.start()
        assert ready.wait(120), "the sink did not start"
        web = WebServer(settings, host="127.0.0.1", port=0).start()
        try:
            phases = []
            # The baseline runs before and after the hostile phase, so that drift (a growing
            # table, other load on the machine) shows instead of passing for an effect.
            plan = (("baseline", 0.0), ("hostile", args.hostile), ("baseline-after", 0.0))
            for name, share in plan:
                phase = Phase(name)
                run = f"{name}-{uuid.uuid4().hex[:8]}"
                _load(
                    web.url,
                    phase,
                    run,
                    args.seconds,
                    args.rate,
                    args.batch,
                    share,
                    args.threads,
                    args.seed,
                )
                phases.append((phase, run))
            ok = True
            for phase, run in phases:

                def stored(run: str = run) -> tuple[int, int]:
                    row = run_query(
                        settings,
                        "SELECT count(), uniqExact(event_id) FROM interactions FINAL "
                        f"WHERE startsWith(session_id, '{run}-')",
                    ).rows[0]
                    return int(row[0]), int(row[1])

                _wait(lambda p=phase, f=stored: f()[0] >= p.valid_events, 120)
                n, distinct = stored()
                good = n == distinct == phase.valid_events and not phase.valid_failed
                ok &= good
                print(
                    f"[{phase.name}] valid: {phase.valid_events} events in "
                    f"{len(phase.valid_latencies)} requests; stored {n} rows, {distinct} "
                    f"distinct ids; failed requests {len(phase.valid_failed)}; "
                    f"{'ok' if good else 'WRONG'}"
                )
                for f in phase.valid_failed[:5]:
                    print(f"  failed: {f}")
            hostile = phases[1][0]

            def letters() -> int:
                return int(
                    run_query(
                        settings,
                        "SELECT count() FROM dead_letters FINAL WHERE source = 'collector'",
                    ).rows[0][0]
                )

            _wait(lambda: letters() >= hostile.dead_letters_expected, 120)
            got = letters()
            good = not hostile.hostile_not_4xx and got == hostile.dead_letters_expected
            ok &= good
            print(
                f"[hostile] requests by kind: {dict(sorted(hostile.hostile.items()))}; "
                f"non-4xx answers: {hostile.hostile_not_4xx or 'none'}; dead letters "
                f"{got} of {hostile.dead_letters_expected} expected; "
                f"{'ok' if good else 'WRONG'}"
            )
            health = httpx.get(f"{web.url}/healthz").json()
            good = health["spool"] == {"pending": 0, "quarantined": 0}
            ok &= good
            print(
                f"[healthz] {health['status']} spool {health['spool']}; {'ok' if good else 'WRONG'}"
            )
            base = phases[0][0].valid_latencies + phases[2][0].valid_latencies
            hos = hostile.valid_latencies
            for label, q in (("p50", 0.5), ("p99", 0.99)):
                b, h = _pct(base, q) * 1000, _pct(hos, q) * 1000
                before = _pct(phases[0][0].valid_latencies, q) * 1000
                after = _pct(phases[2][0].valid_latencies, q) * 1000
                print(
                    f"valid requests {label}: with {args.hostile:.0%} hostile {h:.1f} ms, "
                    f"baseline (no hostile) {b:.1f} ms (before {before:.1f}, after "
                    f"{after:.1f}), ratio {h / b:.2f}"
                )
            print("ALL CHECKS ok" if ok else "SOME CHECKS WRONG")
        finally:
            web.stop()
            worker.stop()
            sink_thread.join(60)
            broker.stop()
        raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
