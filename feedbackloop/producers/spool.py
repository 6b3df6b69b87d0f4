"""A bounded, ordered on-disk queue for events the broker could not take (yet).

SQLite (stdlib) in WAL mode: every append is one small transaction, durable against a crash
of the host process (not of the OS: ``synchronous=NORMAL`` trades the last transactions on a
power loss for not calling fsync on the host app's thread). Rows keep their insertion order
(``seq``), so replay preserves it. Several processes may share one file; SQLite serialises
them.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Spool", "SpooledRecord"]

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class SpooledRecord:
    seq: int
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _pack_headers(headers: Headers | None) -> bytes | None:
    if not headers:
        return None
    # length-prefixed pairs: no escaping issues, any bytes allowed
    out = bytearray()
    for k, v in headers:
        kb = k.encode()
        out += len(kb).to_bytes(4, "big") + kb + len(v).to_bytes(4, "big") + v
    return bytes(out)


def _unpack_headers(blob: bytes | None) -> list[tuple[str, bytes]]:
    headers: list[tuple[str, bytes]] = []
    i = 0
    while blob and i < len(blob):
        n = int.from_bytes(blob[i : i + 4], "big")
        k = blob[i + 4 : i + 4 + n].decode()
        i += 4 + n
        m = int.from_bytes(blob[i : i + 4], "big")
        headers.append((k, blob[i + 4 : i + 4 + m]))
        i += 4 + m
    return headers


class Spool:
    """Ordered records on disk, at most ``max_bytes`` of payload."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Create the file owner-only before SQLite opens it (it would use the umask); its
        # -wal and -shm companions take the main file's mode.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, key BLOB, value BLOB NOT NULL, headers BLOB)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS quarantine (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "topic TEXT NOT NULL, "
            "key BLOB, value BLOB NOT NULL, headers BLOB, reason TEXT NOT NULL, "
            "quarantined_at TEXT NOT NULL DEFAULT (datetime('now')))"
        )
        row = self._db.execute(
            "SELECT count(*), coalesce(sum(length(value)), 0) FROM spool"
        ).fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])
        self._quarantined = int(self._db.execute("SELECT count(*) FROM quarantine").fetchone()[0])

    @property
    def count(self) -> int:
        return self._count

    @property
    def quarantined(self) -> int:
        """Records set aside by :meth:`quarantine` (they are not replayed)."""
        return self._quarantined

    @property
    def size_bytes(self) -> int:
        """Payload bytes stored (what ``max_bytes`` bounds)."""
        return self._bytes

    def append(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers | None = None
    ) -> bool:
        """Store one record; ``False`` when the spool is full (the caller must report it)."""
        with self._lock:
            if self._bytes + len(value) > self.max_bytes:
                return False
            self._db.execute(
                "INSERT INTO spool (topic, key, value, headers) VALUES (?, ?, ?, ?)",
                (topic, key, value, _pack_headers(headers)),
            )
            self._count += 1
            self._bytes += len(value)
            return True

    def head(self, limit: int) -> list[SpooledRecord]:
        """The oldest ``limit`` records, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, headers FROM spool ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
            if not rows:
                # Another process sharing the file may have drained it: trust the file.
                self._count = self._bytes = 0
        return [SpooledRecord(r[0], r[1], r[2], r[3], _unpack_headers(r[4])) for r in rows]

    def remove(self, seqs: Sequence[int]) -> None:
        """Forget records that reached the broker."""
        if not seqs:
            return
        with self._lock:
            self._db.execute("BEGIN")
            removed_bytes = 0
            for i in range(0, len(seqs), 500):
                chunk = list(seqs[i : i + 500])
                marks = ",".join("?" * len(chunk))
                row = self._db.execute(
                    f"SELECT count(*), coalesce(sum(length(value)), 0) FROM spool "
                    f"WHERE seq IN ({marks})",
                    chunk,
                ).fetchone()
                self._db.execute(f"DELETE FROM spool WHERE seq IN ({marks})", chunk)
                self._count -= int(row[0])
                removed_bytes += int(row[1])
            self._db.execute("COMMIT")
            self._bytes -= removed_bytes

    def quarantine(self, seq: int, reason: str) -> None:
        """Move the spooled record ``seq`` out of the replay order, keeping it with ``reason``."""
        with self._lock:
            self._db.execute("BEGIN")
            row = self._db.execute(
                "SELECT length(value) FROM spool WHERE seq = ?", (seq,)
            ).fetchone()
            if row is not None:
                self._db.execute(
                    "INSERT INTO quarantine (topic, key, value, headers, reason) "
                    "SELECT topic, key, value, headers, ? FROM spool WHERE seq = ?",
                    (reason, seq),
                )
                self._db.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            self._db.execute("COMMIT")
            if row is not None:
                self._count -= 1
                self._bytes -= int(row[0])
                self._quarantined += 1

    def add_quarantined(
        self, topic: str, key: bytes | None, value: bytes, headers: Headers | None, reason: str
    ) -> None:
        """Keep a record the broker refused before it was ever spooled (same table)."""
        with self._lock:
            self._db.execute(
                "INSERT INTO quarantine (topic, key, value, headers, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                (topic, key, value, _pack_headers(headers), reason),
            )
            self._quarantined += 1

    def quarantined_records(self, limit: int = 100) -> list[tuple[SpooledRecord, str]]:
        """The quarantined records, oldest first, each with the broker's reason."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, topic, key, value, headers, reason FROM quarantine ORDER BY seq "
                "LIMIT ?",
                (limit,),
            ).fetchall()
        return [(SpooledRecord(r[0], r[1], r[2], r[3], _unpack_headers(r[4])), r[5]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
