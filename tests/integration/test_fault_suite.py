"""The fault suite: SIGKILL of the stream worker, the sink, the broker or its S3 store
(SeaweedFS) while the SDK sends, through the real stack (`feedbackloop up`'s supervisor, the
durable embedded broker, faust, chDB). Every event the SDK accepted and reported delivered
(none dropped, failed or left in the spool) is in ClickHouse exactly once, and the window
totals equal the counts from the event tables (resends after a broker crash included).

Each run writes its figures to artifacts/fault_suite.json (docs/RELIABILITY.md cites them).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("faust")

from feedbackloop.config import Settings  # noqa: E402
from feedbackloop.infra.stack import RestartPolicy, Stack, default_services  # noqa: E402
from feedbackloop.producers import FeedbackClient  # noqa: E402
from feedbackloop.simulator import Simulator, TrafficSpec  # noqa: E402
from feedbackloop.sinks.query import _live_endpoint, _via_endpoint  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.fault,
    pytest.mark.slow,
    pytest.mark.timeout(420),
]

RATE = 800.0  # events/s from the SDK
DURATION_S = 14.0
KILL_AT_S = 4.0
_TABLES = {"interaction": "interactions", "feedback": "feedback", "implicit": "implicit"}
_TABLES["outcome"] = "outcomes"


def _query(settings: Settings, sql: str, timeout: float = 60.0) -> list[Any]:
    """Through the running sink's endpoint only: never open chDB beside the sink."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        info = _live_endpoint(settings)
        if info is not None:
            try:
                return list(_via_endpoint(info, sql, 1_000_000).rows)
            except Exception as e:  # the sink restarting, or a merge racing the read
                last = e
        time.sleep(0.5)
    raise AssertionError(f"no answer from the sink's query endpoint: {last}")


def _kill(stack: Stack, fault: str) -> int | None:
    assert stack.broker is not None
    if fault == "broker":
        pid = stack.broker.pid
        stack.broker.kill()
        return pid
    if fault == "s3":
        store = stack.broker.object_store
        assert store is not None
        pid = store.pid
        store.kill()
        return pid
    st = next(s for s in stack.status() if s.name == fault)
    assert st.pid is not None
    import os

    os.kill(st.pid, signal.SIGKILL)
    return st.pid


@pytest.mark.parametrize("fault", ["stream", "sink", "broker", "s3"])
def test_sigkill_under_sdk_load_loses_nothing_and_stores_each_event_once(
    fault: str, tmp_path: Path, artifacts_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        broker_port=0,
        topic_partitions=2,
        clickhouse_database="faults",
        stream_window_s=5.0,
        stream_lateness_s=10.0,
        stream_grace_s=120.0,
        log_level="INFO",
    )
    stack = Stack(
        settings,
        default_services(with_web=False),
        policy=RestartPolicy(backoff_s=0.5, max_backoff_s=2.0),
    )
    run = stack.start()
    stop = threading.Event()

    def supervise() -> None:
        while not stop.is_set():
            assert stack.supervise(), stack.failure
            time.sleep(0.2)

    supervisor = threading.Thread(target=supervise, daemon=True)
    supervisor.start()
    try:
        sent: dict[str, set[uuid.UUID]] = defaultdict(set)
        client = FeedbackClient(
            run, app_id="faults", on_event=lambda e, _: sent[e.event_type].add(e.event_id)
        )
        spec = TrafficSpec(app_id="faults", late_share=0.0, malformed_share=0.0, seed=5)
        killed: list[int | None] = []
        killer = threading.Timer(KILL_AT_S, lambda: killed.append(_kill(stack, fault)))
        killer.start()
        t0 = time.monotonic()
        Simulator(client, spec).run(duration_s=DURATION_S, rate=RATE)
        stats = client.close(timeout=120)
        killer.join()
        assert killed and killed[0] is not None
        # the SDK's own account: every accepted event delivered, none dropped or refused
        assert (stats.dropped, stats.failed, stats.spool_pending) == (0, 0, 0), stats
        total = sum(len(ids) for ids in sent.values())

        # every delivered event in ClickHouse, exactly once
        stored: dict[str, set[uuid.UUID]] = {}
        deadline = time.monotonic() + 180
        while True:
            dupes = 0
            for kind, table in _TABLES.items():
                rows = _query(run, f"SELECT toString(event_id) FROM {table} FINAL")
                stored[kind] = {uuid.UUID(r[0]) for r in rows}
                dupes += len(rows) - len(stored[kind])
            missing = sum(len(sent[k] - stored[k]) for k in _TABLES)
            if missing == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        visible_s = time.monotonic() - t0
        extra = sum(len(stored[k] - sent[k]) for k in _TABLES)

        # window totals equal the event tables' counts once every window closed
        deadline = time.monotonic() + 120
        while True:
            windows = _query(
                run,
                "SELECT sum(interactions + shadow_interactions), "
                "sum(thumbs_up + thumbs_down), sum(orphaned) "
                "FROM window_aggregates FINAL WHERE app_id = 'faults'",
            )[0]
            events = _query(
                run,
                "SELECT (SELECT count() FROM interactions FINAL WHERE app_id = 'faults'), "
                "(SELECT count() FROM feedback FINAL WHERE app_id = 'faults' "
                "AND kind = 'thumbs')",
            )[0]
            got = (int(windows[0] or 0), int(windows[1] or 0))
            want = (int(events[0]), int(events[1]))
            if got == want or time.monotonic() > deadline:
                break
            time.sleep(2)
        restarts = {st.name: st.restarts for st in stack.status()}
        figures = {
            "fault": f"SIGKILL {fault}",
            "sdk_delivered": total,
            "missing_in_clickhouse": missing,
            "duplicates_under_final": dupes,
            "unexpected_ids": extra,
            "window_totals": got,
            "event_table_counts": want,
            "orphaned_in_windows": int(windows[2] or 0),
            "restarts": restarts,
            "all_visible_after_s": round(visible_s, 1),
            "sdk_stats": {
                k: getattr(stats, k) for k in ("enqueued", "delivered", "spooled", "replayed")
            },
        }
        _record(artifacts_dir, figures)
        assert missing == 0 and dupes == 0 and extra == 0, figures
        assert restarts[fault] == 1, figures
        # While SeaweedFS is away Tansu refuses writes: the stream worker's flush fails and it
        # exits by design (its batch unacknowledged), to recover from the changelogs.
        may_restart = {"stream"} if fault == "s3" else set()
        others = {n: k for n, k in restarts.items() if n != fault and n not in may_restart and k}
        assert not others, figures  # nothing else had to restart
        assert got == want, figures
    finally:
        stop.set()
        supervisor.join(10)
        stack.stop()


def _record(artifacts_dir: Path, figures: dict[str, Any]) -> None:
    path = artifacts_dir / "fault_suite.json"
    try:
        runs = json.loads(path.read_text())
    except (OSError, ValueError):
        runs = {}
    runs[figures["fault"]] = figures
    path.write_text(json.dumps(runs, indent=2, sort_keys=True))
