"""W1 stage functions (docs/benchmarks.md), shared by every baseline and by bench/ingest.py.

Load (read and parse a JSONL file), transform (512/64 windows and their chunk ids), embed
(the hash embedder, dim 384, in batches), upsert (4 FAISS shards, `shard = chunk_id % 4`,
batches of 2,048 a shard) and the W1 check.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.text.chunking import chunk_id, chunk_windows

DIM = 384
N_SHARDS = 4
CHUNK_SIZE = 512
CHUNK_OVERLAP = 64
STAGES = ("load", "transform", "embed", "upsert")

Ids = npt.NDArray[np.int64]
Vecs = npt.NDArray[np.float32]


def load_file(path: str | Path) -> list[dict[str, Any]]:
    """Load: read and parse one JSONL file."""
    with open(path, "rb") as fh:
        return [json.loads(line) for line in fh]


def transform_docs(docs: Sequence[dict[str, Any]]) -> tuple[list[int], list[str]]:
    """Transform: W1 windows and their ids."""
    ids: list[int] = []
    texts: list[str] = []
    for doc in docs:
        chunks = chunk_windows(doc["text"], CHUNK_SIZE, CHUNK_OVERLAP)
        ids.extend(chunk_id(doc["doc_id"], seq) for seq in range(len(chunks)))
        texts.extend(chunks)
    return ids, texts


_EMBEDDER: HashEmbedder | None = None


def embedder() -> HashEmbedder:
    """This process's embedder (its token cache is per process, like a model would be)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = HashEmbedder(DIM)
    return _EMBEDDER


def embed_texts(texts: Sequence[str], batch: int) -> Vecs:
    """Embed: batches of `batch` texts into one matrix."""
    out = np.empty((len(texts), DIM), dtype=np.float32)
    emb = embedder()
    for i in range(0, len(texts), batch):
        out[i : i + batch] = emb.embed(texts[i : i + batch])
    return out


def embed_timed(texts: Sequence[str]) -> tuple[Vecs, float]:
    """One embed batch, with its busy seconds measured where it ran."""
    t0 = time.perf_counter()
    vecs = embedder().embed(texts)
    return vecs, time.perf_counter() - t0


@dataclass
class BaselineResult:
    name: str
    total_s: float = 0.0
    startup_s: float = 0.0
    chunks: int = 0
    verified: bool = False
    stages: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    peak_rss_mb: float = 0.0
    cpu_s: float = 0.0  # the whole command's CPU (see the module docstring); set by the parent
    skipped: str | None = None  # why the baseline did not run, if it did not

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.total_s if self.total_s > 0 else 0.0


@dataclass
class FileResult:
    """Load + transform + embed of one file, as a worker returns it."""

    ids: Ids
    vecs: Vecs
    load_s: float
    transform_s: float
    embed_s: float
    first_read: float  # time.time() when reading began


def process_file(path: str, embed_batch: int) -> FileResult:
    """The per-file worker body shared by mp_pool, dask and ray."""
    first_read = time.time()
    t0 = time.perf_counter()
    docs = load_file(path)
    t1 = time.perf_counter()
    ids, texts = transform_docs(docs)
    t2 = time.perf_counter()
    vecs = embed_texts(texts, embed_batch)
    t3 = time.perf_counter()
    return FileResult(np.array(ids, np.int64), vecs, t1 - t0, t2 - t1, t3 - t2, first_read)


def worker_ready() -> int:
    """Warm-up task: import everything and build the embedder before timing starts."""
    embedder()
    time.sleep(0.02)  # long enough that a pool of 2 hands one call to each worker
    return os.getpid()


class ShardWriter:
    """Upsert: 4 FAISS shards, `shard = id % 4`, vectors added in batches of `batch`.

    Each shard gathers its rows into a reusable buffer of `batch` rows (FAISS copies what
    it is given), so a vector is copied once on its way in.
    """

    def __init__(self, n_shards: int = N_SHARDS, dim: int = DIM, batch: int = 2048) -> None:
        import faiss  # heavy; only the upsert side needs it

        self.indexes = [faiss.IndexIDMap2(faiss.IndexFlatIP(dim)) for _ in range(n_shards)]
        self.batch = batch
        self.busy_s = 0.0
        self.last_applied = 0.0  # time.time() after the last add
        self._vecs = [np.empty((batch, dim), np.float32) for _ in range(n_shards)]
        self._ids = [np.empty(batch, np.int64) for _ in range(n_shards)]
        self._fill = [0] * n_shards

    def add(self, ids: Ids, vecs: Vecs) -> None:
        t0 = time.perf_counter()
        shard_of = ids % len(self.indexes)
        for s in range(len(self.indexes)):
            rows = np.flatnonzero(shard_of == s)
            while len(rows):
                fill = self._fill[s]
                take = rows[: self.batch - fill]
                rows = rows[len(take) :]
                np.take(vecs, take, axis=0, out=self._vecs[s][fill : fill + len(take)])
                np.take(ids, take, out=self._ids[s][fill : fill + len(take)])
                self._fill[s] = fill + len(take)
                if self._fill[s] == self.batch:
                    self._apply(s)
        self.busy_s += time.perf_counter() - t0

    def flush(self) -> None:
        t0 = time.perf_counter()
        for s in range(len(self.indexes)):
            self._apply(s)
        self.busy_s += time.perf_counter() - t0

    def _apply(self, s: int) -> None:
        n = self._fill[s]
        if n:
            self.indexes[s].add_with_ids(self._vecs[s][:n], self._ids[s][:n])
            self._fill[s] = 0
        self.last_applied = time.time()

    def verify(self, expected: set[int]) -> bool:
        """Exactly the expected ids, each once, each in its own shard."""
        return verify_shards(self.indexes, expected)


def verify_shards(indexes: Sequence[Any], expected: set[int]) -> bool:
    """The W1 check over in-memory FAISS IndexIDMap2 shards."""
    import faiss

    per_shard: list[Ids] = []
    for index in indexes:
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        if index.ntotal != len(ids):
            return False
        per_shard.append(ids)
    return verify_ids(per_shard, expected)


def verify_ids(per_shard: Sequence[Ids] | None, expected: set[int]) -> bool:
    """The W1 check: exactly the expected ids, none lost, none twice, and shard `s` of `n`
    holding only ids with `id % n == s`. None (shards that could not be read) fails."""
    return w1_check(per_shard, expected) is None


def w1_check(per_shard: Sequence[Ids] | None, expected: set[int]) -> str | None:
    """What is wrong with the stored ids (see `verify_ids`), or None if nothing is."""
    if per_shard is None:
        return "the shards could not be read back consistently"
    n = len(per_shard)
    misplaced = sum(int(np.count_nonzero(ids % n != s)) for s, ids in enumerate(per_shard))
    all_ids = np.concatenate(per_shard) if n else np.empty(0, np.int64)
    unique = set(all_ids.tolist())
    twice = len(all_ids) - len(unique)
    lost = len(expected - unique)
    extra = len(unique - expected)
    if misplaced or twice or lost or extra:
        return (
            f"{len(all_ids)} stored of {len(expected)} expected: {lost} lost, {extra} unexpected, "
            f"{twice} stored twice, {misplaced} in the wrong shard"
        )
    return None
