"""Hybrid rounds over real ``mpiexec`` ranks equal one process over every chunk."""

from __future__ import annotations

from pathlib import Path

import pytest

from .jobs import run_job

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_hybrid_fusion_equals_a_single_process_reference(ranks: int, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = run_job(ranks, "hybrid_job.py", report, str(report))
    assert result["problems"] == [] and result["mismatches"] == 0
    assert result["checked"] == 2 * 20
    # The identifier's chunk: found through its keywords, which the vector search misses.
    assert result["rare_found"] and not result["rare_by_vector"]
