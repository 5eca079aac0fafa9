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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from . import topk
from .bm25 import KeywordStats, combine
from .filters import QueryFilter
from .keywords import query_terms
from .store import ShardStore

VECTOR: Final = "vector"
KEYWORD: Final = "keyword"
ROW_COLUMNS: Final = ("doc_id", "seq", "chunk_id", "text", "source")

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
_stats_decoder = msgspec.msgpack.Decoder(KeywordStats)
_encoder = msgspec.msgpack.Encoder()


def encode_texts(texts: Sequence[str]) -> bytes:
    return _encoder.encode(list(texts))


def decode_texts(raw: bytes) -> list[str]:
    return _texts.decode(raw)


def local_stats(store: ShardStore, texts: Sequence[str]) -> bytes:
    """This rank's statistics for every term of the round's queries, encoded."""
    terms = sorted({t for text in texts for t in query_terms(text)})
    return _encoder.encode(store.keyword_stats(terms))


def global_stats(parts: Sequence[bytes]) -> KeywordStats:
    """Every rank's statistics, summed (the same on every rank: same parts, same order)."""
    return combine([_stats_decoder.decode(p) for p in parts])


def local_candidates(
    store: ShardStore,
    queries: npt.NDArray[np.float32],
    texts: Sequence[str],
    depth: int,
    stats: KeywordStats,
    allowed: QueryFilter | None,
    rank: int,
) -> pa.Table:
    """This rank's top ``depth`` per query of both lists, with the rows' metadata."""
    parts = []
    scores, ids, rows = store.search_rows(queries, depth, allowed)
    found = ids >= 0
    if found.any():
        parts.append(
            _candidates(np.nonzero(found)[0], VECTOR, scores[found].astype(np.float64), rows, rank)
        )
    for q, text in enumerate(texts):
        chunk_ids, bm25 = store.keyword_search(text, depth, stats, allowed)
        if len(chunk_ids):
            kw_rows = store.rows(chunk_ids.tolist())
            queries_of = np.full(len(chunk_ids), q)
            parts.append(_candidates(queries_of, KEYWORD, bm25.astype(np.float64), kw_rows, rank))
    if not parts:
        return CANDIDATE.empty_table()
    return pa.concat_tables(parts)


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
    merged = pa.concat_tables(tables)
    queries = merged.column("query").to_numpy()
    is_vector = pc.equal(merged.column("list"), VECTOR).to_numpy(zero_copy_only=False)
    scores = merged.column("score").to_numpy()
    ids = merged.column("chunk_id").to_numpy().view(np.int64)
    out = []
    for q in range(nq):
        mine = queries == q
        v = np.flatnonzero(mine & is_vector)
        kw = np.flatnonzero(mine & ~is_vector)
        v = v[topk.order(scores[v].astype(np.float32), ids[v], metric)[:depth]]  # type: ignore[arg-type]
        kw = kw[topk.order(scores[kw].astype(np.float32), ids[kw], "ip")[:depth]]
        fused: dict[int, list[float]] = {}  # chunk id -> [rrf, row, vscore, bm25, vrank, krank]
        for ranked, is_v in ((v, True), (kw, False)):
            for position, row in enumerate(ranked.tolist(), start=1):
                entry = fused.setdefault(int(ids[row]), [0.0, row, np.nan, np.nan, 0, 0])
                entry[0] += 1.0 / (rrf_k + position)
                entry[2 if is_v else 3] = float(scores[row])
                entry[4 if is_v else 5] = position
        best = sorted(fused.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        rows = merged.take(pa.array([int(e[1]) for _, e in best], pa.int64()))
        out.append(
            pa.table(
                {
                    **{name: rows.column(name) for name in ROW_COLUMNS},
                    "shard": rows.column("shard"),
                    "score": pa.array([e[0] for _, e in best], pa.float64()),
                    "vector_score": pa.array([e[2] for _, e in best], pa.float64()),
                    "bm25": pa.array([e[3] for _, e in best], pa.float64()),
                    "vector_rank": pa.array([int(e[4]) for _, e in best], pa.int32()),
                    "keyword_rank": pa.array([int(e[5]) for _, e in best], pa.int32()),
                },
                schema=HYBRID_HIT,
            )
        )
    return out
