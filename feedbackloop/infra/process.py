"""Child processes that never outlive the process that started them."""

from __future__ import annotations

import signal
import sys

__all__ = ["die_with_parent"]


def die_with_parent() -> None:
    """Run in the child (``preexec_fn``): ask Linux to SIGTERM this process when its parent
    dies, so a crashed or killed parent never leaves an orphaned broker holding a port or a
    service holding the chDB directory. SIGTERM lets the child flush and stop cleanly."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
