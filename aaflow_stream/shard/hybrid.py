"""Hybrid retrieval: vector and BM25 keyword search in one round, fused by reciprocal rank.

Per query, two global lists are formed, each exactly what one process over every chunk would
compute: the top ``depth`` chunks by vector score (FAISS, ``shard.topk`` order) and the top
``depth`` by BM25 under corpus-wide statistics (``shard.keywords``: the ranks' statistics for
the query terms are summed first, so a chunk's BM25 score is the same whatever the layout).
Every rank sends its local top ``depth`` of each list; the root merges each list, cuts it at
``depth``, and fuses:

    rrf(chunk) = sum over the lists holding it of 1 / (rrf_k + its rank in that list)

(ranks from 1; ``rrf_k`` 60 by default, the usual constant), then keeps the top k by
(rrf descending, smaller chunk id). A chunk found by only one list still counts; a keyword
match that the embedding misses (an identifier, a code) enters through its BM25 rank.

Costs that grow with the round, not the corpus, are paid once per round: a rank looks up the
rows of every query's keyword hits in one call, and the root fuses every query with array
operations over the merged candidates, taking their rows once (a table of several chunks
would be concatenated by each ``take``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ChunkNotStored
from ..schemas import empty_table
from .bm25 import KeywordStats
from .filters import QueryFilter
from .keywords import query_terms
from .store import ShardStore

VECTOR: Final = "vector"
KEYWORD: Final = "keyword"
ROW_COLUMNS: Final = ("doc_id", "seq", "chunk_id", "text", "source")
# Keyword searches of a round tried again when a chunk they found was removed before its row
# was read (a tombstone applied meanwhile, on the rank's other thread).
ROW_ATTEMPTS: Final = 3

# One candidate of either list, as ranks send them to the root.
CANDIDATE = pa.schema(
    [
        ("query", pa.int32()),
        ("list", pa.string()),
        ("score", pa.float64()),
        ("shard", pa.int32()),
        ("doc_id", pa.string()),
        ("seq", pa.int32()),
        ("chunk_id", pa.uint64()),
        ("text", pa.large_string()),
        ("source", pa.string()),
    ]
)

# The fused hits of one query.
HYBRID_HIT = pa.schema(
    [
        ("doc_id", pa.string()),
        ("seq", pa.int32()),
        ("chunk_id", pa.uint64()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("shard", pa.int32()),
        ("score", pa.float64()),  # the fused (RRF) score
        ("vector_score", pa.float64()),  # NaN: not in the vector list
        ("bm25", pa.float64()),  # NaN: not in the keyword list
        ("vector_rank", pa.int32()),  # 0: not in the list
        ("keyword_rank", pa.int32()),
    ]
)

_texts = msgspec.msgpack.Decoder(list[str])
_encoder = msgspec.msgpack.Encoder()


def encode_texts(texts: Sequence[str]) -> bytes:
    return _encoder.encode(list(texts))


def decode_texts(raw: bytes) -> list[str]:
    return _texts.decode(raw)


def round_terms(texts: Sequence[str]) -> list[str]:
    """Every term of the round's queries, sorted: every rank lists the same."""
    return sorted({t for text in texts for t in query_terms(text)})


def local_counts(store: ShardStore, terms: Sequence[str]) -> npt.NDArray[np.int64]:
    """This rank's statistics for ``terms`` as fixed-size integers (live chunks, their
    tokens, chunks per term): the same shape on every rank, so one ``Allreduce`` sums them."""
    stats = store.keyword_stats(terms)
    return np.array([stats.docs, stats.tokens, *(stats.doc_freq[t] for t in terms)], np.int64)


def summed_stats(terms: Sequence[str], counts: npt.NDArray[np.int64]) -> KeywordStats:
    """The corpus-wide statistics from ``local_counts`` summed over every rank (integer
    sums: the same on every rank, whatever the layout)."""
    docs, tokens, *freq = counts.tolist()
    return KeywordStats(docs, tokens, dict(zip(terms, freq, strict=True)))


def vector_candidates(
    store: ShardStore,
    queries: npt.NDArray[np.float32],
    depth: int,
    allowed: QueryFilter | None,
    rank: int,
) -> pa.Table:
    """This rank's top ``depth`` per query by vector, with the rows' metadata."""
    scores, ids, rows = store.search_rows(queries, depth, allowed)
    found = ids >= 0
    if not found.any():
        return empty_table(CANDIDATE)
    return _candidates(np.nonzero(found)[0], VECTOR, scores[found].astype(np.float64), rows, rank)


