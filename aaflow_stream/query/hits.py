"""A round's result tables -> the ``Hit``s a client gets (``query.protocol``)."""

from __future__ import annotations

import math
from typing import Literal

import pyarrow as pa

from .protocol import Hit


def plain_hits(table: pa.Table) -> list[Hit]:
    columns = {
        name: table.column(name).to_pylist()
        for name in ("chunk_id", "doc_id", "seq", "score", "text", "source", "shard")
    }
    return [Hit(*row) for row in zip(*columns.values(), strict=True)]


# The ``DUAL_HIT`` columns a ``Hit`` shows.
_DUAL_FIELDS = (
    "path",
    "id",
    "doc_id",
    "seq",
    "score",
    "text",
    "source",
    "shard",
    "kind",
    "session",
    "ephemeral",
    "sim",
    "kind_score",
    "recency_score",
)


def dual_hits(table: pa.Table) -> list[Hit]:
    """Hits of a dual-path round (``shard.scoring.DUAL_HIT`` rows)."""
    if table.num_rows == 0:  # whatever its columns: a round with no hits may return any empty
        return []
    # Column lists, not ``table.to_pylist()``: row dicts cost 3x as much.
    c = {name: table.column(name).to_pylist() for name in _DUAL_FIELDS}
    out = []
    for i, path in enumerate(c["path"]):
        memory = path == "memory"
        id_ = c["id"][i]
        out.append(
            Hit(
                chunk_id=0 if memory else id_ & 0xFFFF_FFFF_FFFF_FFFF,  # the uint64 bits
                doc_id=c["doc_id"][i],
                seq=c["seq"][i],
                score=c["score"][i],
                text=c["text"][i],
                source=c["source"][i],
                shard=c["shard"][i],
                path=path,
                memory_id=id_ if memory else None,
                kind=c["kind"][i],
                session=(c["session"][i] or None) if memory else None,
                ephemeral=c["ephemeral"][i],
                sim=c["sim"][i],
                kind_score=c["kind_score"][i],
                recency_score=c["recency_score"][i],
            )
        )
    return out


def hybrid_hits(table: pa.Table) -> list[Hit]:
    """Hits of a hybrid round (``shard.hybrid.HYBRID_HIT`` rows)."""
    out = []
    for row in table.to_pylist():
        vector, bm25 = row["vector_score"], row["bm25"]
        out.append(
            Hit(
                chunk_id=row["chunk_id"],
                doc_id=row["doc_id"],
                seq=row["seq"],
                score=row["score"],
                text=row["text"],
                source=row["source"],
                shard=row["shard"],
                sim=None if math.isnan(vector) else vector,
                bm25=None if math.isnan(bm25) else bm25,
                vector_rank=row["vector_rank"] or None,
                keyword_rank=row["keyword_rank"] or None,
            )
        )
    return out


Layout = Literal["plain", "dual", "hybrid"]


def hits_of(table: pa.Table, layout: Layout) -> list[Hit]:
    """The hits of one query's table, by the kind of round that made it."""
    if layout == "dual":
        return dual_hits(table)
    if layout == "hybrid":
        return hybrid_hits(table)
    return plain_hits(table)


def layout_of(mode: str) -> Layout:
    """The table layout a query mode's round returns."""
    if mode == "hybrid":
        return "hybrid"
    return "plain" if mode == "knowledge" else "dual"
