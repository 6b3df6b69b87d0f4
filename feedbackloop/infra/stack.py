"""Run the whole pipeline on one machine: broker, stream worker, ClickHouse sink, web server.

Each service runs as its own child process (``python -m feedbackloop <command>``) with the
same settings passed as ``FEEDBACKLOOP_*`` env vars: the faust worker owns its event loop and
signal handling, and embedded chDB admits one process per data directory, which the sink
owns. The stack starts them in dependency order, waits until each says it is ready, watches
their health, and stops them in reverse order (the broker last), each with SIGTERM so it
flushes before exiting.
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
from feedbackloop.errors import InfraError
from feedbackloop.infra.broker import EmbeddedBroker
from feedbackloop.infra.kafka_admin import ensure_topics
from feedbackloop.infra.process import die_with_parent
from feedbackloop.schemas import Topics

__all__ = ["Service", "ServiceStatus", "Stack", "default_services"]

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
    state: str  # starting | ready | exited | stopped
    pid: int | None = None
    detail: str = ""
    log_path: Path | None = None


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


@dataclass
class Stack:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    settings: Settings
    services: Sequence[Service] = field(default_factory=default_services)
    on_status: Callable[[ServiceStatus], None] | None = None

    def __post_init__(self) -> None:
        self.broker: EmbeddedBroker | None = None
        self._running: list[_Running] = []
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
            self.broker = EmbeddedBroker(
                host=s.broker_host,
                port=s.broker_port,
                storage=s.broker_storage,
                binary=s.broker_binary,
                log_path=self.log_dir / "broker.log",
            )
            self._report(ServiceStatus("broker", "starting"))
            self.broker.start()
            s = s.model_copy(update={"bootstrap_servers": self.broker.bootstrap_servers})
            self._report(
                ServiceStatus(
                    "broker",
                    "ready",
                    self.broker.pid,
                    f"tansu on {self.broker.bootstrap_servers} ({s.broker_storage})",
                    self.log_dir / "broker.log",
                )
            )
        ensure_topics(s.kafka_client_config(), Topics(s.topic_prefix).all(), s.topic_partitions)
        self.settings = s
        try:
            for service in self.services:
                self._start_service(service)
        except BaseException:
            self.stop()
            raise
        return s

    def _start_service(self, service: Service) -> None:
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
        running = _Running(service, proc, log_path)
        self._running.append(running)
        self._report(ServiceStatus(service.name, "starting", proc.pid, "", log_path))
        offset = log_path.stat().st_size
        deadline = time.monotonic() + service.ready_timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise InfraError(
                    f"{service.name} exited with code {proc.returncode} while starting; "
                    f"last lines of {log_path}:\n{_tail(log_path)}"
                )
            text = _read_from(log_path, offset)
            if service.ready_marker in text:
                running.ready = True
                running.ready_line = next(
                    line.strip() for line in text.splitlines() if service.ready_marker in line
                )
                self._report(
                    ServiceStatus(service.name, "ready", proc.pid, running.ready_line, log_path)
                )
                return
            time.sleep(0.2)
        raise InfraError(
            f"{service.name} did not become ready within {service.ready_timeout_s:.0f} s; "
            f"last lines of {log_path}:\n{_tail(log_path)}"
        )

    def status(self) -> list[ServiceStatus]:
        """Current health of each service (a process that died is ``exited``)."""
        out: list[ServiceStatus] = []
        if self.broker is not None:
            out.append(
                ServiceStatus(
                    "broker",
                    "ready" if self.broker.running else "exited",
                    self.broker.pid,
                    self.broker.bootstrap_servers,
                )
            )
        for r in self._running:
            code = r.proc.poll()
            state = (
                "ready"
                if code is None and r.ready
                else ("exited" if code is not None else "starting")
            )
            detail = _exit_detail(code) if code is not None else r.ready_line
            out.append(ServiceStatus(r.service.name, state, r.proc.pid, detail, r.log_path))
        return out

    def healthy(self) -> bool:
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
            from feedbackloop.infra.metrics import mark_process_dead

            mark_process_dead(r.proc.pid, self.metrics_dir)
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
