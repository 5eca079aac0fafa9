"""General-purpose operators: a synthetic source, an Arrow file source, a pass-through and an
Arrow file sink.

They are what a load test or a smoke test of a topology needs, and what the runtime's own tests
run on.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from .base import OperatorContext


class SyntheticSource:
    """``batches`` batches of ``rows`` rows: ``doc_id``, ``seq``, ``text`` and an embedding.

    Replica r of R produces the batches whose index is r mod R, so row ids stay unique across
    replicas. Column buffers are built once and reused: the source costs nearly nothing, which
    is what a transport test wants.
    """

    def __init__(
        self,
        context: OperatorContext,
        *,
        batches: int,
        rows: int = 1024,
        text_bytes: int = 1024,
        dim: int = 384,
    ) -> None:
        self._context = context
        self._batches = batches
        self._rows = rows
        rng = np.random.default_rng(context.replica)
        vectors = rng.random((rows, dim), dtype=np.float32)
        self._text = pa.array(["x" * text_bytes] * rows, pa.large_string())
        self._embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim)

    def batches(self) -> Iterator[pa.RecordBatch]:
        ctx = self._context
        for index in range(ctx.replica, self._batches, ctx.replicas):
            first = index * self._rows
            ids = np.arange(first, first + self._rows, dtype=np.int64)
            yield pa.record_batch(
                {
                    "doc_id": pa.array(ids.astype(str)),
                    "seq": pa.array(ids),
                    "text": self._text,
                    "embedding": self._embedding,
                }
            )


class ArrowFileSource:
    """The rows of an Arrow IPC file (``path``), in batches of ``rows`` rows.

    Replica r of R sends the batches whose index is r mod R. The file is memory-mapped and
    batches are slices of it (one file batch may give a slice in parts). A benchmark feeds a
    stage from here.
    """

    def __init__(self, context: OperatorContext, *, path: str, rows: int = 1024) -> None:
        if rows <= 0:
            raise ValueError(f"rows must be > 0, got {rows}")
        self._context = context
        self._rows = rows
        self._map = pa.memory_map(path)  # the batches point into it: closed in close()
        self._table = pa.ipc.open_file(self._map).read_all()

    def batches(self) -> Iterator[pa.RecordBatch]:
        ctx = self._context
        starts = range(0, self._table.num_rows, self._rows)
        for start in starts[ctx.replica :: ctx.replicas]:
            yield from self._table.slice(start, self._rows).to_batches()

    def close(self) -> None:
        self._map.close()


class PassThrough:
    """Forwards every batch, optionally after ``delay_ms`` (a slow consumer for tests)."""

    def __init__(self, context: OperatorContext, *, delay_ms: float = 0.0) -> None:
        self._delay_s = delay_ms / 1000.0

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        if self._delay_s:
            time.sleep(self._delay_s)
        return (batch,)

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()


class ArrowFileSink:
    """Writes ``columns`` of every received row to ``<path>/<actor>.arrow`` (an IPC stream).

    The file is flushed per batch so that a reader sees progress; it is complete after
    ``flush``. The default column is ``seq``: enough to check that every row arrived once.
    """

    def __init__(
        self,
        context: OperatorContext,
        *,
        path: str,
        columns: tuple[str, ...] = ("seq",),
        delay_ms: float = 0.0,
    ) -> None:
        self._path = Path(path) / f"{context.actor}.arrow"
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._columns = list(columns)
        self._delay_s = delay_ms / 1000.0
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._sink = pa.OSFile(str(self._path), "wb")

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        if self._delay_s:
            time.sleep(self._delay_s)
        part = batch.select(self._columns)
        if self._writer is None:
            self._writer = pa.ipc.new_stream(self._sink, part.schema)
        self._writer.write_batch(part)
        self._sink.flush()
        return ()

    def flush(self) -> Iterable[pa.RecordBatch]:
        self.close()
        return ()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if not self._sink.closed:
            self._sink.close()
