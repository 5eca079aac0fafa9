"""The W1 hash embedder: a deterministic bag-of-tokens vector, no model.

Rule (W1 in docs/benchmarks.md): lowercase; tokens are `[a-z0-9]+`; for each token
`h = blake2b(token, digest_size=8)` read as a little-endian uint64; `vec[h % dim] += +1`
if `h >> 63 == 0` else `-1`; then L2-normalise (a zero vector stays zero).

Embedding is most of W1's cost, so the hot path has neither per-token nor per-text Python
bytecode: a block's texts are joined around a separator token and tokenised at once with
`bytes.translate` + `split` (about twice as fast as the regex), the separators give each
token its row, all tokens are looked up in one `operator.itemgetter` call on a bounded cache
that hashes a token the first time it is asked for it (`dict.__missing__`), and counts are
accumulated with one `np.bincount`.
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
# Texts of a block are joined with " \x01 ": a table that keeps \x01 (a separator byte in
# any text, so `_TABLE` blanks it) makes it a token of its own that marks where a text ends.
_SEPARATOR = "\x01"
_JOINER = f" {_SEPARATOR} "
_SEPARATOR_TOKEN = _SEPARATOR.encode()
_JOINED_TABLE = bytes(b if i != ord(_SEPARATOR) else i for i, b in enumerate(_TABLE))
# Rows per bincount: bounds the temporary count matrix (rows x 2 x dim int64).
_BLOCK_ROWS = 1024


def _tokens(text: str, table: bytes = _TABLE) -> list[bytes]:
    if text.isascii():  # O(1) in CPython; the table does the lower-casing
        return text.encode().translate(table).split()
    # str.lower first: some non-ASCII chars lower-case to ASCII ones (e.g. KELVIN SIGN -> k).
    return text.lower().encode("utf-8", "surrogatepass").translate(table).split()


class _TokenCodes(dict[bytes, int]):
    """token -> column code in [0, 2*dim): index for +1, dim + index for -1.

    A missing token is hashed when looked up, so one `itemgetter` call resolves a whole
    block. Cleared when it holds `limit` tokens (the simplest bound: refilling costs one
    hash per token). The separator token always maps to `2*dim`, outside every row.
    """

    def __init__(self, dim: int, limit: int) -> None:
        super().__init__()
        self.dim = dim
        self.limit = limit
        self.separator = 2 * dim
        self[_SEPARATOR_TOKEN] = self.separator

    def __missing__(self, token: bytes) -> int:
        if len(self) > self.limit:
            self.clear()
            self[_SEPARATOR_TOKEN] = self.separator
        h = int.from_bytes(hashlib.blake2b(token, digest_size=8).digest(), "little")
        code = self[token] = h % self.dim + (self.dim if h >> 63 else 0)
        return code


class HashEmbedder:
    """Embeds texts with the W1 hash rule into float32 unit vectors of `dim`.

    The token cache holds at most `cache_size` tokens and is cleared when full. Not
    thread-safe: give each worker its own instance.
    """

    def __init__(self, dim: int = 384, cache_size: int = 1_000_000) -> None:
        if dim <= 0:
            raise ValueError(f"dim must be > 0, got dim={dim}")
        if cache_size <= 0:
            raise ValueError(f"cache_size must be > 0, got cache_size={cache_size}")
        self.dim = dim
        self.cache_size = cache_size
        self._codes = _TokenCodes(dim, cache_size)

    def _lookup(self, tokens: list[bytes]) -> npt.NDArray[np.intp]:
        """The column codes of `tokens`, in order (hashing those not cached yet)."""
        if not tokens:
            return np.empty(0, dtype=np.intp)
        # itemgetter does every lookup in one C call: ~2x faster than map(dict.__getitem__).
        found = itemgetter(*tokens)(self._codes)
        if len(tokens) == 1:  # itemgetter of one key returns the value, not a tuple
            found = (found,)
        return np.fromiter(found, dtype=np.intp, count=len(tokens))

    def _bins(self, texts: Sequence[str]) -> npt.NDArray[np.intp]:
        """Every token's flat bin, `row * 2*dim + code`, for the texts of one block."""
        width = 2 * self.dim
        joined = _JOINER.join(texts)
        if joined.count(_SEPARATOR) == len(texts) - 1:  # no text holds the separator itself
            codes = self._lookup(_tokens(joined, _JOINED_TABLE))
            ends = codes == self._codes.separator
            rows = np.cumsum(ends)
            keep = ~ends
            return rows[keep] * width + codes[keep]
        # Rare: a text holds \x01. Tokenise text by text (where \x01 separates tokens).
        tokens = [_tokens(t) for t in texts]
        codes = self._lookup(list(chain.from_iterable(tokens)))
        starts = np.arange(0, len(texts) * width, width, dtype=np.intp)
        return np.repeat(starts, [len(t) for t in tokens]) + codes

    def _embed_block(self, texts: Sequence[str], out: npt.NDArray[np.float32]) -> None:
        n, dim = len(texts), self.dim
        # Positive and negative hits land in separate halves of each row's 2*dim bins.
        counts = np.bincount(self._bins(texts), minlength=n * 2 * dim).reshape(n, 2, dim)
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
