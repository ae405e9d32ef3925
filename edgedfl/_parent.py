"""A process the emulator started stops when the emulator is gone.

The fleet names itself in its children's environment (:data:`PARENT_ENV`); a
device process, a device host or a phone stand-in calls :func:`exit_with_parent`
first, and a watchdog thread ends it (SIGTERM to itself, then exit) once that
process no longer exists: a bench or an emulator killed with SIGKILL leaves no
device training on alone. Checkpoints are written atomically, so nothing is lost
that a restart would not resume.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

log = logging.getLogger("edgedfl.parent")

#: the environment variable holding the pid of the process this one belongs to
PARENT_ENV = "EDGEDFL_PARENT_PID"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def exit_with_parent(poll_s: float = 2.0) -> threading.Thread | None:
    """Watch the process named by :data:`PARENT_ENV` (if any) and end this one when it is gone."""
    raw = os.environ.get(PARENT_ENV, "")
    if not raw.isdigit():
        return None
    pid = int(raw)

    def watch() -> None:
        while _alive(pid):
            time.sleep(poll_s)
        log.warning("the process that started this one (pid %d) is gone: stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # a SIGTERM handler that did not exit
        os._exit(1)

    thread = threading.Thread(target=watch, name="parent-watch", daemon=True)
    thread.start()
    return thread
