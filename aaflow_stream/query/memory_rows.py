"""Memory entries of a request -> the rows a memory exchange carries (``shard.memory``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from ..embedders.base import TextEmbedder
from ..shard.memory import entries_table, memory_id
from ..shard.memory_sessions import Entry
from .protocol import MemoryEntry


def memory_table(
    session: str | None, entries: Sequence[MemoryEntry], embedder: TextEmbedder
) -> pa.Table:
    """``shard.memory.memory_row`` rows: each entry's id, time (now where it gives none) and
    vector (embedded here, in one call, where it gives none)."""
    name = session or ""
    dim = embedder.dim
    vectors = np.empty((len(entries), dim), dtype=np.float32)
    to_embed = [i for i, e in enumerate(entries) if e.vector is None]
    if to_embed:
        vectors[to_embed] = embedder.embed([entries[i].text for i in to_embed])
    now = time.time()
    for i, e in enumerate(entries):
        if e.vector is not None:
            vectors[i] = e.vector
    rows = [
        Entry(
            memory_id(name, e.text),
            name,
            e.kind,
            e.text,
            e.source,
            now if e.ts is None else e.ts,
            e.weight,
            e.ephemeral,
        )
        for e in entries
    ]
    return entries_table(rows, vectors)
