"""Run under ``mpiexec -n P``: distributed top-k against brute force over all vectors.

Every rank builds its shard (the vectors whose id % P is its rank) of one deterministic data
set, with some duplicated vectors so that ties occur; rank 0 checks every query's distributed
top-k (ids exactly, scores closely) for inner product and L2, and writes a JSON report.
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
from aaflow_stream.shard.round import search_round
from aaflow_stream.shard.store import ShardStore

DIM, N = 32, 3000


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((N, DIM)).astype(np.float32)
    vectors[100:120] = vectors[0]  # exact ties
    ids = rng.choice(2**62, size=N, replace=False).astype(np.int64)
    return vectors, ids


def batch(vectors: np.ndarray, ids: np.ndarray) -> pa.RecordBatch:
    n = len(ids)
    text = [f"text of {i}" for i in ids.tolist()]
    return pa.record_batch(
        [
            pa.array([f"d{i}" for i in ids.tolist()]),
            pa.array(np.zeros(n, np.int32)),
            pa.array(ids.astype(np.uint64)),
            pa.array(text, pa.large_string()),
            pa.array(["src"] * n),
            pa.array(np.zeros(n, np.int64)).cast(pa.timestamp("ms")),
            pa.array(np.zeros(n, np.uint64)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        ],
        schema=stored(DIM),
    )


def brute(vectors: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int, metric: str) -> list[int]:
    if metric == "ip":
        scores = vectors @ q
    else:
        scores = ((vectors - q) ** 2).sum(axis=1)
    best = np.lexsort((ids, -scores if metric == "ip" else scores))[:k]  # an independent order
    return ids[best].tolist()


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    vectors, ids = data()
    mine = ids % size == rank
    rng = np.random.default_rng(11)
    queries = rng.standard_normal((24, DIM)).astype(np.float32)
    queries[:4] = vectors[[0, 5, 100, 2999]]  # exact hits and the tied block
    checked = mismatches = 0
    with tempfile.TemporaryDirectory() as tmp:
        for metric in ("ip", "l2"):
            store = ShardStore(Path(tmp) / metric, dim=DIM, index="Flat", metric=metric)
            store.upsert(batch(vectors[mine], ids[mine]))
            for k in (1, 5, 10, 50):
                hits = search_round(comm, store, queries if rank == 0 else None, k)
                if rank != 0:
                    continue
                assert hits is not None
                for q, table in enumerate(hits):
                    want = brute(vectors, ids, queries[q], k, metric)
                    got = table.column("chunk_id").to_numpy().view(np.int64).tolist()
                    checked += 1
                    texts_ok = table.column("text").to_pylist() == [f"text of {i}" for i in got]
                    shards_ok = table.column("shard").to_pylist() == [i % size for i in got]
                    if got != want or not texts_ok or not shards_ok:
                        mismatches += 1
    if rank == 0:
        Path(sys.argv[1]).write_text(
            json.dumps({"ranks": size, "checked": checked, "mismatches": mismatches})
        )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
