"""The one thread of a process that makes MPI calls.

MPI is initialised inside this thread when it starts (never at package import) and finalised
there when it stops. Work reaches it as callables through a bounded queue and comes back as
futures, so the asyncio loop never blocks on MPI.

MPICH busy-polls a core inside blocking calls; the collectives here are nonblocking ones waited
for with ``wait``, which tests and sleeps (DESIGN.md section 9), so an idle or waiting rank
leaves the CPU to the stage actors.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()
POLL_S = 0.0005


def wait(request: Any, poll_s: float = POLL_S) -> Any:
    """Complete a nonblocking MPI request without spinning a core."""
    while True:
        done, result = request.test()
        if done:
            return result
        time.sleep(poll_s)


class MpiThread:
    def __init__(self, name: str = "mpi") -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready: Future[tuple[int, int]] = Future()

    def start(self) -> tuple[int, int]:
        """Start the thread and initialise MPI; returns (rank, size)."""
        self._thread.start()
        return self._ready.result(timeout=60)

    def _run(self) -> None:
        try:
            import mpi4py

            mpi4py.rc.finalize = False  # finalised here, by the thread that initialised
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            self._ready.set_result((comm.Get_rank(), comm.Get_size()))
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    break
                fn, future = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(comm))
                except BaseException as exc:
                    future.set_exception(exc)
        finally:
            MPI.Finalize()

    def submit(self, fn: Callable[[Any], T]) -> Future[T]:
        """Run ``fn(COMM_WORLD)`` on the MPI thread."""
        future: Future[T] = Future()
        self._queue.put((fn, future), timeout=60)
        return future

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._thread.is_alive():
            self._queue.put(_STOP, timeout=timeout_s)
            self._thread.join(timeout_s)
