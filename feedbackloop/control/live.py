"""What an SDK process serves: the latest configuration of its app's live experiments,
followed from the control plane on a background thread and cached on disk.

:class:`LiveConfig` holds the latest valid version per experiment; a *source* feeds it:

* :class:`KafkaSource` reads the compacted control topic from the beginning and then
  follows it (a change reaches the process within about a second);
* :class:`HttpSource` polls the collector's ``GET /v1/experiments`` with ``If-None-Match``,
  so an unchanged configuration costs a 304 and no body.

Promises to the host app: starting never waits for the control plane (the thread connects
in the background, retrying); reading (:meth:`LiveConfig.experiment`) is a dict lookup; a
malformed or foreign message is refused (counted in ``rejected``, logged) and the last good
version stays; every accepted change is written to the cache file, which a process starting
while the control plane is unreachable serves from.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from feedbackloop.config import Settings
from feedbackloop.control.config import ExperimentConfig, decode_config
from feedbackloop.errors import ConfigError, SchemaError
from feedbackloop.producers.assignment import Experiment
from feedbackloop.schemas import Topics

__all__ = ["ConfigSource", "HttpSource", "KafkaSource", "LiveConfig"]

log = logging.getLogger(__name__)

#: A source hands each message it reads to this: (key, value) -> accepted?
Offer = Callable[[bytes | None, bytes | None], bool]


class ConfigSource(Protocol):
    """Feeds a :class:`LiveConfig` from a background thread; never raises into the app."""

    def start(self, offer: Offer) -> None: ...

    def close(self) -> None: ...


class LiveConfig:
    """The latest version of each live experiment of ``app_id`` (see the module docstring).

    ``experiments`` maps a name to the :class:`Experiment` its current version serves; it is
    replaced as a whole on every change, so readers on other threads need no lock.
    """

    def __init__(
        self,
        app_id: str,
        source: ConfigSource | None = None,
        *,
        cache_path: Path | str | None = None,
    ) -> None:
        self.app_id = app_id
        self.configs: dict[str, ExperimentConfig] = {}
        self.experiments: dict[str, Experiment] = {}
        #: Messages refused (malformed, or not a valid version).
        self.rejected = 0
        #: True when the configuration served came from the cache file (nothing newer yet).
        self.from_cache = False
        #: Monotonic time of the last accepted change (benchmarks read it).
        self.changed_at: float | None = None
        self._source = source
        self._cache = Path(cache_path) if cache_path is not None else None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._load_cache()

    @classmethod
    def for_kafka(cls, settings: Settings) -> LiveConfig:
        """Follow the control topic of ``settings``; cache under ``<data_dir>/control``."""
        return cls(
            settings.app_id,
            KafkaSource(settings),
            cache_path=settings.data_dir / "control" / f"{settings.app_id}.json",
        )

    @classmethod
    def for_collector(cls, url: str, key: str | None, settings: Settings) -> LiveConfig:
        """Poll the collector at ``url``; cache under ``<data_dir>/control``."""
        return cls(
            settings.app_id,
            HttpSource(url, key),
            cache_path=settings.data_dir / "control" / f"{settings.app_id}.json",
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> LiveConfig:
        """Start following (returns at once; the source connects in the background)."""
        if self._source is not None:
            self._source.start(self.offer)
        return self

    def close(self) -> None:
        if self._source is not None:
            self._source.close()

    # ------------------------------------------------------------------ reading

    def experiment(self, name: str) -> Experiment | None:
        return self.experiments.get(name)

    def version(self, name: str) -> int | None:
        cfg = self.configs.get(name)
        return None if cfg is None else cfg.version

    def wait_for(self, predicate: Callable[[LiveConfig], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds (tests and benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    # ------------------------------------------------------------------ feeding

    def offer(self, key: bytes | None, value: bytes | None) -> bool:
        """Take one control message; False (and the last good version stays) if refused."""
        try:
            cfg = decode_config(value)
        except SchemaError as e:
            self.rejected += 1
            log.warning("feedbackloop: refused a control message (key %r): %s", key, e)
            return False
        if cfg.app_id != self.app_id:
            return True  # another app's experiment: not ours to serve
        with self._changed:
            seen = self.configs.get(cfg.name)
            if seen is not None and cfg.version <= seen.version:
                # An older version (re-read after a restart), or a later write of a version
                # held: that one lost (the first message of a version wins, control/plane.py).
                return True
            self._accept(cfg)
            self.from_cache = False
            self._save_cache()
            self._changed.notify_all()
        return True

    def _accept(self, cfg: ExperimentConfig) -> None:
        configs = {**self.configs, cfg.name: cfg}
        experiments = {**self.experiments, cfg.name: cfg.experiment()}
        self.configs, self.experiments = configs, experiments
        self.changed_at = time.monotonic()

    # ------------------------------------------------------------------ the cache file

    def _load_cache(self) -> None:
        if self._cache is None or not self._cache.exists():
            return
        try:
            entries = json.loads(self._cache.read_text())["configs"]
            for entry in entries:
                cfg = ExperimentConfig.model_validate(entry)
                if cfg.app_id == self.app_id:
                    self._accept(cfg)
            self.from_cache = bool(self.configs)
        except Exception as e:  # a damaged cache must not stop the app: start without it
            log.warning("feedbackloop: ignoring the live-config cache %s: %s", self._cache, e)

    def _save_cache(self) -> None:
        if self._cache is None:
            return
        try:
            self._cache.parent.mkdir(parents=True, exist_ok=True)
            body = json.dumps(
                {"configs": [c.model_dump(mode="json") for c in self.configs.values()]}
            )
            # Write-then-rename: a crash mid-write leaves the previous cache, never half.
            fd, tmp = tempfile.mkstemp(dir=self._cache.parent, prefix=".live-")
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.replace(tmp, self._cache)
        except OSError as e:
            log.warning("feedbackloop: cannot write the live-config cache %s: %s", self._cache, e)


class KafkaSource:
    """Follows the control topic on a daemon thread ("feedbackloop-control")."""

    def __init__(self, settings: Settings, *, poll_s: float = 0.2, retry_s: float = 1.0) -> None:
        if settings.bootstrap_servers is None:
            raise ConfigError("live experiments over Kafka need bootstrap_servers")
        self.topic = Topics(settings.topic_prefix).control
        self._kafka = settings.kafka_client_config()
        self._poll_s = poll_s
        self._retry_s = retry_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, offer: Offer) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(offer,), name="feedbackloop-control", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            # A daemon thread: do not hold the app's close() for a metadata request to a
            # broker that is down (it ends on its own when that times out).
            self._thread.join(timeout=1)

    def _run(self, offer: Offer) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer(
            {
                **self._kafka,
                "group.id": "feedbackloop-control-follower",
                "enable.auto.commit": False,
                # A change should arrive in well under a second.
                "fetch.wait.max.ms": 100,
                "topic.metadata.refresh.interval.ms": 5000,
                "log_level": 0,
                "logger": logging.getLogger("feedbackloop.control.librdkafka"),
            }
        )
        try:
            parts: list[int] = []
            while not self._stop.is_set() and not parts:
                try:
                    meta = consumer.list_topics(self.topic, timeout=self._retry_s * 5)
                    found = meta.topics.get(self.topic)
                    if found is not None and found.error is None:
                        parts = sorted(found.partitions)
                except Exception as e:  # broker down: the cache serves; keep trying
                    log.debug("control topic not reachable yet: %s", e)
                if not parts:
                    self._stop.wait(self._retry_s)
            if not parts:
                return
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in parts])
            while not self._stop.is_set():
                msg = consumer.poll(self._poll_s)
                if msg is None or msg.error() is not None:
                    continue
                try:
                    offer(msg.key(), msg.value())
                except Exception:  # never let one message end the follower
                    log.exception("feedbackloop: error applying a control message")
        finally:
            with contextlib.suppress(Exception):
                consumer.close()


class HttpSource:
    """Polls ``GET <url>/v1/experiments`` every ``interval_s`` with ``If-None-Match``."""

    def __init__(
        self, url: str, key: str | None = None, *, interval_s: float = 1.0, timeout_s: float = 5.0
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"collector URL must start with http:// or https://: {url!r}")
        self.url = url.rstrip("/") + "/v1/experiments"
        self._key = key
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._etag: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Responses seen, by status (200, 304, or "error"): tests read it.
        self.responses: dict[Any, int] = {}

    def start(self, offer: Offer) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(offer,), name="feedbackloop-control-http", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._timeout_s + 1)

    def _run(self, offer: Offer) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once(offer)
            except Exception as e:  # collector down or odd: keep the last good config
                self.responses["error"] = self.responses.get("error", 0) + 1
                log.debug("feedbackloop: live-config poll failed: %s", e)
            self._stop.wait(self._interval_s)

    def poll_once(self, offer: Offer) -> int:
        headers = {"Accept": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        if self._etag:
            headers["If-None-Match"] = self._etag
        req = urllib.request.Request(self.url, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout_s) as resp:  # noqa: S310
                status, body, etag = resp.status, resp.read(), resp.headers.get("ETag")
        except urllib.error.HTTPError as e:
            if e.code != 304:
                raise
            status, body, etag = 304, b"", self._etag
        self.responses[status] = self.responses.get(status, 0) + 1
        if status == 200:
            entries = json.loads(body)["experiments"]
            if all(offer(None, json.dumps(entry).encode()) for entry in _as_list(entries)):
                self._etag = etag  # a refused entry: fetch the whole set again next time
        return int(status)


def _as_list(entries: Any) -> list[Any]:
    if isinstance(entries, list):
        return entries
    if isinstance(entries, Mapping):
        return list(entries.values())
    raise ValueError("'experiments' is not a list")
