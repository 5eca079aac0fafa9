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


def dual_hits(table: pa.Table) -> list[Hit]:
    """Hits of a dual-path round (``shard.scoring.DUAL_HIT`` rows)."""
    out = []
    for row in table.to_pylist():
        memory = row["path"] == "memory"
        out.append(
            Hit(
                chunk_id=0 if memory else row["id"] & 0xFFFF_FFFF_FFFF_FFFF,  # the uint64 bits
                doc_id=row["doc_id"],
                seq=row["seq"],
                score=row["score"],
                text=row["text"],
                source=row["source"],
                shard=row["shard"],
                path=row["path"],
                memory_id=row["id"] if memory else None,
                kind=row["kind"],
                session=(row["session"] or None) if memory else None,
                ephemeral=row["ephemeral"],
                sim=row["sim"],
                kind_score=row["kind_score"],
                recency_score=row["recency_score"],
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
