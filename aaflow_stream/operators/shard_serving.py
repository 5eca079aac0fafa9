"""Queries in the shard job: the gateway on rank 0 (the root), collective rounds on every rank.

For each batch of queries (and each count or delete) the root wakes the other ranks (the
members) with a wake-up (``shard.wakeup``) and runs one collective round on a communicator of
its own; each member runs the same round when its wake-up arrives. Between rounds the members'
MPI threads stay out of MPI: no busy-polling.

Wake-ups travel over unix sockets only the job can reach: at start the root makes a private
directory (0700; under the run directory when the path fits a unix socket, else in the
temporary directory) and broadcasts its path and a random token over MPI; each member binds
``ipc://<dir>/r<rank>`` (0600) and the root connects one PUSH to each. Nothing listens on TCP.

Liveness: every round runs under ``round_timeout_s`` on every rank (``mpi.thread``): a round
that does not complete (a rank dead, frozen or out of step) aborts the whole job, with the
reason logged, instead of leaving it half-alive. A round that fails on any rank, or a
wake-up stream that cannot be followed (``WakeupError``), ends the actor, and an ending rank
ends the job (``runtime.actor``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import stat
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import zmq

from ..channels.loopsocket import LoopSocket
from ..embedders.base import TextEmbedder
from ..errors import StorageError
from ..mpi.thread import MpiThread, wait
from ..plan import MAX_IPC_PATH
from ..procs import alive
from ..query.gateway import Gateway
from ..query.protocol import MAX_FRAME_BYTES
from ..shard.filters import QueryFilter
from ..shard.round import ROOT, count_round, delete_round, search_round
from ..shard.store import ShardStore
from ..shard.wakeup import (
    MAX_WAKEUP_BYTES,
    TOKEN_BYTES,
    DeleteWake,
    SearchWake,
    Wakeup,
    WakeupError,
    WakeupGate,
    WakeupIssuer,
    new_token,
)

log = logging.getLogger(__name__)

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


def _member_round(comm: Any, store: ShardStore, wake: Wakeup, _world: Any) -> None:
    """A member's side of the round ``wake`` names, on the rounds' communicator ``comm``."""
    if isinstance(wake, SearchWake):
        search_round(comm, store, None, wake.k, (wake.nq, wake.dim), wake.filter)
    elif isinstance(wake, DeleteWake):
        delete_round(comm, store, wake.doc_ids)
    else:
        count_round(comm, store)


class ShardServing:
    """One rank's part in serving queries; built (collectively) in the shard's constructor."""

    def __init__(
        self,
        mpi: MpiThread,
        store: ShardStore,
        *,
        rank: int,
        size: int,
        dim: int,
        run_dir: Path,
        round_timeout_s: float,
    ) -> None:
        self._mpi, self._store = mpi, store
        self._rank, self._size, self._dim = rank, size, dim
        self._round_timeout_s = round_timeout_s
        self._zmq: zmq.Context[Any] = zmq.Context()
        self._directory: Path | None = None
        self._wake: list[zmq.Socket[Any]] = []  # root: one PUSH per member
        self._woken: zmq.Socket[Any] | None = None  # member: its PULL
        self._gate: WakeupGate | None = None
        self._issuer: WakeupIssuer | None = None
        self._gateway: Gateway | None = None
        try:
            self._connect(run_dir)
        except BaseException:
            self.close()
            raise

    def _connect(self, run_dir: Path) -> None:
        setup = None
        if self._rank == ROOT:
            self._directory = _private_dir(run_dir)
            setup = _pack_setup(new_token(), self._directory)
        self._query_comm, shared = self._mpi.submit(
            _share_setup(setup), timeout_s=SETUP_TIMEOUT_S, what="the serving setup"
        ).result()
        token, directory = _unpack_setup(shared)
        if self._rank != ROOT:
            _check_private(directory)
            self._gate = WakeupGate(token, self._dim, self._rank)
            self._woken = self._zmq.socket(zmq.PULL)
            self._woken.setsockopt(zmq.LINGER, 0)
            self._woken.setsockopt(zmq.MAXMSGSIZE, MAX_WAKEUP_BYTES)
            self._woken.setsockopt(zmq.RCVHWM, WAKEUP_HWM)
            path = _socket_path(directory, self._rank)
            self._woken.bind(f"ipc://{path}")
            os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
        self._mpi.submit(
            _every_member_bound, timeout_s=SETUP_TIMEOUT_S, what="the wake-up sockets' setup"
        ).result()
        if self._rank == ROOT:
            self._issuer = WakeupIssuer(token)
            for member in range(1, self._size):
                push = self._zmq.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.setsockopt(zmq.SNDHWM, WAKEUP_HWM)
                push.connect(f"ipc://{_socket_path(directory, member)}")
                self._wake.append(push)

    # --- serving -----------------------------------------------------------------------------

    async def serve_gateway(
        self, endpoint: str, *, embedder: TextEmbedder, max_batch: int, max_wait_s: float
    ) -> None:
        """The root: answer clients on ``endpoint`` until cancelled."""
        sock = self._zmq.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # ZeroMQ drops the connection of a peer sending a larger frame, before it is buffered.
        sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
        sock.bind(endpoint)
        router = LoopSocket(sock)
        self._gateway = Gateway(
            router,
            embedder=embedder,
            max_batch=max_batch,
            max_wait_s=max_wait_s,
            run_round=self._root_search,
            shards=self._size,
            vectors=self._root_count,
            delete=self._root_delete,
        )
        log.info("gateway serving on %s", endpoint)
        try:
            await self._gateway.serve()
        finally:
            router.close(linger=0)

    async def serve_member(self) -> None:
        """A member: run each round the root wakes it for, until cancelled."""
        assert self._woken is not None and self._gate is not None
        woken = LoopSocket(self._woken)
        try:
            while True:
                wake = self._gate.admit(await woken.recv_multipart())
                if wake is None:
                    continue  # dropped (counted and logged): no round entered
                task = partial(_member_round, self._query_comm, self._store, wake)
                what = f"{wake.__struct_config__.tag} round {wake.seq}"
                future = self._mpi.submit(task, timeout_s=self._round_timeout_s, what=what)
                await asyncio.wrap_future(future)
        finally:
            woken.close(linger=0)
            self._woken = None

    def _wake_members(self, message: bytes) -> None:
        # Waking and submitting happen with no await between them, so every rank's MPI
        # thread sees the rounds in the same order.
        for member, push in enumerate(self._wake, start=1):
            try:
                push.send(message, zmq.NOBLOCK)
            except zmq.Again as exc:
                raise WakeupError(f"member {member} takes no wake-ups (queue full)") from exc

    async def _root_search(
        self, matrix: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None
    ) -> list[pa.Table]:
        assert self._issuer is not None
        self._wake_members(self._issuer.search(len(matrix), k, matrix.shape[1], allowed))
        store, comm, shape = self._store, self._query_comm, matrix.shape
        result = await self._submit_round(
            lambda _: search_round(comm, store, matrix, k, shape, allowed), "search"
        )
        assert result is not None
        return list(result)

    async def _root_count(self) -> int:
        assert self._issuer is not None
        self._wake_members(self._issuer.count())
        store, comm = self._store, self._query_comm
        total = await self._submit_round(lambda _: count_round(comm, store), "count")
        assert total is not None
        return int(total)

    async def _root_delete(self, doc_ids: list[str]) -> int:
        assert self._issuer is not None
        self._wake_members(self._issuer.delete(doc_ids))
        store, comm = self._store, self._query_comm
        removed = await self._submit_round(lambda _: delete_round(comm, store, doc_ids), "delete")
        assert removed is not None
        return int(removed)

    async def _submit_round(self, fn: Any, kind: str) -> Any:
        assert self._issuer is not None
        what = f"{kind} round {self._issuer.seq}"
        future = self._mpi.submit(fn, timeout_s=self._round_timeout_s, what=what)
        return await asyncio.wrap_future(future)

    # --- reporting and teardown --------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._gateway is not None:
            stats = self._gateway.stats
            out.update(
                queries=stats.queries,
                rounds=stats.rounds,
                query_p50_ms=stats.percentile(50),
                query_p99_ms=stats.percentile(99),
                rejected=sum(stats.rejected.values()),
            )
            out.update({f"rejected_{reason}": n for reason, n in stats.rejected.items()})
        if self._gate is not None:
            wakes = self._gate.stats
            out.update(wakeups=wakes.accepted, wakeups_dropped=wakes.dropped_total)
            out.update({f"wakeups_dropped_{reason}": n for reason, n in wakes.dropped.items()})
        return out

    def close(self) -> None:
        """Idempotent; the MPI thread is the shard's to stop."""
        for sock in [*self._wake, *([self._woken] if self._woken is not None else [])]:
            sock.close(linger=0)
        self._wake, self._woken = [], None
        self._zmq.destroy(linger=0)
        if self._directory is not None:
            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None
