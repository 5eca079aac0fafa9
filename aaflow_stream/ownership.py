"""One owner per directory: ``up`` holds an exclusive lock on ``<data_dir>/LOCK`` and
``<run_dir>/LOCK`` for as long as it (or anything it started) runs.

The lock is ``flock(LOCK_EX)`` on an open file description: the kernel releases it when the
last descriptor of that description closes, so a crashed owner leaves no stale lock (the file
stays, with the last owner's pid in it, and the next ``up`` takes it over). ``up`` passes the
descriptors to every process it starts (actors, the MPI job, the detached child), so a
directory stays locked until all of them are gone: a shard rank still draining after its
supervisor was killed keeps a new ``up`` off its log.

Taking a lock touches nothing else in the directory: a refused ``up`` has changed no file of
the run that owns it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from .errors import DirectoryBusy
from .procs import alive

LOCK_FILE: Final = "LOCK"
_PID_WIDTH: Final = 12  # the pid is written in place, fixed width: a reader never sees half


@dataclass
class DirLock:
    """An exclusive lock held on ``<directory>/LOCK`` through the descriptor ``fd``."""

    directory: Path
    what: str
    fd: int

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    def stamp(self, pid: int | None = None) -> None:
        """Write the owner's pid into the lock file (what a refused ``up`` reports)."""
        os.pwrite(self.fd, f"{pid or os.getpid():>{_PID_WIDTH}}\n".encode(), 0)
        os.ftruncate(self.fd, _PID_WIDTH + 1)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


def _holder(path: Path) -> str:
    try:
        pid = int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError, UnicodeDecodeError):
        return "pid unknown"
    if alive(pid):
        return f"pid {pid}"
    return f"pid {pid} has ended, processes it started are still stopping"


def acquire(directory: Path, what: str) -> DirLock:
    """Lock ``directory`` (created if missing) or raise DirectoryBusy naming the holder."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise DirectoryBusy(f"cannot open the lock of {what} {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise DirectoryBusy(f"cannot lock {what} {directory}: {exc.strerror}") from exc
        raise DirectoryBusy(
            f"{what} {directory} is in use by another `aaflow-stream up` ({_holder(path)}); "
            "stop it first (Ctrl-C, or `aaflow-stream down TOPOLOGY` when detached)"
        ) from None
    lock = DirLock(directory, what, fd)
    lock.stamp()
    return lock


def adopt(fd: int, directory: Path, what: str) -> DirLock:
    """Take over a lock inherited from the process that started this one (``up --detach``):
    check that ``fd`` is ``<directory>/LOCK`` and locked by us, and stamp our pid in it."""
    path = directory / LOCK_FILE
    try:
        same = os.path.samestat(os.fstat(fd), os.stat(path))
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours already: succeeds at once
    except OSError as exc:
        raise DirectoryBusy(f"inherited lock {fd} of {path} is not usable: {exc}") from exc
    if not same:
        raise DirectoryBusy(f"inherited descriptor {fd} is not the lock {path}")
    os.set_inheritable(fd, False)
    lock = DirLock(directory, what, fd)
    lock.stamp()
    return lock


class Ownership:
    """The locks of one ``up``: acquired together (or none), released together."""

    def __init__(self, locks: list[DirLock]) -> None:
        self.locks = locks

    @classmethod
    def acquire(cls, directories: list[tuple[Path, str]]) -> Ownership:
        taken: list[DirLock] = []
        try:
            for directory, what in _unique(directories):
                taken.append(acquire(directory, what))
        except BaseException:
            for lock in taken:
                lock.release()
            raise
        return cls(taken)

    @classmethod
    def adopt(cls, fds: list[int], directories: list[tuple[Path, str]]) -> Ownership:
        wanted = _unique(directories)
        if len(fds) != len(wanted):
            raise DirectoryBusy(f"expected {len(wanted)} inherited locks, got {len(fds)}")
        return cls([adopt(fd, d, what) for fd, (d, what) in zip(fds, wanted, strict=True)])

    @property
    def fds(self) -> tuple[int, ...]:
        return tuple(lock.fd for lock in self.locks)

    def stamp(self, pid: int) -> None:
        for lock in self.locks:
            lock.stamp(pid)

    def release(self) -> None:
        for lock in self.locks:
            lock.release()

    def __enter__(self) -> Ownership:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _unique(directories: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Resolved and deduplicated (a run directory inside the data directory is one lock)."""
    seen: dict[Path, str] = {}
    for directory, what in directories:
        seen.setdefault(directory.resolve(), what)
    return list(seen.items())
