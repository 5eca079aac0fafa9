"""One distributed search round, run by the MPI thread of every shard rank.

The root broadcasts the query matrix (``Ibcast``); every rank takes its shard's exact top-k
(``ShardStore.search``) with the rows' metadata and sends it back as one Arrow IPC stream
(``Igatherv`` of bytes: no pickle); the root merges the lists by (score, chunk id) and cuts at
k. A gather and merge, rather than a user-defined ``Reduce`` op, because the hits must carry
their text and source, which have no fixed size. Every call waits with test-and-sleep
(``mpi.thread.wait``), so a rank waiting for the others does not spin a core.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..mpi.thread import wait
from . import hybrid, scoring, topk
from .filters import QueryFilter
from .memory import MemoryCounts, MemoryStore
from .store import ShardStore
from .wakeup import DualQuery, HybridQuery

ROOT = 0
# A round is short; poll faster than an idle wait would.
ROUND_POLL_S = 0.00005

HIT_FIELDS = [
    ("query", pa.int32()),
    ("score", pa.float32()),
    ("shard", pa.int32()),
]


def _local_hits(
    store: ShardStore,
    queries: npt.NDArray[np.float32],
    k: int,
    rank: int,
    allowed: QueryFilter | None,
) -> pa.Table:
    # One lock hold: a delete between the search and the row lookup cannot orphan an id.
    scores, ids, rows = store.search_rows(queries, k, allowed)
    found = ids >= 0
    query_index = np.nonzero(found)[0].astype(np.int32)
    return (
        rows.append_column("query", pa.array(query_index))
        .append_column("score", pa.array(scores[found].astype(np.float32)))
        .append_column("shard", pa.array(np.full(len(query_index), rank, dtype=np.int32)))
    )


def _dual_hits(
    store: ShardStore,
    memory: MemoryStore | None,
    queries: npt.NDArray[np.float32],
    k: int,
    rank: int,
    allowed: QueryFilter | None,
    dual: DualQuery,
) -> pa.Table:
    """This rank's exact candidates of a dual-path round: knowledge (the filter applies to it)
    and memory, scored alike (``shard.scoring``)."""
    parts = []
    if dual.mode == "both":
        parts.append(
            scoring.knowledge_hits(store, queries, k, allowed, dual.weights, dual.now, rank)
        )
    if memory is not None:
        parts.append(memory.search(queries, dual.sessions, k, dual.weights, dual.now, rank))
    # Empty parts add nothing but record batches to the stream the root reads.
    parts = [p for p in parts if p.num_rows]
    return pa.concat_tables(parts) if len(parts) > 1 else (parts or [scoring.NO_HITS])[0]


def _to_bytes(table: pa.Table) -> npt.NDArray[np.uint8]:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return np.frombuffer(sink.getvalue(), dtype=np.uint8)


def _merge(tables: list[pa.Table], nq: int, k: int, metric: str) -> list[pa.Table]:
    merged = pa.concat_tables(tables)
    queries = merged.column("query").to_numpy()
    scores = merged.column("score").to_numpy()
    ids = merged.column("chunk_id").to_numpy().view(np.int64)
    out = []
    for q in range(nq):
        mine = np.flatnonzero(queries == q)
        best = mine[topk.order(scores[mine], ids[mine], metric)[:k]]  # type: ignore[arg-type]
        out.append(merged.take(pa.array(best)))
    return out


def _broadcast_queries(
    comm: Any, queries: npt.NDArray[np.float32] | None, nq: int, dim: int
) -> npt.NDArray[np.float32]:
    """The root's (nq, dim) query matrix, on every rank (``Ibcast``)."""
    if comm.Get_rank() == ROOT and queries is not None:
        matrix = np.ascontiguousarray(queries, dtype=np.float32)
    else:
        matrix = np.empty((nq, dim), dtype=np.float32)
    wait(comm.Ibcast(matrix, root=ROOT), ROUND_POLL_S)
    return matrix


