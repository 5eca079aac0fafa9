"""Helpers to run a graph of real actor processes under a real supervisor."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from aaflow_stream.plan import GraphSpec, StageSpec
from aaflow_stream.runtime.supervisor import RunReport, Supervisor

from ..conftest import REPO_DIR

BASIC = "aaflow_stream.operators.basic"
SUPPORT = "tests.support.ops"
# Actor processes import test-only operators from tests/support.
TEST_ENV = {
    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_DIR), os.environ.get("PYTHONPATH")]))
}


def source(batches: int, rows: int = 64, replicas: int = 1, **params: Any) -> StageSpec:
    return StageSpec(
        "source", f"{BASIC}:SyntheticSource", {"batches": batches, "rows": rows, **params}, replicas
    )


def sink(out: Path, replicas: int = 1, **params: Any) -> StageSpec:
    return StageSpec("sink", f"{BASIC}:ArrowFileSink", {"path": str(out), **params}, replicas)


def graph(*stages: StageSpec, **options: Any) -> GraphSpec:
    options.setdefault("eos_timeout_s", 20.0)
    options.setdefault("drain_timeout_s", 5.0)
    options.setdefault("stats_interval_s", 0.2)
    return GraphSpec(stages=list(stages), **options)


def supervisor(g: GraphSpec, run_dir: Path, **options: Any) -> Supervisor:
    options.setdefault("stop_timeout_s", 10.0)
    options.setdefault("start_timeout_s", 30.0)
    return Supervisor(g, run_dir, env=TEST_ENV, **options)


def run(g: GraphSpec, run_dir: Path, timeout_s: float = 90.0) -> RunReport:
    async def main() -> RunReport:
        async with asyncio.timeout(timeout_s), supervisor(g, run_dir) as sup:
            return await sup.wait()

    return asyncio.run(main())


def sink_seqs(out: Path) -> list[int]:
    seqs: list[int] = []
    for path in sorted(out.glob("*.arrow")):
        with pa.ipc.open_stream(path) as reader:
            seqs.extend(reader.read_all().column("seq").to_pylist())
    return seqs
