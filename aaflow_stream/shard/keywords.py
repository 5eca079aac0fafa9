"""A shard rank's keyword (BM25) index over the same chunks as its vector index, on tantivy.

The index of record is a tantivy index in ``<shard_dir>/keywords/``, one document per live
chunk: ``chunk_id`` (u64, indexed for deletes by term, fast for returning it), ``text``
(indexed with term frequencies, not stored: the shard's rows hold the text), ``len`` (u64
fast: the text's token count), plus one marker document (``marker``, ``lsn``) saying which
WAL position the committed index covers. The marker is replaced in the same tantivy commit as
the data (tantivy-py has no commit payload), so the index and its LSN cannot disagree.

Tokens: tantivy's ``default`` analyzer (simple tokenizer, tokens of 40 bytes and more removed,
lowercased), registered under our own name so that the very analyzer object that indexes
also counts ``len`` and splits queries.

**Kept in step with the store.** The store stages every applied record here with its LSN
(``upsert``: the batch's ids and texts; ``remove``: the chunk ids a tombstone doomed; records
without keyword effect still advance ``seen_lsn``). An upsert is applied as delete-by-term of
its ids, then add, so applying a record twice changes nothing. Staging is cheap (it keeps
the Arrow columns); tantivy work happens in ``commit(upto)``, which feeds the staged records
up to ``upto`` to the writer, replaces the marker and commits. The store passes its durable
LSN as ``upto``: the committed index never holds a record the WAL could lose in a crash, and
the tantivy work runs where the store syncs (the maintenance thread with ``wal_sync:
interval``). Without a log (``wal_sync: none``) nothing is durable before a snapshot, so
there it commits what is applied and recovery catches the case below ("ahead").

**Recovery** (``ShardStore`` with ``keywords=True``): with the snapshot at LSN S, the WAL
replayed to L, and the index committed at K:

- K < S (index missing, damaged, older than the snapshot: the WAL it lacks is gone) or
  K > L (it holds records the store lost): rebuild from the store's rows.
- S <= K <= L: the replay stages only the records after K (``upsert``/``remove`` ignore
  LSNs <= ``seen_lsn``); a commit at the end of opening makes it current.

**Visibility.** tantivy searches what was committed. The store commits at syncs (after each
append without ``interval`` syncs) at most every ``keyword_commit_s``; at the first round of
every keyword query when records are staged, so a query sees every durable record (a result
the gateway caches must not miss what was acknowledged before it); at once when a tombstone
removed chunks (a delete is not answered before keyword search forgets them), at snapshots
(before the log they cover goes) and at close. Each commit is a tantivy segment plus fsyncs
(~10 ms here): hence the bound on how often during ingestion.
``search`` also drops ids the store no longer holds (``keep``).

Why tantivy's own scores are not used even on one rank: tantivy's N, document frequencies
and token total count deleted documents until a merge purges them (and a merge that purges
deletes re-estimates the token total from quantized norms), so its scores depend on the
index's history. The statistics here are the live documents' (``count`` of a term query,
``num_docs``, the sum of ``len``): those of a fresh index over the same chunks.

**Exact BM25 across shards** (``shard.bm25``). Each rank's tantivy scores with its own
statistics; one index over all chunks would use corpus-wide ones. So the query's terms go to
every rank (``local_stats``: live documents, their total tokens, live documents per term),
the ranks' counts are summed (``bm25.combine``, or one all-reduce in a round:
``shard.hybrid``), and each rank scores every local document holding a query term with the
global statistics (``search``). tantivy-py exposes no postings, so a document's term
frequency is recovered from tantivy's own single-term score: with that index's ``idf`` and
``avgdl`` (as ``explain`` reports them) and the document's ``len``, tantivy's f32 formula is
inverted and re-run; a score it does not reproduce bit for bit falls back to ``explain`` for
that document. Given the same statistics, a chunk's f64
score, and hence every rank's top-k under ``shard.topk``'s order, is the same whatever the
shard layout; against tantivy's own single-index f32 scores it differs by f32 rounding.
A query's terms count once each (a repeated query word is not weighted twice).

**Postings cache.** Reading a term's postings through tantivy-py (every hit as a Python
tuple, two fast-field lookups, an ``explain``) costs ~1 us per document holding it, ~5 ms for
a term in every document of a 5,000-chunk shard: per query, that was the whole cost of a
hybrid round (~26 ms per query per rank on W1 small). So each view (one committed
generation) keeps, per term, its postings as numpy arrays (``_Postings``: slot, term
frequency, quantized length) and the last scores computed from them, least recently used
first out past ``cache_bytes``; ``local_stats`` counts a term's live documents as its cached
postings' length. A commit swaps in a new view with an empty cache: nothing cached outlives
the generation it was read from. A term's first read asks ``explain`` once per view, not
once per term: its tantivy weight comes from the term dictionary's document frequency and
the view's document count and ``avgdl`` (``_weight``).

A query then adds its terms' scores into an accumulator over the view's slots: a common
term (in 1/``DENSE`` of the chunks or more) keeps its scores per slot and adds them
contiguously, a rarer one scatters them; a query of rare terms only sums over the union of
its postings. The same f64 additions in the same order as without a cache, so the scores
are the same bit for bit (~0.2 ms per query per rank on W1 small, warm). The ``keep``
filter runs on the best candidates only, widening until ``k`` pass. Max-score pruning
(common terms scored only for chunks whose bound can reach the k-th best) was tried and left
out: exact with the terms summed rarest first, but at 5,000 chunks a rank it cost more than
it saved (numpy calls, not elements, dominate) and at 80,000 it saved ~13%.

A commit between ``local_stats`` and ``search`` mixes two generations of this rank's index
in one query (still a valid ranking).

Threads: staging is under ``_stage_lock`` (held briefly, by appends); feeding, committing
and the writer are under ``_commit_lock``; searches read a view (searcher and its totals)
swapped in after each commit; its cache has a lock of its own (searches may run on several
threads), not held while tantivy reads postings.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import tantivy

from ..durability.fsio import make_dir, remove_tree
from ..errors import StorageError
from .bm25 import F64, KeywordStats, LocalWeight, local_idf, quantized, term_scores
from .topk import Ids, Scores, order

log = logging.getLogger(__name__)

TOKENIZER: Final = "aaflow_default"
MARKER: Final = 1  # the value of the marker document's ``marker`` field
FEED_ROWS: Final = 4096  # texts turned into Python strings at a time
# Postings kept per view (``_TermCache``): ~32 bytes per posting, so 64 MiB holds ~2M, the
# postings of every term of a shard of ~30,000 chunks of ~500 characters.
CACHE_BYTES: Final = 64 << 20
# A term in at least 1/DENSE of the chunks known when it is read keeps its scores as one value
# per slot (zero where absent): a query adds them to its accumulator contiguously, ~10x
# cheaper than scattering them, for at most DENSE times the memory.
DENSE: Final = 4
# A query whose terms are all sparse and hold under 1/SPARSE of the view's slots sums over
# their union instead of a dense accumulator (zeroing and scanning the slots would cost more).
SPARSE: Final = 8
Keep = Callable[[Ids], npt.NDArray[np.bool_]]
Texts: TypeAlias = pa.Array | pa.ChunkedArray


@functools.cache
def _analyzer() -> tantivy.TextAnalyzer:
    # tantivy's "default": SimpleTokenizer, RemoveLongFilter::limit(40), LowerCaser.
    builder = tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
    return builder.filter(tantivy.Filter.remove_long(40)).filter(tantivy.Filter.lowercase()).build()


def analyze(text: str) -> list[str]:
    """The tokens the keyword index makes of ``text``."""
    return _analyzer().analyze(text)


@functools.lru_cache(maxsize=4096)
def _query_terms(text: str) -> tuple[str, ...]:
    # A round analyzes each query twice (statistics, then search): remembered once.
    return tuple(sorted(set(analyze(text))))


def query_terms(text: str) -> list[str]:
    """A query's distinct terms, sorted (the order scores are summed in)."""
    return list(_query_terms(text))


def schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("chunk_id", indexed=True, fast=True)
    builder.add_text_field("text", tokenizer_name=TOKENIZER, index_option="freq")
    builder.add_unsigned_field("len", fast=True)
    builder.add_unsigned_field("marker", indexed=True)
    builder.add_unsigned_field("lsn", fast=True)
    return builder.build()


@dataclass
class _Staged:
    """One record's keyword effect: drop ``remove``, then add ``ids`` with ``texts``."""

    lsn: int
    remove: Ids
    ids: Ids
    texts: Texts | None
    reset: bool = False  # drop everything first (a rebuild)

    @property
    def removes_only(self) -> bool:
        return self.ids.size == 0 and self.remove.size > 0


@dataclass(frozen=True)
class PostingsCacheStats:
    """The current view's postings cache (``KeywordIndex.cache_stats``)."""

    terms: int
    bytes: int
    hits: int
    misses: int


class _Slots:
    """Dense positions for the chunks of one view, given in order of first sight (a slot never
    changes), looked up through a sorted copy of the ids. Callers hold the cache's lock."""

    def __init__(self) -> None:
        self.ids: Ids = np.zeros(0, np.int64)  # slot -> chunk id (replaced, never changed)
        self._sorted: Ids = np.zeros(0, np.int64)
        self._slot_of_sorted: npt.NDArray[np.intp] = np.zeros(0, np.intp)

    def assign(self, ids: Ids) -> npt.NDArray[np.intp]:
        """The slots of ``ids``, new ones given the next free slots."""
        at = np.searchsorted(self._sorted, ids)
        known = np.zeros(len(ids), dtype=bool)
        inside = at < len(self._sorted)
        known[inside] = self._sorted[at[inside]] == ids[inside]
        if not known.all():
            new = np.unique(ids[~known])
            first = len(self.ids)
            self.ids = np.concatenate([self.ids, new])
            merged = np.concatenate([self._sorted, new])
            slots = np.concatenate([self._slot_of_sorted, np.arange(first, len(self.ids))])
            by_id = np.argsort(merged, kind="stable")
            self._sorted, self._slot_of_sorted = merged[by_id], slots[by_id]
            at = np.searchsorted(self._sorted, ids)
        return self._slot_of_sorted[at]


