"""The sockets that carry wake-ups (``shard.wakeup``) from the root to the members.

Wake-ups travel over unix sockets only the job can reach: at start the root makes a private
directory (0700; under the run directory when the path fits a unix socket, else in the
temporary directory) and broadcasts its path and a random token over MPI; each member binds
``ipc://<dir>/r<rank>`` (0600) and the root connects one PUSH to each. Nothing listens on TCP.
Setting up is collective: every rank of the job builds its ``WakeupLinks`` at once.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Final

import numpy as np
import zmq

from ..channels import sockets
from ..channels.loopsocket import LoopSocket
from ..errors import StorageError, WakeupError
from ..mpi.thread import MpiThread, wait
from ..plan import MAX_IPC_PATH
from ..procs import alive
from .round import ROOT
from .wakeup import MAX_WAKEUP_BYTES, TOKEN_BYTES, WakeupGate, WakeupIssuer, new_token

SETUP_TIMEOUT_S: Final = 60.0
# Rounds run one at a time, so a member has at most a few wake-ups waiting: a bound on what a
# flood of messages into its socket may hold (each connected peer has its own queue).
WAKEUP_HWM: Final = 64
# The setup broadcast: the token, the directory path's length (2 bytes), the path.
_SETUP_BYTES: Final = TOKEN_BYTES + 2 + 4096
_DIR_PREFIX: Final = "wake-"
_SOCKET_NAME_ROOM: Final = len("/r") + 6


def _socket_path(directory: Path, rank: int) -> Path:
    return directory / f"r{rank}"


def _private_dir(run_dir: Path) -> Path:
    """A new directory only this user can enter (mkdtemp makes it 0700), where the members'
    socket paths fit ``MAX_IPC_PATH``. Directories left by dead jobs are removed first."""
    _remove_stale(run_dir)
    base: Path | None = run_dir.resolve() if run_dir.is_dir() else None
    prefix = f"{_DIR_PREFIX}{os.getpid()}-"
    if base is None or len(str(base)) + 1 + len(prefix) + 8 + _SOCKET_NAME_ROOM > MAX_IPC_PATH:
        base, prefix = Path(tempfile.gettempdir()), f"aaf-{prefix}"
    directory = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    os.chmod(directory, stat.S_IRWXU)
    return directory


def _check_private(directory: Path) -> None:
    """A member binds only in a directory of its own user that nobody else may enter."""
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise StorageError(
            f"the wake-up directory {directory} is not a private directory of this user "
            f"(mode {stat.filemode(info.st_mode)}, owner {info.st_uid})"
        )


def _remove_stale(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        for old in run_dir.glob(f"{_DIR_PREFIX}*-*"):
            pid = old.name[len(_DIR_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not alive(int(pid)):
                shutil.rmtree(old, ignore_errors=True)


def _share_setup(setup: bytes | None) -> Any:
    """On the MPI thread: a communicator for the rounds, and the root's setup at every rank."""

    def run(comm: Any) -> tuple[Any, bytes]:
        query_comm = comm.Dup()
        buffer = np.zeros(_SETUP_BYTES, dtype=np.uint8)
        if setup is not None:
            buffer[: len(setup)] = np.frombuffer(setup, dtype=np.uint8)
        wait(comm.Ibcast(buffer, root=ROOT))
        return query_comm, buffer.tobytes()

    return run


def _every_member_bound(comm: Any) -> None:
    wait(comm.Ibarrier())


def _pack_setup(token: bytes, directory: Path) -> bytes:
    path = os.fsencode(directory)
    if len(path) > _SETUP_BYTES - TOKEN_BYTES - 2:
        raise ValueError(f"the wake-up directory path {directory} is too long")
    return token + len(path).to_bytes(2, "big") + path


def _unpack_setup(data: bytes) -> tuple[bytes, Path]:
    token, length = data[:TOKEN_BYTES], int.from_bytes(data[TOKEN_BYTES : TOKEN_BYTES + 2], "big")
    start = TOKEN_BYTES + 2
    return token, Path(os.fsdecode(data[start : start + length]))


class WakeupLinks:
    """One rank's end of the wake-up sockets, and the communicator the rounds run on.

    The root gets ``issuer`` (numbers and signs wake-ups) and ``send``; a member gets ``gate``
    (decides which messages start a round) and ``receive``.
    """

    def __init__(
        self,
        mpi: MpiThread,
        ctx: zmq.Context[Any],
        *,
        rank: int,
        size: int,
        dim: int,
        run_dir: Path,
    ) -> None:
        self._rank = rank
        self._directory: Path | None = None
        self._pushes: list[zmq.Socket[Any]] = []  # root: one PUSH per member
        self._pull: LoopSocket | None = None  # member: its PULL
        self.issuer: WakeupIssuer | None = None
        self.gate: WakeupGate | None = None
        try:
            self._connect(mpi, ctx, size, dim, run_dir)
        except BaseException:
            self.close()
            raise

    def _connect(
        self, mpi: MpiThread, ctx: zmq.Context[Any], size: int, dim: int, run_dir: Path
    ) -> None:
        setup = None
        if self._rank == ROOT:
            self._directory = _private_dir(run_dir)
            setup = _pack_setup(new_token(), self._directory)
        self.comm, shared = mpi.submit(
            _share_setup(setup), timeout_s=SETUP_TIMEOUT_S, what="the serving setup"
        ).result()
        token, directory = _unpack_setup(shared)
        if self._rank != ROOT:
            _check_private(directory)
            self.gate = WakeupGate(token, dim, self._rank, size)
            path = _socket_path(directory, self._rank)
            self._pull = sockets.wakeup_pull(
                ctx, f"ipc://{path}", max_bytes=MAX_WAKEUP_BYTES, hwm=WAKEUP_HWM
            )
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        mpi.submit(
            _every_member_bound, timeout_s=SETUP_TIMEOUT_S, what="the wake-up sockets' setup"
        ).result()
        if self._rank == ROOT:
            self.issuer = WakeupIssuer(token)
            for member in range(1, size):
                endpoint = f"ipc://{_socket_path(directory, member)}"
                self._pushes.append(sockets.wakeup_push(ctx, endpoint, hwm=WAKEUP_HWM))

    def send(self, message: bytes) -> None:
        """The root: one wake-up to every member, without blocking."""
        for member, push in enumerate(self._pushes, start=1):
            try:
                push.send(message, zmq.NOBLOCK)
            except zmq.Again as exc:
                raise WakeupError(f"member {member} takes no wake-ups (queue full)") from exc

    async def receive(self) -> list[bytes]:
        """A member: the next message on its socket (to be judged by ``gate``)."""
        assert self._pull is not None
        return await self._pull.recv_multipart()

    def close(self) -> None:
        """Idempotent."""
        for push in self._pushes:
            push.close(linger=0)
        self._pushes = []
        if self._pull is not None:
            self._pull.close(linger=0)
            self._pull = None
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
