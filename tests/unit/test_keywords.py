"""The keyword (BM25) index: exact across shard layouts, equal to tantivy's own single-index
BM25, kept in step with ``ShardStore`` (upserts, tombstones, crashes, snapshots)."""

from __future__ import annotations

import gc
import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import tantivy

from aaflow_stream.errors import ChunkNotStored
from aaflow_stream.schemas import DELETE_ALL, stored
from aaflow_stream.shard import bm25, hybrid
from aaflow_stream.shard.bm25 import KeywordStats, combine
from aaflow_stream.shard.keywords import KeywordIndex, analyze, query_terms
from aaflow_stream.shard.store import KEYWORDS_DIR, ShardStore
from aaflow_stream.shard.topk import order
from aaflow_stream.text.chunking import chunk_id

from ..support.chunks import tombstones

DIM = 8
RARE = "XK-4471-QZ"

# --- data ------------------------------------------------------------------------------------


def _corpus(seed: int, n: int) -> tuple[np.ndarray, list[str | None]]:
    """``n`` chunks of Zipf-drawn words: lengths from empty to ~300 tokens (past the exact
    field norms), mixed case, punctuation, a token over 40 bytes (dropped), a null text."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}{'x' * (i % 5)}" for i in range(400)]
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    weights /= weights.sum()
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    texts: list[str | None] = []
    for i in range(n):
        length = int(rng.integers(0, 300 if i % 7 == 0 else 60))
        words = [vocab[j] for j in rng.choice(len(vocab), size=length, p=weights)]
        if i % 11 == 0 and words:
            words[0] = words[0].upper() + ","
        if i % 13 == 0:
            words.append("y" * 45)  # tantivy's default analyzer drops it
        texts.append(" ".join(words))
    texts[3] = None
    return ids, texts


def _index(directory: Path, ids: np.ndarray, texts: Sequence[str | None]) -> KeywordIndex:
    index = KeywordIndex(directory)
    index.upsert(1, ids, pa.array(texts, pa.large_string()))
    index.commit()
    return index


def _split(root: Path, ids: np.ndarray, texts: list[str | None], ranks: int) -> list[KeywordIndex]:
    """``ranks`` indexes holding ids % ranks; each with a history of its own (stale versions
    replaced, extra chunks deleted, several commits), so their tantivy statistics count
    deleted documents differently."""
    out = []
    for rank in range(ranks):
        mine = np.flatnonzero(ids % ranks == rank)
        index = KeywordIndex(root / f"r{ranks}-{rank}")
        junk = np.arange(10_000 + rank * 100, 10_050 + rank * 100, dtype=np.int64)
        index.upsert(1, junk, pa.array(["w1 w2 w3 junk"] * len(junk), pa.large_string()))
        stale = pa.array(["w0 w0 w0 stale"] * len(mine), pa.large_string())
        index.upsert(2, ids[mine], stale)
        index.commit()
        half = len(mine) // 2
        for lsn, part in ((3, mine[:half]), (4, mine[half:])):
            index.upsert(lsn, ids[part], pa.array([texts[i] for i in part], pa.large_string()))
            index.commit()
        index.remove(5, junk)
        index.commit()
        out.append(index)
    return out


def _query(indexes: Sequence[KeywordIndex], text: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """What a root does: gather the statistics, sum them, search every rank, merge."""
    stats = combine([index.local_stats(query_terms(text)) for index in indexes])
    found = [index.search(text, k, stats) for index in indexes]
    ids = np.concatenate([f[0] for f in found])
    scores = np.concatenate([f[1] for f in found])
    best = order(scores, ids, "ip")[:k]
    return ids[best], scores[best]


def _queries(texts: Sequence[str | None], seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = [w for t in texts if t for w in t.split()]
    out = [" ".join(rng.choice(words, size=int(rng.integers(1, 5)))) for _ in range(12)]
    return [*out, "w0", "w399xxxx w17", "nothing-here", ""]


class _Tantivy:
    """One plain tantivy index over every chunk, with its built-in default tokenizer."""

    def __init__(self, ids: np.ndarray, texts: Sequence[str | None]) -> None:
        builder = tantivy.SchemaBuilder()
        builder.add_unsigned_field("chunk_id", fast=True)
        builder.add_text_field("text", index_option="freq")
        self.schema = builder.build()
        self.index = tantivy.Index(self.schema)
        writer = self.index.writer(heap_size=20_000_000, num_threads=1)
        for chunk, text in zip(ids.tolist(), texts, strict=True):
            doc = tantivy.Document()
            doc.add_unsigned("chunk_id", chunk)
            doc.add_text("text", text or "")
            writer.add_document(doc)
        writer.commit()
        self.index.reload()
        self.searcher = self.index.searcher()

    def scores(self, text: str) -> dict[int, float]:
        terms = query_terms(text)
        if not terms:
            return {}
        clauses = [
            (
                tantivy.Occur.Should,
                tantivy.Query.term_query(self.schema, "text", t, index_option="freq"),
            )
            for t in terms
        ]
        hits = self.searcher.search(tantivy.Query.boolean_query(clauses), 10_000).hits
        ids = self.searcher.fast_field_values("chunk_id", [a for _, a in hits])
        return {int(i): s for i, (s, _) in zip(ids, hits, strict=True)}


# --- BM25 against tantivy --------------------------------------------------------------------


def test_field_norms_are_tantivys() -> None:
    """Our quantization of document lengths is the one tantivy scores with (``explain``)."""
    lengths = [*range(0, 130), 200, 313, 537, 1000, 1049, 2500, 4200]
    builder = tantivy.SchemaBuilder()
    builder.add_text_field("text", index_option="freq")
    schema = builder.build()
    index = tantivy.Index(schema)
    writer = index.writer(heap_size=20_000_000, num_threads=1)
    for n in lengths:
        writer.add_document(tantivy.Document(text="a " + "b " * n))
    writer.commit()
    index.reload()
    searcher = index.searcher()
    query = tantivy.Query.term_query(schema, "text", "a", index_option="freq")
    seen = {}
    for _, address in searcher.search(query, 1000).hits:
        stack = [json.loads(query.explain(searcher, address).to_json())]
        while stack:
            node = stack.pop()
            if node["description"].startswith("dl,"):
                seen[address.doc] = node["value"]
            stack.extend(node.get("details", ()))
    want = bm25.quantized(np.array(lengths) + 1)
    assert [seen[d] for d in range(len(lengths))] == want.tolist()
    assert bm25.FIELD_NORMS[-1] == 2_013_265_944


def test_layouts_agree_exactly_and_match_tantivy(tmp_path: Path) -> None:
    ids, texts = _corpus(1, 700)
    whole = _split(tmp_path, ids, texts, 1)
    layouts = {ranks: _split(tmp_path, ids, texts, ranks) for ranks in (2, 4)}
    reference = _Tantivy(ids, texts)
    tokens = sum(len(analyze(t or "")) for t in texts)
    for text in _queries(texts, 2):
        terms = query_terms(text)
        one = whole[0].local_stats(terms)
        assert (one.docs, one.tokens) == (len(ids), tokens)
        want_ids, want_scores = _query(whole, text, 10)
        for ranks, indexes in layouts.items():
            assert combine([i.local_stats(terms) for i in indexes]) == one, ranks
            got_ids, got_scores = _query(indexes, text, 10)
            assert got_ids.tolist() == want_ids.tolist(), (text, ranks)
            assert got_scores.tolist() == want_scores.tolist(), (text, ranks)  # bit for bit
        # tantivy's own BM25 over one index (f32, its tie order): the same scores.
        theirs = reference.scores(text)
        top = sorted(theirs.values(), reverse=True)[:10]
        np.testing.assert_allclose(want_scores, top, rtol=2e-6)
        for chunk, score in zip(want_ids.tolist(), want_scores.tolist(), strict=True):
            assert theirs[chunk] == pytest.approx(score, rel=2e-6)


def test_a_rare_identifier_comes_first(tmp_path: Path) -> None:
    ids, texts = _corpus(3, 400)
    texts[123] = f"w1 w2 error {RARE} w3 w4 " + "w0 " * 40
    for ranks in (1, 2, 4):
        indexes = _split(tmp_path, ids, texts, ranks)
        for query in (RARE, f"error code {RARE.lower()} w0 w1"):
            got, _ = _query(indexes, query, 5)
            assert got[0] == ids[123], (ranks, query)


def test_removed_chunks_leave_the_results_and_the_statistics(tmp_path: Path) -> None:
    ids, texts = _corpus(4, 300)
    index = _index(tmp_path / "k", ids, texts)
    text = " ".join((texts[10] or "").split()[:3])
    found, _ = _query([index], text, 20)
    gone = found[:5]
    index.remove(2, gone)
    index.commit()
    after, _ = _query([index], text, 20)
    assert not set(after.tolist()) & set(gone.tolist())
    assert index.count == len(ids) - len(gone)
    keep = ~np.isin(ids, gone)
    fresh = _index(
        tmp_path / "fresh", ids[keep], [t for t, k in zip(texts, keep, strict=True) if k]
    )
    assert _query([index], text, 20)[0].tolist() == _query([fresh], text, 20)[0].tolist()
    assert index.local_stats(query_terms(text)) == fresh.local_stats(query_terms(text))


def test_a_crash_before_the_commit_replays_exactly(tmp_path: Path) -> None:
    """Close without committing (what a crash leaves), reopen, replay every record: only
    the uncommitted ones apply, and the index equals one built in one go."""
    ids, texts = _corpus(5, 300)
    records = [
        (1, ids[:100], texts[:100]),
        (2, ids[100:200], texts[100:200]),
        (3, ids[50:150], [f"w{i} replaced" for i in range(100)]),
        (4, ids[200:], texts[200:]),
    ]
    index = KeywordIndex(tmp_path / "k")
    for lsn, chunk_ids, chunk_texts in records[:2]:
        index.upsert(lsn, chunk_ids, pa.array(chunk_texts, pa.large_string()))
    index.commit(upto=2)
    for lsn, chunk_ids, chunk_texts in records[2:]:
        index.upsert(lsn, chunk_ids, pa.array(chunk_texts, pa.large_string()))
    index.remove(5, ids[:10])
    index.close()  # no commit
    del index
    gc.collect()
    again = KeywordIndex(tmp_path / "k")
    assert again.lsn == 2
    for lsn, chunk_ids, chunk_texts in records:  # the WAL replays from its start
        again.upsert(lsn, chunk_ids, pa.array(chunk_texts, pa.large_string()))
    again.remove(5, ids[:10])
    again.commit()
    assert again.lsn == 5
    final = dict(zip(ids.tolist(), texts, strict=True))
    final.update(zip(ids[50:150].tolist(), records[2][2], strict=True))
    for gone in ids[:10].tolist():
        del final[gone]
    fresh = _index(tmp_path / "fresh", np.array(list(final), np.int64), list(final.values()))
    for text in ["w0 w5", "replaced w3", "w1"]:
        assert _query([again], text, 30)[0].tolist() == _query([fresh], text, 30)[0].tolist()
    assert again.count == fresh.count == len(final)


def test_combine_refuses_parts_of_other_terms() -> None:
    with pytest.raises(ValueError, match="different terms"):
        combine([KeywordStats(1, 2, {"a": 1}), KeywordStats(1, 2, {"b": 1})])
    assert combine([]) == KeywordStats(0, 0, {})


# --- in the store ----------------------------------------------------------------------------


def _batch(doc_id: str, texts: Sequence[str], version: int = 1, first: int = 0) -> pa.RecordBatch:
    n = len(texts)
    chunk_ids = [chunk_id(doc_id, first + i) for i in range(n)]
    vectors = np.random.default_rng(len(doc_id) + n).standard_normal((n, DIM)).astype(np.float32)
    return pa.record_batch(
        [
            pa.array([doc_id] * n),
            pa.array(np.arange(first, first + n, dtype=np.int32)),
            pa.array(chunk_ids, pa.uint64()),
            pa.array(texts, pa.large_string()),
            pa.array(["src"] * n),
            pa.array(np.zeros(n, np.int64)).cast(pa.timestamp("ms")),
            pa.array(np.full(n, version, np.uint64)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), DIM),
        ],
        schema=stored(DIM),
    )


def _open(directory: Path, wal_sync: str = "batch", **kwargs: object) -> ShardStore:
    options = {"keywords": True, "keyword_commit_s": 0.0, **kwargs}
    return ShardStore(directory, dim=DIM, index="Flat", metric="ip", wal_sync=wal_sync, **options)  # type: ignore[arg-type]


def _store_query(store: ShardStore, text: str, k: int = 20) -> tuple[list[int], list[float]]:
    stats = store.keyword_stats(query_terms(text))
    ids, scores = store.keyword_search(text, k, stats)
    return ids.tolist(), scores.tolist()


def _matches_its_rows(store: ShardStore, scratch: Path, texts: Sequence[str]) -> None:
    """The store's keyword answers equal those of an index built from its live rows."""
    meta = store.metadata()
    shutil.rmtree(scratch, ignore_errors=True)
    ids = meta.column("chunk_id").to_numpy().astype(np.int64)
    fresh = _index(scratch, ids, meta.column("text").to_pylist())
    for text in texts:
        stats = fresh.local_stats(query_terms(text))
        want = fresh.search(text, 20, stats)
        assert _store_query(store, text) == (want[0].tolist(), want[1].tolist()), text
    fresh.close()


