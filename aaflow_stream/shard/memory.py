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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

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


def rows_to_table(entries: Sequence[tuple[Entry, Vectors]], dim: int) -> pa.Table:
    vectors = np.stack([v for _, v in entries]) if entries else np.empty((0, dim), np.float32)
    return entries_table([e for e, _ in entries], vectors)


def entries_table(entries: Sequence[Entry], vectors: Vectors) -> pa.Table:
    """``memory_row`` rows of ``entries`` and their (n, dim) ``vectors``."""
    dim = vectors.shape[1]
    flat = pa.array(vectors.reshape(-1).astype(np.float32, copy=False))
    columns = list(zip(*entries, strict=True)) if entries else [()] * len(Entry._fields)
    schema = memory_row(dim)
    return pa.Table.from_arrays(
        [
            *(pa.array(c, f.type) for c, f in zip(columns, list(schema)[:-1], strict=True)),
            pa.FixedSizeListArray.from_arrays(flat, dim),
        ],
        schema=schema,
    )


def read_entries(table: pa.Table | pa.RecordBatch) -> tuple[list[Entry], Vectors, list[int]]:
    """``memory_row`` rows as entries, their (n, dim) vectors and their texts' bytes."""
    columns = [table.column(name).to_pylist() for name in Entry._fields]
    vector_column = table.column("vector")
    if isinstance(vector_column, pa.ChunkedArray):
        vector_column = vector_column.combine_chunks()
    dim = vector_column.type.list_size
    vectors = vector_column.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    sizes = pc.binary_length(table.column("text")).to_pylist()
    return list(map(Entry._make, zip(*columns, strict=True))), vectors, sizes


