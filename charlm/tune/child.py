"""A trial's process: `charlm train ...` that dies with the `charlm tune` process that started it.

Linux delivers SIGKILL to it when its parent dies (prctl PR_SET_PDEATHSIG), so a `kill -9` of
the tune process leaves no orphaned trainer competing for the cores; elsewhere it runs as is.
"""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    parent = os.environ.get("CHARLM_TUNE_PARENT")
    if parent and os.getppid() != int(parent):  # it died before we asked
        sys.exit(1)


if __name__ == "__main__":
    die_with_parent()
    from charlm.cli import app

    app(sys.argv[1:], prog_name="charlm")
