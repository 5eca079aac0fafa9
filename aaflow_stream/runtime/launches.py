"""The OS processes the supervisor starts: actors, and the MPI job whose ranks are actors.

* Every process starts in a session of its own, with umask 077 (the ipc sockets and the
  data files the actors create are their owner's only) and with the descriptors it must
  inherit (the run's directory locks, ``ownership.py``): nothing else leaks into it.
* The MPI job runs under MPICH's ``gforker`` process manager (``mpiexec.gforker``): it forks
  the ranks on this host and talks PMI to them over inherited socket pairs, so unlike
  ``hydra`` (whose control port always binds 0.0.0.0) it listens on no port at all. The
  ranks' own transport is kept on the loopback interface by ``loopback_env``. Both are
  measured in ``docs/architecture.md`` (section "Nothing off loopback").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import psutil

from ..errors import ActorFailed, SpecError
from ..plan import ActorSpec
from ..procs import ThreadSample, alive, main_thread
from ..protocol import ActorStats

log = logging.getLogger(__name__)

# What every started process gets as its umask: files 0600, directories and sockets 0700.
CHILD_UMASK: Final = 0o077
# How long an mpiexec whose ranks ended gets to exit by itself before a signal, and how long
# a rank that ended (or a job that ended) may go without its Done before it is a crash.
MPIEXEC_GRACE_S: Final = 2.0
GFORKER: Final = "mpiexec.gforker"
_POLL_S: Final = 0.05


@dataclass
class Launch:
    """One started OS process: an actor, or an ``mpiexec`` job whose ranks are actors."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    mpi: bool = False
    ended_at: float | None = None  # monotonic time its exit was first seen
    # An MPI job whose every rank sent Done and ended: finished with 0, whether or not its
    # mpiexec noticed yet (gforker takes up to ~2 s to see its children gone, measured);
    # the supervisor reaps it without waiting for that (``release_finished``).
    released: bool = False

    def exit_code(self) -> int | None:
        return 0 if self.released else self.popen.poll()


@dataclass
class ActorProcess:
    spec: ActorSpec
    launch: Launch
    pid: int | None = None  # reported in Ready; an MPI rank's differs from the launch's
    ready: bool = False
    done: bool = False
    stats: ActorStats | None = None
    failure: str | None = None
    # Liveness (runtime/liveness.py): when a message last came, the last look at its main
    # thread while it was silent, when a rank's process was first seen gone.
    heard_at: float = field(default_factory=time.monotonic)
    probe: ThreadSample | None = None
    probed_at: float = 0.0
    gone_at: float | None = None
    hung: bool = False

    @property
    def popen(self) -> subprocess.Popen[bytes]:
        return self.launch.popen

    @property
    def log_path(self) -> Path:
        return self.launch.log_path

    @property
    def exit_code(self) -> int | None:
        return self.launch.exit_code()

    @property
    def is_rank(self) -> bool:
        """A rank of an mpiexec job: its own pid, not the launch's (known once Ready)."""
        return self.pid is not None and self.pid != self.launch.popen.pid

    def last_error(self) -> str:
        if self.failure:
            return self.failure
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "no log"
        code = self.exit_code
        tail = " | ".join(lines[-3:]) if lines else "empty log"
        if code is not None and code < 0:
            return f"killed by signal {signal.Signals(-code).name}; log tail: {tail}"
        return tail


def start_process(
    argv: list[str], log_path: Path, env: dict[str, str], inherit_fds: tuple[int, ...]
) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    log_file = open(log_path, "ab")  # closed by the supervisor once the process is reaped
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            umask=CHILD_UMASK,
            pass_fds=inherit_fds,
        )
    except BaseException:
        log_file.close()
        raise
    return popen, log_file


def mpiexec_path() -> str:
    """The ``mpiexec`` (hydra) the project installs into its virtual environment."""
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if not found:
        raise SpecError("mpiexec not found: install the project (make install) to get MPICH")
    return found