def _gather_tables(comm: Any, table: pa.Table) -> list[pa.Table] | None:
    """Every rank's ``table`` to the root, as Arrow streams (``Igather`` of sizes, then
    ``Igatherv`` of the bytes): the root gets them in rank order, the others None."""
    from mpi4py import MPI

    rank, size = comm.Get_rank(), comm.Get_size()
    payload = _to_bytes(table)
    sizes = np.zeros(size, dtype=np.int64)
    wait(comm.Igather(np.array([payload.size], dtype=np.int64), sizes, root=ROOT), ROUND_POLL_S)
    if rank != ROOT:
        wait(comm.Igatherv(payload, None, root=ROOT), ROUND_POLL_S)
        return None
    displacements = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    received = np.empty(int(sizes.sum()), dtype=np.uint8)
    wait(
        comm.Igatherv(payload, [received, sizes, displacements, MPI.BYTE], root=ROOT), ROUND_POLL_S
    )
    return [
        pa.ipc.open_stream(pa.py_buffer(received[start : start + length])).read_all()
        for start, length in zip(displacements.tolist(), sizes.tolist(), strict=True)
    ]


def hybrid_round(
    comm: Any,
    store: ShardStore,
    queries: npt.NDArray[np.float32] | None,
    texts: list[str] | None,
    k: int,
    shape: tuple[int, int],
    allowed: QueryFilter | None,
    plan: HybridQuery,
) -> list[pa.Table] | None:
    """Every rank calls this (``shard.hybrid``); the root passes the queries' vectors and
    texts and gets each query's fused top-k. Collectives: ``Ibcast`` of the vectors and of
    the texts, an ``Iallreduce`` summing the ranks' keyword statistics (integers, in flight
    while the rank searches its vectors), and the gather of every rank's candidates."""
    from mpi4py import MPI

    rank = comm.Get_rank()
    nq, dim = shape
    matrix = _broadcast_queries(comm, queries, nq, dim)
    raw = np.empty(plan.text_bytes, dtype=np.uint8)
    if rank == ROOT:
        assert texts is not None
        raw[:] = np.frombuffer(hybrid.encode_texts(texts), dtype=np.uint8)
    wait(comm.Ibcast(raw, root=ROOT), ROUND_POLL_S)
    round_texts = hybrid.decode_texts(raw.tobytes())
    terms = hybrid.round_terms(round_texts)
    counts = hybrid.local_counts(store, terms)
    summing = comm.Iallreduce(MPI.IN_PLACE, counts, op=MPI.SUM)
    vector = hybrid.vector_candidates(store, matrix, plan.depth, allowed, rank)
    wait(summing, ROUND_POLL_S)
    stats = hybrid.summed_stats(terms, counts)
    keyword = hybrid.keyword_candidates(store, round_texts, plan.depth, stats, allowed, rank)
    tables = _gather_tables(comm, pa.concat_tables([vector, keyword]))
    if tables is None:
        return None
    return hybrid.fuse(tables, nq, k, plan.depth, plan.rrf_k, store.metric)


def count_round(
    comm: Any, store: ShardStore, memory: MemoryStore | None = None
) -> npt.NDArray[np.int64] | None:
    """Every rank calls this; the root gets, per rank, (vectors, memory entries)."""
    counts = np.zeros((comm.Get_size(), 2), dtype=np.int64)
    mine = np.array([store.count, 0 if memory is None else memory.count], dtype=np.int64)
    wait(comm.Igather(mine, counts, root=ROOT), ROUND_POLL_S)
    return counts if comm.Get_rank() == ROOT else None


