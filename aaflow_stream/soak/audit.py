"""The audit: what the shards store against what the ledger says was acknowledged.

Expected chunks come from the engine's own transform (``operators.transform.Chunker``, built
from the topology's transform stage) run on the regenerated text of each acknowledged version:
same chunk ids, sequence numbers, texts and ``doc_version`` as the engine computed.

Stored chunks come from one of two readers:

- ``read_data_dir``: after ``down``, each shard opened the way a restarting rank opens it
  (``shard.store.ShardStore``: snapshot plus write-ahead log replayed), its live metadata rows
  and the ids of its FAISS index. Exact: it also sees a vector without a row, a row without a
  vector, an id twice or on the wrong shard.
- ``read_via_queries`` (``--attach``: the topology keeps running): one query per document,
  filtered on the document's own source name, k larger than any version's chunk count.

``compare`` then counts, per soak document (its id starts with the ledger's prefix):
lost (an expected chunk not stored), duplicated (a chunk id stored more than once),
stale (a chunk of another version, or whose text differs), resurrected (a chunk of a deleted
document) and unknown (a chunk of a document the engine never acknowledged).
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..client import AsyncClient
from ..operators.base import OperatorContext
from ..operators.params import ChunkerParams
from ..operators.transform import Chunker
from ..query.protocol import QueryFilter
from ..schemas import DOCUMENT
from ..spec import TopologySpec, TransformStage
from . import corpus
from .ledger import Entry, Pending

MAX_EXAMPLES = 20
QUERY_K = 64  # above any version's chunk count (corpus.MAX_WORDS words at 512 characters)


@dataclass(frozen=True)
class Chunk:
    chunk_id: int
    doc_id: str
    seq: int
    text: str
    version: int | None  # None when read through the query API (a hit carries no version)
    shard: int = -1


class ChunkModel:
    """The topology's transform, run in process: the chunks a text becomes."""

    def __init__(self, topology: TopologySpec) -> None:
        stage = next((s for s in topology.stages if isinstance(s, TransformStage)), None)
        stage = stage or TransformStage()
        params = ChunkerParams(
            chunk_size=stage.chunk_size,
            overlap=stage.overlap,
            prefer=stage.prefer,
            normalize=stage.normalize,
        )
        context = OperatorContext("soak", "transform", 0, 1, Path("."))
        self._chunker = Chunker(context, params)

    def chunks(self, docs: list[tuple[str, str]]) -> dict[str, list[Chunk]]:
        """(doc_id, text) -> each document's chunks, in sequence order."""
        out: dict[str, list[Chunk]] = {doc_id: [] for doc_id, _ in docs}
        if not docs:
            return out
        n = len(docs)
        batch = pa.record_batch(
            [
                pa.array([d for d, _ in docs], pa.string()),
                pa.array([t for _, t in docs], pa.large_string()),
                pa.array(["soak"] * n, pa.string()),
                pa.array([0] * n, pa.timestamp("ms")),
                pa.array(np.zeros(n, np.int32)),
                pa.array(np.arange(n, dtype=np.int64)),
            ],
            schema=DOCUMENT,
        )
        for result in self._chunker.process(batch):
            columns = result.select(["doc_id", "seq", "chunk_id", "text", "doc_version"])
            for doc_id, seq, cid, text, version in zip(
                *(c.to_pylist() for c in columns.columns), strict=True
            ):
                out[doc_id].append(Chunk(cid, doc_id, seq, text, version))
        return out

    def of(self, seed: int, doc_id: str, number: int, version: int) -> list[Chunk]:
        return self.chunks([(doc_id, corpus.text(seed, number, version))])[doc_id]


@dataclass
class Stored:
    """The soak's chunks as stored, and what is wrong with the shards' structure."""

    chunks: list[Chunk]
    vectors_without_rows: int = 0
    rows_without_vectors: int = 0
    duplicate_vector_ids: int = 0
    wrong_shard: int = 0
    shards: int = 0
    total_vectors: int = 0


