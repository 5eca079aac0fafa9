"""The shard stage: one rank of the MPI shard job applies its share of the upserts.

Rank r of the job is replica r of the stage (the supervisor starts the job with ``mpiexec``).
Each rank binds its own input endpoint, applies the upsert batches routed to it to its
``ShardStore``, and at end of stream persists the store; the ranks then agree on the total
with a nonblocking all-reduce, which also tells every rank that all shards are durable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import SpecError
from ..mpi.thread import MpiThread, wait
from ..shard.store import ShardStore
from .base import OperatorContext

log = logging.getLogger(__name__)


def _total(count: int) -> Any:
    def run(comm: Any) -> int:
        from mpi4py import MPI

        send = np.array([count], dtype=np.int64)
        recv = np.zeros(1, dtype=np.int64)
        wait(comm.Iallreduce(send, recv, op=MPI.SUM))
        return int(recv[0])

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
    ) -> None:
        self._mpi = MpiThread()
        rank, size = self._mpi.start()
        if (rank, size) != (context.replica, context.replicas):
            self._mpi.stop()
            raise SpecError(
                f"{context.actor} runs as MPI rank {rank} of {size}; expected rank "
                f"{context.replica} of {context.replicas} (start shards with mpiexec -n)"
            )
        self._rank = rank
        self._store = ShardStore(
            Path(data_dir) / f"shard-{rank}", dim=dim, index=index, metric=metric
        )
        self._total = 0
        self._applied_at = 0.0
        self._persist_s = 0.0
        self._flush_s = 0.0  # persist, then agree on the total with the other ranks

    def metrics(self) -> dict[str, float]:
        return {
            "vectors": self._store.count,
            "all_shards_vectors": self._total,
            "last_applied_at": self._applied_at,
            "persist_s": self._persist_s,
            "flush_s": self._flush_s,
        }

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        self._store.upsert(batch)
        self._applied_at = time.time()
        return ()

    def flush(self) -> Iterable[pa.RecordBatch]:
        started = time.perf_counter()
        self._store.persist()
        self._persist_s = time.perf_counter() - started
        self._total = self._mpi.submit(_total(self._store.count)).result(timeout=600)
        self._flush_s = time.perf_counter() - started
        log.info(
            "shard %d persisted %d vectors (all shards: %d)",
            self._rank,
            self._store.count,
            self._total,
        )
        return ()

    def close(self) -> None:
        self._mpi.stop()
