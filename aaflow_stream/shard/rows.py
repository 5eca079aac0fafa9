"""A shard's chunk rows: the Arrow metadata of every stored chunk and the maps that find them.

Rows are appended, never rewritten: a replaced chunk's older row stays until a snapshot
compacts the table (``live_table``). ``_where`` maps each live chunk id to its latest row;
the by-document map (doc_id -> {chunk id: doc_version}) is built lazily, so a first
ingestion of new documents never pays for it.

Not thread-safe: the store holds its lock around every call.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ChunkNotStored
from ..schemas import DELETE_ALL, METADATA, empty_table
from .filters import QueryFilter


def _clamp_ms(value: int) -> int:
    return max(-(2**63), min(2**63 - 1, value))


class ChunkRows:
    def __init__(self, where: str) -> None:
        self._name = where  # for errors: the shard's directory
        self._meta: list[pa.RecordBatch] = []
        self.nbytes = 0  # Arrow bytes held (replaced rows included)
        self._starts: list[int] = []  # first row of each batch in the whole table
        self._where: dict[int, int] = {}  # live chunk id -> its latest row in the whole table
        self._docs: dict[str, dict[int, int]] = {}  # see _doc_index
        self._unindexed: list[pa.RecordBatch] = []  # batches not in ``_docs`` yet
        self._doc_names: set[str] = set()  # a superset of the stored documents' ids
        self.dead_rows = False  # some rows are replaced or removed
        # The newest ``ts`` (ms) of any row ever added: a bound on every live row's time
        # (removals do not lower it), for ranking with recency (``shard.scoring``).
        self.newest_ts_ms: int | None = None

    # --- writes ------------------------------------------------------------------------------

    def present(self, ids: list[int]) -> list[int]:
        """Those of ``ids`` that are stored (their vectors must go before new ones come)."""
        where = self._where
        return [i for i in ids if i in where]

    def add(self, meta: pa.RecordBatch) -> None:
        """Index ``meta``'s rows; a stored chunk id now points at its new row."""
        start = self._starts[-1] + self._meta[-1].num_rows if self._meta else 0
        self._meta.append(meta)
        self.nbytes += meta.nbytes
        self._starts.append(start)
        newest = pc.max(meta.column("ts")).cast(pa.int64()).as_py()
        if newest is not None and (self.newest_ts_ms is None or newest > self.newest_ts_ms):
            self.newest_ts_ms = newest
        chunks = meta.column("chunk_id").to_pylist()
        docs = meta.column("doc_id").to_pylist()
        where = self._where
        self._doc_names.update(docs)
        if where.keys().isdisjoint(chunks):  # all new (a first ingestion): bulk updates
            where.update(zip(chunks, range(start, start + len(chunks)), strict=True))
            self._unindexed.append(meta)
            return
        self.dead_rows = True
        by_doc = self._doc_index()
        versions = meta.column("doc_version").to_pylist()
        for row, (chunk, doc, version) in enumerate(zip(chunks, docs, versions, strict=True)):
            old = where.get(chunk)
            mine = by_doc.setdefault(doc, {})
            if old is not None and chunk not in mine:  # the id moved to another document
                self._forget(self._value(old, "doc_id"), chunk)
            where[chunk] = start + row
            mine[chunk] = version

    def tombstone(self, doc_ids: list[str], keep: list[int]) -> list[int]:
        """Remove, per document, every chunk whose version is not ``keep`` (all of them for
        ``DELETE_ALL``); the chunk ids removed (their vectors must go too)."""
        known = self._doc_names.intersection(doc_ids)  # empty for new documents
        if not known:
            return []
        docs = self._doc_index()
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
            self.dead_rows = True
        return doomed

    def _doc_index(self) -> dict[str, dict[int, int]]:
        """doc_id -> {live chunk id: doc_version}, brought up to date."""
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

    def chunks_of(self, doc_ids: Sequence[str]) -> int:
        docs = self._doc_index()
        return sum(len(docs.get(doc_id, ())) for doc_id in set(doc_ids))

    def table(self) -> pa.Table:
        """Every row held, replaced ones included."""
        return pa.Table.from_batches(self._meta, schema=METADATA)

    def batches(self) -> list[pa.RecordBatch]:
        return list(self._meta)

    def live_positions(self) -> npt.NDArray[np.int64] | None:
        """The rows of live chunks, or None when every row is live."""
        if not self.dead_rows:
            return None
        rows = np.fromiter(self._where.values(), dtype=np.int64, count=len(self._where))
        rows.sort()
        return rows

    def live_table(self) -> pa.Table:
        """One row per live chunk id (the latest version of a replaced row)."""
        if not self._meta:
            return empty_table(METADATA)
        table, live = self.table(), self.live_positions()
        return table if live is None else table.take(pa.array(live))

    def live_mask(self, ids: Sequence[int]) -> npt.NDArray[np.bool_]:
        """Which of ``ids`` are stored."""
        where = self._where
        return np.fromiter((i in where for i in ids), dtype=bool, count=len(ids))

    def rows(self, ids: Sequence[int]) -> pa.Table:
        """The rows of ``ids`` (all stored), in that order."""
        try:
            positions = [self._where[i] for i in ids]
        except KeyError as exc:
            raise ChunkNotStored(f"chunk id {exc.args[0]} is not stored in {self._name}") from None
        return self.table().take(pa.array(positions, pa.int64()))

    def allowed_ids(self, allowed: QueryFilter) -> npt.NDArray[np.int64]:
        """The live chunk ids whose rows pass ``allowed``."""
        if not self._meta:
            return np.zeros(0, dtype=np.int64)
        table = self.table()
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
        where = self._where
        latest = [i for i, r in zip(ids.tolist(), rows.tolist(), strict=True) if where.get(i) == r]
        return np.array(latest, dtype=np.int64)
