"""Run under ``mpiexec -n P``: hybrid rounds against a single-process reference.

Every rank holds its part (id % P) of one deterministic set of chunks, with keyword indexes;
rank 0 also holds every chunk in one store, and for each query computes the reference the
way one process over all chunks would: its top ``depth`` by vector, its top ``depth`` by BM25
(one index: its statistics are the corpus's), fused by reciprocal rank, written here from the
definition. The distributed round must give the same chunks in the same order, and the same
fused scores. Writes a JSON report (rank 0).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
from mpi4py import MPI

from aaflow_stream.schemas import stored
from aaflow_stream.shard.hybrid import encode_texts
from aaflow_stream.shard.keywords import query_terms
from aaflow_stream.shard.round import hybrid_round
from aaflow_stream.shard.store import ShardStore
from aaflow_stream.shard.wakeup import HybridQuery

DIM, N, RRF_K = 16, 1500, 60
VOCAB = [f"w{i}" for i in range(300)]
RARE = "XK-4471-QZ"


def chunks() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    ids = rng.choice(2**62, size=N, replace=False).astype(np.int64)
    weights = 1.0 / np.arange(1, len(VOCAB) + 1)
    weights /= weights.sum()
    texts = [
        " ".join(rng.choice(VOCAB, size=int(rng.integers(3, 40)), p=weights)) for _ in range(N)
    ]
    texts[777] += f" the code {RARE} appears once"
    return vectors, ids, texts


def batch(vectors: np.ndarray, ids: np.ndarray, texts: list[str]) -> pa.RecordBatch:
    n = len(ids)
    return pa.record_batch(
        [
            pa.array([f"d{i}" for i in ids.tolist()]),
            pa.array(np.zeros(n, np.int32)),
            pa.array(ids.astype(np.uint64)),
            pa.array(texts, pa.large_string()),
            pa.array(["src"] * n),
            pa.array(np.zeros(n, np.int64)).cast(pa.timestamp("ms")),
            pa.array(np.zeros(n, np.uint64)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        ],
        schema=stored(DIM),
    )


def reference(full: ShardStore, query: np.ndarray, text: str, k: int, depth: int) -> list[int]:
    _, vids, _ = full.search_rows(query[None, :], depth)
    vector = [int(i) for i in vids[0] if i >= 0]
    stats = full.keyword_stats(query_terms(text))
    kids, _ = full.keyword_search(text, depth, stats)
    fused: dict[int, float] = {}
    for ranked in (vector, [int(i) for i in kids]):
        for position, chunk in enumerate(ranked, start=1):
            fused[chunk] = fused.get(chunk, 0.0) + 1.0 / (RRF_K + position)
    return [c for c, _ in sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    vectors, ids, texts = chunks()
    mine = ids % size == rank
    rng = np.random.default_rng(9)
    picks = rng.integers(0, N, size=20)
    queries = (vectors[picks] + 0.5 * rng.standard_normal((20, DIM))).astype(np.float32)
    query_texts = [" ".join(texts[p].split()[:4]) for p in picks]
    query_texts[0] = RARE  # an identifier no embedding here knows
    checked = mismatches = 0
    rare_found = rare_by_vector = False
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ShardStore(
            Path(tmp) / "part",
            dim=DIM,
            index="Flat",
            metric="ip",
            keywords=True,
            keyword_commit_s=0.0,
        )
        store.upsert(
            batch(vectors[mine], ids[mine], [t for t, m in zip(texts, mine, strict=True) if m])
        )
        full = None
        if rank == 0:
            full = ShardStore(
                Path(tmp) / "full",
                dim=DIM,
                index="Flat",
                metric="ip",
                keywords=True,
                keyword_commit_s=0.0,
            )
            full.upsert(batch(vectors, ids, texts))
        for k, depth in ((5, 5), (10, 20)):
            plan = HybridQuery(text_bytes=len(encode_texts(query_texts)), depth=depth, rrf_k=RRF_K)
            tables = hybrid_round(
                comm,
                store,
                queries if rank == 0 else None,
                query_texts if rank == 0 else None,
                k,
                queries.shape,
                None,
                plan,
            )
            if rank != 0:
                continue
            assert tables is not None and full is not None
            for q, table in enumerate(tables):
                got = table.column("chunk_id").to_numpy().astype(np.int64).tolist()
                want = reference(full, queries[q], query_texts[q], k, depth)
                checked += 1
                if got != want:
                    mismatches += 1
                    if len(problems) < 5:
                        problems.append(f"k={k} q={q}: {got} vs {want}")
            found = tables[0].column("chunk_id").to_numpy().astype(np.int64).tolist()
            _, by_vector, _ = full.search_rows(queries[:1], k)
            rare_found = int(ids[777]) in found
            rare_by_vector = rare_by_vector or int(ids[777]) in by_vector[0].tolist()
        store.close()
        if full is not None:
            full.close()
    if rank == 0:
        report = {
            "ranks": size,
            "checked": checked,
            "mismatches": mismatches,
            "rare_found": rare_found,
            "rare_by_vector": rare_by_vector,
            "problems": problems,
        }
        Path(sys.argv[1]).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
