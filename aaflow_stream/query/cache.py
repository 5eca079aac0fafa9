"""The gateway's semantic cache: near-identical queries answered without a round.

An entry is a query's vector (unit-normalised), the result it got and what that result
depends on: the knowledge shards (any query but a memory-only one) and the memory session it
read. A lookup finds, among
the live entries of the same *key* (mode, filter, k, session, weights, and for an answer its
budget), the one whose vector is most similar to the query's; at a cosine similarity of at
least ``threshold`` it is a hit. Bounded: at most ``capacity`` entries, the least recently
used go first; an entry older than ``ttl_s`` is never served.

Never stale. Every entry that read knowledge is dropped when any document is added, changed
or deleted: the gateway's rank sees every document's tombstone (the transform sends one per
document to every shard, before any source is acknowledged) and every delete request. A new
document cited by nothing may still belong in a cached top-k, so dropping only the entries
that cite a changed document would serve results that miss what was just acknowledged;
while documents stream in, the cache therefore serves memory-only results and repeats within
one quiet stretch. An entry that read a session's memory is dropped when that memory changes
(remember, promote, forget; a change of the shared entries drops every memory reader).
A result computed by a round that started before an invalidation is not stored: ``begin``
hands out the invalidation epoch at a round's start, and ``store`` refuses an entry begun in
an older epoch than the last invalidation that could touch it.

Single-threaded: the gateway's event loop is its only user.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..spec import CacheSpec

# Sessions whose last memory change is remembered (for refusing results of rounds that began
# before it); past this many, they are forgotten at once and every round begun before is
# refused instead.
MAX_TRACKED = 100_000


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0  # by capacity
    expired: int = 0  # by ttl
    invalidated: int = 0  # by a document update or delete, or a session's memory change
    refused: int = 0  # results of rounds that began before an invalidation


@dataclass
class _Entry:
    key: Hashable
    vector: npt.NDArray[np.float32]
    value: Any
    knowledge: bool  # it read the knowledge shards
    session: str | None
    stored_at: float


class _KeyIndex:
    """The entries of one key, as rows of a matrix for one product per lookup: grown by
    doubling, a dropped row filled by the last one (no copy of the whole matrix per store)."""

    def __init__(self, dim: int) -> None:
        self.ids: list[int] = []
        self._rows: npt.NDArray[np.float32] = np.empty((8, dim), dtype=np.float32)

    @property
    def matrix(self) -> npt.NDArray[np.float32]:
        return self._rows[: len(self.ids)]

    def add(self, entry_id: int, vector: npt.NDArray[np.float32]) -> None:
        at = len(self.ids)
        if at == len(self._rows):
            grown = np.empty((2 * at, self._rows.shape[1]), dtype=np.float32)
            grown[:at] = self._rows
            self._rows = grown
        self._rows[at] = vector
        self.ids.append(entry_id)

    def remove(self, entry_id: int) -> None:
        at = self.ids.index(entry_id)
        last = len(self.ids) - 1
        self._rows[at] = self._rows[last]
        self.ids[at] = self.ids[last]
        self.ids.pop()


class SemanticCache:
    def __init__(self, spec: CacheSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self._spec = spec
        self._clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # LRU order, oldest first
        self._by_key: dict[Hashable, _KeyIndex] = {}
        self._knowledge_readers: set[int] = set()
        self._by_session: dict[str, set[int]] = {}
        self._next_id = 0
        self._epoch = 0  # advanced by every invalidation
        self._floor = 0  # rounds begun before this epoch are refused (invalidations forgotten)
        self._shared_epoch = -1  # of the last change of shared memory
        self._knowledge_epoch = -1  # of the last change of any document
        self._session_epoch: dict[str, int] = {}
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self._spec.enabled

    def __len__(self) -> int:
        return len(self._entries)

    # --- lookups -----------------------------------------------------------------------------

    def lookup(self, key: Hashable, vector: npt.NDArray[np.float32]) -> Any | None:
        """The cached value of the most similar live query of ``key``, or None (a miss)."""
        if not self._spec.enabled:
            return None
        index = self._by_key.get(key)
        if index is None or not index.ids:
            self.stats.misses += 1
            return None
        sims = index.matrix @ _unit(vector)
        best = int(np.argmax(sims))
        if sims[best] < self._spec.threshold:
            self.stats.misses += 1
            return None
        entry_id = index.ids[best]
        entry = self._entries[entry_id]
        if self._clock() - entry.stored_at > self._spec.ttl_s:
            self._drop(entry_id)
            self.stats.expired += 1
            self.stats.misses += 1
            return None
        self._entries.move_to_end(entry_id)
        self.stats.hits += 1
        return entry.value

    # --- stores ------------------------------------------------------------------------------

    def begin(self) -> int:
        """The epoch a round starts in; give it to ``store`` with the round's result."""
        return self._epoch

    def store(
        self,
        key: Hashable,
        vector: npt.NDArray[np.float32],
        value: Any,
        *,
        knowledge: bool,
        session: str | None,
        began: int,
    ) -> bool:
        """Keep ``value`` (which read the knowledge shards, or ``session``'s memory, or
        both); False when an invalidation since ``began`` may have touched it."""
        if not self._spec.enabled:
            return False
        touched = [self._knowledge_epoch] if knowledge else []
        if session is not None:
            touched += [self._session_epoch.get(session, -1), self._shared_epoch]
        if began < self._floor or any(epoch > began for epoch in touched):
            self.stats.refused += 1
            return False
        entry_id = self._next_id
        self._next_id += 1
        entry = _Entry(key, _unit(vector), value, knowledge, session, self._clock())
        self._entries[entry_id] = entry
        index = self._by_key.get(key)
        if index is None:
            index = self._by_key[key] = _KeyIndex(len(entry.vector))
        index.add(entry_id, entry.vector)
        if knowledge:
            self._knowledge_readers.add(entry_id)
        if session is not None:
            self._by_session.setdefault(session, set()).add(entry_id)
        while len(self._entries) > self._spec.capacity:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.stats.evictions += 1
        return True

    # --- invalidation ------------------------------------------------------------------------

    def invalidate_knowledge(self) -> int:
        """A document was added, changed or deleted: drop every entry that read knowledge."""
        self._epoch += 1
        self._knowledge_epoch = self._epoch
        dropped = sum(self._drop(i) for i in list(self._knowledge_readers))
        self.stats.invalidated += dropped
        return dropped

    def invalidate_session(self, session: str | None) -> int:
        """This session's memory changed (None: the shared entries, which every session
        reads): drop every entry that read it."""
        self._epoch += 1
        if session is None:
            self._shared_epoch = self._epoch
            readers = [i for ids in self._by_session.values() for i in ids]
        else:
            self._session_epoch[session] = self._epoch
            readers = list(self._by_session.get(session, ()))
        dropped = sum(self._drop(i) for i in readers)
        self.stats.invalidated += dropped
        self._bound_tracking()
        return dropped

    def _bound_tracking(self) -> None:
        if len(self._session_epoch) > MAX_TRACKED:
            self._session_epoch.clear()
            self._floor = self._epoch

    def _drop(self, entry_id: int) -> int:
        entry = self._entries.pop(entry_id, None)
        if entry is None:
            return 0
        index = self._by_key[entry.key]
        index.remove(entry_id)
        if not index.ids:
            del self._by_key[entry.key]
        self._knowledge_readers.discard(entry_id)
        if entry.session is not None:
            self._by_session[entry.session].discard(entry_id)
            if not self._by_session[entry.session]:
                del self._by_session[entry.session]
        return 1


def _unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    v = np.asarray(vector, dtype=np.float64)  # float32 squares of large values overflow
    norm = float(np.linalg.norm(v))
    return (v / norm if norm > 0 else v).astype(np.float32)
