"""The one thread of a process that makes MPI calls.

MPI is initialised inside this thread when it starts (never at package import). Work reaches it
as callables through a bounded queue and comes back as futures, so the asyncio loop never
blocks on MPI.

Liveness (half-alive is worse than dead):

* A call submitted with ``timeout_s`` (a collective round) is watched (``mpi.watchdog``): if it
  runs past its deadline, a peer is dead, frozen or out of step, and nothing this rank can do
  brings it back: the whole job is aborted (``mpi.abort.abort_job``) with a logged reason.
* ``stop`` finalises MPI only once every rank is stopping (a nonblocking barrier):
  ``MPI_Finalize`` waits for every rank, so a rank that finalised alone would hang forever.
  If the others do not come within the stop's timeout, the job is aborted instead.

MPICH busy-polls a core inside blocking calls; the collectives here are nonblocking ones waited
for with ``wait``, which tests and sleeps, so an idle or waiting rank leaves the CPU to the
stage actors (docs/architecture.md, "Pitfalls met while building", has the measurement).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Final, TypeVar

from .abort import abort_job
from .watchdog import Watchdog

log = logging.getLogger(__name__)

T = TypeVar("T")
_STOP = object()
POLL_S: Final = 0.0005
# The ranks of a job reach their stop at different times (each drains and snapshots its own
# shard); a supervisor bounds a stop by itself, this only ends a job left on its own.
STOP_TIMEOUT_S: Final = 300.0
STOP_POLL_S: Final = 0.005
FINALIZE_TIMEOUT_S: Final = 30.0
# What a round under way when its rank stops may still take. A round takes milliseconds; one
# that waits longer waits for a peer that stopped first and will never join it (its wake-up
# came after it stopped reading them): the job is aborted (its data is in the logs) instead
# of waiting out the round timeout (30 s by default, which a killed supervisor's restart
# used to wait for).
STOPPING_CALL_S: Final = 2.0


def wait(request: Any, poll_s: float = POLL_S) -> Any:
    """Complete a nonblocking MPI request without spinning a core."""
    while True:
        done, result = request.test()
        if done:
            return result
        time.sleep(poll_s)


def _every_rank_stopping(comm: Any) -> None:
    wait(comm.Ibarrier(), STOP_POLL_S)


class MpiThread:
    def __init__(self, name: str = "mpi", *, on_overdue: Callable[[str], object] | None = None):
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._ready: Future[tuple[int, int]] = Future()
        self._rank: int | None = None
        self._watchdog = Watchdog(on_overdue or self._abort)
        self._stopping = False

    def start(self) -> tuple[int, int]:
        """Start the thread and initialise MPI; returns (rank, size)."""
        self._thread.start()
        rank, size = self._ready.result(timeout=60)
        self._rank = rank
        self._watchdog.start()
        return rank, size

    def _abort(self, reason: str) -> None:
        abort_job(f"rank {self._rank}: {reason}")

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
        while True:
            item = self._queue.get()
            if item is _STOP:
                break
            fn, future, timeout_s, what = item
            if not future.set_running_or_notify_cancel():
                continue
            if self._stopping and fn is not _every_rank_stopping and timeout_s is not None:
                timeout_s = min(timeout_s, STOPPING_CALL_S)  # queued before the stop
            try:
                with self._watchdog.watch(timeout_s, what):
                    result = fn(comm)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
        with self._watchdog.watch(FINALIZE_TIMEOUT_S, "MPI_Finalize"):
            MPI.Finalize()

    def submit(
        self, fn: Callable[[Any], T], *, timeout_s: float | None = None, what: str = "an MPI call"
    ) -> Future[T]:
        """Run ``fn(COMM_WORLD)`` on the MPI thread; with ``timeout_s``, the job is aborted
        if the call runs longer than that (once it started: queued time does not count)."""
        future: Future[T] = Future()
        self._queue.put((fn, future, timeout_s, what), timeout=60)
        return future

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Finalise MPI once every rank of the job is stopping; abort the job if they do not
        all come within ``timeout_s``. Idempotent. Never call it on a failure while the other
        ranks go on: abort the job instead (``mpi.abort``)."""
        if self._stopping or not self._thread.is_alive():
            return
        self._stopping = True
        self._watchdog.hurry(STOPPING_CALL_S)
        self.submit(_every_rank_stopping, timeout_s=timeout_s, what="the stop of every rank")
        self._queue.put(_STOP, timeout=60)
        self._thread.join()  # the barrier and MPI_Finalize are both watched
        self._watchdog.close()
