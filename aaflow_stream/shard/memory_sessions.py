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

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..spec import MEMORY_KINDS

# The group of the entries every session sees.
SHARED = "\x00shared"

Vectors = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Entry:
    """One memory entry's metadata (its vector is in its group's matrix)."""

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

    @property
    def nbytes(self) -> int:
        return len(self.text.encode())


@dataclass(frozen=True, slots=True)
class Columns:
    """A group's ids, times and kinds (as indices into ``spec.MEMORY_KINDS``) as arrays, in
    row order: what a lookup scores with, built once per change of the group."""

    ids: npt.NDArray[np.int64]
    ts: npt.NDArray[np.float64]
    kinds: npt.NDArray[np.int8]


class Group:
    """One session's entries (or the shared ones): rows of a growing matrix, swap-removed."""

    def __init__(self, dim: int) -> None:
        self._matrix: Vectors = np.empty((8, dim), dtype=np.float32)
        self.entries: list[Entry] = []
        self._position: dict[int, int] = {}
        self.text_bytes = 0
        self._columns: Columns | None = None

    def columns(self) -> Columns:
        if self._columns is None:
            entries = self.entries
            self._columns = Columns(
                np.array([e.memory_id for e in entries], dtype=np.int64),
                np.array([e.ts for e in entries], dtype=np.float64),
                np.array([MEMORY_KINDS.index(e.kind) for e in entries], dtype=np.int8),
            )
        return self._columns

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def vectors(self) -> Vectors:
        return self._matrix[: len(self.entries)]

    def position(self, memory_id: int) -> int | None:
        return self._position.get(memory_id)

    def put(self, entry: Entry, vector: Vectors) -> None:
        """Add ``entry``, or replace the entry of the same id (metadata and vector)."""
        self._columns = None
        at = self._position.get(entry.memory_id)
        if at is None:
            at = len(self.entries)
            if at == len(self._matrix):
                grown = np.empty((2 * at, self._matrix.shape[1]), dtype=np.float32)
                grown[:at] = self._matrix[:at]
                self._matrix = grown
            self.entries.append(entry)
            self._position[entry.memory_id] = at
        else:
            self.text_bytes -= self.entries[at].nbytes
            self.entries[at] = entry
        self._matrix[at] = vector
        self.text_bytes += entry.nbytes

    def remove(self, memory_id: int) -> Entry | None:
        at = self._position.pop(memory_id, None)
        if at is None:
            return None
        self._columns = None
        gone = self.entries[at]
        last = len(self.entries) - 1
        if at != last:  # the last row takes the freed place
            moved = self.entries[last]
            self.entries[at] = moved
            self._matrix[at] = self._matrix[last]
            self._position[moved.memory_id] = at
        self.entries.pop()
        self.text_bytes -= gone.nbytes
        return gone

    def vector(self, memory_id: int) -> Vectors:
        return self._matrix[self._position[memory_id]].copy()


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

    def get(self, memory_id: int) -> tuple[Entry, Vectors] | None:
        """The entry of ``memory_id`` and a copy of its vector, if held."""
        entry = self.entry(memory_id)
        if entry is None:
            return None
        return entry, self._groups[entry.group].vector(memory_id)

    def put(self, entry: Entry, vector: Vectors) -> None:
        name = entry.group
        previous = self._session_of.get(entry.memory_id)
        if previous is not None and previous != name:
            self.remove(entry.memory_id)
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = Group(self.dim)
        group.put(entry, vector)
        self._session_of[entry.memory_id] = name

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
