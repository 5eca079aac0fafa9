"""A shard rank's memory index: the entries it owns, their compaction, log and snapshots.

Ownership (one stable rule, the same on every rank and across restarts of the same shard
count): a session's entries all live on rank ``crc32(session) % S``; a shared entry (no
session) on rank ``memory_id % S``. Keeping a session on one rank makes compaction and the
per-session bound local, exact decisions with no cross-rank step; lookups still reach every
rank in the same round as retrieval, for the shared entries.

An entry's id is ``memory_id(session, text)``: the same text remembered twice in a session
is the same entry. Writes (``remember``) merge near-duplicates, then enforce the session's
bound, then log what changed (whole rows put, ids removed) and sync before returning, so an
acknowledged write survives ``kill -9``; recovery loads ``memory/snapshot/`` and replays
``memory/wal/``. Ephemeral entries are neither logged nor merged with lasting ones: they
vanish with the process, by design, and promotion refuses them (``Client.promote``).

Threads: the rank's MPI thread writes (rounds run one at a time); ``metrics`` readers take
the lock.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..durability.fsio import make_dir
from ..errors import StorageError
from ..spec import MemorySpec, MemoryWeights
from . import snapshot as snap
from .memory_sessions import Entry, Sessions, Vectors
from .scoring import memory_hits, similarity_matrix
from .wal import WriteAheadLog

log = logging.getLogger(__name__)

MEMORY_DIR: Final = "memory"
WAL_DIR: Final = "wal"
# Snapshot the memory index once its log has grown by this much since the last one.
SNAPSHOT_WAL_BYTES: Final = 64 * 2**20


def memory_row(dim: int) -> pa.Schema:
    """A memory entry as logged, snapshotted and sent to its owner."""
    return pa.schema(
        [
            ("memory_id", pa.int64()),
            ("session", pa.string()),  # "" for a shared entry
            ("kind", pa.string()),
            ("text", pa.large_string()),
            ("source", pa.string()),
            ("ts", pa.float64()),
            ("weight", pa.float64()),
            ("ephemeral", pa.bool_()),
            ("vector", pa.list_(pa.float32(), dim)),
        ]
    )


REMOVED = pa.schema([("removed_id", pa.int64())])


def memory_id(session: str, text: str) -> int:
    """A stable 63-bit id of (session, text)."""
    digest = hashlib.blake2b(f"{session}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def owner(session: str, entry_id: int, size: int) -> int:
    """The rank that holds an entry (see the module docstring)."""
    if session:
        return zlib.crc32(session.encode()) % size
    return entry_id % size


@dataclass
class MemoryCounts:
    added: int = 0
    merged: int = 0  # compactions: entries folded into a near-duplicate
    evicted: int = 0  # removed by a session's bound
    forgotten: int = 0

    def add(self, other: MemoryCounts) -> None:
        self.added += other.added
        self.merged += other.merged
        self.evicted += other.evicted
        self.forgotten += other.forgotten


def rows_to_table(entries: list[tuple[Entry, Vectors]], dim: int) -> pa.Table:
    vectors = np.stack([v for _, v in entries]) if entries else np.empty((0, dim), np.float32)
    flat = pa.array(vectors.reshape(-1).astype(np.float32, copy=False))
    return pa.table(
        {
            "memory_id": pa.array([e.memory_id for e, _ in entries], pa.int64()),
            "session": pa.array([e.session for e, _ in entries], pa.string()),
            "kind": pa.array([e.kind for e, _ in entries], pa.string()),
            "text": pa.array([e.text for e, _ in entries], pa.large_string()),
            "source": pa.array([e.source for e, _ in entries], pa.string()),
            "ts": pa.array([e.ts for e, _ in entries], pa.float64()),
            "weight": pa.array([e.weight for e, _ in entries], pa.float64()),
            "ephemeral": pa.array([e.ephemeral for e, _ in entries], pa.bool_()),
            "vector": pa.FixedSizeListArray.from_arrays(flat, dim),
        },
        schema=memory_row(dim),
    )


def table_to_rows(table: pa.Table | pa.RecordBatch) -> list[tuple[Entry, Vectors]]:
    columns = {
        name: table.column(name).to_pylist()
        for name in ("memory_id", "session", "kind", "text", "source", "ts", "weight", "ephemeral")
    }
    vector_column = table.column("vector")
    if isinstance(vector_column, pa.ChunkedArray):
        vector_column = vector_column.combine_chunks()
    dim = vector_column.type.list_size
    vectors = vector_column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    entries = [Entry(*row) for row in zip(*columns.values(), strict=True)]
    return list(zip(entries, vectors, strict=True))


class MemoryStore:
    """The memory entries one rank owns (see the module docstring)."""

    def __init__(
        self, shard_dir: Path, *, dim: int, metric: str, spec: MemorySpec, record: bool
    ) -> None:
        self.directory = shard_dir / MEMORY_DIR
        self.dim, self.metric, self.spec = dim, metric, spec
        self._sessions = Sessions(dim)
        self._lock = threading.Lock()
        self.counts = MemoryCounts()
        try:
            make_dir(self.directory)
            found = snap.recover(self.directory)
            if found is not None:
                table = snap.load_table(self.directory / snap.SNAPSHOT_DIR, found.vectors)
                for entry, vector in table_to_rows(table):
                    self._sessions.put(entry, vector)
            info = found or snap.EMPTY
            self._wal = WriteAheadLog.open(
                self.directory / WAL_DIR,
                first_segment=info.wal_segment,
                after_lsn=info.lsn,
                apply=self._replay,
                record=record,
            )
            self._wal.drop_before(info.wal_segment)
        except OSError as exc:
            raise StorageError(f"cannot open the memory index in {self.directory}: {exc}") from exc
        self._snapshot_lsn = info.lsn
        self._snapshot_logged = self._wal.logged_bytes
        log.info("%s: %d memory entries", self.directory, len(self._sessions))

    def _replay(self, _lsn: int, batch: pa.RecordBatch) -> None:
        if "removed_id" in batch.schema.names:
            for removed in batch.column("removed_id").to_pylist():
                self._sessions.remove(removed)
        else:
            for entry, vector in table_to_rows(batch):
                self._sessions.put(entry, vector)

    # --- state -------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self._sessions)

    def session_ids(self, session: str) -> list[int]:
        with self._lock:
            return self._sessions.ids_of(session)

    def entries(self) -> list[tuple[Entry, Vectors]]:
        """Every entry held (a copy), shared ones included."""
        with self._lock:
            return [
                (e, g.vectors[i].copy())
                for _, g in self._sessions.groups()
                for i, e in enumerate(g.entries)
            ]

    # --- writes (the owner's side of an exchange) ---------------------------------------------

    def remember(self, incoming: pa.Table) -> MemoryCounts:
        """Merge, add, bound, then log and sync (module docstring); what happened."""
        counts = MemoryCounts()
        puts: dict[int, tuple[Entry, Vectors]] = {}
        removed: list[Entry] = []
        rows = table_to_rows(incoming)
        with self._lock:
            by_group: dict[str, list[int]] = {}
            for i, (entry, _) in enumerate(rows):
                by_group.setdefault(entry.group, []).append(i)
            for name, positions in by_group.items():
                self._remember_group(name, [rows[i] for i in positions], puts, counts)
                removed += self._bound(name, counts)
        self._log(
            [p for p in puts.values() if not p[0].ephemeral],
            [e.memory_id for e in removed if not e.ephemeral],
        )
        self.counts.add(counts)
        return counts

    def _near(self, sims: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        threshold = self.spec.near_duplicate
        return sims >= threshold if self.metric == "ip" else sims >= -threshold

    def _remember_group(
        self,
        name: str,
        rows: list[tuple[Entry, Vectors]],
        puts: dict[int, tuple[Entry, Vectors]],
        counts: MemoryCounts,
    ) -> None:
        group = self._sessions.group(name)
        existing = list(group.entries) if group is not None else []
        incoming = np.stack([v for _, v in rows])
        lasting = np.array([not e.ephemeral for e, _ in rows])
        m = len(rows)
        # The closest near-duplicate already held (of the same lastingness), per entry.
        best_held = np.full(m, -1)
        best_held_sim = np.full(m, -np.inf)
        if group is not None and existing:
            held_lasting = np.array([not e.ephemeral for e in existing])
            sims = similarity_matrix(incoming, group.vectors, self.metric)
            mergeable = self._near(sims) & (lasting[:, None] == held_lasting[None, :])
            masked = np.where(mergeable, sims, -np.inf)
            best_held = masked.argmax(axis=1)
            best_held_sim = masked[np.arange(m), best_held]
        among = similarity_matrix(incoming, incoming, self.metric)
        mergeable_among = self._near(among) & (lasting[:, None] == lasting[None, :])
        # Only entries with a near-duplicate earlier in this batch need the sequential check.
        has_earlier = np.tril(mergeable_among, -1).any(axis=1)
        fresh = np.zeros(m, dtype=bool)  # entries of this batch that became new rows
        for j, (entry, vector) in enumerate(rows):
            best_id: int | None = None
            same_id = self._sessions.entry(entry.memory_id)
            if same_id is not None and same_id.ephemeral == entry.ephemeral:
                best_id = entry.memory_id
            else:
                best_sim = best_held_sim[j]
                if best_sim > -np.inf:
                    best_id = existing[best_held[j]].memory_id
                if has_earlier[j]:
                    row = np.where(mergeable_among[j, :j] & fresh[:j], among[j, :j], -np.inf)
                    f = int(row.argmax())
                    if row[f] > best_sim:
                        best_id = rows[f][0].memory_id
            if best_id is None:
                fresh[j] = True
                self._sessions.put(entry, vector)
                puts[entry.memory_id] = (entry, vector)
                counts.added += 1
                continue
            current = self._sessions.get(best_id)
            assert current is not None
            kept, kept_vector = current
            merged = Entry(
                kept.memory_id,
                kept.session,
                kept.kind,
                kept.text,
                kept.source,
                max(kept.ts, entry.ts),
                kept.weight + entry.weight,
                kept.ephemeral,
            )
            self._sessions.put(merged, kept_vector)
            puts[merged.memory_id] = (merged, kept_vector)
            counts.merged += 1

    def _bound(self, name: str, counts: MemoryCounts) -> list[Entry]:
        """Evict the least weighty (then oldest, then smallest id) entries of a group over its
        bound of entries or text bytes."""
        group = self._sessions.group(name)
        if group is None:
            return []
        spec = self.spec
        over_count = len(group) - spec.max_session_entries
        if over_count <= 0 and group.text_bytes <= spec.max_session_bytes:
            return []
        entries = list(group.entries)
        order = np.lexsort(
            (
                np.array([e.memory_id for e in entries], dtype=np.int64),
                np.array([e.ts for e in entries]),
                np.array([e.weight for e in entries]),
            )
        )
        gone: list[Entry] = []
        remaining_bytes = group.text_bytes
        for i in order:
            if len(entries) - len(gone) <= spec.max_session_entries and (
                remaining_bytes <= spec.max_session_bytes
            ):
                break
            victim = entries[i]
            self._sessions.remove(victim.memory_id)
            remaining_bytes -= victim.nbytes
            gone.append(victim)
        counts.evicted += len(gone)
        return gone

    def forget(self, sessions: list[str]) -> int:
        """Remove every entry of these sessions, durably; how many."""
        with self._lock:
            gone = [
                e
                for s in dict.fromkeys(sessions)
                for i in self._sessions.ids_of(s)
                if (e := self._sessions.remove(i)) is not None
            ]
        self._log([], [e.memory_id for e in gone if not e.ephemeral])
        self.counts.forgotten += len(gone)
        return len(gone)

    def _log(self, puts: list[tuple[Entry, Vectors]], removed: list[int]) -> None:
        if puts:
            self._wal.append(rows_to_table(puts, self.dim).combine_chunks().to_batches()[0])
        if removed:
            self._wal.append(pa.record_batch([pa.array(removed, pa.int64())], schema=REMOVED))
        if puts or removed:
            self._wal.sync()
            if self._wal.logged_bytes - self._snapshot_logged >= SNAPSHOT_WAL_BYTES:
                self.snapshot("log size")

    # --- reads -------------------------------------------------------------------------------

    def search(
        self,
        queries: npt.NDArray[np.float32],
        sessions: list[str],
        k: int,
        weights: MemoryWeights,
        now: float,
        rank: int,
    ) -> pa.Table:
        """This rank's exact top-k entries per query (``scoring.memory_hits``)."""
        with self._lock:
            return memory_hits(
                self._sessions, queries, sessions, k, weights, now, self.metric, rank
            )

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self, reason: str) -> None:
        """Write every lasting entry as one table, then drop the log it covers."""
        if self._wal.last_lsn == self._snapshot_lsn:
            return
        segment = self._wal.rotate()
        lsn = self._wal.last_lsn
        lasting = [(e, v) for e, v in self.entries() if not e.ephemeral]
        table = rows_to_table(lasting, self.dim)
        snap.write(self.directory, None, table, snap.now_info(len(lasting), segment, lsn, reason))
        self._wal.covered(lsn)
        self._wal.drop_before(segment)
        self._snapshot_lsn, self._snapshot_logged = lsn, self._wal.logged_bytes

    def close(self) -> None:
        """Snapshot what the log holds, then close it. Idempotent."""
        try:
            self.snapshot("close")
        finally:
            self._wal.close()
