"""Ending a whole MPI job from any thread of any rank: ``abort_job``.

A rank cannot end alone. Its peers would wait for it in their next collective forever, and
``MPI_Finalize`` waits for every rank: a rank that finalises while the others do not hangs
(measured here, MPICH 5.0.2 with hydra: ``mpiexec`` never exits). Half-alive is worse than
dead, so a rank that cannot go on ends the job: ``mpiexec`` then exits non-zero and the
supervisor restarts the graph.

Also measured here: ``MPI_Abort`` from any thread (``MPI_THREAD_MULTIPLE``), even while the
MPI thread waits in a collective, ends every rank within ~0.1 s and ``mpiexec`` exits non-zero
(1, or 9 when hydra had to kill); a rank that exits without finalising (``os._exit(1)``) also
makes hydra kill the others. ``MPI_Abort`` is the standard way, honoured by every launcher,
so it is used whenever MPI is initialised; ``os._exit`` otherwise, and as a backstop should
``MPI_Abort`` itself not return within ``BACKSTOP_S``.

Importing this module does not import mpi4py (nor initialise MPI).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Final, NoReturn

log = logging.getLogger(__name__)

EXIT_ABORTED: Final = 1
BACKSTOP_S: Final = 5.0


def abort_job(reason: str, code: int = EXIT_ABORTED) -> NoReturn:
    """Log ``reason``, then end every rank of this process's MPI job (this one included)."""
    log.critical("ending the whole MPI job: %s", reason)
    _flush_logs()
    mpi = sys.modules.get("mpi4py.MPI")  # never initialise MPI just to abort it
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        threading.Thread(target=_exit_after, args=(BACKSTOP_S, code), daemon=True).start()
        mpi.COMM_WORLD.Abort(code)
    os._exit(code)


class DeferredAbort:
    """``abort_job(reason, code)`` at the latest ``grace_s`` from now (a timer thread), so
    that a teardown that hangs cannot keep the job half-alive; ``now()`` aborts at once.
    ``code`` becomes the job's exit code (2: an operator that cannot be built, which the
    supervisor does not restart)."""

    def __init__(self, reason: str, grace_s: float, code: int = EXIT_ABORTED) -> None:
        self._reason, self._code = reason, code
        late = f"{reason} (its teardown did not end within {grace_s}s)"
        self._timer = threading.Timer(grace_s, abort_job, (late, code))
        self._timer.daemon = True
        self._timer.start()

    def now(self) -> NoReturn:
        self._timer.cancel()
        abort_job(self._reason, self._code)


def _exit_after(delay_s: float, code: int) -> None:
    time.sleep(delay_s)
    os._exit(code)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # a log that cannot be flushed must not stop the abort
            pass
