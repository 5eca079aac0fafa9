"""One shard's chunks, made durable by a write-ahead log and snapshots.

The vectors live in a ``VectorIndex`` (``shard.vectors``: ``IndexIDMap2`` keyed by
``chunk_id``), the metadata (doc_id, seq, text, source, ts, doc_version per chunk) in
``ChunkRows`` (``shard.rows``); this class keeps the two in step, logs and snapshots them.

On disk, under ``<data_dir>/shard-<r>/``:

- ``shard.json``: the shard's shape (dim, index, metric), written when the shard is created;
  a topology of another shape is refused.
- ``wal/wal-<NNNNNNNN>.log``: every batch applied since the snapshot (``wal.py``).
- ``snapshot/{index.faiss, meta.arrow, snapshot.json}`` (``snapshot.py``): open with
  ``faiss.read_index`` and ``pyarrow.ipc.open_file``.
- ``keywords/`` (with ``keywords=True``): a tantivy BM25 index over the chunks' text
  (``keywords.py``, which documents how it is kept in step, committed and recovered).

Opening loads the snapshot and replays the log. ``append`` logs a batch, then applies it: an
upsert batch (with ``embedding``) is idempotent by chunk_id; a tombstone batch
(``schemas.TOMBSTONE``, recognised by its ``keep_version`` column) removes, per row, every
chunk of ``doc_id`` whose ``doc_version`` differs from ``keep_version`` (all of them for
``DELETE_ALL``). With ``wal_sync="batch"`` the record is synced before it is applied; with
``"interval"`` it is applied at once and made durable by the caller's next ``sync()``; with
``"none"`` nothing is logged and a batch becomes durable only with the next snapshot.

With ``keywords=True`` every applied record is also staged in the keyword index, which
commits what the log made durable when the store syncs (at most every ``keyword_commit_s``,
at once after a tombstone removed chunks), snapshots or closes; ``keyword_stats`` and
``keyword_search`` answer the two halves of an exact distributed BM25 query.

Threads: ingestion (the actor's loop), queries (the MPI thread) and snapshots (a worker)
share the store. ``_lock`` guards the index and metadata (held by queries and applies, never
across an fsync or a file write); ``_write_lock`` keeps WAL order equal to apply order and lets
a snapshot cut both at one point; ``_snapshot_lock`` runs one snapshot at a time.

Errors (``errors.py``): ``StorageError`` for files that cannot be written or are damaged;
``BadBatch`` (also a ``ValueError``) for a batch that does not fit the shard, refused before
anything is logged; ``ChunkNotStored`` (also a ``KeyError``) for rows asked of an unknown id.
"""

from __future__ import annotations

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

from ..durability.fsio import make_dir, write_atomic
from ..errors import BadBatch, SpecError, StorageError
from ..schemas import DELETE_ALL, EMBEDDING, METADATA, TOMBSTONE
from . import snapshot as snap
from .bm25 import KeywordStats
from .filters import QueryFilter
from .keywords import KeywordIndex
from .rows import ChunkRows
from .topk import Ids, Scores
from .vectors import VectorIndex
from .wal import WriteAheadLog

log = logging.getLogger(__name__)

