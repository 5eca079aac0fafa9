"""The topology's embedder spec → an embedder: the one factory the embed stage and the gateway use.

The spec crosses process boundaries as plain data (``to_params``) inside an actor's parameters,
and is decoded back with the topology's own types (``from_params``), so both ends agree.
Everything here but ``build`` is cheap: no torch, no model; the supervisor uses it to learn the
shards' dim and to refuse an embedder that cannot be built before anything starts.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import msgspec

from ..errors import EmbedderError
from ..spec import Embedder, HashEmbedderSpec, SentenceTransformerSpec
from . import sentence_transformer as st
from .base import TextEmbedder
from .hash_embedder import HashEmbedder

log = logging.getLogger(__name__)

__all__ = [
    "blocked_imports",
    "build",
    "check",
    "dim",
    "from_params",
    "threads_per_replica",
    "to_params",
]

# The modules a process running each embedder may keep out (runtime/imports.py):
# sentence-transformers imports pandas, which built-in stages block otherwise.
_BLOCKABLE: dict[type[Any], list[str]] = {
    HashEmbedderSpec: ["pandas"],
    SentenceTransformerSpec: [],
}


def dim(spec: Embedder) -> int:
    """The dimension of the vectors ``spec`` makes, without loading any model."""
    match spec:
        case HashEmbedderSpec():
            return spec.dim
        case SentenceTransformerSpec():
            found = spec.dim or st.known_dim(spec.model)
            if found is None:
                raise EmbedderError(
                    f"the dim of model {spec.model!r} is not known here: declare it as embedder.dim"
                )
            return found
    raise AssertionError(f"unhandled embedder {spec!r}")


def threads_per_replica(spec: Embedder, replicas: int) -> int:
    """Threads per process: the spec's, or the cores divided among ``replicas``, at least 1."""
    cores = os.cpu_count() or 1
    declared = spec.threads if isinstance(spec, SentenceTransformerSpec) else None
    if declared and declared * replicas > cores:
        log.warning(
            "%d embed replicas x %d threads ask for more than the %d cores: they will contend",
            replicas,
            declared,
            cores,
        )
    return declared or max(1, cores // replicas)


def check(spec: Embedder) -> None:
    """Raise EmbedderError now for what would fail the embed actors at start: a missing
    package or model, an unknown or wrong dim. Imports no model code."""
    if isinstance(spec, SentenceTransformerSpec):
        known = st.known_dim(spec.model)
        if spec.dim is not None and known is not None and spec.dim != known:
            raise EmbedderError(
                f"model {spec.model!r} makes vectors of dim {known}, the topology declares "
                f"dim {spec.dim}: fix embedder.dim or leave it out"
            )
        dim(spec)
        st.check_installed()
        st.model_path(spec.model)


def blocked_imports(spec: Embedder, default: list[str]) -> list[str]:
    """The modules a process running this embedder may keep out: ``default`` less its needs."""
    blockable = _BLOCKABLE.get(type(spec), [])
    return [m for m in default if m in blockable]


def to_params(spec: Embedder) -> dict[str, Any]:
    return dict(msgspec.to_builtins(spec))


def from_params(params: dict[str, Any]) -> Embedder:
    try:
        return msgspec.convert(params, Embedder)
    except msgspec.ValidationError as exc:
        raise EmbedderError(f"invalid embedder parameters {params}: {exc}") from exc


def build(spec: Embedder, *, threads: int = 1) -> TextEmbedder:
    """The embedder ``spec`` describes; a model loads here, once, with ``threads`` threads
    (the caller's count: ``threads_per_replica(spec, replicas)`` for an embed stage)."""
    match spec:
        case HashEmbedderSpec():
            return HashEmbedder(spec.dim)
        case SentenceTransformerSpec():
            return st.SentenceTransformerEmbedder(
                spec.model,
                device=spec.device,
                batch_size=spec.batch_size,
                normalize=spec.normalize,
                threads=threads,
                dtype=spec.dtype,
                dim=dim(spec),
            )
    raise AssertionError(f"unhandled embedder {spec!r}")
