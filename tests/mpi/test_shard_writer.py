"""A ShardWriter in a real ``mpiexec`` job: durable-LSN callbacks and log maintenance."""

from __future__ import annotations

from pathlib import Path

import pytest

from .jobs import run_job

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("wal_sync", ["batch", "interval"])
def test_the_durable_lsn_reaches_every_batch_and_snapshots_run_beside_ingestion(
    tmp_path: Path, wal_sync: str
) -> None:
    report = tmp_path / "report.json"
    result = run_job(
        1, "shard_writer_job.py", report, wal_sync, str(tmp_path / "data"), str(report)
    )
    lsns, announced = result["lsns"], result["announced"]
    assert lsns == list(range(1, 31))
    assert announced == sorted(set(announced)) and announced[-1] == lsns[-1]
    if wal_sync == "batch":
        assert announced == lsns  # synced before process() returned
    else:
        assert len(announced) < len(lsns)  # group commit: one sync covers several batches
    assert result["snapshots"] >= 3  # triggered by log size, then the drain
    assert result["snapshot"]["reason"] == "drain"
    assert result["snapshot"]["vectors"] == result["vectors"] == 30 * 16