@dataclass(eq=False)
class _Postings:
    """One term's live postings in one view: slots, term frequencies, quantized lengths (f64,
    as BM25 computes with), and the scores last computed from them: per posting, or with
    ``dense`` per slot up to the term's last one (0.0 where absent)."""

    slots: npt.NDArray[np.intp]
    tf: F64
    norms: F64
    dense: bool
    scored: tuple[float, float, F64] | None = None  # (idf, avgdl, scores)

    @property
    def nbytes(self) -> int:
        scores = 8 * (int(self.slots.max()) + 1 if self.dense else len(self.slots))
        return self.slots.nbytes + self.tf.nbytes + self.norms.nbytes + scores

    def scores(self, idf: float, avgdl: float) -> F64:
        """BM25 under these statistics; the same statistics give the same array again
        (a race between threads only computes it twice)."""
        memo = self.scored
        if memo is None or memo[0] != idf or memo[1] != avgdl:
            scores = term_scores(self.tf, self.norms, idf, avgdl)
            if self.dense:
                spread = np.zeros(int(self.slots.max()) + 1, dtype=np.float64)
                spread[self.slots] = scores
                scores = spread
            memo = self.scored = (idf, avgdl, scores)
        return memo[2]


class _TermCache:
    """One view's postings by term, least recently used first out past ``budget`` bytes, and
    the slots of the chunks they hold (at most the view's documents, 16 bytes each)."""

    def __init__(self, budget: int) -> None:
        self._lock = threading.Lock()
        self._budget = budget
        self._terms: OrderedDict[str, _Postings] = OrderedDict()
        self._bytes = 0
        self._slots = _Slots()
        self.hits = self.misses = 0
        # tantivy's document count and avgdl in this view (deleted documents included), read
        # from ``explain`` once: with a term's document frequency, its BM25 weight.
        self.scale: tuple[int, float] | None = None

    @property
    def slot_ids(self) -> Ids:
        """slot -> chunk id, for every slot given so far."""
        return self._slots.ids

    def get(self, terms: Sequence[str]) -> list[_Postings | None]:
        """The cached postings of each term (None: not cached), in one hold of the lock."""
        with self._lock:
            found = [self._terms.get(term) for term in terms]
            for term, postings in zip(terms, found, strict=True):
                if postings is not None:
                    self._terms.move_to_end(term)
            missing = sum(postings is None for postings in found)  # not count(): no __eq__
            self.hits += len(found) - missing
            self.misses += missing
            return found

    def put(self, terms: Sequence[str], read: _Read) -> dict[str, _Postings]:
        """Keep terms' postings as read from tantivy; returned even when too large to keep."""
        norms = quantized(read.lengths).astype(np.float64)
        tf = read.tf.astype(np.float64)
        bounds = np.cumsum([0, *read.counts]).tolist()
        out = {}
        with self._lock:
            slots = self._slots.assign(read.ids) if read.ids.size else np.zeros(0, np.intp)
            known = len(self._slots.ids)
            for term, start, end in zip(terms, bounds[:-1], bounds[1:], strict=True):
                dense = end > start and (end - start) * DENSE >= known
                part = slice(start, end)  # copies: an evicted term frees its memory
                postings = _Postings(slots[part].copy(), tf[part].copy(), norms[part].copy(), dense)
                old = self._terms.pop(term, None)
                self._bytes += postings.nbytes - (0 if old is None else old.nbytes)
                self._terms[term] = out[term] = postings
            while self._bytes > self._budget and self._terms:
                _, gone = self._terms.popitem(last=False)
                self._bytes -= gone.nbytes
        return out

    def stats(self) -> PostingsCacheStats:
        with self._lock:
            return PostingsCacheStats(len(self._terms), self._bytes, self.hits, self.misses)


