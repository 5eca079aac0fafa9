"""Hostile bytes at every socket of a serving topology (bench/fuzz.py, a short run): every
request is answered, and after each round the reference query gives the same answer, a valid
document is acknowledged, and no process died or was restarted."""

from __future__ import annotations

import pytest

from ..support.benchmarks import run_bench

pytestmark = pytest.mark.mpi


@pytest.mark.timeout(400)
def test_fuzzing_every_endpoint_of_a_serving_topology_breaks_nothing() -> None:
    argv = "--messages 150 --batch 50 --seed 11"
    run = run_bench("fuzz", *argv.split(), timeout_s=390)
    text = run.stdout + run.stderr
    report = run.result
    names = {t["name"] for t in report["endpoints"]}
    # Every kind of socket was reached: the clients' and the internal ones.
    assert {"gateway", "ingest", "gateway raw tcp", "supervisor"} <= names, text
    assert any(n.endswith(" data") for n in names) and any(n.endswith(" acks") for n in names)
    assert report["rounds"] == 3, text
    assert report["crashed"] == [] and report["restarts"] == 0, text
    assert report["failed_checks"] == [], text
    assert report["unanswered"] == 0, text
    assert report["passed"] and run.code == 0, text
