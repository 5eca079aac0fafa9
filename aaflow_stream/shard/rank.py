"""One rank of the shard job: its MPI thread and its part in every collective round.

Rank r of the job holds shard r (``ShardStore``). Queries, counts and deletes are collective
rounds (``shard.round``) on a communicator of their own: the root (rank 0) starts each one
with a wake-up to the members (``shard.wakeup``, carried by ``shard.wakeup_links``) and runs
it at once; each member runs the same round when its wake-up arrives. Waking and submitting
happen with no await between them, so every rank's MPI thread sees the rounds in one order.
Between rounds the members' MPI threads stay out of MPI: no busy-polling.

Liveness: every round runs under ``round_timeout_s`` on every rank (``mpi.thread``): a round
that does not complete (a rank dead, frozen or out of step) aborts the whole job, with the
reason logged, instead of leaving it half-alive. A round that fails on any rank, or a
wake-up stream that cannot be followed (``WakeupError``), raises to the rank's owner, which
ends the job (``runtime.actor``).

Results come back by return value: the root gets the merged hits, the total count, the
number of chunks deleted; it is the caller (the gateway) that talks to clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import zmq

from ..errors import SpecError
from ..mpi.thread import MpiThread
from .filters import QueryFilter
from .hybrid import encode_texts
from .memory import MemoryCounts, MemoryStore, owner
from .round import (
    ROOT,
    count_round,
    delete_round,
    forget_round,
    hybrid_round,
    remember_round,
    search_round,
)
from .store import ShardStore
from .wakeup import (
    DeleteWake,
    DualQuery,
    ForgetWake,
    HybridQuery,
    RememberWake,
    SearchWake,
    Wakeup,
    WakeupIssuer,
)
from .wakeup_links import WakeupLinks

T = TypeVar("T")
# How long the MPI thread may take to apply the FAISS thread count at start.
SETUP_CALL_S: Final = 60.0


def join_job(actor: str, replica: int, replicas: int, threads: int) -> tuple[MpiThread, int]:
    """Start this process's MPI thread (MPI_Init) and check the job's shape; the thread and
    this rank. FAISS searches run on the MPI thread: its OpenMP thread count is set there too
    (the count is per calling thread)."""
    import faiss

    mpi = MpiThread()
    rank, size = mpi.start()
    if (rank, size) != (replica, replicas):
        raise SpecError(
            f"{actor} runs as MPI rank {rank} of {size}; expected rank "
            f"{replica} of {replicas} (start shards with mpiexec -n)"
        )
    faiss.omp_set_num_threads(threads)
    mpi.submit(lambda _: faiss.omp_set_num_threads(threads)).result(timeout=SETUP_CALL_S)
    return mpi, rank


def _member_round(
    comm: Any, store: ShardStore, memory: MemoryStore, wake: Wakeup, _world: Any
) -> None:
    """A member's side of the round ``wake`` names, on the rounds' communicator ``comm``."""
    if isinstance(wake, SearchWake) and wake.hybrid is not None:
        shape = (wake.nq, wake.dim)
        hybrid_round(comm, store, None, None, wake.k, shape, wake.filter, wake.hybrid)
    elif isinstance(wake, SearchWake):
        shape = (wake.nq, wake.dim)
        search_round(comm, store, None, wake.k, shape, wake.filter, wake.dual, memory)
    elif isinstance(wake, DeleteWake):
        delete_round(comm, store, wake.doc_ids)
    elif isinstance(wake, RememberWake):
        remember_round(comm, memory, wake.sizes)
    elif isinstance(wake, ForgetWake):
        forget_round(comm, memory, wake.sessions)
    else:
        count_round(comm, store, memory)


def _split_by_owner(entries: pa.Table, size: int) -> tuple[list[int], list[bytes]]:
    """Each rank's share of new memory entries as an Arrow stream (b"" for none)."""
    owners = np.array(
        [
            owner(session, entry_id, size)
            for session, entry_id in zip(
                entries.column("session").to_pylist(),
                entries.column("memory_id").to_pylist(),
                strict=True,
            )
        ],
        dtype=np.int64,
    )
    parts = []
    for r in range(size):
        mine = entries.filter(pa.array(owners == r))
        if mine.num_rows == 0:
            parts.append(b"")
            continue
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, mine.schema) as writer:
            writer.write_table(mine)
        parts.append(sink.getvalue().to_pybytes())
    return [len(p) for p in parts], parts


