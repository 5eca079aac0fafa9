"""Build the batches a shard receives: embedded chunk rows and tombstones."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from aaflow_stream.schemas import TOMBSTONE, embedded
from aaflow_stream.text.chunking import chunk_id


def chunk_rows(
    doc_id: str,
    vectors: np.ndarray,
    *,
    version: int = 1,
    source: str = "src",
    ts_ms: int = 0,
    first_seq: int = 0,
) -> pa.RecordBatch:
    """Chunks ``first_seq``.. of one document, ids as the transform makes them."""
    n, dim = vectors.shape
    seqs = list(range(first_seq, first_seq + n))
    columns = [
        pa.array([doc_id] * n),
        pa.array(seqs, pa.int32()),
        pa.array([chunk_id(doc_id, s) for s in seqs], pa.uint64()),
        pa.array([f"{doc_id} v{version} #{s}" for s in seqs], pa.large_string()),
        pa.array([source] * n),
        pa.array(np.full(n, ts_ms, np.int64)).cast(pa.timestamp("ms")),
        pa.array(np.full(n, version, np.uint64)),
        pa.array(np.zeros(n, np.int32)),  # src_replica
        pa.array(np.arange(n, dtype=np.int64)),  # src_offset
        pa.array(np.full(n, n, np.int32)),  # src_chunks
        pa.FixedSizeListArray.from_arrays(pa.array(vectors.astype(np.float32).ravel()), dim),
    ]
    return pa.record_batch(columns, schema=embedded(dim))


def tombstones(rows: Sequence[tuple[str, int]]) -> pa.RecordBatch:
    """(doc_id, keep_version) rows."""
    n = len(rows)
    return pa.record_batch(
        [
            pa.array([d for d, _ in rows], pa.string()),
            pa.array([v for _, v in rows], pa.uint64()),
            pa.array(np.zeros(n, np.int32)),
            pa.array(np.arange(n, dtype=np.int64)),
        ],
        schema=TOMBSTONE,
    )


def ids_of(doc_id: str, seqs: Sequence[int]) -> list[int]:
    return [chunk_id(doc_id, s) for s in seqs]  # 63-bit: the same as FAISS's int64 ids
