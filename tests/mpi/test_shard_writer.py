"""A ShardWriter in a real ``mpiexec`` job: durable-LSN callbacks and log maintenance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aaflow_stream.runtime.supervisor import mpiexec_path

from ..conftest import REPO_DIR

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("wal_sync", ["batch", "interval"])
def test_the_durable_lsn_reaches_every_batch_and_snapshots_run_beside_ingestion(
    tmp_path: Path, wal_sync: str
) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            mpiexec_path(),
            "-n",
            "1",
            sys.executable,
            str(REPO_DIR / "tests" / "mpi" / "shard_writer_job.py"),
            wal_sync,
            str(tmp_path / "data"),
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_DIR)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(report.read_text())
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