def _shard_dirs(data_dir: Path) -> list[Path]:
    found = [p for p in data_dir.glob("shard-*") if p.name.partition("-")[2].isdigit()]
    return sorted(found, key=lambda p: int(p.name.partition("-")[2]))


def read_data_dir(data_dir: Path, prefix: str) -> Stored:
    """Every shard of a stopped topology, opened as a restarting rank opens it."""
    import faiss

    from ..shard.store import MANIFEST_FILE, ShardStore

    stored = Stored([])
    dirs = _shard_dirs(data_dir)
    stored.shards = len(dirs)
    for rank, shard_dir in enumerate(dirs):
        shape = json.loads((shard_dir / MANIFEST_FILE).read_text())
        store = ShardStore(
            shard_dir, dim=int(shape["dim"]), index=str(shape["index"]), metric=str(shape["metric"])
        )
        try:
            meta = store.metadata()
            ids = faiss.vector_to_array(store.index.id_map).astype(np.int64)
        finally:
            store.close()
        row_ids = meta.column("chunk_id").to_numpy().astype(np.int64)
        unique = np.unique(ids)
        stored.total_vectors += len(ids)
        stored.duplicate_vector_ids += len(ids) - len(unique)
        stored.vectors_without_rows += int(np.setdiff1d(unique, row_ids).size)
        stored.rows_without_vectors += int(np.setdiff1d(row_ids, unique).size)
        stored.wrong_shard += int(np.count_nonzero(row_ids % len(dirs) != rank))
        mine = pc.starts_with(meta.column("doc_id"), prefix + "-")
        table = meta.filter(mine).select(["chunk_id", "doc_id", "seq", "text", "doc_version"])
        for cid, doc_id, seq, text, version in zip(
            *(c.to_pylist() for c in table.columns), strict=True
        ):
            stored.chunks.append(Chunk(cid, doc_id, seq, text, version, rank))
    return stored


async def read_via_queries(
    endpoint: str,
    seed: int,
    prefix: str,
    entries: dict[str, Entry],
    pending: dict[str, Pending],
    model: ChunkModel,
    timeout_s: float = 30.0,
    concurrency: int = 16,
) -> Stored:
    """The chunks of every ledger document, one filtered query each (a serving topology)."""
    stored = Stored([])
    numbers = {d: e.number for d, e in entries.items()} | {d: p.number for d, p in pending.items()}
    gate = asyncio.Semaphore(concurrency)
    async with AsyncClient(endpoint, timeout_s=timeout_s) as client:

        async def one(doc_id: str, number: int) -> None:
            entry = entries.get(doc_id)
            probe = corpus.text(seed, number, entry.version if entry else 1)
            where = QueryFilter(sources=[corpus.source_of(prefix, number)])
            async with gate:
                hits = await client.query(probe[:2000], k=QUERY_K, where=where)
            stored.chunks += [
                Chunk(h.chunk_id, h.doc_id, h.seq, h.text, None, h.shard) for h in hits
            ]

        await asyncio.gather(*(one(d, n) for d, n in numbers.items()))
    return stored


@dataclass
class AuditResult:
    documents: int = 0  # acknowledged and current (not deleted)
    deleted: int = 0
    updated: int = 0  # current at a version above 1
    chunks_expected: int = 0
    chunks_stored: int = 0
    exact_documents: int = 0  # every chunk of the current version stored once, nothing else
    lost_documents: int = 0
    lost_chunks: int = 0
    duplicated: int = 0
    stale: int = 0
    resurrected: int = 0
    unknown: int = 0
    unresolved: int = 0
    structure: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (
            self.lost_chunks
            or self.duplicated
            or self.stale
            or self.resurrected
            or self.unknown
            or self.unresolved
            or any(self.structure.values())
        )

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "clean": self.clean}

    def line(self) -> str:
        return (
            f"documents acknowledged {self.documents} (deleted {self.deleted}, updated "
            f"{self.updated}), chunks {self.chunks_stored}/{self.chunks_expected}, exact "
            f"{self.exact_documents}; lost {self.lost_documents} documents "
            f"({self.lost_chunks} chunks), duplicated {self.duplicated}, stale {self.stale}, "
            f"resurrected {self.resurrected}, unknown {self.unknown}, "
            f"unresolved {self.unresolved}"
            + "".join(f", {k} {v}" for k, v in self.structure.items() if v)
        )