def local_mpiexec() -> str:
    """The process manager for a job on this host: ``mpiexec.gforker`` (no listening port),
    else hydra's ``mpiexec`` with a warning (its control port listens on every interface)."""
    beside = Path(sys.executable).parent / GFORKER
    found = str(beside) if beside.exists() else shutil.which(GFORKER)
    if found:
        return found
    log.warning(
        "%s not found: using hydra's mpiexec, whose control port listens on 0.0.0.0", GFORKER
    )
    return mpiexec_path()


def loopback_interface() -> str:
    """The name of the interface that holds 127.0.0.1 (``lo`` on Linux)."""
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addresses):
            return name
    return "lo"


def loopback_env() -> dict[str, str]:
    """Environment that keeps the ranks' MPI transport on the loopback interface: UCX (this
    MPICH's default netmod) and libfabric's tcp and sockets providers (the ofi netmod)."""
    iface = loopback_interface()
    return {"UCX_NET_DEVICES": iface, "FI_TCP_IFACE": iface, "FI_SOCKETS_IFACE": iface}


def is_stopped(pid: int) -> bool:
    sample = main_thread(pid)
    return sample is not None and sample.stopped


async def reap_mpiexec(popen: subprocess.Popen[bytes]) -> None:
    """An mpiexec whose ranks were killed: let it exit and clean up, else SIGTERM, then
    SIGKILL. A stopped one cannot clean up: SIGKILL at once."""
    for send in (None, popen.terminate, popen.kill):
        if popen.poll() is not None:
            return
        if is_stopped(popen.pid):
            popen.kill()
        elif send is not None:
            send()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(popen.wait, MPIEXEC_GRACE_S)


def descendants(pid: int) -> list[psutil.Process]:
    """Every process below ``pid`` now (an mpiexec's ranks, a hydra proxy)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def running(process: psutil.Process) -> bool:
    """Whether ``process`` still runs (a zombie has ended; pid reuse is checked)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def release_finished(launch: Launch, members: list[ActorProcess]) -> bool:
    """Release an MPI job whose ranks all sent Done and ended (``Launch.released``); its
    mpiexec, with nothing left to run, is sent SIGKILL (reaped at the supervisor's close)."""
    if not launch.mpi or launch.released or launch.popen.poll() is not None:
        return False
    if not members or not all(a.done and a.pid is not None and not alive(a.pid) for a in members):
        return False
    launch.released = True
    launch.popen.kill()
    return True


def kill_leftovers(processes: list[psutil.Process]) -> None:
    """SIGKILL what is still running of ``processes`` (checked against pid reuse)."""
    for process in processes:
        if running(process):
            with contextlib.suppress(psutil.Error):
                process.kill()


def kill_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


async def kill_all(actors: list[ActorProcess], timeout_s: float) -> None:
    """SIGKILL every actor (MPI ranks by their own pid: killing mpiexec may orphan them),
    reap every launch, then kill whatever an MPI job still had below it (a hydra proxy, a
    rank not Ready yet). Returns once all of it is gone (ActorFailed after ``timeout_s``)."""
    jobs = list({id(a.launch): a.launch for a in actors}.values())
    below = [p for launch in jobs if launch.mpi for p in descendants(launch.popen.pid)]
    for a in actors:
        if a.pid is not None and (a.is_rank or a.exit_code is None):
            kill_pid(a.pid)
    for launch in jobs:
        if launch.mpi:
            await reap_mpiexec(launch.popen)
        elif launch.popen.poll() is None:
            launch.popen.kill()
    kill_leftovers(below)
    for launch in jobs:
        await asyncio.to_thread(launch.popen.wait)
        launch.log_file.close()
    # Ranks are not our children: make sure they are gone before their ports are reused.
    deadline = time.monotonic() + timeout_s
    while any(running(p) for p in below) or any(alive(a.pid) for a in actors if a.pid):
        if time.monotonic() > deadline:
            raise ActorFailed("supervisor", None, "actors outlived SIGKILL")
        await asyncio.sleep(_POLL_S)
