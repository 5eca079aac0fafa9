"""A topology → the ingestion graph the supervisor runs, and checks of its data directory.

Pure apart from reading: the small manifests in an existing data directory, and the source
paths (``preflight`` checks that each exists and can be read).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from .channels import curve
from .embedders import factory as embedders
from .errors import EmbedderError, OperatorError, SpecError
from .operators.base import resolve
from .operators.params import (
    CheckpointParams,
    ChunkerParams,
    EmbedParams,
    FeedParams,
    LoadParams,
    OperatorParams,
    RouterParams,
    ShardParams,
)
from .plan import ChainedOperator, GraphSpec, StageSpec
from .shard.store import MANIFEST_FILE
from .spec import (
    CustomStage,
    EmbedStage,
    LoadStage,
    Stage,
    TopologySpec,
    TransformStage,
    UpsertStage,
)

SHARD_STAGE = "shard"
# Built-in stages never use pandas; pyarrow would import it anyway (runtime/imports.py).
BUILTIN_BLOCKS = ["pandas"]
OPS = "aaflow_stream.operators"


def data_dir(topology: TopologySpec) -> Path:
    return Path(topology.data_dir).resolve()


def run_dir(topology: TopologySpec) -> Path:
    return Path(topology.run_dir or f"runs/{topology.name}").resolve()


def _as_dict(params: OperatorParams) -> dict[str, Any]:
    """A built-in operator's parameters as the stage description holds them (JSON)."""
    return dict(msgspec.to_builtins(params))


def _builtin(name: str, operator: str, params: OperatorParams, replicas: int) -> StageSpec:
    return StageSpec(name, operator, _as_dict(params), replicas, block_imports=BUILTIN_BLOCKS)


def _stage(topology: TopologySpec, stage: Stage) -> StageSpec:
    shards = topology.shards
    match stage:
        case LoadStage():
            sources = [
                msgspec.structs.replace(s, paths=[str(Path(p).resolve()) for p in s.paths])
                for s in topology.sources
            ]
            dead_letter_dir = str(data_dir(topology) / "deadletter")
            checkpoint = CheckpointParams(
                dir=str(data_dir(topology) / "checkpoints"),
                shards=shards.count,
                interval_ms=topology.durability.checkpoint_interval_ms,
            )
            # What the file loader and the continuous feed both take.
            loader: dict[str, Any] = {
                "sources": sources,
                "dead_letter_dir": dead_letter_dir,
                "checkpoint": checkpoint,
                "batch_docs": stage.batch_docs,
                "limits": topology.limits,
            }
            params: OperatorParams
            if topology.continuous:  # watched sources, the ingest endpoint: until stopped
                keys = str(curve.keys_dir(data_dir(topology)))
                params = FeedParams(**loader, ingest=topology.ingest, keys_dir=keys)
                operator = f"{OPS}.feed:ContinuousLoader"
                return _builtin(stage.name, operator, params, stage.replicas)
            params = LoadParams(**loader)
            return _builtin(stage.name, f"{OPS}.load:FileLoader", params, stage.replicas)
        case TransformStage():
            params = ChunkerParams(
                chunk_size=stage.chunk_size,
                overlap=stage.overlap,
                prefer=stage.prefer,
                normalize=stage.normalize,
            )
            return _builtin(stage.name, f"{OPS}.transform:Chunker", params, stage.replicas)
        case EmbedStage():
            embedder = topology.embedder
            params = EmbedParams(
                batch_size=stage.batch_size,
                embedder=embedder,
                threads=embedders.threads_per_replica(embedder, stage.replicas),
            )
            blocks = embedders.blocked_imports(embedder, BUILTIN_BLOCKS)
            operator = f"{OPS}.embed:EmbedChunks"
            return StageSpec(
                stage.name, operator, _as_dict(params), stage.replicas, block_imports=blocks
            )
        case UpsertStage():
            params = RouterParams(shards=shards.count, batch_size=stage.batch_size)
            return _builtin(stage.name, f"{OPS}.upsert:ShardRouter", params, stage.replicas)
        case CustomStage():
            return StageSpec(stage.name, stage.ref, stage.params, stage.replicas)
    raise AssertionError(f"unhandled stage {stage!r}")


