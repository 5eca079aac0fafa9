"""What the query side needs of the shard job's rounds (``shard.rank.ShardRank`` gives them)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..shard.memory import MemoryCounts
from ..shard.wakeup import DualQuery
from ..spec import MemorySpec, MemoryWeights
from .protocol import Mode, QueryFilter

RunRound = Callable[
    [npt.NDArray[np.float32], int, QueryFilter | None, DualQuery | None],
    Awaitable[list[pa.Table]],
]


class MemoryRounds(Protocol):
    """The memory rounds of the shard job (``shard.rank.ShardRank``)."""

    async def remember(self, entries: pa.Table) -> MemoryCounts: ...

    async def forget(self, sessions: list[str]) -> int: ...

    async def census(self) -> npt.NDArray[np.int64]: ...


# Retrieval for a batch of embedded questions (``Gateway.search_questions``): vectors, texts,
# k, filter, mode, sessions, weights -> a table per question, in ``hits.layout_of(mode)``.
Search = Callable[
    [
        npt.NDArray[np.float32],
        Sequence[str | None],
        int,
        QueryFilter | None,
        Mode,
        Sequence[str | None],
        MemoryWeights | None,
    ],
    Awaitable[list[pa.Table]],
]


class HybridRounds(Protocol):
    """The hybrid round (``shard.rank.ShardRank.hybrid``), where the shards keep keywords."""

    async def hybrid(
        self,
        matrix: npt.NDArray[np.float32],
        texts: list[str],
        k: int,
        allowed: QueryFilter | None,
        depth: int,
    ) -> list[pa.Table]: ...


class Retriever:
    """Runs the round a query mode needs: knowledge (plain search), memory or both (a
    dual-path search), hybrid (vector + keywords). ``on_round`` counts each round."""

    def __init__(
        self,
        run_round: RunRound,
        hybrid: HybridRounds | None,
        memory_spec: MemorySpec,
        on_round: Callable[[], None],
        *,
        memory: bool,
    ) -> None:
        self._run_round = run_round
        self._hybrid = hybrid
        self._memory_spec = memory_spec
        self._on_round = on_round
        self._memory = memory

    def serves(self, mode: Mode) -> bool:
        if mode == "hybrid":
            return self._hybrid is not None
        return mode == "knowledge" or self._memory

    async def retrieve(
        self,
        matrix: npt.NDArray[np.float32],
        texts: Sequence[str | None],
        k: int,
        where: QueryFilter | None,
        mode: Mode,
        sessions: Sequence[str | None],
        weights: MemoryWeights | None,
    ) -> list[pa.Table]:
        """One round for these queries (one mode, filter and weights; ``texts`` for hybrid,
        ``sessions`` for memory); a table per query in the layout ``hits.layout_of(mode)``."""
        if mode == "hybrid":
            assert self._hybrid is not None
            words = [t or "" for t in texts]
            tables = await self._hybrid.hybrid(matrix, words, k, where, k)
        elif mode == "knowledge":
            tables = await self._run_round(matrix, k, where, None)
        else:
            dual = DualQuery(
                mode=mode,
                sessions=[s or "" for s in sessions],
                weights=weights or self._memory_spec.weights,
                now=time.time(),
            )
            tables = await self._run_round(matrix, k, where, dual)
        self._on_round()
        return tables
