"""The W1 hash embedder: a deterministic bag-of-tokens vector, no model.

Rule (BENCH.md W1): lowercase; tokens are `[a-z0-9]+`; for each token
`h = blake2b(token, digest_size=8)` read as a little-endian uint64; `vec[h % dim] += +1`
if `h >> 63 == 0` else `-1`; then L2-normalise (a zero vector stays zero).

Embedding is most of W1's cost, so the hot path has no per-token Python bytecode: tokens
come from `bytes.translate` + `split` (about twice as fast as the regex), each distinct
token is hashed once into a bounded cache, a batch's cache lookups run in one
`operator.itemgetter` call, and counts are accumulated with one `np.bincount`.
"""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from itertools import chain
from operator import itemgetter

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from .base import to_arrow

__all__ = ["HashEmbedder"]

_TOKEN_BYTES = frozenset((string.ascii_lowercase + string.digits).encode())
# Byte table: token bytes kept, ASCII upper case folded to lower, everything else a space.
# UTF-8 encodes every non-ASCII char as bytes >= 0x80, which all become separators, so
# `text.lower().encode().translate(_TABLE).split()` equals `re.findall("[a-z0-9]+", ...)`.
_TABLE = bytes(
    b if b in _TOKEN_BYTES else b + 32 if 0x41 <= b <= 0x5A else 0x20 for b in range(256)
)
# Rows per bincount: bounds the temporary count matrix (rows x 2 x dim int64).
_BLOCK_ROWS = 1024


def _tokens(text: str) -> list[bytes]:
    if text.isascii():  # O(1) in CPython; the table does the lower-casing
        return text.encode().translate(_TABLE).split()
    # str.lower first: some non-ASCII chars lower-case to ASCII ones (e.g. KELVIN SIGN -> k).
    return text.lower().encode("utf-8", "surrogatepass").translate(_TABLE).split()


class HashEmbedder:
    """Embeds texts with the W1 hash rule into float32 unit vectors of `dim`.

    The token cache holds at most `cache_size` entries (or one batch's distinct tokens,
    if more) and is cleared when full. Not thread-safe: give each worker its own instance.
    """

    def __init__(self, dim: int = 384, cache_size: int = 1_000_000) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got dim={dim}")
        if cache_size <= 0:
            raise ValueError(f"cache_size must be > 0, got cache_size={cache_size}")
        self.dim = dim
        self.cache_size = cache_size
        # token -> column code in [0, 2*dim): index for +1, dim + index for -1.
        self._codes: dict[bytes, int] = {}

    def _code(self, token: bytes) -> int:
        h = int.from_bytes(hashlib.blake2b(token, digest_size=8).digest(), "little")
        return h % self.dim + (self.dim if h >> 63 else 0)

    def _lookup(self, tokens: list[list[bytes]], total: int) -> npt.NDArray[np.intp]:
        """The column codes of all tokens, in order, hashing only tokens not cached yet."""
        if total == 0:
            return np.empty(0, dtype=np.intp)
        codes = self._codes
        # itemgetter does every lookup in one C call: ~2x faster than map(dict.__getitem__).
        get = itemgetter(*chain.from_iterable(tokens))
        try:
            found = get(codes)
        except KeyError:  # rare once warm: Zipf vocabularies are mostly cache hits
            missing = set(chain.from_iterable(tokens)).difference(codes)
            if len(codes) + len(missing) > self.cache_size:
                codes.clear()  # simplest bound; refilling costs one hash per token
                missing = set(chain.from_iterable(tokens))
            for token in missing:
                codes[token] = self._code(token)
            found = get(codes)
        if total == 1:  # itemgetter of one key returns the value, not a tuple
            found = (found,)
        return np.fromiter(found, dtype=np.intp, count=total)

    def _embed_block(self, texts: Sequence[str], out: npt.NDArray[np.float32]) -> None:
        n, dim = len(texts), self.dim
        tokens = [_tokens(t) for t in texts]
        lengths = [len(t) for t in tokens]
        codes = self._lookup(tokens, sum(lengths))
        # Flat bin = row * 2*dim + code; positive and negative hits land in separate halves.
        bins = np.repeat(np.arange(0, n * 2 * dim, 2 * dim, dtype=np.intp), lengths)
        bins += codes
        counts = np.bincount(bins, minlength=n * 2 * dim).reshape(n, 2, dim)
        np.subtract(counts[:, 0, :], counts[:, 1, :], out=out, casting="unsafe")
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))
        norms[norms == 0] = 1.0  # a zero vector stays zero
        out /= norms[:, None]

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed `texts` into a C-contiguous float32 matrix of shape (len(texts), dim)."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), _BLOCK_ROWS):
            stop = start + _BLOCK_ROWS
            self._embed_block(texts[start:stop], out[start:stop])
        return out

    def embed_to_arrow(self, texts: Sequence[str]) -> pa.FixedSizeListArray:
        """Embed `texts` as a `fixed_size_list<float32>[dim]` column, sharing the matrix."""
        return to_arrow(self.embed(texts))