def _chained(head: StageSpec, tail: StageSpec) -> StageSpec:
    """``tail`` run inside ``head``'s actors; modules stay blocked only if both block them."""
    link = ChainedOperator(tail.name, tail.operator, tail.params)
    blocked = [m for m in head.block_imports if m in tail.block_imports]
    return msgspec.structs.replace(head, chain=[*head.chain, link], block_imports=blocked)


def stage_order(topology: TopologySpec) -> list[str]:
    """Every stage's name in pipeline order, chained ones included, then the shard stage."""
    return [*(s.name for s in topology.stages), SHARD_STAGE]


def ingestion_graph(topology: TopologySpec, *, serve: bool = False) -> GraphSpec:
    """Load → transform → custom stages → embed → upsert → the MPI shard job.

    With ``serve`` the shards answer queries from the start and keep doing so after the
    ingestion ends, until stopped.
    """
    shards, query, durability = topology.shards, topology.query, topology.durability
    shard = StageSpec(
        SHARD_STAGE,
        f"{OPS}.shard:ShardWriter",
        _as_dict(
            ShardParams(
                data_dir=str(data_dir(topology)),
                dim=embedder_dim(topology),
                embedder=topology.embedder,  # the gateway embeds queries
                index=shards.index,
                metric=shards.metric,
                keywords=shards.keywords,
                threads=shards.threads or max(1, (os.cpu_count() or 1) // shards.count),
                serve=serve,
                query_endpoint=query.endpoint,
                max_batch=query.max_batch,
                max_wait_ms=query.max_wait_ms,
                round_timeout_s=query.round_timeout_s,
                wal_sync=durability.wal_sync,
                sync_interval_ms=durability.sync_interval_ms,
                snapshot_interval_s=durability.snapshot_interval_s,
                snapshot_wal_mb=durability.snapshot_wal_mb,
                full_disk_wait_s=durability.full_disk_wait_s,
                memory=topology.memory,
                answer=topology.answer,
                cache=topology.cache,
            )
        ),
        shards.count,
        launcher="mpi",
        block_imports=embedders.blocked_imports(topology.embedder, BUILTIN_BLOCKS),
        linger=serve,
        acks_to=topology.stages[0].name,
    )
    if any(s.name == SHARD_STAGE for s in topology.stages):
        raise SpecError(f"$.stages: the name {SHARD_STAGE!r} is reserved for the shard job")
    stages: list[StageSpec] = []
    for stage in topology.stages:
        built = _stage(topology, stage)
        if stage.chain and stages:
            stages[-1] = _chained(stages[-1], built)
        else:
            stages.append(built)
    return GraphSpec(
        stages=[*stages, shard],
        window=topology.flow.window,
        encoding=topology.flow.encoding,
        eos_timeout_s=topology.timeouts.eos_s,
        drain_timeout_s=topology.timeouts.drain_s,
        flush_ms=topology.flow.flush_ms,
        heartbeat_s=topology.timeouts.heartbeat_s,
    )


def preflight(topology: TopologySpec) -> None:
    """Every check that can fail before a process starts, all of them, every problem listed
    at once (SpecError): operators, embedder, sources, data directory. Reads, never writes."""
    found = [
        *operator_problems(topology),
        *_problem(check_embedder, topology),
        *source_problems(topology),
        *_problem(check_data_dir, topology),
        *key_problems(topology),
    ]
    if found:
        raise SpecError(f"{len(found)} problem(s):\n  " + "\n  ".join(found))


def _problem(check: Callable[[TopologySpec], None], topology: TopologySpec) -> list[str]:
    try:
        check(topology)
    except SpecError as exc:
        return [str(exc)]
    return []


def key_problems(topology: TopologySpec) -> list[str]:
    """An endpoint bound off loopback needs the CURVE keys (``channels.curve``)."""
    endpoints = [("$.query.endpoint", topology.query.endpoint)]
    if topology.ingest is not None:
        endpoints.append(("$.ingest.endpoint", topology.ingest.endpoint))
    found = []
    for where, endpoint in endpoints:
        if curve.needs_curve(endpoint):
            try:
                curve.ServerKeys.load(curve.keys_dir(data_dir(topology)))
            except SpecError as exc:
                found.append(f"{where} ({endpoint}): {exc}")
    return found


def operator_problems(topology: TopologySpec) -> list[str]:
    """Import every custom operator now, so a bad reference fails before any process starts.

    Actors run with the working directory on ``sys.path`` (``python -m``); so does this check.
    """
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    found = []
    try:
        for i, stage in enumerate(topology.stages):
            if isinstance(stage, CustomStage):
                try:
                    resolve(stage.ref)
                except OperatorError as exc:
                    found.append(f"$.stages[{i}].ref: {exc}")
    finally:
        if added:
            sys.path.remove(cwd)
    return found


def check_operators(topology: TopologySpec) -> None:
    """``operator_problems``, the first of them raised as SpecError."""
    found = operator_problems(topology)
    if found:
        raise SpecError(found[0])


def source_problems(topology: TopologySpec) -> list[str]:
    """Every source path that does not exist or cannot be read (as the load stage finds
    sources: a directory is searched, a file taken; relative to the working directory)."""
    found = []
    for i, source in enumerate(topology.sources):
        for j, entry in enumerate(source.paths):
            problem = _unreadable(Path(entry).resolve())
            if problem:
                found.append(f"$.sources[{i}].paths[{j}]: {entry!r} {problem}")
    return found


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot serve as a source, or None. Tries the read itself, as the load
    stage would: permission bits say nothing for root, nor of ACLs."""
    try:
        if path.is_dir():
            with os.scandir(path) as entries:
                next(entries, None)
        elif path.is_file():
            with open(path, "rb") as file:
                file.read(0)
        elif path.exists():
            return f"({path}) is neither a file nor a directory"
        else:
            return f"does not exist ({path})"
    except OSError as exc:
        return f"cannot be read ({path}: {exc.strerror})"
    return None


def embedder_dim(topology: TopologySpec) -> int:
    """The shards' dim: the embedder's, known without loading a model."""
    try:
        return embedders.dim(topology.embedder)
    except EmbedderError as exc:
        raise SpecError(f"$.embedder: {exc}") from exc


def check_embedder(topology: TopologySpec) -> None:
    """Refuse now an embedder the embed actors could not build (package, model, dim)."""
    try:
        embedders.check(topology.embedder)
    except EmbedderError as exc:
        raise SpecError(f"$.embedder: {exc}") from exc


def check_data_dir(topology: TopologySpec) -> None:
    """Refuse, before anything starts, a data directory built with another shape."""
    root = data_dir(topology)
    existing = sorted(root.glob(f"shard-*/{MANIFEST_FILE}"))
    if not existing:
        return
    shards = topology.shards
    if len(existing) != shards.count:
        raise SpecError(
            f"{root} holds {len(existing)} shards, the topology asks for {shards.count}: "
            "chunks are placed by chunk_id % shards, so the count cannot change in place; "
            "use another data_dir"
        )
    expected = {"dim": embedder_dim(topology), "index": shards.index, "metric": shards.metric}
    for manifest in existing:
        saved = json.loads(manifest.read_text())
        found = {key: saved.get(key) for key in expected}
        if found != expected:
            raise SpecError(
                f"{manifest.parent} was built with {found}, the topology asks for "
                f"{expected}: use another data_dir or remove it"
            )