def _history(store: ShardStore) -> None:
    store.append(_batch("a", ["alpha beta gamma", "beta beta delta", f"code {RARE} here"]))
    store.append(_batch("b", ["gamma gamma gamma", "epsilon alpha"]))
    store.append(_batch("c", ["alpha zeta", "zeta zeta beta"]))
    store.append(_batch("b", ["gamma replaced", "omega"], version=2))  # same ids: replaced
    store.append(tombstones([("c", DELETE_ALL)]))


QUERIES = ["alpha", "beta gamma", "zeta", RARE, "replaced omega epsilon"]


@pytest.mark.parametrize("wal_sync", ["batch", "interval", "none"])
def test_the_store_keeps_keywords_in_step(tmp_path: Path, wal_sync: str) -> None:
    store = _open(tmp_path / "s", wal_sync)
    _history(store)
    store.sync()
    assert store.keyword_lsn == (store.durable_lsn if store.logs else store.last_lsn)
    _matches_its_rows(store, tmp_path / "fresh", QUERIES)
    assert _store_query(store, RARE)[0][:1] == [chunk_id("a", 2)]
    assert not set(_store_query(store, "zeta")[0])  # c is deleted
    store.delete_docs(["a"])
    store.make_durable("delete")  # what the delete round does: gone from keyword search too
    assert _store_query(store, RARE) == ([], [])
    store.snapshot("test")
    store.close()
    again = _open(tmp_path / "s", wal_sync)
    assert again.keyword_lsn == again.last_lsn
    _matches_its_rows(again, tmp_path / "fresh", QUERIES)
    again.close()


