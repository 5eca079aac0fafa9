"""One shard's FAISS index and row metadata, with their files on disk.

The index is ``IndexIDMap2(index_factory(dim, description, metric))`` keyed by ``chunk_id``;
the metadata (doc_id, seq, text, source, ts, doc_version per chunk) is an Arrow table. On disk:
``<dir>/index.faiss`` (open with ``faiss.read_index``) and ``<dir>/meta.arrow`` (an Arrow IPC
file; ``pyarrow.ipc.open_file``), each written to a temporary name and renamed into place.

Upserts are idempotent by chunk_id: a row whose id is already present replaces the old one.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SpecError
from ..query import topk
from ..query.protocol import QueryFilter
from ..query.topk import Ids, Scores
from ..schemas import EMBEDDING, METADATA

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
META_FILE = "meta.arrow"
MANIFEST_FILE = "shard.json"
TIE_MARGIN = 16


def _metric(name: str) -> int:
    import faiss

    return {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[name]


class ShardStore:
    def __init__(self, directory: Path, *, dim: int, index: str, metric: str) -> None:
        import faiss

        self._faiss = faiss
        self.directory = directory
        self.dim = dim
        self._description = index
        self._metric = metric
        self._meta: list[pa.RecordBatch] = []
        self._starts: list[int] = []  # first row of each metadata batch in the whole table
        self._where: dict[int, int] = {}  # chunk id -> its latest row in the whole table
        self._replaced = False
        # Ingestion (the actor's loop) and queries (the MPI thread) share the index.
        self._lock = threading.Lock()
        self.index = self._open()

    def _open(self) -> Any:
        faiss = self._faiss
        manifest = self.directory / MANIFEST_FILE
        if manifest.exists():
            saved = json.loads(manifest.read_text())
            expected = {"dim": self.dim, "index": self._description, "metric": self._metric}
            if {k: saved.get(k) for k in expected} != expected:
                raise SpecError(
                    f"shard data in {self.directory} was built with {saved}, "
                    f"the topology asks for {expected}: use another data_dir or remove it"
                )
            index = faiss.read_index(str(self.directory / INDEX_FILE))
            with pa.ipc.open_file(self.directory / META_FILE) as reader:
                table = reader.read_all()
            for batch in table.to_batches():
                self._remember(batch)
            log.info("loaded %d vectors from %s", index.ntotal, self.directory)
            return index
        inner = faiss.index_factory(self.dim, self._description, _metric(self._metric))
        return faiss.IndexIDMap2(inner)

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def upsert(self, batch: pa.RecordBatch) -> None:
        """Add rows (with an ``embedding`` column); rows with known chunk ids replace old ones."""
        ids = batch.column("chunk_id").to_numpy().view(np.int64)
        column = batch.column(EMBEDDING)
        if column.type.list_size != self.dim:
            raise ValueError(f"embedding dim {column.type.list_size} != shard dim {self.dim}")
        flat = column.values.slice(column.offset * self.dim, len(column) * self.dim)
        vectors = flat.to_numpy(zero_copy_only=True).reshape(-1, self.dim)
        id_list = ids.tolist()
        with self._lock:
            present = [i for i in id_list if i in self._where]
            if present:
                self.index.remove_ids(np.array(present, dtype=np.int64))
                self._replaced = True
            if not self.index.is_trained:
                self.index.train(vectors)
            self.index.add_with_ids(vectors, ids)
            self._remember(batch.select(METADATA.names))

    def _remember(self, meta: pa.RecordBatch) -> None:
        start = self._starts[-1] + self._meta[-1].num_rows if self._meta else 0
        self._meta.append(meta)
        self._starts.append(start)
        for row, chunk in enumerate(meta.column("chunk_id").to_pylist()):
            self._where[chunk] = start + row

    def _selector(self, allowed: QueryFilter) -> Any:
        """A FAISS id selector for the rows that pass ``allowed`` (the caller holds the lock)."""
        table = pa.Table.from_batches(self._meta, schema=METADATA) if self._meta else None
        if table is None:
            return self._faiss.IDSelectorBatch(np.zeros(0, dtype=np.int64))
        mask = pa.array(np.ones(table.num_rows, dtype=bool))
        if allowed.sources is not None:
            mask = pc.and_(mask, pc.is_in(table.column("source"), pa.array(allowed.sources)))
        ts = table.column("ts").cast(pa.int64())
        if allowed.ts_from_ms is not None:
            mask = pc.and_(mask, pc.greater_equal(ts, allowed.ts_from_ms))
        if allowed.ts_to_ms is not None:
            mask = pc.and_(mask, pc.less_equal(ts, allowed.ts_to_ms))
        ids = table.column("chunk_id").filter(mask).to_numpy().view(np.int64)
        # A replaced row's older copy may pass the filter: keep only ids whose latest row does.
        rows = np.flatnonzero(np.asarray(mask))
        latest = [
            i for i, r in zip(ids.tolist(), rows.tolist(), strict=True) if self._where.get(i) == r
        ]
        return self._faiss.IDSelectorBatch(np.array(latest, dtype=np.int64))

    def search(
        self, queries: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None = None
    ) -> tuple[Scores, Ids]:
        """This shard's exact top-k per query under ``query.topk.order``: (nq, k), -1 padded.

        FAISS cuts at k without looking at ids, so a tie at the cut could drop the smaller id:
        ask for ``TIE_MARGIN`` more and re-order. (Ties wider than that are not resolved.)
        """
        with self._lock:
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

    def rows(self, ids: Sequence[int]) -> pa.Table:
        """The metadata rows of ``ids`` (all stored here), in that order."""
        with self._lock:
            table = pa.Table.from_batches(self._meta, schema=METADATA)
            positions = [self._where[i] for i in ids]
        return table.take(pa.array(positions, pa.int64()))

    def metadata(self) -> pa.Table:
        """One row per chunk id (the latest version of a replaced row)."""
        if not self._meta:
            return METADATA.empty_table()
        table = pa.Table.from_batches(self._meta, schema=METADATA)
        if self._replaced:
            ids = table.column("chunk_id").to_numpy()
            reversed_ids = ids[::-1]
            _, first = np.unique(reversed_ids, return_index=True)
            keep = np.sort(len(ids) - 1 - first)
            table = table.take(pa.array(keep))
        return table

    def persist(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            table = self.metadata()
        tmp_index = self.directory / (INDEX_FILE + ".tmp")
        self._faiss.write_index(self.index, str(tmp_index))
        tmp_meta = self.directory / (META_FILE + ".tmp")
        with pa.OSFile(str(tmp_meta), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp_index, self.directory / INDEX_FILE)
        os.replace(tmp_meta, self.directory / META_FILE)
        manifest = {
            "dim": self.dim,
            "index": self._description,
            "metric": self._metric,
            "vectors": self.count,
        }
        (self.directory / MANIFEST_FILE).write_text(json.dumps(manifest))
