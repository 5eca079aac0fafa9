"""A source's delivery progress: which of its documents every shard has made durable.

A source numbers its documents 0, 1, 2, ... (the offset). A document is *complete* once the
shards acknowledged all of its chunks and every shard acknowledged its tombstone (the marker
that removes an older version's chunks), or at once when it never entered the pipeline (a dead
letter). The checkpoint is the contiguous complete prefix: every offset below it is complete,
so a restarted source resumes there and at worst sends again what was in flight
(upserts are idempotent by chunk id).

Acknowledgements are counts, not sets: each run of the pipeline delivers a row once, and after a
crash the whole graph restarts with this state rebuilt from the checkpoint, so no
acknowledgement of an earlier run can reach a later one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass
class _Pending:
    chunks_expected: int = -1  # unknown until the first chunk acknowledgement
    chunks_acked: int = 0
    tombstones_acked: int = 0


class SourceProgress:
    def __init__(
        self, start: int, shards: int, on_complete: Callable[[int], None] | None = None
    ) -> None:
        # ``on_complete(offset)``: each offset as it completes (a continuous source answers a
        # client or records a file as ingested then).
        self._on_complete = on_complete
        self._next_to_emit = start
        self._prefix = start
        self._shards = shards
        self._pending: dict[int, _Pending] = {}
        self._complete: set[int] = set()  # complete offsets above the prefix

    @property
    def prefix(self) -> int:
        """Every offset below this one is complete."""
        return self._prefix

    @property
    def emitted(self) -> int:
        """The next offset to hand out (one past the last emitted)."""
        return self._next_to_emit

    @property
    def outstanding(self) -> int:
        """Emitted documents not complete yet."""
        return self._next_to_emit - self._prefix - len(self._complete)

    def emit(self, chunks: int = -1) -> int:
        """A new document enters the pipeline: its offset. ``chunks=0``: a delete, complete
        once every shard acknowledged its tombstone (by default the chunk count is learnt
        from the acknowledgements)."""
        offset = self._next_to_emit
        self._next_to_emit += 1
        self._pending[offset] = _Pending(chunks_expected=chunks)
        return offset

    def skip(self) -> int:
        """A document that never enters the pipeline (a dead letter): complete at once."""
        offset = self._next_to_emit
        self._next_to_emit += 1
        self._mark_complete(offset)
        return offset

    def ack_chunks(
        self,
        offsets: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int32],
        totals: npt.NDArray[np.int32],
    ) -> None:
        """``counts[i]`` chunks of document ``offsets[i]`` (which has ``totals[i]``) are durable."""
        for offset, count, total in zip(
            offsets.tolist(), counts.tolist(), totals.tolist(), strict=True
        ):
            state = self._pending.get(offset)
            if state is None:
                continue  # before this run's start, or already complete
            state.chunks_expected = total
            state.chunks_acked += count
            self._check(offset, state)

    def ack_tombstones(self, offsets: npt.NDArray[np.int64]) -> None:
        """One shard applied (durably) the tombstones of these documents."""
        for offset in offsets.tolist():
            state = self._pending.get(offset)
            if state is not None:
                state.tombstones_acked += 1
                self._check(offset, state)

    def _check(self, offset: int, state: _Pending) -> None:
        if state.chunks_acked >= state.chunks_expected >= 0 and (
            state.tombstones_acked >= self._shards
        ):
            del self._pending[offset]
            self._mark_complete(offset)

    def _mark_complete(self, offset: int) -> None:
        if self._on_complete is not None:
            self._on_complete(offset)
        if offset != self._prefix:
            self._complete.add(offset)
            return
        self._prefix += 1
        while self._prefix in self._complete:
            self._complete.remove(self._prefix)
            self._prefix += 1
