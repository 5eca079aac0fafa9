"""The gateway's semantic cache: near-identical queries answered without a round.

An entry is a query's vector (unit-normalised), the result it got and what that result
depends on: the knowledge shards (any query but a memory-only one) and the memory session it
read. A lookup finds, among the live entries of the same *key* (mode, filter, k, session,
weights, and for an answer its budget), the one whose vector is most similar to the query's;
at a cosine similarity of at least ``threshold`` it is a hit. Bounded: at most ``capacity``
entries, the least recently used go first; an entry older than ``ttl_s`` is never served.

Two shortcuts, same answers. ``lookup_text``: an entry also remembers the texts that found it
(the query that stored it, and up to ``MAX_TEXTS`` others that hit it), so a repeated text is
found by a dictionary lookup, before it is embedded (the same text embeds to the same
vector, whose most similar entry is then at least as similar as the one it found before).
``lookup_many``: a batch's queries of one key compared with the key's entries in one pass,
as if looked up one after the other. A lookup reads a few dimensions of every entry and all
of those of the entries that may reach the threshold (``_KeyIndex``).

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

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..spec import CacheSpec

# Sessions whose last memory change is remembered (for refusing results of rounds that began
# before it); past this many, they are forgotten at once and every round begun before is
# refused instead.
MAX_TRACKED = 100_000
# Texts an entry is found by without embedding (``lookup_text``): the one that stored it and
# the first others that hit it.
MAX_TEXTS = 4
# A lookup reads the first 1/HEAD_SHARE of the dimensions (at least HEAD_MIN) of every entry,
# the rest only of entries that may be similar enough (``_KeyIndex``); the bound is widened by
# BOUND_SLACK against float32 rounding.
HEAD_SHARE = 8
HEAD_MIN = 16
BOUND_SLACK = 1e-4


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
    texts: list[str]  # found by these texts too (``lookup_text``)


class _KeyIndex:
    """The entries of one key, as rows of a matrix: grown by doubling, a dropped row filled
    by the last one (no copy of the whole matrix per store or drop).

    A lookup wants the most similar entry only if its similarity reaches the threshold, and
    reading every entry's whole vector per query dominated a miss (~1 ms per 8,000 entries of
    384 dimensions, much more where numpy's BLAS runs threads on a busy machine). So the
    first ``head`` dimensions are kept apart and read first: with the norm of each row's
    rest, Cauchy-Schwarz bounds each similarity (``head . head + |rest| |rest|``), and only
    rows whose bound reaches the threshold are compared in full. Exact: every row that could
    reach it is compared. ``einsum``, not ``@``: one thread, whatever BLAS would start."""

    def __init__(self, dim: int) -> None:
        self.ids: list[int] = []
        self._at: dict[int, int] = {}  # entry id -> its row
        self._head = min(dim, max(HEAD_MIN, dim // HEAD_SHARE))
        self._rows: npt.NDArray[np.float32] = np.empty((8, dim), dtype=np.float32)
        self._heads: npt.NDArray[np.float32] = np.empty((8, self._head), dtype=np.float32)
        self._rests: npt.NDArray[np.float64] = np.empty(8, dtype=np.float64)

    def add(self, entry_id: int, vector: npt.NDArray[np.float32]) -> None:
        at = len(self.ids)
        if at == len(self._rows):
            self._rows = _grown(self._rows)
            self._heads = _grown(self._heads)
            self._rests = _grown(self._rests)
        self._rows[at] = vector
        self._heads[at] = vector[: self._head]
        self._rests[at] = _norm(vector[self._head :])
        self.ids.append(entry_id)
        self._at[entry_id] = at

    def remove(self, entry_id: int) -> None:
        at = self._at.pop(entry_id)
        last = len(self.ids) - 1
        if at != last:
            moved = self.ids[last]
            self._rows[at], self._heads[at] = self._rows[last], self._heads[last]
            self._rests[at] = self._rests[last]
            self.ids[at] = moved
            self._at[moved] = at
        self.ids.pop()

    def nearest(
        self, queries: npt.NDArray[np.float32], threshold: float
    ) -> list[tuple[int, float] | None]:
        """Per unit query: (row, similarity) of its most similar row if that reaches
        ``threshold`` (the first such row on a tie), else None."""
        n, h = len(self.ids), self._head
        heads, rests = self._heads[:n], self._rests[:n]
        found: list[tuple[int, float] | None] = []
        for query in queries:  # one product per query: einsum's fast loop, not BLAS's
            rest = _norm(query[h:])
            bounds = np.einsum("ij,j->i", heads, query[:h]) + (rest * rests + BOUND_SLACK)
            rows = np.flatnonzero(bounds >= threshold)
            if not rows.size:
                found.append(None)
                continue
            sims = np.einsum("ij,j->i", self._rows[rows], query)
            best = int(np.argmax(sims))
            found.append((int(rows[best]), float(sims[best])) if sims[best] >= threshold else None)
        return found


def _grown(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    grown = np.empty((2 * len(array), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown


class SemanticCache:
    def __init__(self, spec: CacheSpec, clock: Callable[[], float] = time.monotonic) -> None:
        self._spec = spec
        self._clock = clock
        self._entries: OrderedDict[int, _Entry] = OrderedDict()  # LRU order, oldest first
        self._by_key: dict[Hashable, _KeyIndex] = {}
        self._by_text: dict[tuple[Hashable, str], int] = {}
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

    def lookup(
        self, key: Hashable, vector: npt.NDArray[np.float32], text: str | None = None
    ) -> Any | None:
        """The cached value of the most similar live query of ``key``, or None (a miss). With
        ``text``, a hit is also found by that text from now on (``lookup_text``)."""
        return self.lookup_many(key, np.asarray(vector)[None, :], [text])[0]

    def lookup_text(self, key: Hashable, text: str) -> Any | None:
        """The cached value of ``key`` found by this very text before, or None; no vector
        needed. Counts hits only: a None is no verdict (``lookup`` gives it)."""
        if not self._spec.enabled:
            return None
        entry_id = self._by_text.get((key, text))
        if entry_id is None or not self._live(entry_id):
            return None
        self.stats.hits += 1
        return self._entries[entry_id].value

    def lookup_many(
        self,
        key: Hashable,
        vectors: npt.NDArray[np.float32],
        texts: Sequence[str | None] | None = None,
    ) -> list[Any | None]:
        """``lookup`` of each row of ``vectors`` (with its text), in order, with one pass
        over the key's entries for all of them."""
        n = len(vectors)
        if not self._spec.enabled:
            return [None] * n
        index = self._by_key.get(key)
        if index is None or not index.ids:
            self.stats.misses += n
            return [None] * n
        nearest = index.nearest(_units(vectors), self._spec.threshold)
        # Entry ids now, before a query below drops an entry (and moves another's row).
        entries = [None if n is None else index.ids[n[0]] for n in nearest]
        found: list[Any | None] = []
        for q, entry_id in enumerate(entries):
            text = None if texts is None else texts[q]
            if entry_id is None:
                self.stats.misses += 1
                found.append(None)
                continue
            if entry_id not in self._entries:  # an earlier query dropped it (expired)
                found.append(self.lookup(key, vectors[q], text))  # as if looked up alone
            elif not self._live(entry_id):
                self.stats.misses += 1
                found.append(None)
            else:
                self.stats.hits += 1
                found.append(self._hit(key, entry_id, text))
        return found

    def _hit(self, key: Hashable, entry_id: int, text: str | None) -> Any:
        entry = self._entries[entry_id]
        if text is not None and len(entry.texts) < MAX_TEXTS and (key, text) not in self._by_text:
            self._by_text[(key, text)] = entry_id
            entry.texts.append(text)
        return entry.value

    def _live(self, entry_id: int) -> bool:
        """Whether the entry is within its TTL (then it becomes the most recently used); one
        past it is dropped."""
        entry = self._entries[entry_id]
        if self._clock() - entry.stored_at > self._spec.ttl_s:
            self._drop(entry_id)
            self.stats.expired += 1
            return False
        self._entries.move_to_end(entry_id)
        return True

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
        text: str | None = None,
    ) -> bool:
        """Keep ``value`` (which read the knowledge shards, or ``session``'s memory, or
        both), computed for ``vector`` (the embedding of ``text``, if given); False when an
        invalidation since ``began`` may have touched it."""
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
        entry = _Entry(key, _unit(vector), value, knowledge, session, self._clock(), [])
        self._entries[entry_id] = entry
        if text is not None:
            self._by_text[(key, text)] = entry_id  # the newest result for this text
            entry.texts.append(text)
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
        for text in entry.texts:
            if self._by_text.get((entry.key, text)) == entry_id:
                del self._by_text[(entry.key, text)]
        self._knowledge_readers.discard(entry_id)
        if entry.session is not None:
            self._by_session[entry.session].discard(entry_id)
            if not self._by_session[entry.session]:
                del self._by_session[entry.session]
        return 1


def _unit(vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    v = np.asarray(vector, dtype=np.float64)  # float32 squares of large values overflow
    norm = math.sqrt(float(np.dot(v, v)))
    return (v / norm if norm > 0 else v).astype(np.float32)


def _units(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Each row scaled to unit length (a zero row stays zero)."""
    v = np.asarray(vectors, dtype=np.float64)  # float32 squares of large values overflow
    norms = np.sqrt(np.einsum("ij,ij->i", v, v))[:, None]
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0).astype(np.float32)


def _norm(vector: npt.NDArray[np.float32]) -> float:
    v = vector.astype(np.float64)
    return math.sqrt(float(np.einsum("i,i->", v, v)))
