"""Dual-path ranking: knowledge chunks and memory entries on one weighted score, exactly.

``score = w.sim * similarity + w.kind[kind] + w.recency * 2 ** (-age_s / w.half_life_s)``
(``spec.MemoryWeights``). Similarity is the inner product (``ip``) or minus the squared L2
distance (``l2``), so larger is better under both metrics; a knowledge chunk's kind is
``knowledge`` and its time is its document's ``ts`` (no time: no recency credit).

Exactness. Each rank returns its own exact top-k under this score, and the root merges by the
same order, (score descending, path, id), so the result is the brute-force top-k over both
indexes of every rank. Memory is scored in full (a session's group is small and dense). For
knowledge, the FAISS index orders by similarity only, and the recency term can lift a less
similar chunk above a more similar one: ``knowledge_hits`` fetches the top ``m`` by
similarity and widens ``m`` until the k-th score fetched beats what any unfetched chunk could
reach (its similarity is at most the least fetched one, its recency credit at most
``w.recency``). With ``w.recency == 0`` the score is monotone in similarity and no widening
is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..spec import MEMORY_KINDS, MemoryWeights
from .filters import QueryFilter
from .memory_sessions import SHARED, Entry, Sessions
from .store import ShardStore

KNOWLEDGE: Final = "knowledge"
MEMORY: Final = "memory"
# FAISS candidates fetched beyond k before the first widening check.
FIRST_MARGIN: Final = 16

# One row per candidate of a dual-path round (either path), as ranks send them to the root.
DUAL_HIT = pa.schema(
    [
        ("query", pa.int32()),
        ("path", pa.string()),
        ("id", pa.int64()),  # the chunk id (its bits as int64) or the memory id
        ("doc_id", pa.string()),  # "" for memory
        ("seq", pa.int32()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("shard", pa.int32()),
        ("kind", pa.string()),
        ("session", pa.string()),  # "" for knowledge and shared memory
        ("ts", pa.float64()),  # seconds; NaN when a chunk has no time
        ("weight", pa.float64()),
        ("ephemeral", pa.bool_()),
        ("score", pa.float64()),
        ("sim", pa.float64()),
        ("kind_score", pa.float64()),
        ("recency_score", pa.float64()),
    ]
)

F64 = npt.NDArray[np.float64]


def similarity(raw: npt.NDArray[np.float32], metric: str) -> F64:
    """FAISS's score as a similarity (larger is better)."""
    values = raw.astype(np.float64)
    return values if metric == "ip" else -values


def recency(ts: F64, now: float, half_life_s: float) -> F64:
    """2 ** (-age / half_life), age never negative; 0 where there is no time (NaN)."""
    age = np.maximum(now - ts, 0.0)
    out = np.exp2(-age / half_life_s)
    return np.where(np.isnan(ts), 0.0, out)


def knowledge_hits(
    store: ShardStore,
    queries: npt.NDArray[np.float32],
    k: int,
    allowed: QueryFilter | None,
    weights: MemoryWeights,
    now: float,
    rank: int,
) -> pa.Table:
    """This shard's exact top-k chunks per query under the weighted score."""
    nq, total = len(queries), store.count
    if total == 0 or nq == 0:
        return DUAL_HIT.empty_table()
    kind_w = weights.of_kind(KNOWLEDGE)
    fetch = k if weights.recency == 0 else min(total, k + FIRST_MARGIN)
    newest = store.newest_ts_ms
    best_recency = (
        0.0
        if newest is None
        else weights.recency
        * float(recency(np.array([newest / 1000.0]), now, weights.half_life_s)[0])
    )
    while True:
        raw, ids, rows = store.search_rows(queries, fetch, allowed)
        found = ids >= 0
        sim = similarity(raw[found], store.metric)
        ts_ms = rows.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False)
        ts = np.where(rows.column("ts").is_null().to_numpy(zero_copy_only=False), np.nan, ts_ms)
        rec = recency(ts.astype(np.float64) / 1000.0, now, weights.half_life_s)
        score = weights.sim * sim + kind_w + weights.recency * rec
        query_of = np.nonzero(found)[0]
        if (
            fetch >= total
            or weights.recency == 0
            or _settled(score, sim, query_of, nq, k, fetch, weights.sim, kind_w + best_recency)
        ):
            break
        fetch = min(total, fetch * 4)
    keep = _best_per_query(score, query_of, rows.column("chunk_id").to_numpy().view(np.int64), k)
    n = len(keep)
    picked = rows.take(pa.array(keep))
    return pa.table(
        {
            "query": pa.array(query_of[keep].astype(np.int32)),
            "path": pa.repeat(pa.scalar(KNOWLEDGE), n),
            "id": pa.array(picked.column("chunk_id").to_numpy().view(np.int64)),
            "doc_id": picked.column("doc_id"),
            "seq": picked.column("seq"),
            "text": picked.column("text"),
            "source": picked.column("source"),
            "shard": pa.repeat(pa.scalar(rank, pa.int32()), n),
            "kind": pa.repeat(pa.scalar(KNOWLEDGE), n),
            "session": pa.repeat(pa.scalar(""), n),
            "ts": pa.array(ts[keep] / 1000.0),
            "weight": pa.repeat(pa.scalar(0.0), n),
            "ephemeral": pa.repeat(pa.scalar(False), n),
            "score": pa.array(score[keep]),
            "sim": pa.array(sim[keep]),
            "kind_score": pa.repeat(pa.scalar(float(kind_w)), n),
            "recency_score": pa.array(weights.recency * rec[keep]),
        },
        schema=DUAL_HIT,
    )