def expected_chunks(
    seed: int, entries: dict[str, Entry], model: ChunkModel, batch: int = 2048
) -> dict[str, list[Chunk]]:
    """doc_id -> the chunks of its acknowledged version, for every live document."""
    live = [
        (d, corpus.text(seed, e.number, e.version)) for d, e in entries.items() if not e.deleted
    ]
    out: dict[str, list[Chunk]] = {}
    for start in range(0, len(live), batch):
        out.update(model.chunks(live[start : start + batch]))
    return out


def compare(
    entries: dict[str, Entry],
    pending: Iterable[str],
    stored: Stored,
    expected: dict[str, list[Chunk]],
) -> AuditResult:
    """Count every difference between the ledger and the stored chunks."""
    result = AuditResult()
    unresolved = set(pending)
    result.unresolved = len(unresolved)
    result.structure = {
        "vectors_without_rows": stored.vectors_without_rows,
        "rows_without_vectors": stored.rows_without_vectors,
        "duplicate_vector_ids": stored.duplicate_vector_ids,
        "wrong_shard": stored.wrong_shard,
    }
    result.deleted = sum(e.deleted for e in entries.values())
    result.documents = len(entries) - result.deleted
    result.updated = sum(e.version > 1 and not e.deleted for e in entries.values())
    result.chunks_expected = sum(len(c) for d, c in expected.items() if d not in unresolved)
    result.chunks_stored = len(stored.chunks)

    def example(text: str) -> None:
        if len(result.examples) < MAX_EXAMPLES:
            result.examples.append(text)

    times = Counter(c.chunk_id for c in stored.chunks)
    by_doc: dict[str, list[Chunk]] = defaultdict(list)
    for chunk in stored.chunks:
        by_doc[chunk.doc_id].append(chunk)
    want = {c.chunk_id: c for chunks in expected.values() for c in chunks}
    for doc_id, chunks in by_doc.items():
        if doc_id in unresolved:
            continue  # either version may be stored: counted as unresolved
        entry = entries.get(doc_id)
        for chunk in chunks:
            if entry is None:
                result.unknown += 1
                example(f"unknown: {doc_id}#{chunk.seq} stored, never acknowledged")
            elif entry.deleted:
                result.resurrected += 1
                example(f"resurrected: {doc_id}#{chunk.seq} stored after its acknowledged delete")
            elif not _matches(chunk, want.get(chunk.chunk_id)):
                result.stale += 1
                example(
                    f"stale: {doc_id}#{chunk.seq} (version {chunk.version}) is not part of "
                    f"acknowledged version {entry.version}"
                )
    result.duplicated = sum(n - 1 for n in times.values() if n > 1)
    for cid, n in times.items():
        if n > 1:
            example(f"duplicated: chunk id {cid} stored {n} times")
    for doc_id, chunks in expected.items():
        if doc_id in unresolved:
            continue
        missing = [c for c in chunks if times.get(c.chunk_id, 0) == 0]
        if missing:
            result.lost_documents += 1
            result.lost_chunks += len(missing)
            example(
                f"lost: {doc_id} version {entries[doc_id].version} lacks "
                f"{len(missing)} of {len(chunks)} chunks (seq {[c.seq for c in missing][:5]})"
            )
        elif len(by_doc.get(doc_id, [])) == len(chunks) and all(
            times[c.chunk_id] == 1 and _matches(c, want.get(c.chunk_id))
            for c in by_doc.get(doc_id, [])
        ):
            result.exact_documents += 1
    return result


def _matches(stored: Chunk, expected: Chunk | None) -> bool:
    if expected is None:
        return False
    version_ok = stored.version is None or stored.version == expected.version
    return (
        version_ok
        and stored.doc_id == expected.doc_id
        and stored.seq == expected.seq
        and stored.text == expected.text
    )
