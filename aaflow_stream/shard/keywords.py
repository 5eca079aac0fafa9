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
the root sums them (``bm25.combine``) and sends them back, and each rank scores every local
document holding a query term with the global statistics (``search``). tantivy-py exposes no
postings, so a document's term frequency is recovered from tantivy's own single-term score:
with that index's ``idf`` and ``avgdl`` (read from ``explain`` on one hit) and the document's
``len``, tantivy's f32 formula is inverted and re-run; a score it does not reproduce bit for
bit falls back to ``explain`` for that document. Given the same statistics, a chunk's f64
score, and hence every rank's top-k under ``shard.topk``'s order, is the same whatever the
shard layout; against tantivy's own single-index f32 scores it differs by f32 rounding.
A query's terms count once each (a repeated query word is not weighted twice).

Cost: a query reads every local document holding one of its terms (tantivy returns them all,
per term), so a very common term costs O(its documents) per rank; a bound-based pruning
(WAND with global weights) would cut that. A commit between ``local_stats`` and ``search``
mixes two generations of this rank's index in one query (still a valid ranking).

Threads: staging is under ``_stage_lock`` (held briefly, by appends); feeding, committing
and the writer are under ``_commit_lock``; searches read an immutable view (searcher and its
totals) swapped in after each commit.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
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
from .bm25 import KeywordStats, LocalWeight, quantized, term_scores
from .topk import Ids, Scores, order

log = logging.getLogger(__name__)

TOKENIZER: Final = "aaflow_default"
MARKER: Final = 1  # the value of the marker document's ``marker`` field
FEED_ROWS: Final = 4096  # texts turned into Python strings at a time
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


def query_terms(text: str) -> list[str]:
    """A query's distinct terms, sorted (the order scores are summed in)."""
    return sorted(set(analyze(text)))


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
class _View:
    """A committed generation: its searcher and live totals."""

    searcher: Any
    docs: int
    tokens: int


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
    def __init__(self, directory: Path, *, heap_bytes: int = 64 << 20, threads: int = 1) -> None:
        self.directory = directory
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
        return _View(searcher, docs, tokens)

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
        """This rank's share of the statistics BM25 needs for ``terms`` (``bm25.combine``
        sums the ranks')."""
        view = self._view
        freq = {}
        for term in terms:
            query = self._term_query(term)
            freq[term] = view.searcher.search(query, 1, count=True).count if view.docs else 0
        return KeywordStats(view.docs, view.tokens, freq)

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
        parts: list[tuple[Ids, npt.NDArray[np.float64]]] = []
        for term in terms:
            if not stats.doc_freq[term]:
                continue
            ids, lengths, tf = self._postings(view, term)
            if ids.size:
                parts.append(
                    (ids, term_scores(tf.astype(np.float64), lengths, stats.idf(term), avgdl))
                )
        if not parts:
            return _empty()
        chunks = np.unique(np.concatenate([ids for ids, _ in parts]))
        total = np.zeros(len(chunks), dtype=np.float64)
        for ids, scores in parts:  # term by term, so each sum runs in the same order anywhere
            total[np.searchsorted(chunks, ids)] += scores
        if keep is not None:
            mask = keep(chunks)
            chunks, total = chunks[mask], total[mask]
        return _top(chunks, total.astype(np.float32), k)

    def _term_query(self, term: str) -> tantivy.Query:
        return tantivy.Query.term_query(self._schema, "text", term, index_option="freq")

    def _postings(self, view: _View, term: str) -> tuple[Ids, Ids, Ids]:
        """Every live document holding ``term``: chunk ids, token counts, term frequencies."""
        query = self._term_query(term)
        searcher = view.searcher
        hits = searcher.search(query, max(1, searcher.num_docs)).hits
        if not hits:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        scores = np.fromiter((s for s, _ in hits), dtype=np.float64, count=len(hits))
        addresses = [a for _, a in hits]
        ids = np.array(searcher.fast_field_values("chunk_id", addresses), dtype=np.int64)
        lengths = np.array(searcher.fast_field_values("len", addresses), dtype=np.int64)
        first = _explained(query, searcher, addresses[0])
        tf, exact = LocalWeight(first["idf"], first["avgdl"]).term_freqs(scores, lengths)
        for i in np.flatnonzero(~exact).tolist():  # not expected; tantivy says it itself
            found = _explained(query, searcher, addresses[i])
            if found["dl"] != quantized(lengths[i : i + 1])[0]:
                raise StorageError(
                    f"{self.directory}: chunk {ids[i]} has {lengths[i]} tokens recorded but "
                    f"tantivy counted {found['dl']:.0f}: remove the keyword index to rebuild it"
                )
            tf[i] = int(found["freq"])
        return ids, lengths, tf


def _empty() -> tuple[Ids, Scores]:
    return np.zeros(0, np.int64), np.zeros(0, np.float32)


def _top(ids: Ids, scores: Scores, k: int) -> tuple[Ids, Scores]:
    """The best ``k`` in ``shard.topk`` order (ties by smaller id, so every rank agrees)."""
    if len(ids) > k:  # only candidates tied with or above the k-th best need sorting
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        near = scores >= kth
        ids, scores = ids[near], scores[near]
    best = order(scores, ids, "ip")[:k]
    return ids[best], scores[best]
