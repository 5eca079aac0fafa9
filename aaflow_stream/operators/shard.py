"""The shard stage: one rank of the MPI shard job applies its share of the upserts and, when
the topology serves queries, answers them with the other ranks.

Rank r of the job is replica r of the stage (the supervisor starts the job with ``mpiexec``).
Each rank binds its own input endpoint, applies the upsert batches routed to it to its
``ShardStore`` and persists the store at end of stream.

Serving: rank 0 runs the gateway (``query.gateway``). For each batch of queries it wakes the
other ranks with a ZeroMQ message (their MPI threads then stay out of MPI while idle: no
busy-polling) and runs one collective search round on a communicator of its own, apart from
anything else MPI does here. The ranks learn each other's wake-up ports with one gather at
start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import zmq

from ..channels.loopsocket import LoopSocket
from ..errors import SpecError
from ..mpi.thread import MpiThread, wait
from ..query.gateway import Gateway
from ..query.protocol import QueryFilter, encode, filter_decoder
from ..query.round import ROOT, count_round, search_round
from ..shard.store import ShardStore
from .base import OperatorContext

log = logging.getLogger(__name__)

# Wake-up messages: b"S" + the round's (queries, k, dim) as 3 int64, so the members need no
# header broadcast; b"C" for a count round.
SEARCH = b"S"
COUNT = b"C"


def _member_search(
    comm: Any,
    store: ShardStore,
    k: int,
    shape: tuple[int, int],
    allowed: QueryFilter | None,
    _: Any,
) -> None:
    search_round(comm, store, None, k, shape, allowed)


def _member_count(comm: Any, store: ShardStore, _: Any) -> None:
    count_round(comm, store)


def _setup_serving(port: int) -> Any:
    """On the MPI thread: a communicator for queries, and every rank's wake-up port at root."""

    def run(comm: Any) -> tuple[Any, list[int]]:
        query_comm = comm.Dup()
        ports = np.zeros(comm.Get_size(), dtype=np.int64)
        wait(comm.Igather(np.array([port], dtype=np.int64), ports, root=ROOT))
        return query_comm, ports.tolist()

    return run


class ShardWriter:
    def __init__(
        self,
        context: OperatorContext,
        *,
        data_dir: str,
        dim: int,
        index: str = "Flat",
        metric: str = "ip",
        threads: int = 1,
        serve: bool = False,
        query_endpoint: str = "",
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
    ) -> None:
        self._mpi = MpiThread()
        rank, size = self._mpi.start()
        if (rank, size) != (context.replica, context.replicas):
            self._mpi.stop()
            raise SpecError(
                f"{context.actor} runs as MPI rank {rank} of {size}; expected rank "
                f"{context.replica} of {context.replicas} (start shards with mpiexec -n)"
            )
        self._rank, self._size = rank, size
        self._dim = dim
        import faiss

        # OpenMP's thread count is per calling thread: set it where searches run too.
        faiss.omp_set_num_threads(threads)
        self._mpi.submit(lambda _: faiss.omp_set_num_threads(threads)).result(timeout=60)
        self._store = ShardStore(
            Path(data_dir) / f"shard-{rank}", dim=dim, index=index, metric=metric
        )
        self._applied_at = 0.0
        self._persist_s = 0.0
        self._serving = serve
        self._query_endpoint = query_endpoint
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._zmq: zmq.Context[Any] | None = None
        self._wake: list[zmq.Socket[Any]] = []  # root: one PUSH per other rank
        self._woken: zmq.Socket[Any] | None = None  # other ranks: their PULL
        self._query_comm: Any = None
        self._gateway: Gateway | None = None
        if serve:
            self._prepare_serving()

    def _prepare_serving(self) -> None:
        self._zmq = zmq.Context()
        port = 0
        if self._rank != ROOT:
            self._woken = self._zmq.socket(zmq.PULL)
            self._woken.setsockopt(zmq.LINGER, 0)
            port = self._woken.bind_to_random_port("tcp://127.0.0.1")
        self._query_comm, ports = self._mpi.submit(_setup_serving(port)).result(timeout=60)
        if self._rank == ROOT:
            for other in range(1, self._size):
                push = self._zmq.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.connect(f"tcp://127.0.0.1:{ports[other]}")
                self._wake.append(push)

    # --- ingestion ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        out = {
            "vectors": self._store.count,
            "last_applied_at": self._applied_at,
            "persist_s": self._persist_s,
            "flush_s": self._persist_s,
        }
        if self._gateway is not None:
            out.update(
                queries=self._gateway.stats.queries,
                rounds=self._gateway.stats.rounds,
                query_p50_ms=self._gateway.stats.percentile(50),
                query_p99_ms=self._gateway.stats.percentile(99),
            )
        return out

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        self._store.upsert(batch)
        self._applied_at = time.time()
        return ()

    def flush(self) -> Iterable[pa.RecordBatch]:
        started = time.perf_counter()
        self._store.persist()
        self._persist_s = time.perf_counter() - started
        log.info("shard %d persisted %d vectors", self._rank, self._store.count)
        return ()

    # --- queries -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Runs beside ingestion in the actor's task group: queries see what is applied."""
        if not self._serving:
            return
        if self._rank == ROOT:
            assert self._zmq is not None
            sock = self._zmq.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(self._query_endpoint)
            self._gateway = Gateway(
                LoopSocket(sock),
                dim=self._dim,
                max_batch=self._max_batch,
                max_wait_s=self._max_wait_s,
                run_round=self._root_round,
                shards=self._size,
                vectors=self._root_count,
            )
            log.info("gateway serving on %s", self._query_endpoint)
            await self._gateway.serve()
        else:
            assert self._woken is not None
            woken = LoopSocket(self._woken)
            while True:
                message = await woken.recv()
                if message[:1] == SEARCH:
                    nq, k, dim = np.frombuffer(message[1:25], dtype=np.int64).tolist()
                    allowed = filter_decoder.decode(message[25:])
                    store, comm = self._store, self._query_comm
                    task = partial(_member_search, comm, store, k, (nq, dim), allowed)
                else:
                    task = partial(_member_count, self._query_comm, self._store)
                await asyncio.wrap_future(self._mpi.submit(task))

    def _wake_members(self, message: bytes) -> None:
        # Waking and submitting happen with no await between them, so every rank's MPI
        # thread sees the rounds in the same order.
        for push in self._wake:
            push.send(message)

    async def _root_count(self) -> int:
        self._wake_members(COUNT)
        store, comm = self._store, self._query_comm
        total = await asyncio.wrap_future(self._mpi.submit(lambda _: count_round(comm, store)))
        assert total is not None
        return total

    async def _root_round(
        self, matrix: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None
    ) -> list[pa.Table]:
        header = np.array([len(matrix), k, matrix.shape[1]], dtype=np.int64)
        self._wake_members(SEARCH + header.tobytes() + encode(allowed))
        store, comm = self._store, self._query_comm
        future = self._mpi.submit(
            lambda _: search_round(comm, store, matrix, k, matrix.shape, allowed)
        )
        result = await asyncio.wrap_future(future)
        assert result is not None
        return result

    def close(self) -> None:
        for sock in [*self._wake, *([self._woken] if self._woken else [])]:
            sock.close(linger=0)
        self._mpi.stop(timeout_s=5.0)
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
