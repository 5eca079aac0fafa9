"""The parameters of the built-in operators: one frozen Struct per operator.

``pipeline.py`` builds them from the topology and writes them as JSON into each actor's
description; ``operators.base.build`` converts that JSON back, once, into the operator's
``Params`` (an error names the field). Kept apart from the operators so the planner can use
them without importing what the operators need (Arrow, FAISS, MPI).

A default lives in one place, the Spec Struct (``spec.py``): a field the topology also has
takes its default from there (``spec_field``), never from a literal here. A field without a
default is one the planner always fills in (a path, a count it resolved). The few defaults
that are not the topology's are marked as such (``serve``: the command's flag).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from ..spec import (
    AnswerSpec,
    CacheSpec,
    DurabilitySpec,
    Embedder,
    EmbedStage,
    IngestSpec,
    LimitSpec,
    LoadStage,
    MemorySpec,
    Positive,
    PositiveFloat,
    QuerySpec,
    ShardSpec,
    SourceSpec,
    TopologySpec,
    TransformStage,
    UpsertStage,
    spec_field,
)

WalSync = Literal["batch", "interval", "none"]


class OperatorParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every built-in operator's parameters."""


class CheckpointParams(OperatorParams, frozen=True):
    """Where a source persists its acknowledged prefix, and how often."""

    dir: str
    shards: Positive
    interval_ms: PositiveFloat = spec_field(DurabilitySpec, "checkpoint_interval_ms")


class LoadParams(OperatorParams, frozen=True):
    """``load.FileLoader``: every source's paths resolved; ``checkpoint`` None: none kept."""

    sources: list[SourceSpec]
    dead_letter_dir: str
    batch_docs: Positive = spec_field(LoadStage, "batch_docs")
    limits: LimitSpec = spec_field(TopologySpec, "limits")
    checkpoint: CheckpointParams | None = None


class FeedParams(OperatorParams, frozen=True):
    """``feed.ContinuousLoader``: as ``LoadParams``, a checkpoint always, the ingest endpoint."""

    sources: list[SourceSpec]
    dead_letter_dir: str
    checkpoint: CheckpointParams
    batch_docs: Positive = spec_field(LoadStage, "batch_docs")
    limits: LimitSpec = spec_field(TopologySpec, "limits")
    ingest: IngestSpec | None = spec_field(TopologySpec, "ingest")
    keys_dir: str | None = None  # the CURVE keys of an ingest endpoint off loopback


class ChunkerParams(OperatorParams, frozen=True):
    """``transform.Chunker``."""

    chunk_size: Positive = spec_field(TransformStage, "chunk_size")
    overlap: int = spec_field(TransformStage, "overlap")
    prefer: Literal["none", "paragraph", "sentence"] = spec_field(TransformStage, "prefer")
    normalize: bool = spec_field(TransformStage, "normalize")


class EmbedParams(OperatorParams, frozen=True):
    """``embed.EmbedChunks``; ``threads``: resolved by the planner (the topology's may be
    unset: the cores divided among the replicas)."""

    threads: Positive
    batch_size: Positive = spec_field(EmbedStage, "batch_size")
    embedder: Embedder = spec_field(TopologySpec, "embedder")


class RouterParams(OperatorParams, frozen=True):
    """``upsert.ShardRouter``: ``shards`` is the shard count (``shards.count``)."""

    shards: Positive
    batch_size: Positive = spec_field(UpsertStage, "batch_size")


class ShardParams(OperatorParams, frozen=True):
    """``shard.ShardWriter``. ``dim`` and ``threads``: resolved by the planner. ``embedder``
    (the query embedder) None: a hash embedder of ``dim`` (the planner always gives one).
    ``serve``: not the topology's but the command's (``up --serve``)."""

    data_dir: str
    dim: Positive
    threads: Positive
    embedder: Embedder | None = None
    serve: bool = False
    index: str = spec_field(ShardSpec, "index")
    metric: Literal["ip", "l2"] = spec_field(ShardSpec, "metric")
    keywords: bool = spec_field(ShardSpec, "keywords")
    query_endpoint: str = spec_field(QuerySpec, "endpoint")
    max_batch: Positive = spec_field(QuerySpec, "max_batch")
    max_wait_ms: float = spec_field(QuerySpec, "max_wait_ms")
    round_timeout_s: PositiveFloat = spec_field(QuerySpec, "round_timeout_s")
    wal_sync: WalSync = spec_field(DurabilitySpec, "wal_sync")
    sync_interval_ms: PositiveFloat = spec_field(DurabilitySpec, "sync_interval_ms")
    snapshot_interval_s: PositiveFloat = spec_field(DurabilitySpec, "snapshot_interval_s")
    snapshot_wal_mb: PositiveFloat = spec_field(DurabilitySpec, "snapshot_wal_mb")
    full_disk_wait_s: PositiveFloat = spec_field(DurabilitySpec, "full_disk_wait_s")
    memory: MemorySpec = spec_field(TopologySpec, "memory")
    answer: AnswerSpec = spec_field(TopologySpec, "answer")
    cache: CacheSpec = spec_field(TopologySpec, "cache")
