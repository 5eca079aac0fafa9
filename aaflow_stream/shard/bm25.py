"""BM25 exactly as tantivy scores it, but over statistics gathered from every shard. Pure
(numpy and math); ``shard.keywords`` feeds it what a rank's tantivy index holds.

tantivy (0.27, ``src/query/bm25.rs``) scores a term ``t`` in a document ``d`` as::

    idf(t) * (1 + K1) * tf / (tf + K1 * (1 - B + B * dl / avgdl))
    idf(t) = ln(1 + (N - n + 0.5) / (n + 0.5))

with ``K1 = 1.2``, ``B = 0.75``, ``N`` the documents, ``n`` those holding ``t``, ``avgdl``
the field's tokens over ``N``, and ``dl`` the document's token count *quantized* to one of 256
field-norm values (``src/fieldnorm/code.rs``: exact up to 39, then Lucene's 4-bit float
buckets; the id is the largest table entry <= the count). A query's score is the sum over its
terms. tantivy computes it in f32 over one index's statistics (which, until a merge purges
them, count deleted documents); ``global_scores`` computes it in f64 over the live
documents of every shard (``KeywordStats``, summed by ``combine``), so that a chunk's score
does not depend on the shard layout, bit for bit.

``LocalWeight`` mirrors tantivy's own f32 arithmetic for one term of one index: it recovers
the integer term frequency from the score tantivy returned (tantivy-py exposes no postings),
and checks the recovery by recomputing that score bit for bit. ``local_idf`` is tantivy's f32
idf; its ``ln`` is rounded here from f64, where tantivy calls the platform's ``logf``: they
may differ in the last bit, which the recomputation then reveals (the caller asks
``explain``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

K1 = 1.2
B = 0.75

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]


def _field_norms() -> I64:
    # Lucene's SmallFloat.byte4ToInt with 24 "free" values, which tantivy's table follows.
    table = []
    for code in range(256):
        if code < 24:
            table.append(code)
            continue
        j = code - 24
        bits, shift = j & 7, (j >> 3) - 1
        table.append(24 + (bits if shift < 0 else (bits | 8) << shift))
    return np.array(table, dtype=np.int64)


FIELD_NORMS = _field_norms()  # fieldnorm id -> the length tantivy scores with


def fieldnorm_ids(lengths: I64) -> I64:
    """tantivy's ``fieldnorm_to_id``: the largest table entry not above each length."""
    return np.searchsorted(FIELD_NORMS, lengths, side="right") - 1


def quantized(lengths: I64) -> I64:
    return FIELD_NORMS[fieldnorm_ids(lengths)]


@dataclass(frozen=True)
class KeywordStats:
    """A part of the corpus (one shard, or all of them) as BM25 needs it for some terms:
    live documents, their total token count, and per term the live documents holding it."""

    docs: int
    tokens: int
    doc_freq: Mapping[str, int] = field(default_factory=dict)

    @property
    def avgdl(self) -> float:
        return self.tokens / self.docs if self.docs else 0.0

    def idf(self, term: str) -> float:
        n, total = self.doc_freq[term], self.docs
        return math.log(1.0 + (total - n + 0.5) / (n + 0.5))


def combine(parts: Sequence[KeywordStats]) -> KeywordStats:
    """The statistics of the union of disjoint parts (the shards): plain sums. Every part
    must have counted the same terms (a term a part did not count is unknown, not absent)."""
    if not parts:
        return KeywordStats(0, 0, {})
    terms = set(parts[0].doc_freq)
    if any(set(p.doc_freq) != terms for p in parts[1:]):
        raise ValueError("combine(): the parts counted different terms")
    return KeywordStats(
        docs=sum(p.docs for p in parts),
        tokens=sum(p.tokens for p in parts),
        doc_freq={t: sum(p.doc_freq[t] for p in parts) for t in sorted(terms)},
    )


def term_scores(tf: F64, norms: F64, idf: float, avgdl: float) -> F64:
    """One term's BM25 contribution to documents with term frequency ``tf`` and token counts
    ``norms`` quantized as tantivy does (``quantized``, as f64), in f64. Only elementwise
    + * / (no transcendental on arrays), so a value never depends on the array it sits in."""
    norm = K1 * ((1.0 - B) + B * norms / avgdl)
    return (idf * (1.0 + K1)) * (tf / (tf + norm))


def local_idf(doc_freq: int, doc_count: int) -> float:
    """tantivy's f32 ``idf`` (``bm25.rs``) of a term in ``doc_freq`` of an index's
    ``doc_count`` documents (deleted ones included, as tantivy counts them)."""
    f32 = np.float32
    x = (f32(doc_count - doc_freq) + f32(0.5)) / (f32(doc_freq) + f32(0.5))
    return float(f32(math.log(float(f32(1.0) + x))))


@functools.lru_cache(maxsize=16)
def _norm_cache(avgdl: float) -> npt.NDArray[np.float32]:
    """tantivy's per-fieldnorm f32 cache for an index's ``avgdl`` (the same for every term
    of that index: computed once)."""
    f32 = np.float32
    norms = FIELD_NORMS.astype(np.float32)
    # Rust evaluates K1 * (1.0 - B + B * fieldnorm / avgdl) left to right, all in f32.
    cache = f32(K1) * ((f32(1.0) - f32(B)) + f32(B) * norms / f32(avgdl))
    cache.flags.writeable = False
    return cache


class LocalWeight:
    """tantivy's f32 BM25 weight for one term of one index, as its ``explain`` reports it
    (``idf`` and ``avgdl`` of that index, deleted documents included); with an array of
    ``idf``, one per document, the weights of several terms' documents at once."""

    def __init__(self, idf: float | F64, avgdl: float) -> None:
        f32 = np.float32
        self._weight = np.asarray(idf, dtype=np.float32) * (f32(1.0) + f32(K1))
        self._cache = _norm_cache(avgdl)

    def score(self, tf: npt.NDArray[np.float32], fieldnorm_id: I64) -> npt.NDArray[np.float32]:
        """What tantivy computes: ``weight * (tf / (tf + cache[fieldnorm id]))`` in f32."""
        return np.asarray(self._weight * (tf / (tf + self._cache[fieldnorm_id])), np.float32)

    def term_freqs(self, scores: F64, lengths: I64) -> tuple[I64, npt.NDArray[np.bool_]]:
        """The term frequencies behind tantivy's ``scores`` of documents with ``lengths``
        tokens, and where recomputing reproduced the score exactly (elsewhere the caller
        asks tantivy's ``explain``)."""
        ids = fieldnorm_ids(lengths)
        cache = self._cache[ids].astype(np.float64)
        weight = self._weight.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            guess = np.rint(scores * cache / (weight - scores))
        tf = np.where(np.isfinite(guess), np.maximum(guess, 1.0), 1.0).astype(np.int64)
        exact = self.score(tf.astype(np.float32), ids).astype(np.float64) == scores
        return tf, exact