@pytest.mark.parametrize("wal_sync", ["batch", "interval"])
def test_a_crash_replays_what_the_keyword_index_lacks(tmp_path: Path, wal_sync: str) -> None:
    store = _open(tmp_path / "s", wal_sync, keyword_commit_s=3600.0)  # commits: forced only
    store.append(_batch("a", ["alpha beta", "beta"]))
    store.snapshot("test")  # the keyword index commits at its LSN
    committed = store.keyword_lsn
    _history(store)
    store.sync()  # the tombstone's removals make it commit at once
    store.append(_batch("d", ["late alpha", "later gamma"]))  # staged, never committed
    last = store.last_lsn
    assert store.keyword_lsn is not None and committed <= store.keyword_lsn < last
    del store  # a crash: no close
    gc.collect()
    again = _open(tmp_path / "s", wal_sync)
    assert again.last_lsn == again.keyword_lsn == last
    _matches_its_rows(again, tmp_path / "fresh", [*QUERIES, "late later"])
    again.close()


def test_a_missing_or_stale_keyword_index_is_rebuilt(tmp_path: Path) -> None:
    plain = ShardStore(tmp_path / "s", dim=DIM, index="Flat", metric="ip")
    _history(plain)
    plain.snapshot("test")
    plain.append(_batch("e", ["eta alpha"]))
    plain.close()
    store = _open(tmp_path / "s")  # keywords turned on for a shard that had none
    assert store.keyword_lsn == store.last_lsn
    _matches_its_rows(store, tmp_path / "fresh", [*QUERIES, "eta"])
    store.close()
    shutil.rmtree(tmp_path / "s" / KEYWORDS_DIR)
    again = _open(tmp_path / "s")
    _matches_its_rows(again, tmp_path / "fresh", [*QUERIES, "eta"])
    again.close()
    (tmp_path / "s" / KEYWORDS_DIR / "meta.json").write_text("damaged")
    third = _open(tmp_path / "s")
    assert third.keyword_lsn == third.last_lsn
    _matches_its_rows(third, tmp_path / "fresh", [*QUERIES, "eta"])
    third.close()