MANIFEST_FILE = "shard.json"
WAL_DIR = "wal"
KEYWORDS_DIR = "keywords"
WalSync = Literal["batch", "interval", "none"]


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
        keywords: bool = False,
        keyword_commit_s: float = 1.0,
    ) -> None:
        self.directory = directory
        self.dim = dim
        self._description = index
        self._metric = metric
        self._sync_each = wal_sync == "batch"
        self._rows = ChunkRows(str(directory))
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._keywords: KeywordIndex | None = None
        self._keyword_commit_s = keyword_commit_s
        self._keyword_commit_at = time.monotonic()
        try:
            make_dir(directory)
            self._check_manifest()
            found = snap.recover(directory)
            self._vectors = self._load_base(found)
            info = found or snap.EMPTY
            if keywords:
                self._open_keywords(info.lsn)
            self._wal = WriteAheadLog.open(
                directory / WAL_DIR,
                first_segment=info.wal_segment,
                after_lsn=info.lsn,
                apply=self._replay,
                record=wal_sync != "none",
            )
            self._wal.drop_before(info.wal_segment)  # covered; a crash left them behind
            if self._keywords is not None:
                self._catch_up_keywords()
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

    def _load_base(self, info: snap.SnapshotInfo | None) -> VectorIndex:
        if info is not None:
            index, table = snap.load(self.directory / snap.SNAPSHOT_DIR, info.vectors)
        elif (self.directory / snap.INDEX_FILE).exists():  # the layout before the WAL
            index, table = snap.load(self.directory, None)
        else:
            return VectorIndex.new(self.dim, self._description, self._metric)
        for batch in table.cast(METADATA).to_batches():
            self._rows.add(batch)
        return VectorIndex(self.dim, self._metric, index)

    def _replay(self, lsn: int, batch: pa.RecordBatch) -> None:
        # Copy the metadata out: kept as is, it would pin the whole segment's bytes.
        self._apply(batch, lsn, copy=True)

    def _open_keywords(self, base_lsn: int) -> None:
        """Open the keyword index beside the loaded snapshot (LSN ``base_lsn``); one that is
        new, or older than the snapshot (the log it lacks is gone), is rebuilt from its rows."""
        keywords = self._keywords = KeywordIndex(self.directory / KEYWORDS_DIR)
        if keywords.lsn == 0 or keywords.lsn < base_lsn:
            if keywords.lsn:
                log.warning(
                    "%s: keyword index at LSN %d is older than the snapshot (LSN %d): rebuilding",
                    self.directory,
                    keywords.lsn,
                    base_lsn,
                )
            self._rebuild_keywords(base_lsn)

    def _catch_up_keywords(self) -> None:
        """After the log replay (which staged what the keyword index lacked): an index ahead
        of the store (it committed records the store lost) is rebuilt; then commit."""
        keywords, last = self._keywords, self._wal.last_lsn
        assert keywords is not None
        if keywords.lsn > last:
            log.warning(
                "%s: keyword index at LSN %d is ahead of the shard (LSN %d): rebuilding",
                self.directory,
                keywords.lsn,
                last,
            )
            self._rebuild_keywords(last)
        keywords.commit(force=True)

    def _rebuild_keywords(self, lsn: int) -> None:
        assert self._keywords is not None
        table = self._rows.live_table()
        ids = table.column("chunk_id").to_numpy().astype(np.int64)
        self._keywords.rebuild(lsn, ids, table.column("text"))

    # --- state -------------------------------------------------------------------------------

    @property
    def index(self) -> Any:
        """The FAISS index itself (``IndexIDMap2``), for readers that know FAISS."""
        return self._vectors.faiss_index

    @property
    def newest_ts_ms(self) -> int | None:
        """No chunk held here is newer than this (ms); None: no chunk has a time."""
        return self._rows.newest_ts_ms

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def count(self) -> int:
        return self._vectors.count

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
        """About what the shard holds in memory: the index's codes and ids plus the chunk
        metadata (replaced rows included until a snapshot compacts them)."""
        return self._vectors.memory_bytes + self._rows.nbytes

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
            self._apply(batch, lsn)
        if not self._interval_sync:  # else sync() commits keywords, off this thread
            self._commit_keywords()
        return lsn

    def upsert(self, batch: pa.RecordBatch) -> int:
        """``append`` for a batch of rows with embeddings."""
        if is_tombstone(batch):
            raise BadBatch("upsert() got a tombstone batch: use append()")
        return self.append(batch)

    def chunks_of(self, doc_ids: Sequence[str]) -> int:
        """How many chunks of these documents this shard holds."""
        with self._lock:
            return self._rows.chunks_of(doc_ids)

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
        """fsync the log now; the durable LSN. With keywords, commit what it made durable
        (at most every ``keyword_commit_s``, at once after chunks were removed)."""
        durable = self._wal.sync()
        self._commit_keywords()
        return durable

    @property
    def _interval_sync(self) -> bool:
        return self.logs and not self._sync_each

    def _commit_keywords(self, *, force: bool = False, for_query: bool = False) -> None:
        keywords = self._keywords
        if keywords is None:
            return
        now = time.monotonic()
        due = now - self._keyword_commit_at >= self._keyword_commit_s
        if not (force or for_query or due or keywords.staged_removals):
            return
        # Only what a crash cannot lose; without a log nothing is durable before a snapshot,
        # so everything applied (recovery rebuilds an index found ahead of the shard).
        upto = self._wal.durable_lsn if self.logs else self._wal.last_lsn
        try:
            keywords.commit(upto, force=force)
        except StorageError as exc:  # the batches are logged and applied: never fail them
            log.warning("%s: keyword commit failed (%s); the next one retries", self.directory, exc)
            return
        self._keyword_commit_at = now

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

    def _apply(self, batch: pa.RecordBatch, lsn: int, *, copy: bool = False) -> None:
        if is_tombstone(batch):
            self._apply_tombstones(batch, lsn)
        else:
            self._apply_upsert(batch, lsn, copy=copy)

    def _apply_upsert(self, batch: pa.RecordBatch, lsn: int, *, copy: bool) -> None:
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
        with self._lock:
            self._vectors.remove(self._rows.present(ids.tolist()))
            self._vectors.add(ids, vectors)
            self._rows.add(meta)
            if self._keywords is not None:
                self._keywords.upsert(lsn, ids, meta.column("text"))

    def _apply_tombstones(self, batch: pa.RecordBatch, lsn: int) -> None:
        doc_ids = batch.column("doc_id").to_pylist()
        keep = batch.column("keep_version")
        with self._lock:
            doomed = self._rows.tombstone(doc_ids, keep.to_pylist())
            self._vectors.remove(doomed)
            if self._keywords is not None:
                self._keywords.remove(lsn, doomed)  # also when empty: the LSN is seen

    # --- reads -------------------------------------------------------------------------------

    def _search(
        self, queries: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None
    ) -> tuple[Scores, Ids]:
        allowed_ids = None if allowed is None else self._rows.allowed_ids(allowed)
        return self._vectors.search(queries, k, allowed_ids)

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        allowed: QueryFilter | None = None,
    ) -> tuple[Scores, Ids]:
        """This shard's exact top-k per query under ``shard.topk.order``: (nq, k), -1 padded."""
        with self._lock:
            return self._search(queries, k, allowed)

    def search_rows(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        allowed: QueryFilter | None = None,
    ) -> tuple[Scores, Ids, pa.Table]:
        """``search`` plus the metadata rows of the ids found (``ids >= 0``, row-major), in
        one hold of the lock: a removal between the two cannot leave an id without its row."""
        with self._lock:
            scores, ids = self._search(queries, k, allowed)
            return scores, ids, self._rows.rows(ids[ids >= 0].tolist())

    def rows(self, ids: Sequence[int]) -> pa.Table:
        """The metadata rows of ``ids`` (all stored here), in that order."""
        with self._lock:
            return self._rows.rows(ids)

    def metadata(self) -> pa.Table:
        """One row per live chunk id (the latest version of a replaced row)."""
        with self._lock:
            return self._rows.live_table()

    # --- keyword reads -----------------------------------------------------------------------

    @property
    def keyword_lsn(self) -> int | None:
        """The last record the committed keyword index covers; None without keywords."""
        return None if self._keywords is None else self._keywords.lsn

    def _keyword_index(self) -> KeywordIndex:
        if self._keywords is None:
            raise RuntimeError(f"the shard in {self.directory} was opened without keywords")
        return self._keywords

    def keyword_stats(self, terms: Sequence[str]) -> KeywordStats:
        """This shard's BM25 statistics for ``terms`` (``shard.keywords.query_terms`` of the
        query); the root sums every shard's with ``shard.bm25.combine``. The first step of a
        hybrid round: it first commits every staged record the log made durable."""
        keywords = self._keyword_index()
        # A query sees every durable record: results cached from it (the gateway's semantic
        # cache) must not miss what was acknowledged before it. A commit is made only when
        # records are staged, so a stream of queries with no ingestion commits nothing.
        self._commit_keywords(for_query=True)
        with self._lock:
            return keywords.local_stats(terms)

    def keyword_search(
        self,
        query_text: str,
        k: int,
        global_stats: KeywordStats,
        allowed: QueryFilter | None = None,
    ) -> tuple[Ids, Scores]:
        """This shard's exact BM25 top-k under the summed statistics: (chunk ids, scores),
        best first in ``shard.topk`` order (ip). Chunks the store no longer holds (removed
        since the keyword index's last commit) and chunks ``allowed`` rejects are skipped."""
        keywords = self._keyword_index()
        with self._lock:
            rows = self._rows
            allowed_ids = None if allowed is None else rows.allowed_ids(allowed)

            def keep(ids: Ids) -> npt.NDArray[np.bool_]:
                mask = rows.live_mask(ids.tolist())
                return mask if allowed_ids is None else mask & np.isin(ids, allowed_ids)

            return keywords.search(query_text, k, global_stats, keep)

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
                    index = self._vectors.clone()
                    batches, live = self._rows.batches(), self._rows.live_positions()
            if self._keywords is not None:
                # Before the snapshot lands: once it has, the log up to ``lsn`` is deleted and
                # a keyword index older than it would need a rebuild.
                self._keywords.commit(lsn, force=True)
                self._keyword_commit_at = time.monotonic()
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
        """Sync and close the log and commit the keyword index (waits for a snapshot in
        progress). Idempotent."""
        with self._snapshot_lock:
            try:
                self._wal.sync()
                self._commit_keywords(force=True)
            finally:
                self._wal.close()
                if self._keywords is not None:
                    self._keywords.close()
