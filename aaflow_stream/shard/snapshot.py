"""A shard's snapshot: its FAISS index and metadata table as of one WAL position, swapped in
atomically.

``<shard>/snapshot/``: ``index.faiss`` (``faiss.read_index``), ``meta.arrow`` (an Arrow IPC
file, ``pyarrow.ipc.open_file``) and ``snapshot.json`` (vectors, ``wal_segment``: the first
WAL segment it does not cover, ``lsn``: the last record it covers, time, reason).

Writing: everything goes to ``snapshot.tmp/`` and is synced; then ``snapshot`` is renamed to
``snapshot.old``, ``snapshot.tmp`` to ``snapshot``, the parent synced, ``snapshot.old``
removed. The caller deletes the covered WAL segments only after that, so whatever step a
crash interrupts, ``recover`` finds a snapshot that the remaining WAL completes: with
``snapshot.old`` and no ``snapshot`` it rolls back to the old one.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from ..durability.fsio import remove_tree, sync_dir, sync_file
from ..errors import StorageError

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshot"
TMP_DIR = "snapshot.tmp"
OLD_DIR = "snapshot.old"
INDEX_FILE = "index.faiss"
META_FILE = "meta.arrow"
INFO_FILE = "snapshot.json"


@dataclass(frozen=True)
class SnapshotInfo:
    vectors: int
    wal_segment: int
    lsn: int
    time: float
    reason: str


EMPTY = SnapshotInfo(vectors=0, wal_segment=1, lsn=0, time=0.0, reason="empty")


def recover(shard_dir: Path) -> SnapshotInfo | None:
    """Undo what an interrupted snapshot left; the info of the snapshot in place, if any."""
    snapshot, old = shard_dir / SNAPSHOT_DIR, shard_dir / OLD_DIR
    if not snapshot.exists() and old.exists():
        log.warning("%s: a snapshot swap was interrupted; rolling back to the previous one", old)
        os.rename(old, snapshot)
        sync_dir(shard_dir)
    remove_tree(shard_dir / TMP_DIR)
    remove_tree(old)
    if not snapshot.exists():
        return None
    try:
        return SnapshotInfo(**json.loads((snapshot / INFO_FILE).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise StorageError(
            f"{snapshot / INFO_FILE}: not a readable snapshot record: {exc}"
        ) from exc


def load(directory: Path, vectors: int | None) -> tuple[Any, pa.Table]:
    """The index and metadata table in ``directory``, checked to hold ``vectors`` rows each."""
    import faiss

    try:
        index = faiss.read_index(str(directory / INDEX_FILE))
        with pa.ipc.open_file(directory / META_FILE) as reader:
            table = reader.read_all()
    except (OSError, RuntimeError, pa.ArrowInvalid) as exc:
        raise StorageError(f"{directory}: cannot read the snapshot: {exc}") from exc
    recorded = index.ntotal if vectors is None else vectors
    if not index.ntotal == table.num_rows == recorded:
        raise StorageError(
            f"{directory}: the snapshot is inconsistent: {index.ntotal} vectors in "
            f"{INDEX_FILE}, {table.num_rows} rows in {META_FILE}, {recorded} recorded"
        )
    return index, table


def load_table(directory: Path, rows: int) -> pa.Table:
    """The table of a snapshot written without an index, checked to hold ``rows`` rows."""
    try:
        with pa.ipc.open_file(directory / META_FILE) as reader:
            table = reader.read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise StorageError(f"{directory}: cannot read the snapshot: {exc}") from exc
    if table.num_rows != rows:
        raise StorageError(
            f"{directory}: the snapshot is inconsistent: {table.num_rows} rows in "
            f"{META_FILE}, {rows} recorded"
        )
    return table


def write(shard_dir: Path, index: Any | None, table: pa.Table, info: SnapshotInfo) -> None:
    """Write a snapshot and swap it in; on return it is durable. ``index`` None: the table
    holds everything (the memory index keeps its vectors in a column)."""
    tmp, snapshot, old = shard_dir / TMP_DIR, shard_dir / SNAPSHOT_DIR, shard_dir / OLD_DIR
    try:
        remove_tree(tmp)
        tmp.mkdir()
        if index is not None:
            import faiss

            faiss.write_index(index, str(tmp / INDEX_FILE))
            sync_file(tmp / INDEX_FILE)
        with pa.OSFile(str(tmp / META_FILE), "wb") as sink:
            with pa.ipc.new_file(sink, table.schema) as writer:
                writer.write_table(table)
        sync_file(tmp / META_FILE)
        (tmp / INFO_FILE).write_text(json.dumps(asdict(info)))
        sync_file(tmp / INFO_FILE)
        sync_dir(tmp)
        sync_dir(shard_dir)
        if snapshot.exists():
            os.rename(snapshot, old)
        os.rename(tmp, snapshot)
        sync_dir(shard_dir)
        remove_tree(old)
    except (OSError, RuntimeError, pa.ArrowException) as exc:
        raise StorageError(f"cannot write a snapshot under {shard_dir}: {exc}") from exc


def now_info(vectors: int, wal_segment: int, lsn: int, reason: str) -> SnapshotInfo:
    return SnapshotInfo(vectors, wal_segment, lsn, time.time(), reason)
