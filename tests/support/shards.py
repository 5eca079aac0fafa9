"""A data directory's shards read back from their snapshots, through ``shard.snapshot``.

The one reader of stored data for the tests and the benchmarks (``bench/``), so that a check of
what a run stored reads it the way a restarting shard does: ``snapshot.load`` checks that the
index, the metadata table and ``snapshot.json`` agree, and raises ``StorageError`` otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from aaflow_stream.shard import snapshot

Ids = npt.NDArray[np.int64]


@dataclass(frozen=True)
class StoredShard:
    """One shard's snapshot: its FAISS ``IndexIDMap2`` and its metadata table."""

    index: Any
    meta: pa.Table

    @property
    def ids(self) -> Ids:
        import faiss

        return faiss.vector_to_array(self.index.id_map).astype(np.int64)

    @property
    def meta_ids(self) -> Ids:
        """The ``chunk_id`` column, as FAISS's int64 ids (chunk ids are 63-bit)."""
        return self.meta.column("chunk_id").to_numpy().astype(np.int64)

    def vectors(self) -> npt.NDArray[np.float32]:
        """Every stored vector, in id order (a copy out of a flat index)."""
        return np.asarray(self.index.index.reconstruct_n(0, self.index.ntotal), np.float32)


def shard_dirs(data_dir: Path) -> list[Path]:
    """``shard-<r>`` directories in rank order (shard ``r`` holds ids with ``id % n == r``)."""
    return sorted(data_dir.glob("shard-*"), key=lambda p: int(p.name.partition("-")[2]))


def snapshot_info(shard_dir: Path) -> snapshot.SnapshotInfo | None:
    """What ``snapshot.json`` records, or None where the shard has taken no snapshot yet."""
    try:
        text = (shard_dir / snapshot.SNAPSHOT_DIR / snapshot.INFO_FILE).read_text()
    except FileNotFoundError:
        return None
    return snapshot.SnapshotInfo(**json.loads(text))


def read_shard(shard_dir: Path) -> StoredShard:
    info = snapshot_info(shard_dir)
    vectors = info.vectors if info is not None else None
    return StoredShard(*snapshot.load(shard_dir / snapshot.SNAPSHOT_DIR, vectors))


def read_shards(data_dir: Path) -> list[StoredShard]:
    """Every shard's snapshot, in rank order."""
    return [read_shard(d) for d in shard_dirs(data_dir)]


def drained_shards(data_dir: Path) -> int:
    """How many shards hold the snapshot taken at the end of their stream."""
    infos = (snapshot_info(d) for d in shard_dirs(data_dir))
    return sum(info is not None and info.reason == "drain" for info in infos)
