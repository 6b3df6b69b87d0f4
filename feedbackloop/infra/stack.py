"""Run the whole pipeline on one machine: broker, stream worker, ClickHouse sink, web server.

Each service runs as its own child process (``python -m feedbackloop <command>``) with the
same settings passed as ``FEEDBACKLOOP_*`` env vars: the faust worker owns its event loop and
signal handling, and embedded chDB admits one process per data directory, which the sink
owns. The stack starts them in dependency order, waits until each says it is ready, and stops
them in reverse order (the broker last), each with SIGTERM so it flushes before exiting.

While it runs, :meth:`Stack.supervise` (called about once a second by ``up``) restarts a
child that died, the embedded broker and its S3 store included, after a back-off, while the
others keep running: nothing is lost by a crash because every service commits its input only
after its output is durable (docs/RELIABILITY.md). A child that keeps crashing stops the stack
(:class:`RestartPolicy` says when).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from feedbackloop.config import Settings, settings_env
from feedbackloop.errors import BrokerError, InfraError
from feedbackloop.infra.broker import EmbeddedBroker
from feedbackloop.infra.kafka_admin import ensure_topics
from feedbackloop.infra.process import die_with_parent
from feedbackloop.schemas import Topics

__all__ = ["RestartPolicy", "Service", "ServiceStatus", "Stack", "default_services"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """A child process of the stack and the log line that says it is ready."""

    name: str
    args: tuple[str, ...]
    ready_marker: str
    ready_timeout_s: float = 90.0
    extra_env: tuple[tuple[str, str], ...] = ()


@dataclass
class ServiceStatus:
    name: str
    state: str  # starting | ready | exited | restarting | stopping | stopped | failed
    pid: int | None = None
    detail: str = ""
    log_path: Path | None = None
    #: Times the stack restarted this service since it started.
    restarts: int = 0


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed child is restarted, and when the stack gives up on it.

    A child that exits (or does not become ready within its ready timeout) is restarted after
    ``backoff_s``, doubled for each crash in a row, at most ``max_backoff_s``. A crash is "in a
    row" when the child had run less than ``stable_s`` since its last start; a child that ran
    longer starts a new count. The ``max_crashes``-th crash in a row stops the whole stack:
    a child that cannot stay up for a minute five times running will not be fixed by a sixth.
    """

    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_crashes: int = 5
    stable_s: float = 60.0

    def delay(self, crashes_in_a_row: int) -> float:
        return min(self.max_backoff_s, self.backoff_s * 2 ** max(0, crashes_in_a_row - 1))


@dataclass
class _Supervised:
    """Restart bookkeeping of one child (a service, the broker, or its S3 store)."""

    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    crashes_in_a_row: int = 0
    restart_at: float | None = None
    last_exit: str = ""

    def crashed(self, policy: RestartPolicy, now: float, detail: str) -> bool:
        """Record a crash and schedule the restart; False when the policy gives up."""
        if now - self.started_at >= policy.stable_s:
            self.crashes_in_a_row = 0
        self.crashes_in_a_row += 1
        self.last_exit = detail
        if self.crashes_in_a_row >= policy.max_crashes:
            return False
        self.restart_at = now + policy.delay(self.crashes_in_a_row)
        return True

    def restarted(self, now: float) -> None:
        self.restarts += 1
        self.restart_at = None
        self.started_at = now


def default_services(
    with_stream: bool = True, with_sink: bool = True, with_web: bool = True
) -> list[Service]:
    """The pipeline's services in start order. Without stream jobs the sink stores raw events."""
    services: list[Service] = []
    if with_stream:
        services.append(Service("stream", ("worker",), ready_marker="worker running"))
    if with_sink:
        args = ("sink", "run") if with_stream else ("sink", "run", "--raw")
        services.append(Service("sink", args, ready_marker="sink running"))
    if with_web:
        services.append(Service("web", ("web",), ready_marker="web ready"))
    return services


@dataclass
class _Running:
    service: Service
    proc: subprocess.Popen[bytes]
    log_path: Path
    ready: bool = False
    ready_line: str = ""
    log_offset: int = 0
    sup: _Supervised = field(default_factory=_Supervised)


