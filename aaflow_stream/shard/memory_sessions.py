"""The memory entries one shard rank holds, grouped by session: an exact flat index per session.

Every memory lookup is scoped to one session (plus the shared entries, kept as one more
group), so each group is its own dense matrix and a lookup costs what its session holds, not
what the rank holds: with the per-session bound (``MemorySpec.max_session_entries``, 1000 by
default) that is at most a few hundred microseconds of one matrix product. A FAISS index over
the whole rank with an id selector would scan every entry of every session instead.

Pure in-memory state: ``shard.memory`` logs, snapshots and recovers it. Not thread-safe: the
rank's MPI thread is its only writer (rounds run one at a time), readers hold its lock.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..spec import MEMORY_KINDS

# The group of the entries every session sees.
SHARED = "\x00shared"

Vectors = npt.NDArray[np.float32]

# A group's entries as a lookup returns them (``scoring.DUAL_HIT``'s types).
HIT_ROWS = pa.schema(
    [
        ("memory_id", pa.int64()),
        ("text", pa.large_string()),
        ("source", pa.string()),
        ("kind", pa.string()),
        ("session", pa.string()),
        ("ts", pa.float64()),
        ("weight", pa.float64()),
        ("ephemeral", pa.bool_()),
    ]
)


class Entry(NamedTuple):
    """One memory entry's metadata (its vector is in its group's matrix). A named tuple, not
    a frozen dataclass: a promotion makes one per entry, and this is 7x cheaper to build."""

    memory_id: int
    session: str  # "" for a shared entry
    kind: str
    text: str
    source: str
    ts: float  # seconds since the epoch of the last write (a merge refreshes it)
    weight: float
    ephemeral: bool

    @property
    def group(self) -> str:
        return SHARED if self.session == "" else self.session


def text_size(entry: Entry) -> int:
    """The bytes of an entry's text, as the session bound counts them."""
    return len(entry.text.encode())


@dataclass(frozen=True, slots=True)
class Columns:
    """A group's ids, times and kinds (as indices into ``spec.MEMORY_KINDS``) as arrays, and
    its rows as Arrow (``HIT_ROWS``), in row order: what a lookup scores with and returns,
    built once per change of the group."""

    ids: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    kinds: npt.NDArray[np.int8]
    rows: pa.RecordBatch


class Group:
    """One session's entries (or the shared ones): rows of a growing matrix, swap-removed."""

    def __init__(self, dim: int) -> None:
        self._matrix: Vectors = np.empty((8, dim), dtype=np.float32)
        self.entries: list[Entry] = []
        self._sizes: list[int] = []  # each entry's text bytes, in row order
        self._position: dict[int, int] = {}
        self.text_bytes = 0
        self._columns: Columns | None = None

    def columns(self) -> Columns:
        if self._columns is None:
            entries = self.entries
            rows = pa.RecordBatch.from_arrays(_hit_rows(entries), schema=HIT_ROWS)
            self._columns = Columns(
                rows.column("memory_id").to_numpy(),
                rows.column("ts").to_numpy(),
                np.array([MEMORY_KINDS.index(e.kind) for e in entries], dtype=np.int8),
                rows,
            )
        return self._columns

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def vectors(self) -> Vectors:
        return self._matrix[: len(self.entries)]

    def position(self, memory_id: int) -> int | None:
        return self._position.get(memory_id)

    def _reserve(self, rows: int) -> None:
        if rows > len(self._matrix):
            grown = np.empty((max(rows, 2 * len(self._matrix)), self._matrix.shape[1]), np.float32)
            grown[: len(self.entries)] = self._matrix[: len(self.entries)]
            self._matrix = grown

    def put(self, entry: Entry, vector: Vectors, size: int | None = None) -> None:
        """Add ``entry``, or replace the entry of the same id (metadata and vector)."""
        self._columns = None
        size = text_size(entry) if size is None else size
        at = self._position.get(entry.memory_id)
        if at is None:
            at = len(self.entries)
            self._reserve(at + 1)
            self.entries.append(entry)
            self._sizes.append(size)
            self._position[entry.memory_id] = at
        else:
            self.text_bytes -= self._sizes[at]
            self.entries[at] = entry
            self._sizes[at] = size
        self._matrix[at] = vector
        self.text_bytes += size

    def extend(self, entries: Sequence[Entry], vectors: Vectors, sizes: Sequence[int]) -> None:
        """Add entries none of which is held: one copy of their vectors, not one per entry."""
        self._columns = None
        start = len(self.entries)
        end = start + len(entries)
        self._reserve(end)
        self._matrix[start:end] = vectors
        self.entries += entries
        self._sizes += sizes
        self._position.update(zip([e.memory_id for e in entries], range(start, end), strict=True))
        self.text_bytes += sum(sizes)

    def update(self, entry: Entry) -> None:
        """Replace the metadata of a held entry of the same id and text (a merge into it)."""
        self._columns = None
        self.entries[self._position[entry.memory_id]] = entry

    def remove(self, memory_id: int) -> Entry | None:
        at = self._position.pop(memory_id, None)
        if at is None:
            return None
        self._columns = None
        gone = self.entries[at]
        self.text_bytes -= self._sizes[at]
        last = len(self.entries) - 1
        if at != last:  # the last row takes the freed place
            moved = self.entries[last]
            self.entries[at] = moved
            self._sizes[at] = self._sizes[last]
            self._matrix[at] = self._matrix[last]
            self._position[moved.memory_id] = at
        self.entries.pop()
        self._sizes.pop()
        return gone

    def vector(self, memory_id: int) -> Vectors:
        return self._matrix[self._position[memory_id]].copy()


