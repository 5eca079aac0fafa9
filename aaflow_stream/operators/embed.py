"""The embed stage: micro-batches chunks to ``batch_size`` rows and appends their embeddings.

The embed batch size is independent of the size of arriving batches (the paper's BE): rows are
gathered across arriving batches and embedded ``batch_size`` at a time; what is left at end of
stream goes out in ``flush``. Gathering copies nothing: a micro-batch is a list of slices of
the arriving batches, and it leaves as one message of those slices, each with its share of the
embedding matrix (a zero-copy slice of one ``fixed_size_list`` column built over the embedder's
matrix). The embedder is built once per actor, before it takes work (``embedders.factory``:
a model loads here, before the actor reports ready), with ``threads`` threads.

``idle()`` (no input for the flow's ``flush_ms``) embeds what is pending, so a trickle of
chunks is not stuck in a partial micro-batch.

A model embedder batches again inside (``embedder.batch_size`` rows per forward pass, sorted by
length), so a stage ``batch_size`` of several forward passes pads less than one of exactly one.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import ClassVar

import pyarrow as pa

from ..embedders import factory
from ..embedders.base import to_arrow
from ..schemas import EMBEDDING
from .base import OperatorContext
from .params import EmbedParams

Message = list[pa.RecordBatch]


class EmbedChunks:
    Params: ClassVar[type[EmbedParams]] = EmbedParams

    def __init__(self, context: OperatorContext, params: EmbedParams) -> None:
        self._batch_size = params.batch_size
        started = time.perf_counter()
        self._embedder = factory.build(params.embedder, threads=params.threads)
        self._load_s = time.perf_counter() - started
        self._pending: deque[pa.RecordBatch] = deque()
        self._pending_rows = 0

    def _take(self, rows: int) -> list[pa.RecordBatch]:
        """Slices covering the first ``rows`` pending rows; the rest stays pending."""
        taken: list[pa.RecordBatch] = []
        while rows:
            head = self._pending.popleft()
            if head.num_rows > rows:
                self._pending.appendleft(head.slice(rows))
                head = head.slice(0, rows)
            taken.append(head)
            rows -= head.num_rows
            self._pending_rows -= head.num_rows
        return taken

    def _embed(self, parts: list[pa.RecordBatch]) -> Message:
        texts: list[str] = []
        for part in parts:
            texts += part.column("text").to_pylist()
        vectors = to_arrow(self._embedder.embed(texts))
        field = pa.field(EMBEDDING, vectors.type)
        out, offset = [], 0
        for part in parts:
            out.append(part.append_column(field, vectors.slice(offset, part.num_rows)))
            offset += part.num_rows
        return out

    def _ready(self, final: bool) -> Iterator[Message]:
        while self._pending_rows >= self._batch_size:
            yield self._embed(self._take(self._batch_size))
        if final and self._pending_rows:
            yield self._embed(self._take(self._pending_rows))

    def metrics(self) -> dict[str, float]:
        return {"embedder_load_s": self._load_s}

    def process(self, batch: pa.RecordBatch) -> Iterable[Message]:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        return list(self._ready(final=False))

    def flush(self) -> Iterable[Message]:
        return list(self._ready(final=True))

    def idle(self) -> list[Message]:
        return list(self._ready(final=True))
