"""The transform stage: normalise whitespace, cut chunks, give each a stable id.

Chunk ids follow BENCH.md W1 (``blake2b(f"{doc_id}:{seq}")``, 63 bits) so that the same chunk
of the same document always lands on the same shard with the same id: the basis of idempotent
upserts. ``doc_version`` hashes the normalised text, so a changed document is recognisable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

import pyarrow as pa

from ..schemas import CHUNK
from ..text.chunking import chunk_boundaries, chunk_id, chunk_windows, normalize_whitespace
from .base import OperatorContext

_MASK63 = (1 << 63) - 1


def doc_version(text: str) -> int:
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & _MASK63


class Chunker:
    def __init__(
        self,
        context: OperatorContext,
        *,
        chunk_size: int = 512,
        overlap: int = 64,
        prefer: Literal["none", "paragraph", "sentence"] = "none",
    ) -> None:
        if prefer != "none":
            chunk_boundaries("", chunk_size, overlap, prefer)  # validates size and overlap
        else:
            chunk_windows("", chunk_size, overlap)
        self._size = chunk_size
        self._overlap = overlap
        self._prefer = prefer

    def _chunks(self, text: str) -> list[str]:
        if self._prefer == "none":
            return chunk_windows(normalize_whitespace(text), self._size, self._overlap)
        # Boundary detection needs the paragraph breaks, so only runs of spaces are collapsed.
        return chunk_boundaries(text.strip(), self._size, self._overlap, self._prefer)

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        doc_ids = batch.column("doc_id").to_pylist()
        texts = batch.column("text").to_pylist()
        take: list[int] = []
        seqs: list[int] = []
        ids: list[int] = []
        versions: list[int] = []
        chunk_texts: list[str] = []
        for row, (doc_id, text) in enumerate(zip(doc_ids, texts, strict=True)):
            chunks = self._chunks(text)
            version = doc_version(text)
            for seq, chunk in enumerate(chunks):
                take.append(row)
                seqs.append(seq)
                ids.append(chunk_id(doc_id, seq))
                versions.append(version)
                chunk_texts.append(chunk)
        if not take:
            return ()
        rows = pa.array(take, pa.int32())
        out = pa.record_batch(
            [
                batch.column("doc_id").take(rows),
                pa.array(seqs, pa.int32()),
                pa.array(ids, pa.uint64()),
                pa.array(chunk_texts, pa.large_string()),
                batch.column("source").take(rows),
                batch.column("ts").take(rows),
                pa.array(versions, pa.uint64()),
            ],
            schema=CHUNK,
        )
        return (out,)

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()
