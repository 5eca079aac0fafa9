"""Dual-path rounds over real ``mpiexec`` ranks equal brute-force weighted scoring."""

from __future__ import annotations

from pathlib import Path

import pytest

from .jobs import run_job

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_dual_path_merge_equals_brute_force_over_both_indexes(ranks: int, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = run_job(ranks, "dual_job.py", report, str(report))
    assert result["problems"] == []
    assert result["mismatches"] == 0
    assert result["checked"] == 2 * 2 * 4 * 3 * 21  # metrics x modes x weightings x k x queries
    if ranks > 1:
        assert result["owned_elsewhere"] > 0  # entries owned by ranks other than 0 were found