@dataclass(frozen=True)
class _Read:
    """Postings of several terms as tantivy gave them, term after term: chunk ids, token
    counts, term frequencies; ``counts``: how many each term has."""

    ids: Ids
    lengths: Ids
    tf: Ids
    counts: list[int]


@dataclass(frozen=True)
class _View:
    """A committed generation: its searcher, live totals and postings cache."""

    searcher: Any
    docs: int
    tokens: int
    cache: _TermCache


def _explained(query: tantivy.Query, searcher: Any, address: Any) -> dict[str, float]:
    """``explain``'s named values ("idf", "avgdl", "freq", "dl", ...) for one hit."""
    found: dict[str, float] = {}
    stack = [json.loads(query.explain(searcher, address).to_json())]
    while stack:
        node = stack.pop()
        found.setdefault(node["description"].split(",")[0], float(node["value"]))
        stack.extend(node.get("details", ()))
    return found


class KeywordIndex:
    def __init__(
        self,
        directory: Path,
        *,
        heap_bytes: int = 64 << 20,
        threads: int = 1,
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.directory = directory
        self._cache_bytes = cache_bytes
        self._schema = schema()
        self._stage_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        self._staged: list[_Staged] = []
        try:
            self._index = self._open()
            self._index.register_tokenizer(TOKENIZER, _analyzer())
            self._writer: Any = self._index.writer(heap_size=heap_bytes, num_threads=threads)
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot open the keyword index in {directory}: {exc}") from exc
        self._view = self._load_view()
        self._lsn = self._read_lsn(self._view.searcher)
        self._seen = self._lsn  # records up to here are in the index or staged

    def _open(self) -> Any:
        make_dir(self.directory)
        try:
            return tantivy.Index(self._schema, path=str(self.directory), reuse=True)
        except ValueError as exc:  # damaged, or another schema: the store rebuilds it
            log.warning(
                "%s: unusable keyword index (%s); starting an empty one", self.directory, exc
            )
        remove_tree(self.directory)
        make_dir(self.directory)
        return tantivy.Index(self._schema, path=str(self.directory), reuse=True)

    # --- state -------------------------------------------------------------------------------

    @property
    def lsn(self) -> int:
        """The last WAL record the committed index covers."""
        return self._lsn

    @property
    def seen_lsn(self) -> int:
        """The last record committed or staged."""
        return self._seen

    @property
    def count(self) -> int:
        """Chunks in the committed index."""
        return self._view.docs

    @property
    def staged_removals(self) -> bool:
        """A staged record only removes chunks (a tombstone): worth committing at once."""
        with self._stage_lock:
            return any(s.removes_only for s in self._staged)

    # --- staging -----------------------------------------------------------------------------

    def upsert(self, lsn: int, ids: Ids, texts: Texts) -> None:
        """Record ``lsn`` sets chunks ``ids`` to ``texts`` (null: empty); a repeated id keeps
        its last row. Ignored if ``lsn`` is already covered."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(np.unique(ids)) != len(ids):
            _, last = np.unique(ids[::-1], return_index=True)
            keep = np.sort(len(ids) - 1 - last)
            ids, texts = ids[keep], texts.take(pa.array(keep))
        self._stage(_Staged(lsn, ids, ids, texts))

    def remove(self, lsn: int, ids: Sequence[int] | Ids) -> None:
        """Record ``lsn`` removes chunks ``ids`` (may be none: the LSN is seen all the same)."""
        empty = np.zeros(0, np.int64)
        self._stage(_Staged(lsn, np.asarray(ids, dtype=np.int64), empty, None))

    def rebuild(self, lsn: int, ids: Ids, texts: Texts) -> None:
        """Replace everything by these chunks, as of ``lsn`` (staged: ``commit`` writes it)."""
        with self._stage_lock:
            self._staged = [_Staged(lsn, np.zeros(0, np.int64), ids, texts, reset=True)]
            self._seen = lsn

    def _stage(self, staged: _Staged) -> None:
        with self._stage_lock:
            if staged.lsn <= self._seen:
                return
            self._seen = staged.lsn
            if staged.remove.size or staged.ids.size:
                self._staged.append(staged)

    # --- commits -----------------------------------------------------------------------------

    def commit(self, upto: int | None = None, *, force: bool = False) -> bool:
        """Feed the staged records up to LSN ``upto`` (all of them: None) to tantivy and
        commit with the marker at that LSN; whether a commit was made. Without staged
        records it commits only if ``force`` and the LSN would advance."""
        with self._commit_lock:
            with self._stage_lock:
                target = self._seen if upto is None else min(upto, self._seen)
                ready = 0
                while ready < len(self._staged) and self._staged[ready].lsn <= target:
                    ready += 1
                batch = self._staged[:ready]
                del self._staged[:ready]
            if target <= self._lsn and not batch:
                return False
            if not batch and not force:
                return False
            if self._writer is None:
                raise StorageError(f"the keyword index in {self.directory} is closed")
            try:
                self._write(batch, target)
            except BaseException as exc:
                with self._stage_lock:  # nothing of it is committed: offer it again
                    self._staged[:0] = batch
                self._rollback()
                if isinstance(exc, ValueError | OSError):
                    raise StorageError(
                        f"cannot commit the keyword index in {self.directory}: {exc}"
                    ) from exc
                raise
            self._lsn = max(self._lsn, target) if not any(s.reset for s in batch) else target
            self._view = self._load_view()
            return True

    def _write(self, batch: list[_Staged], lsn: int) -> None:
        writer, schema_ = self._writer, self._schema
        for staged in batch:
            if staged.reset:
                writer.delete_all_documents()
            if staged.remove.size:
                ids = staged.remove.tolist()
                writer.delete_documents_by_query(
                    tantivy.Query.term_set_query(schema_, "chunk_id", ids)
                )
            if staged.texts is not None:
                self._add(staged.ids, staged.texts)
        writer.delete_documents_by_query(tantivy.Query.term_query(schema_, "marker", MARKER))
        marker = tantivy.Document()
        marker.add_unsigned("marker", MARKER)
        marker.add_unsigned("lsn", lsn)
        writer.add_document(marker)
        writer.commit()

    def _add(self, ids: Ids, texts: Texts) -> None:
        writer = self._writer
        for start in range(0, len(ids), FEED_ROWS):  # a rebuild's texts: not all at once
            chunk_ids = ids[start : start + FEED_ROWS].tolist()
            part = texts.slice(start, FEED_ROWS).to_pylist()
            for chunk, text in zip(chunk_ids, part, strict=True):
                text = text or ""
                doc = tantivy.Document()
                doc.add_unsigned("chunk_id", chunk)
                doc.add_text("text", text)
                doc.add_unsigned("len", len(analyze(text)))  # what tantivy counts, same analyzer
                writer.add_document(doc)

    def _rollback(self) -> None:
        try:
            self._writer.rollback()
        except ValueError as exc:
            log.warning("%s: keyword rollback failed: %s", self.directory, exc)

    def _load_view(self) -> _View:
        self._index.reload()
        searcher = self._index.searcher()
        markers = searcher.search(tantivy.Query.exists_query("lsn"), 1, count=True).count
        docs = searcher.num_docs - markers
        tokens = 0
        if docs:
            agg = searcher.aggregate(tantivy.Query.all_query(), {"t": {"sum": {"field": "len"}}})
            tokens = int(agg["t"]["value"] or 0)
        return _View(searcher, docs, tokens, _TermCache(self._cache_bytes))

    def _read_lsn(self, searcher: Any) -> int:
        hits = searcher.search(tantivy.Query.exists_query("lsn"), 1).hits
        if not hits:
            return 0
        value = searcher.fast_field_values("lsn", [hits[0][1]])[0]
        return int(value or 0)

    def close(self) -> None:
        """Let go of the writer, committing nothing (the store commits first). Idempotent."""
        with self._commit_lock:
            writer, self._writer = self._writer, None
            if writer is not None:
                writer.wait_merging_threads()

    # --- reads -------------------------------------------------------------------------------

    def local_stats(self, terms: Sequence[str]) -> KeywordStats:
        """This rank's share of the statistics BM25 needs for ``terms`` (summed over the ranks,
        ``bm25.combine``). It reads the terms' postings, which ``search`` then finds cached."""
        view = self._view
        if not view.docs:
            return KeywordStats(view.docs, view.tokens, dict.fromkeys(terms, 0))
        found = self._cached(view, terms)
        freq = {t: len(p.slots) for t, p in zip(terms, found, strict=True)}
        return KeywordStats(view.docs, view.tokens, freq)

    def cache_stats(self) -> PostingsCacheStats:
        """The current view's postings cache."""
        return self._view.cache.stats()

    def search(
        self,
        query_text: str,
        k: int,
        stats: KeywordStats,
        keep: Keep | None = None,
    ) -> tuple[Ids, Scores]:
        """This rank's top ``k`` chunks for ``query_text`` under BM25 with the (global)
        ``stats``, best first in ``shard.topk`` order: (chunk ids, f32 scores). ``keep``
        filters candidate ids before the cut."""
        terms = query_terms(query_text)
        missing = [t for t in terms if t not in stats.doc_freq]
        if missing:
            raise ValueError(f"the statistics lack the query terms {missing}")
        view = self._view
        if k <= 0 or not terms or not view.docs or not stats.docs:
            return _empty()
        avgdl = stats.avgdl
        held = [t for t in terms if stats.doc_freq[t]]
        parts = [
            (postings, postings.scores(stats.idf(term), avgdl))
            for term, postings in zip(held, self._cached(view, held), strict=True)
            if postings.slots.size
        ]
        if not parts:
            return _empty()
        chunks, total = _sum(parts, view.cache.slot_ids)
        return _top(chunks, total.astype(np.float32), k, keep)

    def _cached(self, view: _View, terms: Sequence[str]) -> list[_Postings]:
        found = view.cache.get(terms)
        missing = [t for t, postings in zip(terms, found, strict=True) if postings is None]
        if not missing:
            return found  # type: ignore[return-value]  # no None in it
        read = view.cache.put(missing, self._read(view, missing))  # read outside the lock
        return [read[t] if p is None else p for t, p in zip(terms, found, strict=True)]

    def _term_query(self, term: str) -> tantivy.Query:
        return tantivy.Query.term_query(self._schema, "text", term, index_option="freq")

    def _read(self, view: _View, terms: Sequence[str]) -> _Read:
        """Every live document holding each of ``terms``: one tantivy search per term, then
        the documents' fields and term frequencies for all of them at once (per term, the
        numpy work cost ~4x the search)."""
        searcher = view.searcher
        queries = [self._term_query(t) for t in terms]
        hits = [searcher.search(q, max(1, searcher.num_docs)).hits for q in queries]
        counts = [len(h) for h in hits]
        if not sum(counts):
            empty = np.zeros(0, np.int64)
            return _Read(empty, empty, empty, counts)
        scores = np.fromiter((s for h in hits for s, _ in h), np.float64, sum(counts))
        addresses = [a for h in hits for _, a in h]
        ids = np.array(searcher.fast_field_values("chunk_id", addresses), dtype=np.int64)
        lengths = np.array(searcher.fast_field_values("len", addresses), dtype=np.int64)
        read = _Read(ids, lengths, np.zeros(len(ids), np.int64), counts)
        held = [i for i, n in enumerate(counts) if n]
        first = sum(counts[: held[0]])
        weight = self._weights(view, [terms[i] for i in held], [counts[i] for i in held])
        if weight is None:  # the view's scale is not known yet: one explain tells it
            found = _explained(queries[held[0]], searcher, addresses[first])
            view.cache.scale = (int(found["N"]), found["avgdl"])
            weight = self._weights(view, [terms[i] for i in held], [counts[i] for i in held])
            assert weight is not None
        read.tf[:], exact = weight.term_freqs(scores, lengths)
        bounds = np.cumsum([0, *counts]).tolist()
        for i in held:
            part = slice(bounds[i], bounds[i + 1])
            if not exact[part].all():
                self._confirm(searcher, read, part, queries[i], addresses, scores)
        return read

    def _weights(
        self, view: _View, terms: Sequence[str], counts: Sequence[int]
    ) -> LocalWeight | None:
        """tantivy's f32 weights of ``terms``, one per document (``counts`` each): each
        term's document frequency from the term dictionary, the view's document count and
        avgdl from one ``explain`` (None: not read yet)."""
        if view.cache.scale is None:
            return None
        total, avgdl = view.cache.scale
        idf = [local_idf(view.searcher.doc_freq("text", t), total) for t in terms]
        return LocalWeight(np.repeat(np.array(idf, dtype=np.float64), counts), avgdl)

    def _confirm(
        self,
        searcher: Any,
        read: _Read,
        part: slice,
        query: tantivy.Query,
        addresses: list[Any],
        scores: npt.NDArray[np.float64],
    ) -> None:
        """One term's term frequencies where recomputing its scores did not confirm them:
        with tantivy's own idf (ours may differ in the last bit), then by ``explain``."""
        lengths = read.lengths[part]
        first = _explained(query, searcher, addresses[part.start])
        tf, exact = LocalWeight(first["idf"], first["avgdl"]).term_freqs(scores[part], lengths)
        for i in np.flatnonzero(~exact).tolist():  # not expected; tantivy says it itself
            found = _explained(query, searcher, addresses[part.start + i])
            if found["dl"] != quantized(lengths[i : i + 1])[0]:
                raise StorageError(
                    f"{self.directory}: chunk {read.ids[part][i]} has {lengths[i]} tokens "
                    f"recorded but tantivy counted {found['dl']:.0f}: remove the keyword index "
                    "to rebuild it"
                )
            tf[i] = int(found["freq"])
        read.tf[part] = tf


