"""The Arrow schemas that flow between the ingestion stages."""

from __future__ import annotations

import pyarrow as pa

# Where a row came from, so that shards can acknowledge what they made durable
# (docs/architecture.md, "Delivery, checkpoints and restarts"): the load replica, the
# document's offset in that replica's stream, and (from the transform on) how many chunks the
# document has. They travel through every stage; shards do not keep them.
SOURCE_FIELDS = [
    pa.field("src_replica", pa.int32()),
    pa.field("src_offset", pa.int64()),
]
SRC_CHUNKS = pa.field("src_chunks", pa.int32())

# One row per document, as the load stage emits them.
DOCUMENT = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("ts", pa.timestamp("ms")),
        *SOURCE_FIELDS,
    ]
)

# What a shard keeps beside each vector (the embedding lives in the index). ``doc_version``
# identifies the content a chunk was cut from, so a re-ingested, changed document can replace
# its older chunks.
METADATA = pa.schema(
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

# One row per chunk, as the transform stage emits them.
CHUNK = pa.schema([*METADATA, *SOURCE_FIELDS, SRC_CHUNKS])

EMBEDDING = "embedding"


def embedding_field(dim: int) -> pa.Field:
    return pa.field(EMBEDDING, pa.list_(pa.float32(), dim))


def embedded(dim: int) -> pa.Schema:
    """The chunk schema plus ``embedding: fixed_size_list<float32>[dim]``."""
    return CHUNK.append(embedding_field(dim))


def stored(dim: int) -> pa.Schema:
    """What a shard needs of an upsert row: the metadata and the embedding (no delivery
    columns: such rows are applied but not acknowledged)."""
    return METADATA.append(embedding_field(dim))


# A tombstone row: remove every chunk of ``doc_id`` whose ``doc_version`` differs from
# ``keep_version`` (``DELETE_ALL``: remove them all). The transform sends one per document to
# every shard, so a changed document that got shorter loses its old tail everywhere.
TOMBSTONE = pa.schema(
    [
        ("doc_id", pa.string()),
        ("keep_version", pa.uint64()),
        *SOURCE_FIELDS,
    ]
)
DELETE_ALL = 0


def empty_table(schema: pa.Schema) -> pa.Table:
    """A table of ``schema`` with no rows. Not ``schema.empty_table()``: that imports pandas
    when it is installed (pyarrow 26, measured), ~0.3 s of CPU in every process that makes
    one, which a shard rank did at import."""
    return pa.Table.from_batches([], schema)
