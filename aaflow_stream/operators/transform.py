"""The transform stage: normalise whitespace, cut chunks, give each a stable id.

Chunk ids follow W1 in docs/benchmarks.md (``blake2b(f"{doc_id}:{seq}")``, 63 bits) so that
the same chunk of the same document always lands on the same shard with the same id: the
basis of idempotent upserts. ``doc_version`` hashes the normalised text, so a changed
document is recognisable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import ClassVar

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..schemas import CHUNK, DELETE_ALL
from ..text.chunking import chunk_boundaries, chunk_id, chunk_windows, normalize_whitespace
from .base import OperatorContext
from .params import ChunkerParams

_MASK63 = (1 << 63) - 1


def doc_version(text: str) -> int:
    try:
        data = text.encode()
    except UnicodeEncodeError:  # lone surrogates (from JSON escapes) still hash stably
        data = text.encode("utf-8", "surrogatepass")
    # Never 0: a tombstone keeping version 0 (schemas.DELETE_ALL) removes every chunk.
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") & _MASK63 or 1


class Chunker:
    Params: ClassVar[type[ChunkerParams]] = ChunkerParams

    def __init__(self, context: OperatorContext, params: ChunkerParams) -> None:
        chunk_size, overlap, prefer = params.chunk_size, params.overlap, params.prefer
        if prefer != "none":
            chunk_boundaries("", chunk_size, overlap, prefer)  # validates size and overlap
        else:
            chunk_windows("", chunk_size, overlap)
        self._size = chunk_size
        self._overlap = overlap
        self._prefer = prefer
        self._normalize = params.normalize

    def _chunks(self, text: str) -> list[str]:
        if self._prefer == "none":
            cut = normalize_whitespace(text) if self._normalize else text
            return chunk_windows(cut, self._size, self._overlap)
        # Boundary detection needs the paragraph breaks: normalising would erase them.
        cut = text.strip() if self._normalize else text
        return chunk_boundaries(cut, self._size, self._overlap, self._prefer)

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        doc_ids = batch.column("doc_id").to_pylist()
        texts = batch.column("text").to_pylist()
        counts = np.empty(len(texts), dtype=np.int64)
        ids: list[int] = []
        versions: list[int] = []
        chunk_texts: list[str] = []
        for row, (doc_id, text) in enumerate(zip(doc_ids, texts, strict=True)):
            if text is None:  # a delete (operators/feed.py): the upsert makes it a tombstone
                counts[row] = 1
                chunk_texts.append("")
                ids.append(chunk_id(doc_id, 0))
                versions.append(DELETE_ALL)
                continue
            chunks = self._chunks(text)
            n = counts[row] = len(chunks)
            chunk_texts += chunks
            ids += [chunk_id(doc_id, seq) for seq in range(n)]
            versions += [doc_version(text)] * n
        if not chunk_texts:
            return ()
        rows = np.repeat(np.arange(len(texts), dtype=np.int32), counts)
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        seqs = np.arange(len(rows), dtype=np.int64) - starts
        take = pa.array(rows)
        out = pa.record_batch(
            [
                batch.column("doc_id").take(take),
                pa.array(seqs.astype(np.int32)),
                pa.array(np.array(ids, dtype=np.uint64)),
                pa.array(chunk_texts, pa.large_string()),
                batch.column("source").take(take),
                batch.column("ts").take(take),
                pa.array(np.array(versions, dtype=np.uint64)),
                *self._delivery(batch, take, counts),
            ],
            schema=CHUNK,
        )
        return (out,)

    @staticmethod
    def _delivery(
        batch: pa.RecordBatch, take: pa.Array, counts: npt.NDArray[np.int64]
    ) -> list[pa.Array]:
        """The source's delivery columns per chunk, plus each document's chunk count."""
        chunks = pa.array(np.repeat(counts, counts).astype(np.int32))
        if "src_offset" not in batch.schema.names:  # a source without acknowledgements
            n = len(take)
            return [pa.nulls(n, pa.int32()), pa.nulls(n, pa.int64()), chunks]
        return [
            batch.column("src_replica").take(take),
            batch.column("src_offset").take(take),
            chunks,
        ]

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()