@dataclass
class _Batch:
    """The entries of one ``remember``, in table order, and what became of them."""

    entries: list[Entry]
    vectors: Vectors
    sizes: list[int]  # text bytes
    ids: npt.NDArray[np.int64]
    lasting: npt.NDArray[np.bool_]
    groups: dict[str, list[int]]  # group -> positions
    appended: list[int] = field(default_factory=list)  # positions added as they came
    changed: dict[int, Entry] = field(default_factory=dict)  # by id: other rows written

    @classmethod
    def read(cls, table: pa.Table) -> _Batch:
        entries, vectors, sizes = read_entries(table)
        sessions = table.column("session").unique().to_pylist()
        if len(sessions) == 1:  # the usual case: one request, one session
            groups = {entries[0].group: list(range(len(entries)))} if entries else {}
        else:
            groups = {}
            for i, entry in enumerate(entries):
                groups.setdefault(entry.group, []).append(i)
        ephemeral = table.column("ephemeral").to_numpy(zero_copy_only=False)
        ids = table.column("memory_id").to_numpy()
        return cls(entries, vectors, sizes, ids, ~ephemeral, groups)


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
                self._put_all(table)
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
            self._put_all(batch)

    def _put_all(self, table: pa.Table | pa.RecordBatch) -> None:
        entries, vectors, sizes = read_entries(table)
        for entry, vector, size in zip(entries, vectors, sizes, strict=True):
            self._sessions.put(entry, vector, size)

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
        batch = _Batch.read(incoming)
        removed: list[Entry] = []
        with self._lock:
            for name, positions in batch.groups.items():
                self._remember_group(name, batch, positions, counts)
                removed += self._bound(name, counts)
            gone = {e.memory_id for e in removed}
            changed = [
                held
                for i, e in batch.changed.items()
                if i not in gone and not e.ephemeral and (held := self._sessions.get(i))
            ]
        # Rows added as they came are logged as they came (a take, not a rebuild); entries
        # evicted by this very batch are not logged at all, their removal is.
        as_received = np.zeros(len(batch.entries), dtype=np.bool_)
        as_received[batch.appended] = True
        as_received &= batch.lasting
        if gone or batch.changed:
            as_received &= ~np.isin(batch.ids, [*gone, *batch.changed])
        schema = memory_row(self.dim)
        if not incoming.schema.equals(schema):
            incoming = incoming.select(schema.names).cast(schema)
        puts = incoming if as_received.all() else incoming.filter(as_received)
        if changed:
            puts = pa.concat_tables([puts, rows_to_table(changed, self.dim)])
        self._log(puts, [e.memory_id for e in removed if not e.ephemeral])
        self.counts.add(counts)
        return counts

    def _near_pairs(self, a: Vectors, b: Vectors) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
        """The similarity of every (a, b) pair, and which pairs are near-duplicates.

        With ``ip``, the float32 products compared with the threshold rounded up to float32:
        the same pairs as comparing them in float64 (a float32 is >= t exactly when it is >=
        the least float32 >= t), without a float64 copy of the matrix. With ``l2``, in
        float64 (``similarity_matrix``): near-duplicates' squared distances are differences
        of nearly equal norms, which float32 would round away."""
        threshold = self.spec.near_duplicate
        if self.metric != "ip":
            sims = similarity_matrix(a, b, self.metric)
            return sims, sims >= -threshold
        floor = np.float32(threshold)
        if float(floor) < threshold:
            floor = np.nextafter(floor, np.float32(np.inf))
        dots = a @ b.T
        return dots, dots >= floor

    def _nearest_held(
        self, name: str, incoming: Vectors, lasting: npt.NDArray[np.bool_]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """Per incoming entry, the id and similarity of its closest near-duplicate held in
        group ``name`` (of the same lastingness), or -1 and -inf: one matrix product, then a
        closer look only at the entries that have one."""
        m = len(incoming)
        best_id = np.full(m, -1, dtype=np.int64)
        best_sim = np.full(m, -np.inf)
        group = self._sessions.group(name)
        if group is None or not len(group):
            return best_id, best_sim
        sims, near = self._near_pairs(incoming, group.vectors)
        some = np.flatnonzero(near.any(axis=1))
        if len(some):
            held_lasting = np.array([not e.ephemeral for e in group.entries])
            mergeable = near[some] & (lasting[some, None] == held_lasting[None, :])
            masked = np.where(mergeable, sims[some], -np.inf)
            best = masked.argmax(axis=1)
            best_sim[some] = masked[np.arange(len(some)), best]
            best_id[some] = [group.entries[i].memory_id for i in best.tolist()]
        return best_id, best_sim

    def _remember_group(
        self, name: str, batch: _Batch, positions: list[int], counts: MemoryCounts
    ) -> None:
        """One group's share of a batch, in batch order: each entry merges into the entry of
        its id, or else into its closest near-duplicate (held, or new earlier in the batch),
        or becomes a new row. Rows that can do nothing but the last, the usual case, are
        found with matrix operations and added in one step; the others go one by one."""
        if len(positions) == len(batch.entries):
            rows, incoming, ids, lasting = batch.entries, batch.vectors, batch.ids, batch.lasting
        else:
            rows = [batch.entries[p] for p in positions]
            incoming, ids = batch.vectors[positions], batch.ids[positions]
            lasting = batch.lasting[positions]
        mixed = not (lasting.all() or not lasting.any())  # lasting and ephemeral entries
        m = len(rows)
        best_held_id, best_held_sim = self._nearest_held(name, incoming, lasting)
        among, mergeable_among = self._near_pairs(incoming, incoming)
        if mixed:
            np.logical_and(mergeable_among, np.equal.outer(lasting, lasting), out=mergeable_among)
        # Only entries with a near-duplicate earlier in this batch need the sequential check;
        # usually no two are near (only the diagonal is), which one count tells.
        off_diagonal = np.count_nonzero(mergeable_among) - np.count_nonzero(
            np.diagonal(mergeable_among)
        )
        has_earlier = (
            np.asarray(np.tril(mergeable_among, -1).any(axis=1))
            if off_diagonal
            else np.zeros(m, dtype=np.bool_)
        )
        id_list = ids.tolist()
        held_id = np.array(self._sessions.holds(id_list), dtype=np.bool_)
        repeated = np.zeros(m, dtype=np.bool_)  # an earlier entry has the same id
        if len(set(id_list)) < m:
            _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
            repeated = first[inverse] < np.arange(m)
        plain: npt.NDArray[np.bool_] = np.isneginf(best_held_sim)
        plain &= ~(has_earlier | repeated | held_id)
        fresh = plain.copy()  # entries of this batch that became new rows
        if plain.all():  # the usual case: no copies of the rows to pick the plain ones
            sizes = (
                batch.sizes
                if len(rows) == len(batch.sizes)
                else [batch.sizes[p] for p in positions]
            )
            self._sessions.extend(name, rows, incoming, sizes)
            batch.appended += positions
            counts.added += m
        elif plain.any():
            at = np.flatnonzero(plain).tolist()
            self._sessions.extend(
                name,
                [rows[j] for j in at],
                incoming[at],
                [batch.sizes[positions[j]] for j in at],
            )
            batch.appended += [positions[j] for j in at]
            counts.added += len(at)
        for j in np.flatnonzero(~plain).tolist():
            entry, vector = rows[j], incoming[j]
            best_id: int | None = None
            same_id = self._sessions.entry(entry.memory_id)
            if same_id is not None and same_id.ephemeral == entry.ephemeral:
                best_id = entry.memory_id
            else:
                best_sim = best_held_sim[j]
                if best_sim > -np.inf:
                    best_id = int(best_held_id[j])
                if has_earlier[j]:
                    row = np.where(mergeable_among[j, :j] & fresh[:j], among[j, :j], -np.inf)
                    f = int(row.argmax())
                    if row[f] > best_sim:
                        best_id = rows[f].memory_id
            if best_id is None:
                fresh[j] = True
                self._sessions.put(entry, vector, batch.sizes[positions[j]])
                batch.changed[entry.memory_id] = entry
                counts.added += 1
                continue
            kept = self._sessions.entry(best_id)
            assert kept is not None
            merged = kept._replace(ts=max(kept.ts, entry.ts), weight=kept.weight + entry.weight)
            self._sessions.update(merged)
            batch.changed[merged.memory_id] = merged
            counts.merged += 1

    def _bound(self, name: str, counts: MemoryCounts) -> list[Entry]:
        """Evict the least weighty (then oldest, then smallest id) entries of a group over its
        bound of entries or text bytes."""
        group = self._sessions.group(name)
        spec = self.spec

        def within() -> bool:
            assert group is not None
            return len(group) <= spec.max_session_entries and (
                group.text_bytes <= spec.max_session_bytes
            )

        if group is None or within():
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
        for i in order.tolist():
            if within():
                break
            victim = entries[i]
            self._sessions.remove(victim.memory_id)
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
        self._log(None, [e.memory_id for e in gone if not e.ephemeral])
        self.counts.forgotten += len(gone)
        return len(gone)

    def _log(self, puts: pa.Table | None, removed: list[int]) -> None:
        """One record of the rows put (whole rows), one of the ids removed, one sync."""
        if puts is not None and puts.num_rows:
            self._wal.append(puts.combine_chunks().to_batches()[0])
        if removed:
            self._wal.append(pa.record_batch([pa.array(removed, pa.int64())], schema=REMOVED))
        if (puts is not None and puts.num_rows) or removed:
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
