"""A shard applies any filter without failing: a round must not fail on one rank alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aaflow_stream.shard.filters import QueryFilter
from aaflow_stream.shard.store import ShardStore

from ..support.chunks import chunk_rows

DIM = 8


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ShardStore]:
    store = ShardStore(tmp_path / "shard", dim=DIM, index="Flat", metric="ip", wal_sync="none")
    try:
        rng = np.random.default_rng(3)
        store.append(chunk_rows("doc", rng.standard_normal((4, DIM)), ts_ms=1_000))
        yield store
    finally:
        store.close()


@pytest.mark.parametrize(
    "where",
    [
        QueryFilter(sources=[]),
        QueryFilter(ts_from_ms=2**64 - 1),
        QueryFilter(ts_to_ms=-(2**70)),
        QueryFilter(ts_from_ms=2_000, ts_to_ms=500),
        QueryFilter(sources=["\x00" * 10_000]),
    ],
)
def test_a_filter_the_gateway_would_refuse_matches_nothing_instead_of_failing(
    store: ShardStore, where: QueryFilter
) -> None:
    _, ids = store.search(np.ones((2, DIM), np.float32), 3, where)
    assert (ids == -1).all()


def test_time_bounds_past_the_int64_range_are_clamped(store: ShardStore) -> None:
    wide = QueryFilter(ts_from_ms=-(2**70), ts_to_ms=2**64 - 1, sources=["src"])
    _, ids = store.search(np.ones((1, DIM), np.float32), 3, wide)
    assert (ids >= 0).all()