def test_a_keyword_index_ahead_of_the_shard_is_rebuilt(tmp_path: Path) -> None:
    """Without a log the keyword index commits what is applied; a crash before the next
    snapshot loses those batches in the store, so the index is ahead and is rebuilt."""
    store = _open(tmp_path / "s", "none")
    store.append(_batch("a", ["alpha beta"]))
    store.snapshot("test")
    store.append(_batch("b", ["beta lost"]))  # committed to keywords, in no snapshot
    assert store.keyword_lsn == store.last_lsn == 2
    del store
    gc.collect()
    again = _open(tmp_path / "s", "none")
    assert again.last_lsn == again.keyword_lsn == 1
    assert _store_query(again, "lost") == ([], [])
    _matches_its_rows(again, tmp_path / "fresh", ["alpha beta"])
    again.close()


def test_keyword_search_needs_keywords(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "s", dim=DIM, index="Flat", metric="ip")
    with pytest.raises(RuntimeError, match="without keywords"):
        store.keyword_stats(["a"])
    assert store.keyword_lsn is None
    store.close()


def test_explain_gives_the_same_term_frequencies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where recomputing tantivy's score does not confirm a recovered term frequency, the
    index asks ``explain``: the answers are the same."""
    ids, texts = _corpus(6, 200)
    indexes = _split(tmp_path, ids, texts, 2)
    queries = _queries(texts, 7)
    want = [_query(indexes, q, 10) for q in queries]
    recover = bm25.LocalWeight.term_freqs

    def unconfirmed(self: bm25.LocalWeight, scores: np.ndarray, lengths: np.ndarray) -> object:
        tf, exact = recover(self, scores, lengths)
        return tf * 0 + 1, np.zeros_like(exact)

    monkeypatch.setattr(bm25.LocalWeight, "term_freqs", unconfirmed)
    for query, (ids_, scores) in zip(queries, want, strict=True):
        got = _query(indexes, query, 10)
        assert got[0].tolist() == ids_.tolist() and got[1].tolist() == scores.tolist()


@pytest.mark.parametrize("wal_sync", ["batch", "interval"])
def test_a_delete_commits_the_keyword_index_at_once(tmp_path: Path, wal_sync: str) -> None:
    store = _open(tmp_path / "s", wal_sync, keyword_commit_s=3600.0)
    store.append(_batch("a", ["alpha", f"code {RARE}"]))
    store.append(_batch("b", ["alpha beta"]))
    store.snapshot("test")  # commits
    assert _store_query(store, RARE)[0] == [chunk_id("a", 1)]
    store.delete_docs(["a"])
    store.make_durable("delete")
    assert store.keyword_lsn == store.last_lsn
    assert store.keyword_stats(["alpha"]) == KeywordStats(1, 2, {"alpha": 1})
    assert _store_query(store, RARE) == ([], [])
    store.close()


def test_a_keyword_query_sees_every_durable_record_without_waiting_for_a_commit(
    tmp_path: Path,
) -> None:
    store = _open(tmp_path / "s", keyword_commit_s=3600.0)
    store.append(_batch("a", ["alpha beta"]))  # durable (batch sync), staged, no commit due
    assert _store_query(store, "alpha")[0] == [chunk_id("a", 0)]  # the stats round commits
    store.close()


# --- the postings cache ----------------------------------------------------------------------


def test_cached_postings_give_the_same_answers_and_a_commit_empties_the_cache(
    tmp_path: Path,
) -> None:
    ids, texts = _corpus(8, 400)
    index = _index(tmp_path / "k", ids, texts)
    fresh = _index(tmp_path / "fresh", ids, texts)
    queries = _queries(texts, 9)
    first = [_query([index], q, 10) for q in queries]
    read = index.cache_stats().misses
    assert read > 0 and index.cache_stats().terms > 0
    again = [_query([index], q, 10) for q in queries]
    assert index.cache_stats().misses == read  # every term served from the cache
    for (a_ids, a_scores), (b_ids, b_scores) in zip(first, again, strict=True):
        assert a_ids.tolist() == b_ids.tolist() and a_scores.tolist() == b_scores.tolist()
    index.remove(2, ids[:50])
    index.commit()
    assert index.cache_stats().terms == 0  # a new generation: nothing cached
    keep = ~np.isin(ids, ids[:50])
    smaller = _index(
        tmp_path / "smaller", ids[keep], [t for t, k in zip(texts, keep, strict=True) if k]
    )
    for query in queries:
        got, want = _query([index], query, 10), _query([smaller], query, 10)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
    del fresh


def test_a_cache_of_a_few_bytes_evicts_and_answers_the_same(tmp_path: Path) -> None:
    ids, texts = _corpus(10, 300)
    roomy = _index(tmp_path / "roomy", ids, texts)
    tight = KeywordIndex(tmp_path / "tight", cache_bytes=4096)
    tight.upsert(1, ids, pa.array(texts, pa.large_string()))
    tight.commit()
    for query in _queries(texts, 11):
        want, got = _query([roomy], query, 10), _query([tight], query, 10)
        assert got[0].tolist() == want[0].tolist() and got[1].tolist() == want[1].tolist()
        assert tight.cache_stats().bytes <= 4096 or tight.cache_stats().terms == 1


def test_keep_sees_the_best_candidates_until_k_pass(tmp_path: Path) -> None:
    """Filtering after the cut, widening while too few pass, equals filtering everything."""
    ids, texts = _corpus(12, 300)
    index = _index(tmp_path / "k", ids, texts)
    text = "w0 w1 w2 w3"
    stats = index.local_stats(query_terms(text))
    every, every_scores = index.search(text, len(ids), stats)
    asked: list[int] = []

    def keep(candidates: np.ndarray) -> np.ndarray:
        asked.append(len(candidates))
        return candidates % 5 == 0  # ~1 in 5 passes

    got, got_scores = index.search(text, 10, stats, keep)
    passing = every % 5 == 0
    assert got.tolist() == every[passing][:10].tolist()
    assert got_scores.tolist() == every_scores[passing][:10].tolist()
    assert asked[0] == 10 and max(asked) < len(every)  # the best first, not everything


# --- fusion ----------------------------------------------------------------------------------


def _fused_by_definition(
    merged: pa.Table, nq: int, k: int, depth: int, rrf_k: int, metric: str
) -> list[list[tuple[int, float, float, float, int, int]]]:
    """Reciprocal-rank fusion written out query by query (the reference)."""
    rows = merged.to_pylist()
    out = []
    for q in range(nq):
        lists = {}
        for which in (hybrid.VECTOR, hybrid.KEYWORD):
            mine = [r for r in rows if r["query"] == q and r["list"] == which]
            sign = -1.0 if which == hybrid.KEYWORD or metric == "ip" else 1.0
            mine.sort(key=lambda r: (sign * float(np.float32(r["score"])), r["chunk_id"]))
            lists[which] = mine[:depth]
        fused: dict[int, list[float]] = {}  # chunk -> [rrf, vector score, bm25, vrank, krank]
        for which, ranked in lists.items():
            for position, r in enumerate(ranked, start=1):
                entry = fused.setdefault(r["chunk_id"], [0.0, np.nan, np.nan, 0, 0])
                entry[0] += 1.0 / (rrf_k + position)
                is_v = which == hybrid.VECTOR
                entry[1 if is_v else 2] = r["score"]
                entry[3 if is_v else 4] = position
        best = sorted(fused.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        out.append([(c, e[0], e[1], e[2], int(e[3]), int(e[4])) for c, e in best])
    return out


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_fusion_equals_its_definition(metric: str) -> None:
    rng = np.random.default_rng(21)
    nq, k, depth, rrf_k = 6, 5, 8, 60
    tables = []
    for rank in range(3):
        pool = rng.choice(2**40, size=40, replace=False) * 3 + rank  # disjoint across ranks
        rows = []
        for q in range(nq - 1):  # the last query finds nothing
            for which in (hybrid.VECTOR, hybrid.KEYWORD):
                for chunk in rng.choice(pool, size=int(rng.integers(0, depth + 1)), replace=False):
                    score = float(rng.integers(0, 6)) / 4  # ties
                    rows.append((q, which, score, rank, int(chunk)))
        tables.append(
            pa.table(
                {
                    "query": pa.array([r[0] for r in rows], pa.int32()),
                    "list": pa.array([r[1] for r in rows], pa.string()),
                    "score": pa.array([r[2] for r in rows], pa.float64()),
                    "shard": pa.array([r[3] for r in rows], pa.int32()),
                    "doc_id": pa.array([f"d{r[4]}" for r in rows], pa.string()),
                    "seq": pa.array([0] * len(rows), pa.int32()),
                    "chunk_id": pa.array([r[4] for r in rows], pa.uint64()),
                    "text": pa.array([f"t{r[4]}" for r in rows], pa.large_string()),
                    "source": pa.array(["s"] * len(rows), pa.string()),
                },
                schema=hybrid.CANDIDATE,
            )
        )
    got = hybrid.fuse(tables, nq, k, depth, rrf_k, metric)
    want = _fused_by_definition(pa.concat_tables(tables), nq, k, depth, rrf_k, metric)
    assert len(got) == nq and got[-1].num_rows == 0
    for table, expected in zip(got, want, strict=True):
        columns = ["chunk_id", "score", "vector_score", "bm25", "vector_rank", "keyword_rank"]
        rows = list(zip(*(table.column(c).to_pylist() for c in columns), strict=True))
        assert len(rows) == len(expected)
        for row, ref in zip(rows, expected, strict=True):
            assert row[0] == ref[0] and row[1] == ref[1] and row[4:] == ref[4:]
            for a, b in zip(row[2:4], ref[2:4], strict=True):
                assert (np.isnan(a) and np.isnan(b)) or a == b
        assert table.column("text").to_pylist() == [f"t{r[0]}" for r in expected]
    assert [t.num_rows for t in hybrid.fuse([], 2, k, depth, rrf_k, metric)] == [0, 0]


def test_a_round_searches_its_keywords_again_when_a_hit_lost_its_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tombstone applied between a rank's keyword search and its row lookup (another
    thread) costs a second search, not the round."""
    store = _open(tmp_path / "s")
    store.append(_batch("a", ["alpha beta", "beta gamma"]))
    texts = ["alpha", "gamma"]
    stats = store.keyword_stats(["alpha", "gamma"])  # one rank: its statistics are all
    rows = store.rows
    calls: list[int] = []

    def lost_once(ids: Sequence[int]) -> pa.Table:
        calls.append(len(ids))
        if len(calls) == 1:
            raise ChunkNotStored("gone meanwhile")
        return rows(ids)

    monkeypatch.setattr(store, "rows", lost_once)
    keyword = hybrid.keyword_candidates(store, texts, 5, stats, None, 0)
    assert set(keyword.column("list").to_pylist()) == {hybrid.KEYWORD}
    assert keyword.column("chunk_id").to_pylist() == [chunk_id("a", 0), chunk_id("a", 1)]
    assert keyword.column("query").to_pylist() == [0, 1] and len(calls) == 2
    store.close()
