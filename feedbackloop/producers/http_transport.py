"""The SDK's transport over HTTP: events posted to the feedbackloop collector
(``POST /v1/events``) instead of Kafka, for hosts that cannot reach the brokers.

Events are batched (up to ``batch_size`` or ``linger_s``) and posted by a background thread
("feedbackloop-http", started with the first event), so calls do not block on the network.
A batch the collector cannot take right now (503, 429, connection refused) is retried with
back-off, keeping order; events the collector rejects are dead-lettered by the collector
itself and counted here as ``failed``. A batch refused as too large (413: over the
collector's ``web_max_body_bytes`` or ``web_max_batch_events``) is split in half and
retried, down to single events; only an event too large on its own is counted ``failed``
(and logged), so one oversized event never holds back the rest. Events wait in memory (up
to ``max_pending``, then they are counted ``dropped``), not on disk: the collector's own
spool is the durable one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from typing import Any

from feedbackloop.errors import ConfigError
from feedbackloop.producers.delivery import Counters, DeliveryStats
from feedbackloop.producers.transport import Headers, close_at_exit, forget_at_exit

__all__ = ["HttpTransport"]

log = logging.getLogger(__name__)


class HttpTransport:
    """Events to the collector at ``url`` (its base URL), with bearer ``key`` if given."""

    def __init__(
        self,
        url: str,
        key: str | None = None,
        *,
        batch_size: int = 500,
        linger_s: float = 0.2,
        max_pending: int = 100_000,
        close_timeout_s: float = 5.0,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ConfigError(f"collector URL must start with http:// or https://: {url!r}")
        self.url = url.rstrip("/") + "/v1/events"
        self.counters = Counters()
        self._key = key
        self._batch_size = batch_size
        self._take = batch_size  # events per post: halved on 413, reset once drained
        self._linger_s = linger_s
        self._max_pending = max_pending
        self._close_timeout_s = close_timeout_s
        self._pending: deque[bytes] = deque()
        self._cv = threading.Condition()
        self._in_flight = 0
        self._closed = False
        self._stopping = False
        self._sender: threading.Thread | None = None

    # ------------------------------------------------------------------ Transport

    def send_event(self, key: bytes | None, value: bytes) -> bool:
        with self._cv:
            if self._closed or len(self._pending) >= self._max_pending:
                self.counters.add("dropped")
                return False
            if self._sender is None:
                self._start()
            self._pending.append(value)
            if len(self._pending) >= self._batch_size:
                self._cv.notify()
        return True

    def send_dead_letter(self, key: bytes | None, value: bytes, headers: Headers) -> bool:
        return True  # the collector validates and dead-letters on its side

    def stats(self) -> DeliveryStats:
        return self.counters.snapshot(0)  # nothing waits on disk on this side

    def flush(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify()
            while (self._pending or self._in_flight) and time.monotonic() < deadline:
                self._cv.wait(0.05)
            return len(self._pending) + self._in_flight

    def close(self, timeout: float | None = None) -> None:
        if self._stopping:
            return
        self.flush(self._close_timeout_s if timeout is None else timeout)
        with self._cv:
            self._closed = self._stopping = True
            self._cv.notify()
        if self._sender is not None:
            self._sender.join(timeout=1.0)
        with self._cv:
            lost = len(self._pending)
            self._pending.clear()
        if lost:
            self.counters.add("dropped", lost)
            log.error("feedbackloop: %d events not accepted by %s before close", lost, self.url)
        forget_at_exit(self)

    # ------------------------------------------------------------------ sender thread

    def _start(self) -> None:
        """Start the sender (the caller holds ``_cv``)."""
        self._sender = threading.Thread(target=self._run, name="feedbackloop-http", daemon=True)
        self._sender.start()
        close_at_exit(self)

    def _run(self) -> None:
        backoff = 0.2
        while True:
            with self._cv:
                if not self._pending:
                    if self._stopping:
                        return
                    self._cv.wait(self._linger_s)
                if not self._pending:
                    continue
                n = min(self._take, len(self._pending))
                batch = [self._pending[i] for i in range(n)]
                self._in_flight = n
            try:
                retry_after = self._post(batch)
            except _TooLarge as e:
                retry_after = self._split(n, e.detail)
            except Exception:  # the sender must survive anything; the batch is kept
                log.exception("feedbackloop: posting to %s failed; retrying", self.url)
                retry_after = 1.0
            with self._cv:
                if retry_after is None:
                    for _ in range(n):
                        self._pending.popleft()
                    backoff = 0.2
                    if not self._pending:  # drained: full batches again
                        self._take = self._batch_size
                elif retry_after == 0:  # split: post the first half now, no back-off
                    retry_after = None
                self._in_flight = 0
                self._cv.notify_all()
                stopping = self._stopping
            if retry_after is not None:
                if stopping:
                    return
                time.sleep(max(retry_after, backoff))
                backoff = min(backoff * 2, 5.0)

    def _split(self, n: int, detail: str) -> float | None:
        """After a 413 for ``n`` events: 0 to retry with half as many, or None when a single
        event is too large on its own (counted failed and let go)."""
        if n > 1:
            self._take = n // 2
            return 0
        self.counters.add("failed")
        log.error("feedbackloop: collector refused an event as too large: %s", detail)
        return None

    def _post(self, batch: list[bytes]) -> float | None:
        """Post one batch; None when done with it, else seconds to wait before retrying."""
        body = b"[" + b",".join(batch) + b"]"
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                payload = _json_or_empty(resp.read())
        except urllib.error.HTTPError as e:
            if e.code in (429, 503):
                return float(e.headers.get("Retry-After") or 1.0)
            payload = _json_or_empty(e.read())
            if e.code == 413:
                raise _TooLarge(str(payload.get("detail") or payload)) from None
            if e.code not in (403, 422):  # whole request refused: not retryable
                self.counters.add("failed", len(batch))
                log.error("feedbackloop: collector refused a batch: %s %s", e.code, payload)
                return None
        except OSError as e:
            log.warning("feedbackloop: collector %s unreachable (%s); retrying", self.url, e)
            return 1.0
        # A body that is not the collector's answer counts the batch as failed, not delivered.
        results = payload.get("results")
        results = results if isinstance(results, list) else []
        accepted = sum(1 for r in results if isinstance(r, dict) and r.get("status") == "accepted")
        self.counters.add("delivered", accepted)
        if len(batch) - accepted:
            self.counters.add("failed", len(batch) - accepted)
        return None


class _TooLarge(Exception):
    """The collector answered 413 for a batch."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _json_or_empty(data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except ValueError:
        return {}
    return obj if isinstance(obj, dict) else {}
