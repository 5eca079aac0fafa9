"""Run under ``mpiexec -n P``: dual-path rounds (knowledge + memory) against brute force.

Every rank holds its part of one deterministic knowledge set (id % P) with document times
spread over ten days; rank 0 sends every memory entry to its owner in one exchange
(``remember_round``), then runs dual-path search rounds under several weightings and checks
each query's merged top-k (paths and ids exactly, scores closely) against a brute-force
scoring of every chunk and every memory entry of the query's session plus the shared ones.
Writes a JSON report (rank 0).
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
from aaflow_stream.shard.memory import MemoryStore, memory_id, owner, rows_to_table
from aaflow_stream.shard.memory_sessions import Entry
from aaflow_stream.shard.round import remember_round, search_round
from aaflow_stream.shard.store import ShardStore
from aaflow_stream.shard.wakeup import DualQuery
from aaflow_stream.spec import MemorySpec, MemoryWeights

DIM, N, M = 32, 2000, 300
NOW = 2_000_000_000.0
DAY = 86_400.0
SESSIONS = ["s0", "s1", "s2", "s3", "s4", "s5", ""]  # "": shared entries / no session
WEIGHTINGS = [
    MemoryWeights(sim=1.0, kind={}, recency=0.0),
    MemoryWeights(sim=1.0, kind={"knowledge": 0.0, "summary": 0.2, "state": -0.1}, recency=0.3),
    MemoryWeights(sim=0.5, kind={"knowledge": 0.1}, recency=1.0, half_life_s=DAY / 2),
    # A recency weight, but every time thousands of half-lives old: no credit is left (it
    # underflows to 0.0), so the knowledge path takes FAISS's top-k as it is.
    MemoryWeights(sim=1.0, kind={"knowledge": 0.05, "state": 0.2}, recency=2.0, half_life_s=1e-3),
]


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def knowledge() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ids = rng.choice(2**62, size=N, replace=False).astype(np.int64)
    ts_ms = ((NOW - rng.uniform(0, 10 * DAY, N)) * 1000).astype(np.int64)
    return unit(rng, N), ids, ts_ms


def memory() -> list[tuple[Entry, np.ndarray]]:
    rng = np.random.default_rng(8)
    vectors = unit(rng, M)
    kinds = ["summary", "intermediate", "state"]
    out = []
    for i in range(M):
        session, text = SESSIONS[i % len(SESSIONS)], f"memory {i}"
        ts = NOW - float(rng.uniform(0, 5 * DAY))
        entry = Entry(memory_id(session, text), session, kinds[i % 3], text, "user", ts, 1.0, False)
        out.append((entry, vectors[i]))
    return out


def chunk_batch(vectors: np.ndarray, ids: np.ndarray, ts_ms: np.ndarray) -> pa.RecordBatch:
    n = len(ids)
    return pa.record_batch(
        [
            pa.array([f"d{i}" for i in ids.tolist()]),
            pa.array(np.zeros(n, np.int32)),
            pa.array(ids.astype(np.uint64)),
            pa.array([f"text of {i}" for i in ids.tolist()], pa.large_string()),
            pa.array(["src"] * n),
            pa.array(ts_ms).cast(pa.timestamp("ms")),
            pa.array(np.zeros(n, np.uint64)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        ],
        schema=stored(DIM),
    )


def sims(vectors: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    if metric == "ip":
        return (vectors @ q).astype(np.float64)
    return -((vectors - q) ** 2).sum(axis=1).astype(np.float64)


def brute(
    q: np.ndarray, session: str, k: int, w: MemoryWeights, metric: str, mode: str
) -> list[tuple[str, int, float]]:
    candidates: list[tuple[float, int, int, str]] = []
    vectors, ids, ts_ms = knowledge()
    if mode == "both":
        rec = 2.0 ** (-np.maximum(NOW - ts_ms / 1000.0, 0) / w.half_life_s)
        score = w.sim * sims(vectors, q, metric) + w.kind.get("knowledge", 0.0) + w.recency * rec
        candidates += [(float(s), 0, int(i), "knowledge") for s, i in zip(score, ids, strict=True)]
    for entry, vector in memory():
        if entry.session not in (session, ""):
            continue
        rec = 2.0 ** (-max(NOW - entry.ts, 0) / w.half_life_s)
        s = (
            w.sim * sims(vector[None, :], q, metric)[0]
            + w.kind.get(entry.kind, 0)
            + w.recency * rec
        )
        candidates.append((float(s), 1, entry.memory_id, "memory"))
    candidates.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(path, i, s) for s, _, i, path in candidates[:k]]


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    vectors, ids, ts_ms = knowledge()
    mine = ids % size == rank
    rng = np.random.default_rng(11)
    queries = unit(rng, 21)
    query_sessions = [SESSIONS[q % len(SESSIONS)] for q in range(len(queries))]
    checked = mismatches = 0
    owned_elsewhere = 0
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for metric in ("ip", "l2"):
            base = Path(tmp) / metric
            store = ShardStore(base / "k", dim=DIM, index="Flat", metric=metric)
            store.upsert(chunk_batch(vectors[mine], ids[mine], ts_ms[mine]))
            spec = MemorySpec(near_duplicate=0.9999 if metric == "ip" else -1e-9)
            mem = MemoryStore(base / "m", dim=DIM, metric=metric, spec=spec, record=True)
            # One exchange carries every entry to its owner.
            entries = memory()
            table = rows_to_table(entries, DIM)
            owners = [owner(e.session, e.memory_id, size) for e, _ in entries]
            owned_elsewhere = sum(1 for o in owners if o != 0)
            parts: list[bytes] | None = None
            sizes = [0] * size
            if rank == 0:
                parts = []
                for r in range(size):
                    sub = table.filter(pa.array([o == r for o in owners]))
                    sink = pa.BufferOutputStream()
                    if sub.num_rows:
                        with pa.ipc.new_stream(sink, sub.schema) as writer:
                            writer.write_table(sub)
                    parts.append(sink.getvalue().to_pybytes() if sub.num_rows else b"")
                sizes = [len(p) for p in parts]
            sizes = comm.bcast(sizes, root=0)
            counts = remember_round(comm, mem, sizes, parts)
            if rank == 0 and (counts is None or counts.added != M):
                problems.append(f"{metric}: exchange counts {counts}")
            held = comm.gather(mem.count, root=0)
            if rank == 0 and sum(held) != M:
                problems.append(f"{metric}: ranks hold {held} entries")
            for mode in ("both", "memory"):
                for w in WEIGHTINGS:
                    for k in (1, 7, 40):
                        dual = DualQuery(mode=mode, sessions=query_sessions, weights=w, now=NOW)  # type: ignore[arg-type]
                        hits = search_round(
                            comm, store, queries if rank == 0 else None, k, None, None, dual, mem
                        )
                        if rank != 0:
                            continue
                        assert hits is not None
                        for q, table_q in enumerate(hits):
                            want = brute(queries[q], query_sessions[q], k, w, metric, mode)
                            got = list(
                                zip(
                                    table_q.column("path").to_pylist(),
                                    table_q.column("id").to_pylist(),
                                    table_q.column("score").to_pylist(),
                                    strict=True,
                                )
                            )
                            checked += 1
                            same = [(p, i) for p, i, _ in got] == [(p, i) for p, i, _ in want]
                            close = all(
                                abs(a[2] - b[2]) < 1e-4 for a, b in zip(got, want, strict=False)
                            )
                            parts_ok = all(
                                abs(
                                    r["score"]
                                    - (w.sim * r["sim"] + r["kind_score"] + r["recency_score"])
                                )
                                < 1e-9
                                for r in table_q.to_pylist()
                            )
                            if not (same and close and parts_ok):
                                mismatches += 1
                                if len(problems) < 5:
                                    problems.append(
                                        f"{metric} {mode} k={k} q={q}: {got[:3]} vs {want[:3]}"
                                    )
            mem.close()
            store.close()
    if rank == 0:
        report = {
            "ranks": size,
            "checked": checked,
            "mismatches": mismatches,
            "owned_elsewhere": owned_elsewhere,
            "problems": problems,
        }
        Path(sys.argv[1]).write_text(json.dumps(report))
    return 1 if mismatches or problems else 0


if __name__ == "__main__":
    sys.exit(main())
