"""A deadline for the call the MPI thread runs now.

A collective waits for every rank; when one never comes (dead, frozen, out of step) the others
wait forever, half-alive. The MPI thread runs one call at a time, so one watched slot is
enough: ``watch(timeout_s, what)`` around the call, and a daemon thread that looks at the slot
every ``check_s`` calls ``on_overdue(what)`` (abort the job) once a call runs past its
deadline. Polling rather than a timer per call: a round costs two attribute writes, and an idle
rank pays ten wake-ups a second, not a busy-poll.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Final

CHECK_S: Final = 0.1


class Watchdog:
    def __init__(self, on_overdue: Callable[[str], object], *, check_s: float = CHECK_S) -> None:
        self._on_overdue = on_overdue
        self._check_s = check_s
        # (deadline on the monotonic clock, description) of the watched call, or None.
        self._slot: tuple[float, str] | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mpi-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread.is_alive():
            self._thread.join()

    @contextlib.contextmanager
    def watch(self, timeout_s: float | None, what: str) -> Iterator[None]:
        """Report the block as overdue if it runs longer than ``timeout_s`` (None: never)."""
        if timeout_s is None:
            yield
            return
        self._slot = (time.monotonic() + timeout_s, f"{what} did not complete within {timeout_s}s")
        try:
            yield
        finally:
            self._slot = None

    def hurry(self, max_left_s: float) -> None:
        """The call watched now (if any) gets at most ``max_left_s`` more."""
        slot = self._slot
        if slot is None:
            return
        deadline = time.monotonic() + max_left_s
        if deadline < slot[0]:
            hurried = (deadline, f"{slot[1]} (hurried: this rank is stopping)")
            if self._slot is slot:
                self._slot = hurried

    def _run(self) -> None:
        while not self._closed.wait(self._check_s):
            slot = self._slot
            if slot is not None and time.monotonic() > slot[0]:
                if self._slot is slot:
                    self._slot = None  # reported once
                self._on_overdue(slot[1])
