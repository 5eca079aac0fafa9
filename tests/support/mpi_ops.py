"""Operators only the tests use, run as the ranks of an ``mpiexec`` job (launcher: mpi)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from aaflow_stream.errors import OperatorError
from aaflow_stream.mpi.thread import MpiThread, wait
from aaflow_stream.operators.base import OperatorContext


class RankThatFailsAlone:
    """A sink whose rank ``fail_rank`` raises at end of stream while every other rank waits
    in a collective the failing one never joins: what shard ranks do when a peer fails
    between two rounds. Closing stops MPI as the shard does."""

    def __init__(self, context: OperatorContext, *, fail_rank: int) -> None:
        self._mpi = MpiThread()
        self._rank, _ = self._mpi.start()
        self._fails = self._rank == fail_rank
        self._comm: Any = self._mpi.submit(lambda comm: comm.Dup()).result(timeout=60)

    async def serve(self) -> None:
        if not self._fails:
            comm = self._comm
            await asyncio.wrap_future(self._mpi.submit(lambda _: wait(comm.Ibarrier())))

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        return ()

    def flush(self) -> Iterable[pa.RecordBatch]:
        if self._fails:
            raise RuntimeError(f"rank {self._rank} failed alone")
        return ()

    def close(self) -> None:
        self._mpi.stop()


class RankThatCannotBeBuilt:
    """A rank whose operator cannot be built once MPI is up (as a shard whose query embedder
    fails to load): an ``OperatorError``, deterministic, on rank ``fail_rank`` only."""

    def __init__(self, context: OperatorContext, *, fail_rank: int) -> None:
        self._mpi = MpiThread()
        rank, _ = self._mpi.start()
        if rank == fail_rank:
            raise OperatorError(f"rank {rank}: no such model")

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        return ()

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()

    def close(self) -> None:
        self._mpi.stop()
