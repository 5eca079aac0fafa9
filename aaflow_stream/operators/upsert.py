"""The upsert stage: the shuffle. Rows go to shard ``chunk_id % shards`` in bulk batches.

Rows are grouped per destination shard and sent once a shard has ``batch_size`` rows (the
paper's BU, independent of the embed batch size); what is left goes out at end of stream.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa

from .base import OperatorContext, Routed


class ShardRouter:
    def __init__(self, context: OperatorContext, *, shards: int, batch_size: int = 2048) -> None:
        self._shards = shards
        self._batch_size = batch_size
        self._pending: list[list[pa.RecordBatch]] = [[] for _ in range(shards)]
        self._rows = [0] * shards

    def _drain(self, shard: int) -> Routed:
        batches, self._pending[shard], self._rows[shard] = self._pending[shard], [], 0
        if len(batches) == 1:
            return Routed(shard, batches[0])
        # One copy into a single bulk batch. Sending the ~32 slices as one multi-part message
        # instead costs ~20 frames and an Arrow rebuild per slice on both sides, and a FAISS
        # add per slice: measured on W1 large, ~1 ms per 2,048 rows to concatenate against
        # ~0.4 s more CPU in the upsert and shard processes for the slices.
        return Routed(shard, pa.Table.from_batches(batches).combine_chunks().to_batches()[0])

    def process(self, batch: pa.RecordBatch) -> Iterable[Routed]:
        ids = batch.column("chunk_id").to_numpy()
        destination = (ids % np.uint64(self._shards)).astype(np.int64)
        # One stable sort, then contiguous slices: no per-shard filtering pass.
        order = np.argsort(destination, kind="stable")
        bounds = np.searchsorted(destination[order], np.arange(self._shards + 1))
        grouped = batch.take(pa.array(order))
        out = []
        for shard in range(self._shards):
            start, stop = int(bounds[shard]), int(bounds[shard + 1])
            if stop > start:
                self._pending[shard].append(grouped.slice(start, stop - start))
                self._rows[shard] += stop - start
                if self._rows[shard] >= self._batch_size:
                    out.append(self._drain(shard))
        return out

    def flush(self) -> Iterator[Routed]:
        for shard in range(self._shards):
            if self._rows[shard]:
                yield self._drain(shard)
