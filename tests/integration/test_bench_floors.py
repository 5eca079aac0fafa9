"""The W1 reference floors (bench/floors.py) run for real and store exactly the W1 chunks."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aaflow_stream.synthetic import generate

from ..support.benchmarks import run_bench


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    """The run's TMPDIR: short, for the unix sockets the floors make in it."""
    path = Path(tempfile.mkdtemp(prefix="aaf-fl"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("name", ["two_procs", "raw_zmq"])
def test_a_floor_stores_every_chunk_once_and_times_its_run(name: str, tmp_dir: Path) -> None:
    corpus = tmp_dir / "w1-tiny"
    chunks = generate(corpus, "tiny").chunks
    argv = ["--preset", "tiny", "--systems", name, "--repeats", "1", "--corpus-dir", str(corpus)]
    run = run_bench("ingest", *argv, timeout_s=170, env={"TMPDIR": str(tmp_dir)})
    assert run.code == 0, run.stdout + run.stderr
    result = run.result["systems"][name]
    assert result["verified"], result
    assert result["chunks"] == chunks
    assert 0 < result["total_s"] < 60 and result["startup_s"] > 0
    assert result["stages"]["embed"] > 0 and result["stages"]["upsert"] > 0
    assert not list(tmp_dir.glob("w1-raw-zmq-*"))  # sockets and their directory removed