def _settled(
    score: F64,
    sim: F64,
    query_of: npt.NDArray[np.intp],
    nq: int,
    k: int,
    fetch: int,
    sim_weight: float,
    bonus_ceiling: float,
) -> bool:
    """Whether, for every query, no chunk beyond the ``fetch`` most similar can enter its
    top-k: the k-th score fetched is above the best an unfetched chunk could score (its
    similarity term, plus at most ``bonus_ceiling`` of kind and recency credit)."""
    for q in range(nq):
        mine = query_of == q
        if mine.sum() < fetch:
            continue  # fewer than asked: every allowed chunk was fetched
        ceiling = sim_weight * sim[mine].min() + bonus_ceiling
        kth = np.sort(score[mine])[::-1][k - 1]
        if not kth > ceiling:
            return False
    return True


def _best_per_query(
    score: F64, query_of: npt.NDArray[np.intp], ids: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.intp]:
    order = np.lexsort((ids, -score, query_of))
    out = []
    for q in np.unique(query_of):
        mine = order[query_of[order] == q]
        out.append(mine[:k])
    return np.concatenate(out) if out else np.empty(0, dtype=np.intp)


def memory_hits(
    sessions: Sessions,
    queries: npt.NDArray[np.float32],
    query_sessions: Sequence[str],
    k: int,
    weights: MemoryWeights,
    now: float,
    metric: str,
    rank: int,
) -> pa.Table:
    """This rank's exact top-k memory entries per query: its session's entries and the shared
    ones, every one scored."""
    shared = sessions.group(SHARED)
    kind_weight = np.array([weights.of_kind(kind) for kind in MEMORY_KINDS])
    picked: list[tuple[int, Entry, float, float, float, float]] = []
    by_session: dict[str, list[int]] = {}
    for q, session in enumerate(query_sessions):
        by_session.setdefault(session, []).append(q)
    for session, qs in by_session.items():
        groups = [g for g in (sessions.group(session) if session else None, shared) if g]
        if not groups:
            continue
        columns = [g.columns() for g in groups]
        entries = groups[0].entries if len(groups) == 1 else [e for g in groups for e in g.entries]
        vectors = (
            groups[0].vectors if len(groups) == 1 else np.concatenate([g.vectors for g in groups])
        )
        ids = np.concatenate([c.ids for c in columns])
        kind = kind_weight[np.concatenate([c.kinds for c in columns])]
        ts = np.concatenate([c.ts for c in columns])
        bonus = kind + weights.recency * recency(ts, now, weights.half_life_s)
        sims = similarity_matrix(vectors, queries[qs], metric)  # (entries, len(qs))
        for column, q in enumerate(qs):
            score = weights.sim * sims[:, column] + bonus
            for i in _top(score, ids, k):
                rec = bonus[i] - kind[i]
                picked.append((q, entries[i], score[i], sims[i, column], kind[i], rec))
    if not picked:
        return DUAL_HIT.empty_table()
    n = len(picked)
    hits = [p[1] for p in picked]
    return pa.table(
        {
            "query": pa.array([p[0] for p in picked], pa.int32()),
            "path": pa.repeat(pa.scalar(MEMORY), n),
            "id": pa.array([e.memory_id for e in hits], pa.int64()),
            "doc_id": pa.repeat(pa.scalar(""), n),
            "seq": pa.repeat(pa.scalar(0, pa.int32()), n),
            "text": pa.array([e.text for e in hits], pa.large_string()),
            "source": pa.array([e.source for e in hits], pa.string()),
            "shard": pa.repeat(pa.scalar(rank, pa.int32()), n),
            "kind": pa.array([e.kind for e in hits], pa.string()),
            "session": pa.array([e.session for e in hits], pa.string()),
            "ts": pa.array([e.ts for e in hits], pa.float64()),
            "weight": pa.array([e.weight for e in hits], pa.float64()),
            "ephemeral": pa.array([e.ephemeral for e in hits], pa.bool_()),
            "score": pa.array([float(p[2]) for p in picked], pa.float64()),
            "sim": pa.array([float(p[3]) for p in picked], pa.float64()),
            "kind_score": pa.array([float(p[4]) for p in picked], pa.float64()),
            "recency_score": pa.array([float(p[5]) for p in picked], pa.float64()),
        },
        schema=DUAL_HIT,
    )


def _top(score: F64, ids: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.intp]:
    """The best ``k`` positions by (score descending, id), ties at the cut included exactly."""
    if len(score) > k:
        kth = np.partition(score, len(score) - k)[len(score) - k]
        candidates = np.flatnonzero(score >= kth)
    else:
        candidates = np.arange(len(score))
    order = np.lexsort((ids[candidates], -score[candidates]))
    return candidates[order[:k]]


def similarity_matrix(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], metric: str) -> F64:
    """(len(a), len(b)) similarities: inner products, or minus squared L2 distances."""
    dots = (a @ b.T).astype(np.float64)
    if metric == "ip":
        return dots
    norms_a = np.einsum("ij,ij->i", a, a).astype(np.float64)
    norms_b = np.einsum("ij,ij->i", b, b).astype(np.float64)
    return -np.maximum(norms_a[:, None] - 2 * dots + norms_b[None, :], 0.0)


def merge_dual(tables: list[pa.Table], nq: int, k: int) -> list[pa.Table]:
    """The top-k of each query over every rank's candidates, by (score, path, id)."""
    merged = pa.concat_tables(tables)
    queries = merged.column("query").to_numpy()
    scores = merged.column("score").to_numpy()
    ids = merged.column("id").to_numpy()
    memory = pc.equal(merged.column("path"), MEMORY).to_numpy(zero_copy_only=False)
    order = np.lexsort((ids, memory, -scores))
    out = []
    for q in range(nq):
        mine = order[queries[order] == q][:k]
        out.append(merged.take(pa.array(mine)))
    return out
