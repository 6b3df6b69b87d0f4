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


def test_a_quarantined_record_leaves_the_replay_order_and_is_kept_with_its_reason(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.sqlite3"
    spool = Spool(path, max_bytes=10_000)
    for v in (b"a", b"too-large", b"c"):
        spool.append("t", None, v, [("h", b"1")])
    poison = spool.head(3)[1]
    spool.quarantine(poison.seq, "MSG_SIZE_TOO_LARGE")
    spool.add_quarantined("dlq", b"k", b"refused-before-spooling", None, "INVALID_RECORD")
    assert [r.value for r in spool.head(10)] == [b"a", b"c"]
    assert (spool.count, spool.size_bytes, spool.quarantined) == (2, 2, 2)
    spool.close()

    reopened = Spool(path, max_bytes=10_000)
    assert reopened.quarantined == 2
    kept = reopened.quarantined_records()
    assert [(r.value, r.headers, why) for r, why in kept] == [
        (b"too-large", [("h", b"1")], "MSG_SIZE_TOO_LARGE"),
        (b"refused-before-spooling", [], "INVALID_RECORD"),
    ]


def test_the_spool_file_and_its_folder_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "spool" / "s.sqlite3"
    spool = Spool(path, max_bytes=10_000)
    spool.append("t", None, b"secret text")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    for companion in path.parent.iterdir():
        assert companion.stat().st_mode & 0o077 == 0, companion
    spool.close()
