"""Chunking and chunk identity, exactly as W1 specifies (docs/benchmarks.md).

Shared by the engine's transform operator and every benchmark baseline, so that
all systems cut the same chunks and assign the same ids.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "chunk_boundaries",
    "chunk_id",
    "chunk_ids",
    "chunk_windows",
    "normalize_whitespace",
]

_MASK63 = (1 << 63) - 1
# Break markers per preference; a window may end right after one of them.
_BREAKS: dict[str, tuple[str, ...]] = {
    "paragraph": ("\n\n",),
    "sentence": (". ", "! ", "? "),
}


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip both ends."""
    # str.split() splits on exactly the characters regex \s matches, ~10x faster than re.sub.
    return " ".join(text.split())


def _check_window(size: int, overlap: int) -> None:
    if size <= 0:
        raise ValueError(f"chunk size must be > 0, got size={size}")
    if not 0 <= overlap < size:
        raise ValueError(f"chunk overlap must satisfy 0 <= overlap < size={size}, got {overlap}")


def chunk_windows(text: str, size: int = 512, overlap: int = 64) -> list[str]:
    """Cut `text` into character windows of `size`, successive ones sharing `overlap` chars.

    The step is `size - overlap`; the last window may be shorter. A text no longer
    than `size` is one chunk, an empty text none.
    """
    _check_window(size, overlap)
    n = len(text)
    if n == 0:
        return []
    if n <= size:
        return [text]
    step = size - overlap
    # Windows start at 0, step, 2*step, ... while the previous one has not reached the end.
    count = -(-(n - size) // step) + 1
    return [text[i * step : i * step + size] for i in range(count)]


def chunk_boundaries(
    text: str,
    size: int = 512,
    overlap: int = 64,
    prefer: Literal["paragraph", "sentence"] = "paragraph",
) -> list[str]:
    """Like `chunk_windows`, but end each window at a natural break when one is near its end.

    A window ends just after the last break marker (paragraph: "\\n\\n"; sentence: ". ",
    "! ", "? ") found in its last ~25%; otherwise at `size`. Windows never exceed `size`,
    successive windows overlap by at most `overlap` chars, and every character is covered.
    """
    _check_window(size, overlap)
    if prefer not in _BREAKS:
        raise ValueError(f"prefer must be 'paragraph' or 'sentence', got {prefer!r}")
    markers = _BREAKS[prefer]
    n = len(text)
    chunks: list[str] = []
    start = 0
    while start < n:
        end = min(start + size, n)
        if end < n:
            # Only look in the tail so that a break never makes a window much shorter.
            tail_from = start + max(overlap + 1, size - size // 4)
            best = max((text.rfind(m, tail_from, end) + len(m) for m in markers), default=-1)
            # rfind returns -1 when absent, so a real hit ends strictly after tail_from.
            if best > tail_from:
                end = best
        chunks.append(text[start:end])
        if end >= n:
            break
        # The next window reaches back `overlap` chars, but always moves forward.
        start = max(end - overlap, start + 1)
    return chunks


def chunk_id(doc_id: str, seq: int) -> int:
    """The id of chunk `seq` of `doc_id`: blake2b's first 16 hex digits, masked to 63 bits.

    63 bits so the id is a non-negative int64, which FAISS id maps require.
    """
    digest = hashlib.blake2b(f"{doc_id}:{seq}".encode()).hexdigest()
    return int(digest[:16], 16) & _MASK63


def chunk_ids(doc_id: str, n: int) -> npt.NDArray[np.uint64]:
    """The ids of chunks 0..n-1 of `doc_id`, as a uint64 array."""
    return np.fromiter((chunk_id(doc_id, i) for i in range(n)), dtype=np.uint64, count=n)