def remember_round(
    comm: Any, memory: MemoryStore, sizes: list[int], parts: list[bytes] | None = None
) -> MemoryCounts | None:
    """A memory exchange: the root scatters to each rank the Arrow stream of the entries it
    owns (``sizes[r]`` bytes; ``parts`` on the root), every rank merges and logs them
    durably, and the root gets the summed counts once every rank is done."""
    from mpi4py import MPI

    rank = comm.Get_rank()
    received = np.empty(sizes[rank], dtype=np.uint8)
    if rank == ROOT:
        assert parts is not None
        sent = np.frombuffer(b"".join(parts), dtype=np.uint8)
        displacements = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        counts_arg = np.array(sizes, dtype=np.int64)
        wait(
            comm.Iscatterv([sent, counts_arg, displacements, MPI.BYTE], received, root=ROOT),
            ROUND_POLL_S,
        )
    else:
        wait(comm.Iscatterv(None, received, root=ROOT), ROUND_POLL_S)
    done = MemoryCounts()
    if received.size:
        table = pa.ipc.open_stream(pa.py_buffer(received)).read_all()
        done = memory.remember(table)
    mine = np.array([done.added, done.merged, done.evicted], dtype=np.int64)
    totals = np.zeros((comm.Get_size(), 3), dtype=np.int64)
    wait(comm.Igather(mine, totals, root=ROOT), ROUND_POLL_S)
    if rank != ROOT:
        return None
    added, merged, evicted = (int(v) for v in totals.sum(axis=0))
    return MemoryCounts(added=added, merged=merged, evicted=evicted)


def forget_round(comm: Any, memory: MemoryStore, sessions: list[str]) -> int | None:
    """Every rank removes the sessions' entries durably; the root gets how many in all."""
    removed = np.array([memory.forget(sessions)], dtype=np.int64)
    counts = np.zeros(comm.Get_size(), dtype=np.int64)
    wait(comm.Igather(removed, counts, root=ROOT), ROUND_POLL_S)
    return int(counts.sum()) if comm.Get_rank() == ROOT else None


def delete_round(comm: Any, store: ShardStore, doc_ids: list[str]) -> int | None:
    """Every rank removes the documents' chunks, durably (logged and synced), then the root
    gets the number of chunks removed over all shards: once it returns, every shard is done."""
    removed = store.chunks_of(doc_ids)
    store.delete_docs(doc_ids)
    store.make_durable("delete")
    counts = np.zeros(comm.Get_size(), dtype=np.int64)
    wait(comm.Igather(np.array([removed], dtype=np.int64), counts, root=ROOT), ROUND_POLL_S)
    return int(counts.sum()) if comm.Get_rank() == ROOT else None


def search_round(
    comm: Any,
    store: ShardStore,
    queries: npt.NDArray[np.float32] | None,
    k: int,
    shape: tuple[int, int] | None = None,
    allowed: QueryFilter | None = None,
    dual: DualQuery | None = None,
    memory: MemoryStore | None = None,
) -> list[pa.Table] | None:
    """Every rank calls this; the root passes the queries and gets one hit table per query.
    With ``dual`` (every rank gets the same), a dual-path round: hits of both paths in the
    ``scoring.DUAL_HIT`` layout, merged under the weighted score.

    The other ranks pass ``k`` and the matrix ``shape`` (queries, dim) they were told with
    their wake-up, or ``shape=None`` to have the root broadcast them (one more collective).
    """
    rank = comm.Get_rank()
    if shape is None or rank == ROOT:
        header = np.zeros(3, dtype=np.int64)
        if rank == ROOT:
            assert queries is not None
            header[:] = (len(queries), k, queries.shape[1])
        if shape is None:
            wait(comm.Ibcast(header, root=ROOT), ROUND_POLL_S)
        nq, k, dim = (int(v) for v in header)
    else:
        nq, dim = shape
    matrix = _broadcast_queries(comm, queries, nq, dim)
    local = (
        _local_hits(store, matrix, k, rank, allowed)
        if dual is None
        else _dual_hits(store, memory, matrix, k, rank, allowed, dual)
    )
    tables = _gather_tables(comm, local)
    if tables is None:
        return None
    if dual is not None:
        return scoring.merge_dual(tables, nq, k)
    return _merge(tables, nq, k, store.metric)
