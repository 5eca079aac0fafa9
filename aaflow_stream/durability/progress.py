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

import numpy as np
import numpy.typing as npt

_UNKNOWN = -1  # chunk count not known yet (learnt from the first chunk acknowledgement)


class SourceProgress:
    """State of the offsets from the complete prefix on, in numpy arrays indexed by
    ``offset - base``: acknowledgements arrive as arrays of offsets, and applying them costs
    a few vector operations per acknowledgement, not Python work per document (on W1 xlarge
    the per-document version took ~2 s of a source's time under cProfile)."""

    def __init__(
        self, start: int, shards: int, on_complete: Callable[[int], None] | None = None
    ) -> None:
        # ``on_complete(offset)``: each offset as it completes (a continuous source answers a
        # client or records a file as ingested then).
        self._on_complete = on_complete
        self._next_to_emit = start
        self._prefix = start
        self._shards = shards
        self._base = start  # offset of row 0 of the arrays; <= prefix
        self._expected = np.zeros(0, np.int64)
        self._chunks = np.zeros(0, np.int64)
        self._tombstones = np.zeros(0, np.int64)
        self._done = np.zeros(0, np.bool_)
        self._complete_above = 0  # complete offsets above the prefix

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
        return self._next_to_emit - self._prefix - self._complete_above

    def _new_row(self) -> int:
        row = self._next_to_emit - self._base
        if row == len(self._done):
            self._grow()
            row = self._next_to_emit - self._base
        self._next_to_emit += 1
        return row

    def _grow(self) -> None:
        """Drop the rows below the prefix, then make room for as many again (at least 64)."""
        cut = self._prefix - self._base
        live = len(self._done) - cut
        size = max(64, 2 * live)

        def moved(a: npt.NDArray, fill: object) -> npt.NDArray:
            out = np.full(size, fill, a.dtype)
            out[:live] = a[cut:]
            return out

        self._expected = moved(self._expected, _UNKNOWN)
        self._chunks = moved(self._chunks, 0)
        self._tombstones = moved(self._tombstones, 0)
        self._done = moved(self._done, False)
        self._base = self._prefix

    def emit(self, chunks: int = _UNKNOWN) -> int:
        """A new document enters the pipeline: its offset. ``chunks=0``: a delete, complete
        once every shard acknowledged its tombstone (by default the chunk count is learnt
        from the acknowledgements)."""
        row = self._new_row()
        self._expected[row] = chunks
        return row + self._base

    def skip(self) -> int:
        """A document that never enters the pipeline (a dead letter): complete at once."""
        row = self._new_row()
        self._complete(np.array([row]))
        return row + self._base

    def _rows(self, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
        """Which of ``offsets`` are emitted and not complete (others: an earlier run's, or
        already complete: ignored)."""
        live = (offsets >= self._prefix) & (offsets < self._next_to_emit)
        live[live] = ~self._done[offsets[live] - self._base]
        return live

    def ack_chunks(
        self,
        offsets: npt.NDArray[np.int64],
        counts: npt.NDArray[np.int32],
        totals: npt.NDArray[np.int32],
    ) -> None:
        """``counts[i]`` chunks of document ``offsets[i]`` (which has ``totals[i]``) are durable."""
        live = self._rows(offsets)
        rows = offsets[live] - self._base
        self._expected[rows] = totals[live]
        np.add.at(self._chunks, rows, counts[live])
        self._check(rows)

    def ack_tombstones(self, offsets: npt.NDArray[np.int64]) -> None:
        """One shard applied (durably) the tombstones of these documents."""
        rows = offsets[self._rows(offsets)] - self._base
        np.add.at(self._tombstones, rows, 1)
        self._check(rows)

    def _check(self, rows: npt.NDArray[np.int64]) -> None:
        rows = np.unique(rows)
        expected = self._expected[rows]
        ready = (
            (expected >= 0)
            & (self._chunks[rows] >= expected)
            & (self._tombstones[rows] >= self._shards)
        )
        if ready.any():
            self._complete(rows[ready])

    def _complete(self, rows: npt.NDArray[np.int64]) -> None:
        """Mark ``rows`` (distinct, not complete yet) complete, ascending, then advance the
        prefix over every complete row."""
        self._done[rows] = True
        if self._on_complete is not None:
            for row in rows.tolist():
                self._on_complete(row + self._base)
        self._complete_above += len(rows)
        start, end = self._prefix - self._base, self._next_to_emit - self._base
        if not self._done[start]:  # the prefix is stuck: no scan (a long-outstanding
            return  # document would otherwise cost a pass over the window per ack)
        pending = np.flatnonzero(~self._done[start:end])
        advance = int(pending[0]) if len(pending) else end - start
        self._prefix += advance
        self._complete_above -= advance
