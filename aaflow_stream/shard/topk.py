"""Exact top-k order, the same on a shard (``ShardStore.search``) and across shards
(``shard.round``). Pure numpy.

Order: better score first (inner product: larger; L2: smaller), then the smaller chunk id, and
missing entries (id -1, FAISS's filler when a shard has fewer than k candidates) last. Merging
per-shard lists ordered this way and cutting at k gives exactly the top-k of the union, ties
included, provided each shard's list is itself exact under this order (``VectorIndex.search``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

Metric = Literal["ip", "l2"]
Scores = npt.NDArray[np.float32]
Ids = npt.NDArray[np.int64]


def order(scores: Scores, ids: Ids, metric: Metric) -> npt.NDArray[np.intp]:
    """Indices that sort one query's candidates by (score, chunk id), missing last."""
    primary = -scores.astype(np.float64) if metric == "ip" else scores.astype(np.float64)
    missing = ids < 0
    return np.lexsort((ids, primary, missing))


def select(scores: Scores, ids: Ids, k: int, metric: Metric) -> tuple[Scores, Ids]:
    """Row by row, the best ``k`` candidates of (nq, m) arrays, as (nq, k), -1 padded."""
    nq = scores.shape[0]
    out_scores = np.full((nq, k), np.nan, dtype=np.float32)
    out_ids = np.full((nq, k), -1, dtype=np.int64)
    for q in range(nq):
        keep = [i for i in order(scores[q], ids[q], metric)[:k] if ids[q, i] >= 0]
        out_scores[q, : len(keep)] = scores[q, keep]
        out_ids[q, : len(keep)] = ids[q, keep]
    return out_scores, out_ids
