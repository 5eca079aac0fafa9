"""``aaflow-stream up`` with the shards' write-ahead log and snapshots, read back the way users
read them (``snapshot/index.faiss``, ``snapshot/meta.arrow``) and the way a restarted shard
does (a ``ShardStore`` on the same directory)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aaflow_stream.shard import snapshot as snap
from aaflow_stream.shard.store import WAL_DIR, ShardStore
from aaflow_stream.shard.wal import segments
from aaflow_stream.synthetic import generate

from .ingest import drained_shards, expected_chunks, jsonl_docs, read_shards, up, write_topology


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("w1")
    generate(out, "tiny")
    return out


@pytest.mark.parametrize("wal_sync", ["batch", "interval"])
def test_up_with_snapshots_mid_stream_stores_every_chunk_once_and_recovers_it(
    corpus: Path, tmp_path: Path, wal_sync: str
) -> None:
    data_dir = tmp_path / "data"
    # Small batches, and a snapshot every ~100 KB of log: several while the stream runs.
    durability = (
        f"durability: {{wal_sync: {wal_sync}, sync_interval_ms: 5, snapshot_wal_mb: 0.1}}\n"
    )
    stages = (
        "  - {operator: load, batch_docs: 4}\n  - {operator: transform}\n"
        "  - {operator: embed, batch_size: 16}\n  - {operator: upsert, batch_size: 16}\n"
    )
    topology = write_topology(
        tmp_path / "t.yaml", corpus, data_dir, shards=2, stages=stages, extra=durability
    )
    result = up(topology, "--json")
    assert result.code == 0, result.stderr
    expected = expected_chunks(jsonl_docs(corpus))
    ids, vectors, meta = read_shards(data_dir)
    assert sorted(ids.tolist()) == sorted(expected), "stored chunk ids differ"
    np.testing.assert_allclose(vectors, np.stack([expected[i] for i in ids.tolist()]), atol=1e-6)
    assert sorted(meta.column("chunk_id").to_pylist()) == sorted(expected)
    assert drained_shards(data_dir) == 2
    shard_stats = result.summary["stages"]["shard"]["metrics"]
    assert shard_stats["snapshots"] > 2, "expected snapshots before the drain"
    assert shard_stats["durable_lsn"] == shard_stats["lsn"]
    for shard in sorted(data_dir.glob("shard-*")):
        info = json.loads((shard / snap.SNAPSHOT_DIR / snap.INFO_FILE).read_text())
        assert not (shard / snap.TMP_DIR).exists() and not (shard / snap.OLD_DIR).exists()
        assert all(n >= info["wal_segment"] for n, _ in segments(shard / WAL_DIR))
        store = ShardStore(shard, dim=384, index="Flat", metric="ip")
        assert store.count == info["vectors"] and store.last_lsn == info["lsn"]
        store.close()
