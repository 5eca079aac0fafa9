"""The Arrow schemas that flow between the ingestion stages."""

from __future__ import annotations

import pyarrow as pa

# One row per document, as the load stage emits them.
DOCUMENT = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("ts", pa.timestamp("ms")),
    ]
)

# One row per chunk, as the transform stage emits them. ``doc_version`` identifies the content
# a chunk was cut from, so a re-ingested, changed document can replace its older chunks.
CHUNK = pa.schema(
    [
        ("doc_id", pa.string()),
        ("seq", pa.int32()),
        ("chunk_id", pa.uint64()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("ts", pa.timestamp("ms")),
        ("doc_version", pa.uint64()),
    ]
)

EMBEDDING = "embedding"


def embedded(dim: int) -> pa.Schema:
    """The chunk schema plus ``embedding: fixed_size_list<float32>[dim]``."""
    return CHUNK.append(pa.field(EMBEDDING, pa.list_(pa.float32(), dim)))


# What a shard keeps beside each vector (the embedding lives in the index).
METADATA = CHUNK
