"""What a shard acknowledges for a batch it made durable, and a source applying it.

Rows carry ``src_replica`` and ``src_offset`` (and chunk rows ``src_chunks``, their document's
chunk count); a shard turns a durable batch into one ``Ack`` per source replica. A batch without
these columns (a custom operator dropped them) is applied but cannot be acknowledged: its source
then never completes those documents, and says so when its feed ends.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..protocol import Ack
from ..schemas import SRC_CHUNKS
from .progress import SourceProgress

_I64 = np.dtype("<i8")
_I32 = np.dtype("<i4")


@dataclass
class _Parts:
    offsets: list[npt.NDArray[np.int64]] = field(default_factory=list)
    counts: list[npt.NDArray[np.int32]] = field(default_factory=list)
    totals: list[npt.NDArray[np.int32]] = field(default_factory=list)
    tombstones: list[npt.NDArray[np.int64]] = field(default_factory=list)


def _bytes(parts: list[npt.NDArray[np.generic]], dtype: np.dtype[np.generic]) -> bytes:
    return np.concatenate(parts).astype(dtype, copy=False).tobytes() if parts else b""


def has_delivery_columns(batch: pa.RecordBatch) -> bool:
    names = batch.schema.names
    if "src_replica" not in names or "src_offset" not in names:
        return False
    return (
        batch.column("src_offset").null_count == 0 and batch.column("src_replica").null_count == 0
    )


class PendingAcks:
    """Acknowledgements waiting for the log to be synced up to their batch's LSN."""

    def __init__(self, sender: str, shard: int) -> None:
        self.sender = self._sender = sender
        self.shard = self._shard = shard
        self._waiting: deque[tuple[int, pa.RecordBatch]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, lsn: int, batch: pa.RecordBatch) -> None:
        if has_delivery_columns(batch) and batch.num_rows:
            self._waiting.append((lsn, batch))

    def take(self, durable_lsn: int) -> list[tuple[int, Ack]]:
        """(source replica, Ack) for every waiting batch with an LSN up to ``durable_lsn``."""
        per_replica: dict[int, _Parts] = {}
        while self._waiting and self._waiting[0][0] <= durable_lsn:
            _, batch = self._waiting.popleft()
            self._collect(batch, per_replica)
        return [
            (
                replica,
                Ack(
                    sender=self._sender,
                    shard=self._shard,
                    offsets=_bytes(p.offsets, _I64),  # type: ignore[arg-type]
                    counts=_bytes(p.counts, _I32),  # type: ignore[arg-type]
                    totals=_bytes(p.totals, _I32),  # type: ignore[arg-type]
                    tombstones=_bytes(p.tombstones, _I64),  # type: ignore[arg-type]
                ),
            )
            for replica, p in sorted(per_replica.items())
        ]

    @staticmethod
    def _collect(batch: pa.RecordBatch, out: dict[int, _Parts]) -> None:
        replicas = batch.column("src_replica").to_numpy()
        offsets = batch.column("src_offset").to_numpy()
        chunk_rows = SRC_CHUNKS.name in batch.schema.names
        totals = batch.column(SRC_CHUNKS.name).to_numpy() if chunk_rows else None
        for replica in np.unique(replicas).tolist():
            mine = replicas == replica
            parts = out.setdefault(int(replica), _Parts())
            if totals is None:  # a tombstone batch: one row per document
                parts.tombstones.append(offsets[mine])
                continue
            unique, first, counts = np.unique(offsets[mine], return_index=True, return_counts=True)
            parts.offsets.append(unique)
            parts.counts.append(counts.astype(np.int32))
            parts.totals.append(totals[mine][first])


def apply(progress: SourceProgress, ack: Ack) -> None:
    """Record a shard's acknowledgement; raises ValueError when its arrays are inconsistent."""
    offsets = np.frombuffer(ack.offsets, dtype=_I64)
    counts = np.frombuffer(ack.counts, dtype=_I32)
    totals = np.frombuffer(ack.totals, dtype=_I32)
    if not len(offsets) == len(counts) == len(totals):
        raise ValueError(
            f"ack from {ack.sender!r}: {len(offsets)} offsets, {len(counts)} counts, "
            f"{len(totals)} totals"
        )
    progress.ack_chunks(offsets, counts, totals)
    progress.ack_tombstones(np.frombuffer(ack.tombstones, dtype=_I64))