@dataclass
class Stack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    settings: Settings
    services: Sequence[Service] = field(default_factory=default_services)
    on_status: Callable[[ServiceStatus], None] | None = None
    policy: RestartPolicy = field(default_factory=RestartPolicy)

    def __post_init__(self) -> None:
        self.broker: EmbeddedBroker | None = None
        self._running: list[_Running] = []
        self._broker_sup = _Supervised()
        self._store_sup = _Supervised()
        #: Why the stack gave up (set by :meth:`supervise`), else None.
        self.failure: str | None = None
        self.log_dir = self.settings.data_dir / "logs"
        self.metrics_dir = self.settings.metrics_path

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Settings:
        """Start everything; returns the settings the services run with (bootstrap resolved)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        from feedbackloop.infra.metrics import prepare_dir

        # One metrics directory for every service: whoever is scraped reads them all.
        # Counters restart at zero with the stack, as Prometheus expects of a restart.
        prepare_dir(self.metrics_dir, clean=True)
        s = self.settings
        if s.embedded_broker:
            self.broker = EmbeddedBroker.from_settings(s)
            self._report(ServiceStatus("broker", "starting"))
            try:
                self.broker.start()
            except BaseException:
                self.broker.stop()
                raise
            s = s.model_copy(update={"bootstrap_servers": self.broker.bootstrap_servers})
            self._report(
                ServiceStatus(
                    "broker",
                    "ready",
                    self.broker.pid,
                    f"tansu on {self.broker.bootstrap_servers} ({self.broker.storage_description})",
                    self.log_dir / "broker.log",
                )
            )
        self.settings = s
        try:
            self._ensure_topics()
            for service in self.services:
                running = self._spawn(service)
                self._running.append(running)
                self._await_ready(running)
        except BaseException:
            self.stop()
            raise
        return s

    def _ensure_topics(self) -> None:
        s = self.settings
        ensure_topics(s.kafka_client_config(), Topics(s.topic_prefix).all(), s.topic_partitions)

    def _spawn(self, service: Service, sup: _Supervised | None = None) -> _Running:
        """Start ``service``'s process (not waiting for it to be ready)."""
        log_path = self.log_dir / f"{service.name}.log"
        env = {
            **os.environ,
            **settings_env(self.settings),
            "PYTHONUNBUFFERED": "1",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir.resolve()),
            **dict(service.extra_env),
        }
        # The stack serves metrics_port itself; a child binding it too would fail.
        env.pop("FEEDBACKLOOP_METRICS_PORT", None)
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "feedbackloop", *service.args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
                preexec_fn=die_with_parent,
            )
        finally:
            out.close()
        running = _Running(service, proc, log_path, log_offset=log_path.stat().st_size)
        if sup is not None:
            running.sup = sup
        self._report(
            ServiceStatus(
                service.name, "starting", proc.pid, "", log_path, restarts=running.sup.restarts
            )
        )
        return running

    def _poll_ready(self, running: _Running) -> bool:
        """True once the service's log carries its ready line (reported once)."""
        if running.ready:
            return True
        text = _read_from(running.log_path, running.log_offset)
        marker = running.service.ready_marker
        if marker not in text:
            return False
        running.ready = True
        running.ready_line = next(line.strip() for line in text.splitlines() if marker in line)
        self._report(
            ServiceStatus(
                running.service.name,
                "ready",
                running.proc.pid,
                running.ready_line,
                running.log_path,
                restarts=running.sup.restarts,
            )
        )
        return True

    def _await_ready(self, running: _Running) -> None:
        service, proc, log_path = running.service, running.proc, running.log_path
        deadline = time.monotonic() + service.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise InfraError(
                    f"{service.name} exited with code {proc.returncode} while starting; "
                    f"last lines of {log_path}:\n{_tail(log_path)}"
                )
            if self._poll_ready(running):
                return
            time.sleep(0.2)
        raise InfraError(
            f"{service.name} did not become ready within {service.ready_timeout_s:.0f} s; "
            f"last lines of {log_path}:\n{_tail(log_path)}"
        )

    # ------------------------------------------------------------------ supervision

    def supervise(self, now: float | None = None) -> bool:
        """Restart what died (after its back-off); False once the stack must stop.

        Call it about once a second. When it returns False, :attr:`failure` says why.
        """
        if self.failure is not None:
            return False
        now = time.monotonic() if now is None else now
        if self.broker is not None:
            self._supervise_broker(now)
        for i, r in enumerate(self._running):
            if self.failure is not None:
                break
            code = r.proc.poll()
            if code is None:
                if r.ready or self._poll_ready(r):
                    continue
                if now - r.sup.started_at < r.service.ready_timeout_s:
                    continue
                timeout = r.service.ready_timeout_s
                log.warning("%s not ready within %.0f s; killing it", r.service.name, timeout)
                r.proc.kill()
                r.proc.wait()
                code = r.proc.returncode
            if r.sup.restart_at is None:
                detail = _exit_detail(code)
                self._crashed(r.service.name, r.sup, now, detail, r.proc.pid, r.log_path)
                self._mark_dead(r.proc.pid)
                continue
            if now >= r.sup.restart_at:
                r.sup.restarted(now)
                self._running[i] = self._spawn(r.service, r.sup)
        return self.failure is None

    def _supervise_broker(self, now: float) -> None:
        broker = self.broker
        assert broker is not None
        store = broker.object_store
        for name, sup, alive in (
            ("s3", self._store_sup, store is None or store.running),
            ("broker", self._broker_sup, broker.running),
        ):
            if alive:
                continue
            if sup.restart_at is None:
                pid = store.pid if name == "s3" and store is not None else broker.pid
                if not self._crashed(name, sup, now, _dead_detail(name, broker), pid, None):
                    return
            if now < (sup.restart_at or now):
                return
            try:
                if name == "s3" and store is not None:
                    store.start()
                else:
                    broker.start()
                    self._ensure_topics()
            except (BrokerError, InfraError, OSError) as e:
                log.warning("restarting %s failed: %s", name, e)
                sup.restart_at = None
                if not self._crashed(name, sup, now, f"restart failed: {e}", None, None):
                    return
                continue
            sup.restarted(now)
            pid = store.pid if name == "s3" and store is not None else broker.pid
            self._report(
                ServiceStatus(
                    name,
                    "ready",
                    pid,
                    "restarted",
                    self.log_dir / "broker.log",
                    restarts=sup.restarts,
                )
            )

    def _crashed(
        self,
        name: str,
        sup: _Supervised,
        now: float,
        detail: str,
        pid: int | None,
        log_path: Path | None,
    ) -> bool:
        if sup.crashed(self.policy, now, detail):
            delay = (sup.restart_at or now) - now
            log.warning("%s %s; restarting in %.1f s", name, detail, delay)
            self._report(
                ServiceStatus(
                    name,
                    "exited",
                    pid,
                    f"{detail}; restart {sup.restarts + 1} in {delay:.1f} s",
                    log_path,
                    restarts=sup.restarts,
                )
            )
            return True
        self.failure = (
            f"{name} crashed {sup.crashes_in_a_row} times in a row, each within "
            f"{self.policy.stable_s:.0f} s of its start (last: {detail})"
            + (f"; log: {log_path}" if log_path else "")
        )
        log.error("giving up: %s", self.failure)
        self._report(ServiceStatus(name, "failed", pid, self.failure, log_path, sup.restarts))
        return False

    def _mark_dead(self, pid: int) -> None:
        from feedbackloop.infra.metrics import mark_process_dead

        mark_process_dead(pid, self.metrics_dir)

    def status(self) -> list[ServiceStatus]:
        """Current health of each child, with its restart count (a dead process is
        ``exited``, or ``restarting`` while its back-off runs)."""
        out: list[ServiceStatus] = []
        if self.broker is not None:
            store = self.broker.object_store
            if store is not None:
                out.append(
                    ServiceStatus(
                        "s3",
                        "ready" if store.running else "exited",
                        store.pid,
                        store.endpoint if store.ports else "",
                        restarts=self._store_sup.restarts,
                    )
                )
            out.append(
                ServiceStatus(
                    "broker",
                    "ready" if self.broker.running else "exited",
                    self.broker.pid,
                    self.broker.bootstrap_servers,
                    restarts=self._broker_sup.restarts,
                )
            )
        for r in self._running:
            code = r.proc.poll()
            if code is None:
                state = "ready" if r.ready else "starting"
            else:
                state = "restarting" if r.sup.restart_at is not None else "exited"
            detail = _exit_detail(code) if code is not None else r.ready_line
            out.append(
                ServiceStatus(r.service.name, state, r.proc.pid, detail, r.log_path, r.sup.restarts)
            )
        return out

    def healthy(self) -> bool:
        """Every child is up and ready (a child waiting to be restarted is not)."""
        return all(st.state == "ready" for st in self.status())

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM each service in reverse start order and wait for it to flush and exit."""
        for r in reversed(self._running):
            if r.proc.poll() is None:
                self._report(ServiceStatus(r.service.name, "stopping", r.proc.pid))
                r.proc.send_signal(signal.SIGTERM)
                try:
                    r.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    log.warning(
                        "%s did not stop within %.0f s; killing it", r.service.name, timeout
                    )
                    r.proc.kill()
                    r.proc.wait()
            self._mark_dead(r.proc.pid)
            self._report(
                ServiceStatus(
                    r.service.name, "stopped", r.proc.pid, _exit_detail(r.proc.returncode)
                )
            )
        self._running.clear()
        if self.broker is not None:
            self.broker.stop()
            self._report(ServiceStatus("broker", "stopped"))
            self.broker = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _report(self, status: ServiceStatus) -> None:
        if self.on_status is None:
            return
        try:
            self.on_status(status)
        except Exception:
            # Reporting must never keep the stack from stopping its services (e.g. a closed
            # stdout pipe while shutting down).
            log.debug("status callback failed", exc_info=True)


def _dead_detail(name: str, broker: EmbeddedBroker) -> str:
    store = broker.object_store
    code = store.returncode if name == "s3" and store is not None else broker.returncode
    return _exit_detail(code) if code is not None else "not running"


def _exit_detail(code: int | None) -> str:
    if code == -signal.SIGTERM:
        # uvicorn, among others, shuts down cleanly, then re-raises the signal it caught
        return "exited on SIGTERM"
    if code is not None and code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    return f"exit code {code}"


def _read_from(path: Path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
