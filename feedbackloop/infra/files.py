"""Local state is owner-only: the data directory holds event text (chDB's data files, the
spool, logs, the query endpoint's token), so nothing under it may be readable by other
local users.

:func:`owner_only` is called by every long-running command before it creates anything: it
sets the process umask to 077 (so chDB, SQLite, the broker and the log handlers, which
create files with the umask, make them 0600 and folders 0700) and tightens what an earlier
run left group- or world-readable.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

__all__ = ["owner_only", "private_dir"]

log = logging.getLogger(__name__)

_OTHERS = stat.S_IRWXG | stat.S_IRWXO


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) as 0700 if missing, and make it 0700 if it exists."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & _OTHERS:
        path.chmod(0o700)
    return path


def owner_only(data_dir: Path) -> int:
    """Umask 077 for this process and its children; ``data_dir`` and everything in it
    owner-only. Returns how many existing entries were tightened."""
    os.umask(0o077)
    private_dir(data_dir)
    fixed = 0
    for root, dirs, files in os.walk(data_dir):
        for name in dirs + files:
            p = os.path.join(root, name)
            try:
                st = os.lstat(p)
                if stat.S_ISLNK(st.st_mode) or not st.st_mode & _OTHERS:
                    continue
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~_OTHERS)
                fixed += 1
            except OSError:  # a file that went away meanwhile (a merged chDB part)
                continue
    if fixed:
        log.info("made %d files and folders under %s owner-only", fixed, data_dir)
    return fixed
