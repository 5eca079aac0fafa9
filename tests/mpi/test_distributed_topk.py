"""Distributed top-k over real ``mpiexec`` ranks equals brute-force exact top-k."""

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


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_distributed_top_k_equals_brute_force_for_ip_and_l2(ranks: int, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [
            mpiexec_path(),
            "-n",
            str(ranks),
            sys.executable,
            str(REPO_DIR / "tests" / "mpi" / "topk_job.py"),
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_DIR)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(report.read_text())
    assert result == {"ranks": ranks, "checked": 2 * 4 * 24, "mismatches": 0}
