"""Distributed top-k over real ``mpiexec`` ranks equals brute-force exact top-k."""

from __future__ import annotations

from pathlib import Path

import pytest

from .jobs import run_job

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_distributed_top_k_equals_brute_force_for_ip_and_l2(ranks: int, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = run_job(ranks, "topk_job.py", report, str(report))
    assert result == {"ranks": ranks, "checked": 2 * 4 * 24, "mismatches": 0}
