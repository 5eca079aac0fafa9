"""Hostile bytes at every socket of a serving topology (bench/fuzz.py, a short run): every
request is answered, and after each round the reference query gives the same answer, a valid
document is acknowledged, and no process died or was restarted."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from ..support.bench import load_bench

fuzz = load_bench("fuzz")

pytestmark = pytest.mark.mpi


@pytest.mark.timeout(400)
def test_fuzzing_every_endpoint_of_a_serving_topology_breaks_nothing() -> None:
    root = Path(tempfile.mkdtemp(prefix="aaf-fz"))  # short: unix socket paths
    try:
        report = fuzz.run_fuzz(root, per_endpoint=150, batch=50, seed=11)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = fuzz.table(report)
    names = {t.name for t in report.endpoints}
    # Every kind of socket was reached: the clients' and the internal ones.
    assert {"gateway", "ingest", "gateway raw tcp", "supervisor"} <= names, text
    assert any(n.endswith(" data") for n in names) and any(n.endswith(" acks") for n in names)
    assert report.rounds == 3, text
    assert report.crashed == [] and report.restarts == 0, text
    assert report.failed_checks == [], text
    assert report.unanswered == 0, text
    assert report.passed, text
