"""The W1 reference floors (bench/floors.py) run for real and store exactly the W1 chunks."""

from __future__ import annotations

import multiprocessing.resource_tracker
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from aaflow_stream.synthetic import generate

from ..support.bench import load_bench

floors = load_bench("floors")


@pytest.fixture(autouse=True)
def stop_the_resource_tracker() -> Iterator[None]:
    """Spawning starts multiprocessing's resource tracker, which otherwise outlives the test
    (and the suite checks that every process a test starts is gone)."""
    yield
    multiprocessing.resource_tracker._resource_tracker._stop()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("w1-tiny")
    return out, generate(out, "tiny").chunks


@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["two_procs", "raw_zmq"])
def test_a_floor_stores_every_chunk_once_and_times_its_run(
    name: str, corpus: tuple[Path, int]
) -> None:
    directory, chunks = corpus
    before = set(Path(tempfile.gettempdir()).glob("w1-raw-zmq-*"))
    result = {"two_procs": floors.run_two_procs, "raw_zmq": floors.run_raw_zmq}[name](directory)
    assert result.verified, result
    assert result.chunks == chunks
    assert 0 < result.total_s < 60 and result.startup_s > 0
    assert result.stages["embed"] > 0 and result.stages["upsert"] > 0
    assert set(Path(tempfile.gettempdir()).glob("w1-raw-zmq-*")) == before  # sockets removed
