"""One shard's FAISS index and row metadata, made durable by a write-ahead log and snapshots.

The index is ``IndexIDMap2(index_factory(dim, description, metric))`` keyed by ``chunk_id``;
the metadata (doc_id, seq, text, source, ts, doc_version per chunk) is an Arrow table.

On disk, under ``<data_dir>/shard-<r>/``:

- ``shard.json``: the shard's shape (dim, index, metric), written when the shard is created;
  a topology of another shape is refused.
- ``wal/wal-<NNNNNNNN>.log``: every batch applied since the snapshot (``wal.py``).
- ``snapshot/{index.faiss, meta.arrow, snapshot.json}`` (``snapshot.py``): open with
  ``faiss.read_index`` and ``pyarrow.ipc.open_file``.

Opening loads the snapshot and replays the log. ``append`` logs a batch, then applies it: an
upsert batch (with ``embedding``) is idempotent by chunk_id; a tombstone batch
(``schemas.TOMBSTONE``, recognised by its ``keep_version`` column) removes, per row, every
chunk of ``doc_id`` whose ``doc_version`` differs from ``keep_version`` (all of them for
``DELETE_ALL``). With ``wal_sync="batch"`` the record is synced before it is applied; with
``"interval"`` it is applied at once and made durable by the caller's next ``sync()``; with
``"none"`` nothing is logged and a batch becomes durable only with the next snapshot.

Threads: ingestion (the actor's loop), queries (the MPI thread) and snapshots (a worker)
share the store. ``_lock`` guards the index and metadata (held by queries and applies, never
across an fsync or a file write); ``_write_lock`` keeps WAL order equal to apply order and lets
a snapshot cut both at one point; ``_snapshot_lock`` runs one snapshot at a time.

Errors (``errors.py``): ``StorageError`` for files that cannot be written or are damaged;
``BadBatch`` (also a ``ValueError``) for a batch that does not fit the shard, refused before
anything is logged; ``ChunkNotStored`` (also a ``KeyError``) for rows asked of an unknown id.
"""

from __future__ import annotations

import bisect
import json
import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..durability.fsio import make_dir, write_atomic
from ..errors import BadBatch, ChunkNotStored, SpecError, StorageError
from ..schemas import DELETE_ALL, EMBEDDING, METADATA, TOMBSTONE
from . import snapshot as snap
from . import topk
from .filters import QueryFilter
from .topk import Ids, Scores
from .wal import WriteAheadLog

log = logging.getLogger(__name__)

MANIFEST_FILE = "shard.json"
WAL_DIR = "wal"
TIE_MARGIN = 16
WalSync = Literal["batch", "interval", "none"]


