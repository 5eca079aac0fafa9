"""No process outlives the supervisor that started it.

Stage actors are the supervisor's children and get ``PR_SET_PDEATHSIG``; MPI ranks are the
children of MPICH's process manager, which nothing ends when the supervisor is killed. A check
inside the actor's event loop is not enough either: a rank still starting (MPI start-up, log
replay, a collective of the serving setup waiting for a peer that never comes) runs no loop,
and one left in a blocking MPI call busy-polls a core for as long as it lives (measured: four
ranks of a failed start ran for 25 minutes at ~35% of a core each).

So every actor process runs a lifeline: a daemon thread that sleeps on a pidfd of the
supervisor (no polling where Linux has ``pidfd_open``) and, when the supervisor is gone, asks
for an orderly stop if the actor is running, or ends the process at once if it is not; a stop
that does not end the process within its grace period ends it too.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Final

from ..procs import alive

log = logging.getLogger(__name__)

POLL_S: Final = 0.5  # where there is no pidfd


class Lifeline:
    """Watches ``pid``; ``exit_code`` is the status a process ended by the lifeline exits with."""

    def __init__(self, pid: int, *, exit_code: int, exit: Callable[[int], object] = os._exit):
        self._pid = pid
        self._exit_code = exit_code
        self._exit = exit
        self._lock = threading.Lock()
        self._stop: Callable[[], object] | None = None
        self._grace_s = 0.0
        self._thread = threading.Thread(target=self._run, name="lifeline", daemon=True)

    def start(self) -> Lifeline:
        self._thread.start()
        return self

    def running(self, stop: Callable[[], object], grace_s: float) -> None:
        """From now on the supervisor's death asks ``stop()`` (called from the lifeline
        thread: it must be thread-safe) and ends the process ``grace_s`` later if it lives."""
        with self._lock:
            self._stop, self._grace_s = stop, grace_s

    def stopped(self) -> None:
        """The actor ended its run: a supervisor gone now ends the process at once."""
        with self._lock:
            self._stop = None

    def _run(self) -> None:
        _wait_for_exit(self._pid)
        with self._lock:
            stop, grace_s = self._stop, self._grace_s
        if stop is None:
            log.warning("supervisor %d is gone while not running: exiting", self._pid)
            self._exit(self._exit_code)
            return
        log.warning("supervisor %d is gone: stopping (at most %.0fs)", self._pid, grace_s)
        stop()
        time.sleep(grace_s)
        log.error("still running %.0fs after the supervisor died: exiting", grace_s)
        self._exit(self._exit_code)


def _wait_for_exit(pid: int) -> None:
    """Return once ``pid`` has exited (a zombie counts as exited)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): poll
        while alive(pid):
            time.sleep(POLL_S)
        return
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
    finally:
        os.close(fd)