def keyword_candidates(
    store: ShardStore,
    texts: Sequence[str],
    depth: int,
    stats: KeywordStats,
    allowed: QueryFilter | None,
    rank: int,
) -> pa.Table:
    """This rank's top ``depth`` per query by BM25 under the corpus-wide ``stats``, with the
    rows' metadata (looked up once for the whole round)."""
    for attempt in range(ROW_ATTEMPTS):
        found = [store.keyword_search(text, depth, stats, allowed) for text in texts]
        chunk_ids = np.concatenate([np.zeros(0, np.int64), *(ids for ids, _ in found)])
        if not chunk_ids.size:
            return empty_table(CANDIDATE)
        try:
            rows = store.rows(chunk_ids.tolist())
        except ChunkNotStored:
            if attempt + 1 == ROW_ATTEMPTS:
                raise
            continue
        query_of = np.repeat(np.arange(len(texts)), [len(ids) for ids, _ in found])
        bm25 = np.concatenate([scores for _, scores in found]).astype(np.float64)
        return _candidates(query_of, KEYWORD, bm25, rows, rank)
    raise AssertionError("unreachable")


def _candidates(
    query_of: npt.NDArray[np.intp],
    which: str,
    scores: npt.NDArray[np.float64],
    rows: pa.Table,
    rank: int,
) -> pa.Table:
    n = len(query_of)
    columns = {
        "query": pa.array(query_of.astype(np.int32)),
        "list": pa.array([which] * n, pa.string()),
        "score": pa.array(scores),
        "shard": pa.array(np.full(n, rank, dtype=np.int32)),
        **{name: rows.column(name) for name in ROW_COLUMNS},
    }
    return pa.table(columns, schema=CANDIDATE)


def fuse(
    tables: list[pa.Table], nq: int, k: int, depth: int, rrf_k: int, metric: str
) -> list[pa.Table]:
    """Each query's top k by reciprocal-rank fusion of the two global lists."""
    merged = pa.concat_tables(tables) if tables else empty_table(CANDIDATE)
    if not merged.num_rows:
        return [empty_table(HYBRID_HIT) for _ in range(nq)]
    query = merged.column("query").to_numpy().astype(np.int64)
    keyword = pc.equal(merged.column("list"), KEYWORD).to_numpy(zero_copy_only=False)
    scores = merged.column("score").to_numpy()
    ids = merged.column("chunk_id").to_numpy().view(np.int64)
    # Each global list in ``shard.topk`` order (f32 scores, as the ranks cut their lists;
    # then the smaller id): keyword scores and inner products descending, L2 ascending.
    f32 = scores.astype(np.float32).astype(np.float64)
    primary = np.where(keyword | (metric == "ip"), -f32, f32)
    ranked = np.lexsort((ids, primary, keyword, query))
    group = query[ranked] * 2 + keyword[ranked]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    position = np.arange(len(ranked)) - np.repeat(starts, np.diff(np.r_[starts, len(ranked)]))
    cut = position < depth
    rows, position = ranked[cut], position[cut] + 1  # ranks from 1
    if not len(rows):
        return [empty_table(HYBRID_HIT) for _ in range(nq)]
    # Each chunk of a query once: its vector entry first (the row the hit is read from).
    by_chunk = np.lexsort((keyword[rows], ids[rows], query[rows]))
    rows, position = rows[by_chunk], position[by_chunk]
    first = np.r_[True, (ids[rows][1:] != ids[rows][:-1]) | (query[rows][1:] != query[rows][:-1])]
    heads = np.flatnonzero(first)
    share = 1.0 / (rrf_k + position)
    rrf = np.add.reduceat(share, heads)  # one or two terms each: the same sum in any order
    vector_score = np.full(len(heads), np.nan)
    bm25 = np.full(len(heads), np.nan)
    vector_rank = np.zeros(len(heads), np.int32)
    keyword_rank = np.zeros(len(heads), np.int32)
    entry = np.cumsum(first) - 1  # which chunk each listed row belongs to
    is_kw = keyword[rows]
    vector_score[entry[~is_kw]] = scores[rows[~is_kw]]
    vector_rank[entry[~is_kw]] = position[~is_kw]
    bm25[entry[is_kw]] = scores[rows[is_kw]]
    keyword_rank[entry[is_kw]] = position[is_kw]
    hit_rows, hit_query, hit_ids = rows[heads], query[rows[heads]], ids[rows[heads]]
    # Per query, the best k by (rrf descending, smaller chunk id).
    best = np.lexsort((hit_ids, -rrf, hit_query))
    starts = np.searchsorted(hit_query[best], np.arange(nq + 1))
    place = np.arange(len(best)) - np.repeat(starts[:-1], np.diff(starts))
    best = best[place < k]
    picked = merged.take(pa.array(hit_rows[best], pa.int64()))
    table = pa.table(
        {
            **{name: picked.column(name) for name in ROW_COLUMNS},
            "shard": picked.column("shard"),
            "score": pa.array(rrf[best], pa.float64()),
            "vector_score": pa.array(vector_score[best], pa.float64()),
            "bm25": pa.array(bm25[best], pa.float64()),
            "vector_rank": pa.array(vector_rank[best], pa.int32()),
            "keyword_rank": pa.array(keyword_rank[best], pa.int32()),
        },
        schema=HYBRID_HIT,
    )
    counts = np.bincount(hit_query[best], minlength=nq)
    offsets = np.r_[0, np.cumsum(counts)]
    return [table.slice(int(offsets[q]), int(counts[q])) for q in range(nq)]
