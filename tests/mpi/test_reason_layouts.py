"""The reason operator gives the same context, byte for byte, whatever the shard count."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from .jobs import run_job

pytestmark = pytest.mark.mpi


def test_contexts_are_identical_across_runs_and_one_two_and_four_shards(tmp_path: Path) -> None:
    outputs = []
    for ranks in (1, 2, 4, 4):  # 4 twice: across runs too
        report = tmp_path / f"contexts-{len(outputs)}.json"
        run_job(ranks, "reason_job.py", report, str(report))
        outputs.append(report.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2] == outputs[3]
    contexts = msgspec.json.decode(outputs[0])
    assert len(contexts) == 24 and all(c["pieces"] for c in contexts)
    assert sum(c["dropped_duplicates"] for c in contexts) > 0  # dedup had work to do
    assert any(p["citation"]["path"] == "memory" for c in contexts for p in c["pieces"])
