from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream.schemas import stored
from aaflow_stream.shard import topk
from aaflow_stream.shard.store import ShardStore


def test_inner_product_prefers_larger_scores_and_l2_smaller_ones() -> None:
    scores = np.array([0.5, 0.9, 0.1], dtype=np.float32)
    ids = np.array([1, 2, 3], dtype=np.int64)
    assert topk.order(scores, ids, "ip").tolist() == [1, 0, 2]
    assert topk.order(scores, ids, "l2").tolist() == [2, 0, 1]


def test_ties_go_to_the_smaller_chunk_id_and_missing_entries_come_last() -> None:
    scores = np.array([0.7, 0.7, 0.9, 0.7], dtype=np.float32)
    ids = np.array([30, 10, -1, 20], dtype=np.int64)
    assert ids[topk.order(scores, ids, "ip")].tolist() == [10, 20, 30, -1]
    best_scores, best_ids = topk.select(scores[None, :], ids[None, :], 4, "ip")
    assert best_ids.tolist() == [[10, 20, 30, -1]]
    assert np.isnan(best_scores[0, 3])


def _store(tmp_path: Path, metric: str) -> tuple[ShardStore, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    vectors[50:60] = vectors[7]
    ids = np.arange(1000, 1200, dtype=np.int64)
    n = len(ids)
    batch = pa.record_batch(
        [
            pa.array([f"d{i}" for i in ids]),
            pa.array(np.zeros(n, np.int32)),
            pa.array(ids.astype(np.uint64)),
            pa.array([f"t{i}" for i in ids], pa.large_string()),
            pa.array(["s"] * n),
            pa.array(np.zeros(n, np.int64)).cast(pa.timestamp("ms")),
            pa.array(np.zeros(n, np.uint64)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8),
        ],
        schema=stored(8),
    )
    store = ShardStore(tmp_path / metric, dim=8, index="Flat", metric=metric)
    store.upsert(batch)
    return store, vectors, ids


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_a_shard_search_is_exact_with_ties_broken_by_chunk_id(tmp_path: Path, metric: str) -> None:
    store, vectors, ids = _store(tmp_path, metric)
    query = vectors[7]
    scores = vectors @ query if metric == "ip" else ((vectors - query) ** 2).sum(axis=1)
    want = ids[np.lexsort((ids, -scores if metric == "ip" else scores))[:5]].tolist()
    _, got = store.search(query[None, :], 5)
    assert got[0].tolist() == want
    assert store.rows(want).column("text").to_pylist() == [f"t{i}" for i in want]


def test_an_empty_shard_answers_with_padding(tmp_path: Path) -> None:
    store = ShardStore(tmp_path / "e", dim=4, index="Flat", metric="ip")
    _, ids = store.search(np.zeros((2, 4), np.float32), 3)
    assert ids.tolist() == [[-1, -1, -1], [-1, -1, -1]]