def _hit_rows(entries: Sequence[Entry]) -> list[pa.Array]:
    return [
        pa.array([e.memory_id for e in entries], pa.int64()),
        pa.array([e.text for e in entries], pa.large_string()),
        pa.array([e.source for e in entries], pa.string()),
        pa.array([e.kind for e in entries], pa.string()),
        pa.array([e.session for e in entries], pa.string()),
        pa.array([e.ts for e in entries], pa.float64()),
        pa.array([e.weight for e in entries], pa.float64()),
        pa.array([e.ephemeral for e in entries], pa.bool_()),
    ]


class Sessions:
    """Every group of one rank, by session."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._groups: dict[str, Group] = {}
        self._session_of: dict[int, str] = {}  # memory id -> group

    def __len__(self) -> int:
        return len(self._session_of)

    def group(self, name: str) -> Group | None:
        return self._groups.get(name)

    def groups(self) -> Iterator[tuple[str, Group]]:
        yield from self._groups.items()

    def entry(self, memory_id: int) -> Entry | None:
        """The entry of ``memory_id``, if held (no copy of its vector)."""
        name = self._session_of.get(memory_id)
        if name is None:
            return None
        group = self._groups[name]
        at = group.position(memory_id)
        assert at is not None
        return group.entries[at]

    def holds(self, ids: Sequence[int]) -> list[bool]:
        """Which of ``ids`` are held."""
        held = self._session_of
        return [i in held for i in ids]

    def get(self, memory_id: int) -> tuple[Entry, Vectors] | None:
        """The entry of ``memory_id`` and a copy of its vector, if held."""
        entry = self.entry(memory_id)
        if entry is None:
            return None
        return entry, self._groups[entry.group].vector(memory_id)

    def put(self, entry: Entry, vector: Vectors, size: int | None = None) -> None:
        name = entry.group
        previous = self._session_of.get(entry.memory_id)
        if previous is not None and previous != name:
            self.remove(entry.memory_id)
        self._group(name).put(entry, vector, size)
        self._session_of[entry.memory_id] = name

    def extend(
        self, name: str, entries: Sequence[Entry], vectors: Vectors, sizes: Sequence[int]
    ) -> None:
        """Add entries of group ``name`` none of which is held anywhere (``Group.extend``)."""
        self._group(name).extend(entries, vectors, sizes)
        self._session_of.update(dict.fromkeys([e.memory_id for e in entries], name))

    def update(self, entry: Entry) -> None:
        """``Group.update`` in the entry's group (it must hold it)."""
        self._groups[entry.group].update(entry)

    def _group(self, name: str) -> Group:
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = Group(self.dim)
        return group

    def remove(self, memory_id: int) -> Entry | None:
        name = self._session_of.pop(memory_id, None)
        if name is None:
            return None
        group = self._groups[name]
        gone = group.remove(memory_id)
        if not group:
            del self._groups[name]
        return gone

    def ids_of(self, session: str) -> list[int]:
        group = self._groups.get(session)
        return [] if group is None else [e.memory_id for e in group.entries]

    @property
    def text_bytes(self) -> int:
        return sum(g.text_bytes for g in self._groups.values())
