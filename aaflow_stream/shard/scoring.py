"""Dual-path ranking: knowledge chunks and memory entries on one weighted score, exactly.

``score = w.sim * similarity + w.kind[kind] + w.recency * 2 ** (-age_s / w.half_life_s)``
(``spec.MemoryWeights``). Similarity is the inner product (``ip``) or minus the squared L2
distance (``l2``), so larger is better under both metrics; a knowledge chunk's kind is
``knowledge`` and its time is its document's ``ts`` (no time: no recency credit).

Exactness. Each rank returns candidates that hold its own exact top-k under this score, and
the root merges them by the same order, (score descending, path, id), so the result is the
brute-force top-k over both indexes of every rank. Memory is scored in full (a session's
group is small and dense). For knowledge, the FAISS index orders by similarity only, and the
recency term can lift a less similar chunk above a more similar one: ``knowledge_hits``
fetches the top ``m`` by similarity and widens ``m`` until the k-th score fetched beats what
any unfetched chunk could reach (its similarity is at most the least fetched one, its recency
credit at most that of the shard's newest chunk). With ``w.recency == 0`` the score is
monotone in similarity and no widening is needed.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..schemas import empty_table
from ..spec import MEMORY_KINDS, MemoryWeights
from .filters import QueryFilter
from .memory_sessions import SHARED, Sessions
from .store import ShardStore

KNOWLEDGE: Final = "knowledge"
MEMORY: Final = "memory"
# FAISS candidates fetched beyond k before the first widening check.
FIRST_MARGIN: Final = 16
# A rank sends every chunk it fetched unless that is more than this many beyond the top-k.
SEND_EXTRA: Final = 256
# Up to this many memory entries, a lookup sorts them all rather than partitioning first.
SORT_ALL: Final = 512

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

# Every rank answers most rounds of a session it does not own with no memory hits: one shared,
# immutable empty table, because building one costs ~8 us per column (~150 us here).
NO_HITS: Final = empty_table(DUAL_HIT)

F64 = npt.NDArray[np.float64]


def _strings(value: str, n: int) -> pa.Array:
    """A column of one repeated string (a list, not ``pa.repeat`` of a scalar: 3x cheaper)."""
    return pa.array([value] * n, pa.string())


def _hit_table(columns: list[pa.Array | pa.ChunkedArray]) -> pa.Table:
    """``DUAL_HIT`` rows from its columns, in schema order (``from_arrays`` with the schema
    skips the per-column casts of ``pa.table(dict, schema=...)``)."""
    return pa.Table.from_arrays(columns, schema=DUAL_HIT)


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
    """Candidates from this shard that hold its exact top-k chunks per query under the
    weighted score: every chunk fetched, unless that is over ``SEND_EXTRA`` beyond the top-k
    (a widened fetch, a large batch), then the top-k alone.

    Sending a few fetched beyond the top-k costs the root a longer sort of a short list;
    cutting them here would cost every rank a sort and an Arrow ``take`` per round."""
    nq, total = len(queries), store.count
    if total == 0 or nq == 0:
        return NO_HITS
    kind_w = weights.of_kind(KNOWLEDGE)
    # The most recency credit a chunk here can get: the newest chunk's, computed as below.
    newest = store.newest_ts_ms
    age = None if newest is None else max(now - newest / 1000.0, 0.0)
    credit = 0.0 if age is None else weights.recency * float(np.exp2(-age / weights.half_life_s))
    # With none to get (recency weight 0, no times, or times so old that the newest one's
    # credit underflows to 0.0), the score is monotone in similarity: FAISS's top-k is it.
    monotone = credit == 0.0
    fetch = k if monotone else min(total, k + FIRST_MARGIN)
    while True:
        raw, ids, rows = store.search_rows(queries, fetch, allowed)
        found = ids >= 0  # (nq, fetch); rows are the found ones, row-major
        sim = similarity(raw, store.metric)  # NaN where not found
        seconds = _seconds(rows.column("ts"))
        if monotone:
            score, rec = weights.sim * sim + kind_w, None
            break
        if found.all():
            ts = seconds.reshape(found.shape)
        else:
            ts = np.full(found.shape, np.nan)
            ts[found] = seconds
        rec = weights.recency * recency(ts, now, weights.half_life_s)
        score = weights.sim * sim + kind_w + rec
        # A hair (1e-9 relative) above the credit: the sums above round differently.
        ceiling = kind_w + credit * (1 + 1e-9)
        if fetch >= total or _settled(score, sim, found, k, weights.sim, ceiling):
            break
        fetch = min(total, fetch * 4)
    query_of = np.nonzero(found)[0]
    score, sim = score[found], sim[found]
    recency_score = None if rec is None else rec[found]
    chunk_ids = rows.column("chunk_id").to_numpy().view(np.int64)
    if len(query_of) > nq * k + SEND_EXTRA:  # many beyond the top-k: cut, for a short gather
        keep = _best_per_query(score, query_of, chunk_ids, k)
        rows, seconds = rows.take(keep), seconds[keep]
        query_of, chunk_ids, score, sim = query_of[keep], chunk_ids[keep], score[keep], sim[keep]
        recency_score = None if recency_score is None else recency_score[keep]
    same = _knowledge_constants(len(query_of), rank, float(kind_w))
    return _hit_table(
        [
            pa.array(query_of.astype(np.int32)),
            same.path,
            pa.array(chunk_ids),
            rows.column("doc_id"),
            rows.column("seq"),
            rows.column("text"),
            rows.column("source"),
            same.shard,
            same.path,  # kind
            same.session,
            pa.array(seconds),
            same.zeros,  # weight
            same.ephemeral,
            pa.array(score),
            pa.array(sim),
            same.kind_score,
            same.zeros if recency_score is None else pa.array(recency_score),
        ]
    )


class _Constants(NamedTuple):
    path: pa.Array
    shard: pa.Array
    session: pa.Array
    zeros: pa.Array
    ephemeral: pa.Array
    kind_score: pa.Array


@functools.lru_cache(maxsize=64)
def _knowledge_constants(n: int, rank: int, kind_score: float) -> _Constants:
    """The columns every knowledge candidate of a rank shares, for ``n`` rows. Arrow arrays
    are immutable, so one set serves every round with as many candidates (most rounds have
    nq * k or nq * (k + FIRST_MARGIN)): six Arrow calls fewer per round on every rank."""
    zeros = pa.array(np.zeros(n))
    return _Constants(
        path=_strings(KNOWLEDGE, n),
        shard=pa.array(np.full(n, rank, dtype=np.int32)),
        session=_strings("", n),
        zeros=zeros,
        ephemeral=pa.array(np.zeros(n, dtype=np.bool_)),
        kind_score=zeros if kind_score == 0 else pa.array(np.full(n, kind_score)),
    )


def _seconds(ts: pa.ChunkedArray) -> F64:
    """A ``timestamp[ms]`` column as float seconds, NaN where null."""
    if ts.null_count == 0:  # the usual case: a view of the values, 4x cheaper than a cast
        return ts.to_numpy().view(np.int64) / 1000.0
    ms = ts.cast(pa.int64()).to_numpy(zero_copy_only=False)  # float64 with NaN for nulls
    return ms.astype(np.float64) / 1000.0


def _settled(
    score: F64, sim: F64, found: npt.NDArray[np.bool_], k: int, sim_weight: float, bonus: float
) -> bool:
    """Whether, for every query, no chunk beyond those fetched (a row of ``found``) can enter
    its top-k: the k-th score fetched is above the best an unfetched chunk could score (its
    similarity term, plus at most ``bonus`` of kind and recency credit). A query with fewer
    found than asked had every allowed chunk fetched."""
    full = found.all(axis=1)
    if not full.any():
        return True
    if not full.all():
        score, sim = score[full], sim[full]
    fetched = score.shape[1]
    kth = np.partition(score, fetched - k, axis=1)[:, fetched - k]  # the k-th largest
    return bool((kth > sim_weight * sim.min(axis=1) + bonus).all())


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
    by_session: dict[str, list[int]] = {}
    for q, session in enumerate(query_sessions):
        if shared is not None or (session and sessions.group(session) is not None):
            by_session.setdefault(session, []).append(q)
    if not by_session:  # nothing of these sessions here: the common case on most ranks
        return NO_HITS
    kind_weight = np.array([weights.of_kind(kind) for kind in MEMORY_KINDS])
    picked: list[pa.RecordBatch] = []
    query_of: list[int] = []
    parts = []  # per session, for its hits: (score, similarity, kind credit, recency credit)
    for session, qs in by_session.items():
        groups = [g for g in (sessions.group(session) if session else None, shared) if g]
        columns = [g.columns() for g in groups]
        if len(groups) == 1:
            (c,) = columns
            ids, ts, kinds, rows, vectors = c.ids, c.ts, c.kinds, c.rows, groups[0].vectors
        else:
            ids = np.concatenate([c.ids for c in columns])
            ts = np.concatenate([c.ts for c in columns])
            kinds = np.concatenate([c.kinds for c in columns])
            rows = pa.concat_batches([c.rows for c in columns])
            vectors = np.concatenate([g.vectors for g in groups])
        kind = kind_weight[kinds]
        # A memory entry always has a time: 2 ** (-max(now - ts, 0) / h) without NaN checks.
        rec = weights.recency * np.exp2(np.minimum(ts - now, 0.0) / weights.half_life_s)
        sims = similarity_matrix(vectors, queries[qs], metric)  # (entries, len(qs))
        scores = weights.sim * sims + (kind + rec)[:, None]
        tops = [_top(scores[:, column], ids, k) for column in range(len(qs))]
        for q, top in zip(qs, tops, strict=True):
            query_of += [q] * len(top)
        if len(qs) == 1:
            at, column_of = tops[0], np.zeros(len(tops[0]), dtype=np.intp)
        else:
            at = np.concatenate(tops)
            column_of = np.repeat(np.arange(len(qs)), [len(t) for t in tops])
        parts.append(np.stack([scores[at, column_of], sims[at, column_of], kind[at], rec[at]]))
        picked.append(rows.take(at))  # one take per session, not per query
    if not query_of:
        return NO_HITS
    hits = picked[0] if len(picked) == 1 else pa.concat_batches(picked)
    score, sim, kind_score, recency_score = parts[0] if len(parts) == 1 else np.hstack(parts)
    same = _memory_constants(len(query_of), rank)
    return _hit_table(
        [
            pa.array(query_of, pa.int32()),
            same.path,
            hits.column("memory_id"),
            same.session,  # doc_id
            same.seq,
            hits.column("text"),
            hits.column("source"),
            same.shard,
            hits.column("kind"),
            hits.column("session"),
            hits.column("ts"),
            hits.column("weight"),
            hits.column("ephemeral"),
            pa.array(score),
            pa.array(sim),
            pa.array(kind_score),
            pa.array(recency_score),
        ]
    )


class _MemoryConstants(NamedTuple):
    path: pa.Array
    session: pa.Array  # "": also the doc_id
    seq: pa.Array
    shard: pa.Array


@functools.lru_cache(maxsize=64)
def _memory_constants(n: int, rank: int) -> _MemoryConstants:
    """The columns every memory hit of a rank shares, for ``n`` rows (as
    ``_knowledge_constants``)."""
    return _MemoryConstants(
        path=_strings(MEMORY, n),
        session=_strings("", n),
        seq=pa.array(np.zeros(n, dtype=np.int32)),
        shard=pa.array(np.full(n, rank, dtype=np.int32)),
    )


def _top(score: F64, ids: npt.NDArray[np.int64], k: int) -> npt.NDArray[np.intp]:
    """The best ``k`` positions by (score descending, id), ties at the cut included exactly."""
    if len(score) <= SORT_ALL:  # one sort beats four calls that prune first
        return np.lexsort((ids, -score))[:k]
    kth = np.partition(score, len(score) - k)[len(score) - k]
    candidates = np.flatnonzero(score >= kth)
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
    merged = pa.concat_tables([t for t in tables if t.num_rows] or [NO_HITS])
    queries = merged.column("query").to_numpy()
    scores = merged.column("score").to_numpy()
    ids = merged.column("id").to_numpy()
    memory = pc.equal(merged.column("path"), MEMORY).to_numpy(zero_copy_only=False)
    if nq == 1:  # the usual round of one query: one sort, one take
        return [merged.take(np.lexsort((ids, memory, -scores))[:k])]
    order = np.lexsort((ids, memory, -scores, queries))  # by query, then the hit order
    starts = np.searchsorted(queries[order], np.arange(nq + 1))
    tops = [order[starts[q] : min(starts[q] + k, starts[q + 1])] for q in range(nq)]
    # One take for every query's top, then zero-copy slices: a take per query costs a pass
    # over every column each.
    picked = merged.take(np.concatenate(tops)) if tops else merged.slice(0, 0)
    ends = np.cumsum([len(t) for t in tops])
    return [picked.slice(end - len(t), len(t)) for t, end in zip(tops, ends, strict=True)]
