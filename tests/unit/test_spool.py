from __future__ import annotations

from pathlib import Path

from feedbackloop.producers.spool import Spool


def test_spool_keeps_order_headers_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    spool = Spool(path, max_bytes=10_000)
    for i in range(10):
        assert spool.append("t", f"k{i}".encode(), f"v{i}".encode(), [("h", bytes([i, 0, 255]))])
    assert spool.append("u", None, b"no-key")
    assert (spool.count, spool.size_bytes) == (11, 10 * 2 + 6)
    head = spool.head(3)
    assert [r.value for r in head] == [b"v0", b"v1", b"v2"]
    assert head[1].headers == [("h", bytes([1, 0, 255]))]
    spool.remove([r.seq for r in head])
    spool.close()

    reopened = Spool(path, max_bytes=10_000)
    assert reopened.count == 8
    rest = reopened.head(100)
    assert [r.value for r in rest] == [f"v{i}".encode() for i in range(3, 10)] + [b"no-key"]
    assert rest[-1].key is None and rest[-1].topic == "u" and rest[-1].headers == []
    reopened.remove([r.seq for r in rest])
    assert reopened.count == 0 and reopened.size_bytes == 0
    assert reopened.head(10) == []


def test_spool_is_bounded(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.sqlite3", max_bytes=100)
    assert spool.append("t", None, b"x" * 60)
    assert not spool.append("t", None, b"x" * 41)
    assert spool.append("t", None, b"x" * 40)
    assert spool.count == 2 and spool.size_bytes == 100