def _metric(name: str) -> int:
    import faiss

    return {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[name]


def _clamp_ms(value: int) -> int:
    return max(-(2**63), min(2**63 - 1, value))


def is_tombstone(batch: pa.RecordBatch) -> bool:
    return "keep_version" in batch.schema.names


class ShardStore:
    def __init__(
        self,
        directory: Path,
        *,
        dim: int,
        index: str,
        metric: str,
        wal_sync: WalSync = "batch",
    ) -> None:
        import faiss

        self._faiss = faiss
        self.directory = directory
        self.dim = dim
        self._description = index
        self._metric = metric
        self._sync_each = wal_sync == "batch"
        self._meta: list[pa.RecordBatch] = []
        self._meta_bytes = 0  # Arrow bytes of ``_meta`` (status and metrics)
        self._starts: list[int] = []  # first row of each metadata batch in the whole table
        self._where: dict[int, int] = {}  # live chunk id -> its latest row in the whole table
        # doc_id -> {live chunk id: doc_version}, built lazily (``_doc_index``): metadata
        # batches of new chunks wait in ``_unindexed`` until an update, a tombstone naming a
        # stored document or a read needs the index, so a first ingestion never pays for it.
        self._docs: dict[str, dict[int, int]] = {}
        self._unindexed: list[pa.RecordBatch] = []
        self._doc_names: set[str] = set()  # a superset of the stored documents' ids
        self._dead_rows = False  # some rows of ``_meta`` are replaced or removed
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        try:
            make_dir(directory)
            self._check_manifest()
            found = snap.recover(directory)
            self.index = self._load_base(found)
            info = found or snap.EMPTY
            self._wal = WriteAheadLog.open(
                directory / WAL_DIR,
                first_segment=info.wal_segment,
                after_lsn=info.lsn,
                apply=self._replay,
                record=wal_sync != "none",
            )
            self._wal.drop_before(info.wal_segment)  # covered; a crash left them behind
        except OSError as exc:  # e.g. an unwritable data directory
            raise StorageError(f"cannot open the shard in {directory}: {exc}") from exc
        self._snapshot_lsn = info.lsn
        self._snapshot_logged = 0
        self._snapshot_at = time.monotonic()
        replayed = self._wal.last_lsn - info.lsn
        log.info(
            "%s: %d vectors (snapshot LSN %d, %d records replayed)",
            directory,
            self.count,
            info.lsn,
            replayed,
        )

    # --- opening -----------------------------------------------------------------------------

    def _check_manifest(self) -> None:
        manifest = self.directory / MANIFEST_FILE
        expected = {"dim": self.dim, "index": self._description, "metric": self._metric}
        if not manifest.exists():
            write_atomic(manifest, json.dumps(expected).encode())
            return
        saved = json.loads(manifest.read_text())
        if {k: saved.get(k) for k in expected} != expected:
            raise SpecError(
                f"shard data in {self.directory} was built with {saved}, "
                f"the topology asks for {expected}: use another data_dir or remove it"
            )

    def _load_base(self, info: snap.SnapshotInfo | None) -> Any:
        if info is not None:
            index, table = snap.load(self.directory / snap.SNAPSHOT_DIR, info.vectors)
        elif (self.directory / snap.INDEX_FILE).exists():  # the layout before the WAL
            index, table = snap.load(self.directory, None)
        else:
            inner = self._faiss.index_factory(self.dim, self._description, _metric(self._metric))
            return self._faiss.IndexIDMap2(inner)
        for batch in table.cast(METADATA).to_batches():
            self._remember(batch)
        return index

    def _replay(self, _lsn: int, batch: pa.RecordBatch) -> None:
        # Copy the metadata out: kept as is, it would pin the whole segment's bytes.
        self._apply(batch, copy=True)

    # --- state -------------------------------------------------------------------------------

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def last_lsn(self) -> int:
        """The LSN of the last batch appended (and applied)."""
        return self._wal.last_lsn

    @property
    def durable_lsn(self) -> int:
        """Every batch up to this LSN is on disk and survives a crash."""
        return self._wal.durable_lsn

    @property
    def logs(self) -> bool:
        """Batches are logged (any ``wal_sync`` but ``none``)."""
        return self._wal.record

    @property
    def snapshot_lsn(self) -> int:
        """The last LSN the newest snapshot covers."""
        return self._snapshot_lsn

    @property
    def memory_bytes(self) -> int:
        """About what the shard holds in memory: the index's codes and ids (8 bytes each)
        plus the chunk metadata (replaced rows included until a snapshot compacts them)."""
        inner = self._faiss.downcast_index(getattr(self.index, "index", self.index))
        code = int(getattr(inner, "code_size", 0) or self.dim * 4)
        return self.count * (code + 8) + self._meta_bytes

    @property
    def wal_bytes(self) -> int:
        """Bytes logged since the last snapshot (recovered ones included)."""
        return self._wal.logged_bytes - self._snapshot_logged

    @property
    def snapshot_age_s(self) -> float:
        return time.monotonic() - self._snapshot_at

    # --- writes ------------------------------------------------------------------------------

    def append(self, batch: pa.RecordBatch) -> int:
        """Log ``batch`` (upsert or tombstone), then apply it; its LSN.

        A batch that could not be applied is refused before it is logged: a logged record
        must replay.
        """
        self._check(batch)
        with self._write_lock:
            lsn = self._wal.append(batch)
            if self._sync_each:
                self._wal.sync()
            self._apply(batch)
        return lsn

    def upsert(self, batch: pa.RecordBatch) -> int:
        """``append`` for a batch of rows with embeddings."""
        if is_tombstone(batch):
            raise BadBatch("upsert() got a tombstone batch: use append()")
        return self.append(batch)

    def chunks_of(self, doc_ids: Sequence[str]) -> int:
        """How many chunks of these documents this shard holds."""
        with self._lock:
            docs = self._doc_index()
            return sum(len(docs.get(doc_id, ())) for doc_id in set(doc_ids))

    def delete_docs(self, doc_ids: Sequence[str]) -> int:
        """Remove every chunk of these documents (a logged tombstone batch); its LSN."""
        n = len(doc_ids)
        columns = [
            pa.array(doc_ids, pa.string()),
            pa.array(np.full(n, DELETE_ALL, np.uint64)),
            *(pa.nulls(n, f.type) for f in list(TOMBSTONE)[2:]),
        ]
        return self.append(pa.record_batch(columns, schema=TOMBSTONE))

    def sync(self) -> int:
        """fsync the log now; the durable LSN."""
        return self._wal.sync()

    def make_durable(self, reason: str) -> int:
        """Everything appended so far survives a crash once this returns: the log synced, or
        without a log (``wal_sync: none``) a snapshot taken. The durable LSN."""
        if self.logs:
            return self.sync()
        self.snapshot(reason)
        return self.durable_lsn

    def _check(self, batch: pa.RecordBatch) -> None:
        schema = batch.schema
        if is_tombstone(batch):
            needed = [TOMBSTONE.field("doc_id"), TOMBSTONE.field("keep_version")]
        else:
            needed = [*METADATA, pa.field(EMBEDDING, pa.list_(pa.float32(), self.dim))]
        for field in needed:
            if field.name not in schema.names:
                raise BadBatch(f"a batch for {self.directory} lacks column {field.name!r}")
            got = schema.field(field.name).type
            if got != field.type:
                raise BadBatch(
                    f"a batch for {self.directory}: column {field.name!r} is {got}, "
                    f"expected {field.type}"
                )
        keys = ["doc_id", "keep_version"] if is_tombstone(batch) else ["chunk_id", EMBEDDING]
        for key in keys:
            if batch.column(key).null_count:
                raise BadBatch(f"a batch for {self.directory} has nulls in {key!r}")

    def _apply(self, batch: pa.RecordBatch, *, copy: bool = False) -> None:
        if is_tombstone(batch):
            self._apply_tombstones(batch)
        else:
            self._apply_upsert(batch, copy=copy)

    def _apply_upsert(self, batch: pa.RecordBatch, *, copy: bool) -> None:
        ids = batch.column("chunk_id").to_numpy().view(np.int64)
        if len(np.unique(ids)) != len(ids):  # keep each id's last row, as if sent one by one
            _, first = np.unique(ids[::-1], return_index=True)
            batch = batch.take(pa.array(np.sort(len(ids) - 1 - first)))
            ids = batch.column("chunk_id").to_numpy().view(np.int64)
        column = batch.column(EMBEDDING)
        flat = column.values.slice(column.offset * self.dim, len(column) * self.dim)
        vectors = flat.to_numpy(zero_copy_only=True).reshape(-1, self.dim)
        meta = batch.select(METADATA.names)
        if copy:
            meta = meta.take(pa.array(np.arange(meta.num_rows)))
        id_list = ids.tolist()
        with self._lock:
            present = [i for i in id_list if i in self._where]
            if present:
                self.index.remove_ids(np.array(present, dtype=np.int64))
                self._dead_rows = True
            if not self.index.is_trained:
                self.index.train(vectors)
            self.index.add_with_ids(vectors, ids)
            self._remember(meta)

    def _apply_tombstones(self, batch: pa.RecordBatch) -> None:
        doc_ids = batch.column("doc_id").to_pylist()
        with self._lock:
            known = self._doc_names.intersection(doc_ids)  # empty for new documents
            if not known:
                return
            docs = self._doc_index()
            keep = batch.column("keep_version").to_pylist()
            doomed: list[int] = []
            for doc_id, version in zip(doc_ids, keep, strict=True):
                chunks = docs.get(doc_id) if doc_id in known else None
                if not chunks:
                    continue
                gone = [c for c, v in chunks.items() if version == DELETE_ALL or v != version]
                for chunk in gone:
                    del chunks[chunk]
                    del self._where[chunk]
                if not chunks:
                    del docs[doc_id]
                doomed.extend(gone)
            if doomed:
                self.index.remove_ids(np.array(doomed, dtype=np.int64))
                self._dead_rows = True

    def _remember(self, meta: pa.RecordBatch) -> None:
        """Index ``meta``'s rows (the caller holds the lock or owns the store)."""
        start = self._starts[-1] + self._meta[-1].num_rows if self._meta else 0
        self._meta.append(meta)
        self._meta_bytes += meta.nbytes
        self._starts.append(start)
        chunks = meta.column("chunk_id").to_pylist()
        docs = meta.column("doc_id").to_pylist()
        where = self._where
        self._doc_names.update(docs)
        if where.keys().isdisjoint(chunks):  # all new (a first ingestion): bulk updates
            where.update(zip(chunks, range(start, start + len(chunks)), strict=True))
            self._unindexed.append(meta)
            return
        by_doc = self._doc_index()
        versions = meta.column("doc_version").to_pylist()
        for row, (chunk, doc, version) in enumerate(zip(chunks, docs, versions, strict=True)):
            old = where.get(chunk)
            mine = by_doc.setdefault(doc, {})
            if old is not None and chunk not in mine:  # the id moved to another document
                self._forget(self._value(old, "doc_id"), chunk)
            where[chunk] = start + row
            mine[chunk] = version

    def _doc_index(self) -> dict[str, dict[int, int]]:
        """The by-document index, brought up to date (the caller holds the lock)."""
        by_doc = self._docs
        for meta in self._unindexed:
            columns = (meta.column(c).to_pylist() for c in ("chunk_id", "doc_id", "doc_version"))
            for chunk, doc, version in zip(*columns, strict=True):
                mine = by_doc.get(doc)
                if mine is None:
                    mine = by_doc[doc] = {}
                mine[chunk] = version
        self._unindexed.clear()
        return by_doc

    def _forget(self, doc_id: str, chunk: int) -> None:
        chunks = self._docs.get(doc_id, {})
        chunks.pop(chunk, None)
        if not chunks:
            self._docs.pop(doc_id, None)

    def _value(self, row: int, column: str) -> Any:
        i = bisect.bisect_right(self._starts, row) - 1
        return self._meta[i].column(column)[row - self._starts[i]].as_py()

    # --- reads -------------------------------------------------------------------------------

    def _table(self) -> pa.Table:
        return pa.Table.from_batches(self._meta, schema=METADATA)

    def _live_positions(self) -> npt.NDArray[np.int64] | None:
        """The rows of live chunks, or None when every row is live (the caller holds the lock)."""
        if not self._dead_rows:
            return None
        rows = np.fromiter(self._where.values(), dtype=np.int64, count=len(self._where))
        rows.sort()
        return rows

    def _selector(self, allowed: QueryFilter) -> Any:
        """A FAISS id selector for the live rows passing ``allowed`` (the caller holds the lock)."""
        if not self._meta:
            return self._faiss.IDSelectorBatch(np.zeros(0, dtype=np.int64))
        table = self._table()
        mask = pa.array(np.ones(table.num_rows, dtype=bool))
        # A filter reaches here checked by the gateway; still, no value may fail the round on
        # this rank alone: no sources match nothing, times are clamped to the int64 column's
        # range, an inverted range matches nothing.
        if allowed.sources is not None:
            sources = pa.array(allowed.sources, pa.string())
            mask = pc.and_(mask, pc.is_in(table.column("source"), value_set=sources))
        ts = table.column("ts").cast(pa.int64())
        if allowed.ts_from_ms is not None:
            mask = pc.and_(mask, pc.greater_equal(ts, _clamp_ms(allowed.ts_from_ms)))
        if allowed.ts_to_ms is not None:
            mask = pc.and_(mask, pc.less_equal(ts, _clamp_ms(allowed.ts_to_ms)))
        ids = table.column("chunk_id").filter(mask).to_numpy().view(np.int64)
        # A replaced row's older copy, or a removed chunk's row, may pass the filter: keep
        # only ids whose live row is the one that passed.
        rows = np.flatnonzero(np.asarray(mask))
        latest = [
            i for i, r in zip(ids.tolist(), rows.tolist(), strict=True) if self._where.get(i) == r
        ]
        return self._faiss.IDSelectorBatch(np.array(latest, dtype=np.int64))

    def _search(
        self, queries: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None
    ) -> tuple[Scores, Ids]:
        total = self.count
        if total == 0:
            nq = len(queries)
            return np.full((nq, k), np.nan, np.float32), np.full((nq, k), -1, np.int64)
        params, selector = None, None
        if allowed is not None:
            selector = self._selector(allowed)  # kept alive here for the search
            params = self._faiss.SearchParameters()
            params.sel = selector
        scores, ids = self.index.search(queries, min(total, k + TIE_MARGIN), params=params)
        return topk.select(scores, ids, k, self._metric)  # type: ignore[arg-type]

    def search(
        self, queries: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None = None
    ) -> tuple[Scores, Ids]:
        """This shard's exact top-k per query under ``shard.topk.order``: (nq, k), -1 padded.

        FAISS cuts at k without looking at ids, so a tie at the cut could drop the smaller id:
        ask for ``TIE_MARGIN`` more and re-order. (Ties wider than that are not resolved.)
        """
        with self._lock:
            return self._search(queries, k, allowed)

    def search_rows(
        self, queries: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None = None
    ) -> tuple[Scores, Ids, pa.Table]:
        """``search`` plus the metadata rows of the ids found (``ids >= 0``, row-major), in
        one hold of the lock: a removal between the two cannot leave an id without its row."""
        with self._lock:
            scores, ids = self._search(queries, k, allowed)
            return scores, ids, self._rows(ids[ids >= 0].tolist())

    def rows(self, ids: Sequence[int]) -> pa.Table:
        """The metadata rows of ``ids`` (all stored here), in that order."""
        with self._lock:
            return self._rows(ids)

    def _rows(self, ids: Sequence[int]) -> pa.Table:
        try:
            positions = [self._where[i] for i in ids]
        except KeyError as exc:
            raise ChunkNotStored(
                f"chunk id {exc.args[0]} is not stored in {self.directory}"
            ) from None
        return self._table().take(pa.array(positions, pa.int64()))

    def metadata(self) -> pa.Table:
        """One row per live chunk id (the latest version of a replaced row)."""
        with self._lock:
            if not self._meta:
                return METADATA.empty_table()
            table, live = self._table(), self._live_positions()
        return table if live is None else table.take(pa.array(live))

    # --- snapshots ---------------------------------------------------------------------------

    def snapshot(self, reason: str, *, force: bool = False) -> snap.SnapshotInfo | None:
        """Write a snapshot of everything applied so far, then drop the log it covers.

        Skipped (None) when nothing was appended since the last one, unless ``force``.
        Ingestion and queries pause only while the log is cut and the index copied in memory.
        """
        with self._snapshot_lock:
            with self._write_lock:
                if self._wal.last_lsn == self._snapshot_lsn and not force:
                    return None
                segment = self._wal.rotate()  # later records go to a segment it does not cover
                lsn, logged = self._wal.last_lsn, self._wal.logged_bytes
                with self._lock:
                    index = self._faiss.clone_index(self.index)
                    batches, live = list(self._meta), self._live_positions()
            table = pa.Table.from_batches(batches, schema=METADATA)
            if live is not None:
                table = table.take(pa.array(live))
            info = snap.now_info(int(index.ntotal), segment, lsn, reason)
            snap.write(self.directory, index, table, info)
            self._wal.covered(lsn)
            self._wal.drop_before(segment)
            for legacy in (snap.INDEX_FILE, snap.META_FILE):
                (self.directory / legacy).unlink(missing_ok=True)
            self._snapshot_lsn, self._snapshot_logged = lsn, logged
            self._snapshot_at = time.monotonic()
            return info

    def close(self) -> None:
        """Sync and close the log (waits for a snapshot in progress). Idempotent."""
        with self._snapshot_lock:
            try:
                self._wal.sync()
            finally:
                self._wal.close()
