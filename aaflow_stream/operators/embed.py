"""The embed stage: micro-batches chunks to ``batch_size`` rows and appends their embeddings.

The embed batch size is independent of the size of arriving batches (the paper's BE): rows are
gathered across arriving batches, embedded ``batch_size`` at a time, and what is left at end of
stream goes out in ``flush``. The embedder is built once per actor, before it takes work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa

from ..embedders.hash_embedder import HashEmbedder
from ..schemas import EMBEDDING
from .base import OperatorContext


class EmbedChunks:
    def __init__(self, context: OperatorContext, *, batch_size: int = 256, dim: int = 384) -> None:
        self._batch_size = batch_size
        self._embedder = HashEmbedder(dim)
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def _embed(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        vectors = self._embedder.embed_to_arrow(batch.column("text").to_pylist())
        return batch.append_column(pa.field(EMBEDDING, vectors.type), vectors)

    def _take(self, rows: int) -> pa.RecordBatch:
        """The first ``rows`` pending rows as one batch; the rest stays pending."""
        table = pa.Table.from_batches(self._pending)
        head, tail = table.slice(0, rows), table.slice(rows)
        self._pending = tail.to_batches()
        self._pending_rows -= rows
        return head.combine_chunks().to_batches()[0]

    def _ready(self, final: bool) -> Iterator[pa.RecordBatch]:
        while self._pending_rows >= self._batch_size:
            yield self._embed(self._take(self._batch_size))
        if final and self._pending_rows:
            yield self._embed(self._take(self._pending_rows))

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        if self._pending_rows == 0 and batch.num_rows == self._batch_size:
            return (self._embed(batch),)  # the common case needs no regrouping
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        return list(self._ready(final=False))

    def flush(self) -> Iterable[pa.RecordBatch]:
        return list(self._ready(final=True))