def _empty() -> tuple[Ids, Scores]:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)


def _sum(parts: list[tuple[_Postings, F64]], slot_ids: Ids) -> tuple[Ids, F64]:
    """Every chunk holding a query term and its score: the terms' scores added term by term,
    so each chunk's sum takes the same f64 additions in the same order wherever it sits (a
    dense term adds 0.0 where it is absent, which changes no sum: every score is > 0)."""
    postings = sum(len(p.slots) for p, _ in parts)
    if postings * SPARSE < len(slot_ids) and not any(p.dense for p, _ in parts):
        union = np.unique(np.concatenate([p.slots for p, _ in parts]))
        total = np.zeros(len(union), dtype=np.float64)
        for p, scores in parts:
            total[np.searchsorted(union, p.slots)] += scores
        return slot_ids[union], total
    dense = np.zeros(len(slot_ids), dtype=np.float64)
    for p, scores in parts:
        if p.dense:
            dense[: len(scores)] += scores  # slots given after the term was read hold none of it
        else:
            dense[p.slots] += scores
    held = np.flatnonzero(dense)  # every BM25 term score is > 0: a zero holds no term
    return slot_ids[held], dense[held]


def _best(ids: Ids, scores: Scores, k: int) -> npt.NDArray[np.intp]:
    """Positions of the best ``k`` in ``shard.topk`` order (ties by smaller id, so every rank
    agrees)."""
    if len(ids) > k:  # only candidates tied with or above the k-th best need sorting
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        near = np.flatnonzero(scores >= kth)
        return near[order(scores[near], ids[near], "ip")[:k]]
    return order(scores, ids, "ip")[:k]


def _top(ids: Ids, scores: Scores, k: int, keep: Keep | None = None) -> tuple[Ids, Scores]:
    """The best ``k`` that ``keep`` accepts, best first. ``keep`` sees only the best
    candidates, more of them while fewer than ``k`` pass: the order is total (ids are
    unique), so this is the top ``k`` of the accepted ones."""
    want = k
    while True:
        best = _best(ids, scores, want)
        if keep is None:
            return ids[best], scores[best]
        passed = best[keep(ids[best])]
        if len(passed) >= k or want >= len(ids):
            return ids[passed[:k]], scores[passed[:k]]
        want = min(len(ids), 4 * want)
