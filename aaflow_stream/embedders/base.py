"""What every embedder offers, and the one way its matrix becomes an Arrow column.

An embedder is built once per process that uses it (an embed actor, the query gateway) by
``embedders.factory.build``, which is the only place that turns a topology's embedder spec into
one, so that queries are embedded exactly like chunks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa

__all__ = ["TextEmbedder", "to_arrow"]


class TextEmbedder(Protocol):
    """Texts in, one float32 row of ``dim`` values per text out.

    ``embed`` may block for as long as the batch takes (it is called on the actor's loop,
    like any operator hook); it returns a C-contiguous ``(len(texts), dim)`` float32 matrix.
    Implementations are built once, are not thread-safe, and load everything they need
    (model weights included) in their constructor.
    """

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...


def to_arrow(matrix: npt.NDArray[np.float32]) -> pa.FixedSizeListArray:
    """A ``fixed_size_list<float32>[dim]`` column over the matrix's own memory (no copy)."""
    if matrix.ndim != 2 or matrix.dtype != np.float32 or not matrix.flags.c_contiguous:
        raise ValueError(
            f"expected a C-contiguous float32 matrix, got {matrix.dtype} {matrix.shape}"
        )
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])