class ShardRank:
    """Built collectively (every rank at once) after ``join_job``; serves rounds until
    cancelled. ``close`` leaves MPI to its owner."""

    def __init__(
        self,
        mpi: MpiThread,
        store: ShardStore,
        memory: MemoryStore,
        ctx: zmq.Context[Any],
        *,
        rank: int,
        size: int,
        run_dir: Path,
        round_timeout_s: float,
    ) -> None:
        self._mpi, self._store, self._memory = mpi, store, memory
        self.exchanges = 0  # memory exchanges this rank took part in
        self.rank, self.size = rank, size
        self._round_timeout_s = round_timeout_s
        self._links = WakeupLinks(mpi, ctx, rank=rank, size=size, dim=store.dim, run_dir=run_dir)

    @property
    def is_root(self) -> bool:
        return self.rank == ROOT

    # --- the root: start a round, get its result ----------------------------------------------

    async def search(
        self,
        matrix: npt.NDArray[np.float32],
        k: int,
        allowed: QueryFilter | None,
        dual: DualQuery | None = None,
    ) -> list[pa.Table]:
        """The merged top-k hits of each query over every shard (and, with ``dual``, over
        every rank's memory too)."""
        issuer = self._issuer()
        self._links.send(issuer.search(len(matrix), k, matrix.shape[1], allowed, dual))
        store, memory, comm, shape = self._store, self._memory, self._links.comm, matrix.shape
        result = await self._run(
            lambda _: search_round(comm, store, matrix, k, shape, allowed, dual, memory),
            "search",
        )
        assert result is not None
        return list(result)

    async def hybrid(
        self,
        matrix: npt.NDArray[np.float32],
        texts: list[str],
        k: int,
        allowed: QueryFilter | None,
        depth: int,
    ) -> list[pa.Table]:
        """Each query's top-k by vector and BM25 keyword search fused (``shard.hybrid``)."""
        plan = HybridQuery(text_bytes=len(encode_texts(texts)), depth=depth)
        issuer = self._issuer()
        self._links.send(issuer.search(len(matrix), k, matrix.shape[1], allowed, None, plan))
        store, comm, shape = self._store, self._links.comm, (len(matrix), matrix.shape[1])
        result = await self._run(
            lambda _: hybrid_round(comm, store, matrix, texts, k, shape, allowed, plan), "hybrid"
        )
        assert result is not None
        return list(result)

    @property
    def keywords(self) -> bool:
        """Whether the shards keep a keyword index (hybrid rounds need one)."""
        return self._store.keyword_lsn is not None

    async def census(self) -> npt.NDArray[np.int64]:
        """Per rank: (vectors, memory entries)."""
        self._links.send(self._issuer().count())
        store, memory, comm = self._store, self._memory, self._links.comm
        counts = await self._run(lambda _: count_round(comm, store, memory), "count")
        assert counts is not None
        return counts

    async def count(self) -> int:
        """Vectors over every shard."""
        return int((await self.census())[:, 0].sum())

    async def remember(self, entries: pa.Table) -> MemoryCounts:
        """One memory exchange: every entry (``memory.memory_row``) to its owner, merged
        and logged there durably; the counts over every rank."""
        sizes, parts = _split_by_owner(entries, self.size)
        self._links.send(self._issuer().remember(sizes))
        self.exchanges += 1  # counted as it starts, as the members count it
        memory, comm = self._memory, self._links.comm
        counts = await self._run(lambda _: remember_round(comm, memory, sizes, parts), "remember")
        assert counts is not None
        return counts

    async def forget(self, sessions: list[str]) -> int:
        """Remove these sessions' memory from every rank, durably; the entries removed."""
        self._links.send(self._issuer().forget(sessions))
        memory, comm = self._memory, self._links.comm
        removed = await self._run(lambda _: forget_round(comm, memory, sessions), "forget")
        assert removed is not None
        return removed

    async def delete(self, doc_ids: list[str]) -> int:
        """Remove these documents from every shard, durably; the chunks removed."""
        self._links.send(self._issuer().delete(doc_ids))
        store, comm = self._store, self._links.comm
        removed = await self._run(lambda _: delete_round(comm, store, doc_ids), "delete")
        assert removed is not None
        return int(removed)

    def _issuer(self) -> WakeupIssuer:
        issuer = self._links.issuer
        if issuer is None:
            raise RuntimeError(f"rank {self.rank} is not the root: it starts no rounds")
        return issuer

    async def _run(self, fn: Callable[[Any], T], kind: str) -> T:
        what = f"{kind} round {self._issuer().seq}"
        future = self._mpi.submit(fn, timeout_s=self._round_timeout_s, what=what)
        return await asyncio.wrap_future(future)

    # --- a member: run the rounds the root starts ---------------------------------------------

    async def serve_member(self) -> None:
        """Run each round the root wakes this rank for, until cancelled."""
        gate = self._links.gate
        assert gate is not None, "the root starts rounds, it is not woken for them"
        comm = self._links.comm
        while True:
            wake = gate.admit(await self._links.receive())
            if wake is None:
                continue  # dropped (counted and logged): no round entered
            if isinstance(wake, RememberWake):
                self.exchanges += 1
            task = partial(_member_round, comm, self._store, self._memory, wake)
            what = f"{wake.__struct_config__.tag} round {wake.seq}"
            future = self._mpi.submit(task, timeout_s=self._round_timeout_s, what=what)
            await asyncio.wrap_future(future)

    # --- reporting and teardown ---------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        counts = self._memory.counts
        out = {
            "memory_entries": float(self._memory.count),
            "memory_exchanges": float(self.exchanges),
            "memory_compactions": float(counts.merged),
            "memory_evictions": float(counts.evicted),
        }
        gate = self._links.gate
        if gate is None:
            return out
        wakes = gate.stats
        out.update(wakeups=float(wakes.accepted), wakeups_dropped=float(wakes.dropped_total))
        out.update({f"wakeups_dropped_{reason}": n for reason, n in wakes.dropped.items()})
        return out

    def close(self) -> None:
        """Idempotent; the MPI thread is the owner's to stop."""
        self._links.close()
