"""A shard's vectors: a FAISS ``IndexIDMap2`` keyed by int64 id, searched exactly under the
shard's order (``shard.topk``).

It knows nothing of rows, documents or files: the store (``shard.store``) decides which ids
exist and holds the lock; this class only adds, removes, searches and copies vectors.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import topk
from .topk import Ids, Scores

# FAISS cuts at k without looking at ids, so a tie at the cut could drop the smaller id: ask
# for this many more and re-order. (Ties wider than that are not resolved.)
TIE_MARGIN = 16


def metric_code(name: str) -> int:
    import faiss

    return {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}[name]


class VectorIndex:
    """Not thread-safe: the owner serialises calls (the store's lock)."""

    def __init__(self, dim: int, metric: str, index: Any) -> None:
        import faiss

        self._faiss = faiss
        self.dim = dim
        self.metric = metric
        self.faiss_index = index

    @classmethod
    def new(cls, dim: int, description: str, metric: str) -> VectorIndex:
        import faiss

        inner = faiss.index_factory(dim, description, metric_code(metric))
        return cls(dim, metric, faiss.IndexIDMap2(inner))

    @property
    def count(self) -> int:
        return int(self.faiss_index.ntotal)

    @property
    def memory_bytes(self) -> int:
        """The index's codes and ids (8 bytes each)."""
        index = self.faiss_index
        inner = self._faiss.downcast_index(getattr(index, "index", index))
        code = int(getattr(inner, "code_size", 0) or self.dim * 4)
        return self.count * (code + 8)

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Add vectors under new ids (remove replaced ids first)."""
        if not self.faiss_index.is_trained:
            self.faiss_index.train(vectors)
        self.faiss_index.add_with_ids(vectors, ids)

    def remove(self, ids: list[int]) -> None:
        if ids:
            self.faiss_index.remove_ids(np.array(ids, dtype=np.int64))

    def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        allowed_ids: npt.NDArray[np.int64] | None = None,
    ) -> tuple[Scores, Ids]:
        """The exact top-k per query under ``topk.order``: (nq, k), -1 padded; only among
        ``allowed_ids`` when given."""
        total = self.count
        if total == 0:
            nq = len(queries)
            return np.full((nq, k), np.nan, np.float32), np.full((nq, k), -1, np.int64)
        params, selector = None, None
        if allowed_ids is not None:
            selector = self._faiss.IDSelectorBatch(allowed_ids)  # alive for the search
            params = self._faiss.SearchParameters()
            params.sel = selector
        scores, ids = self.faiss_index.search(queries, min(total, k + TIE_MARGIN), params=params)
        return topk.select(scores, ids, k, self.metric)  # type: ignore[arg-type]

    def clone(self) -> Any:
        """A copy of the FAISS index (for a snapshot written outside the lock)."""
        return self._faiss.clone_index(self.faiss_index)
