"""The shard ranks as a real ``mpiexec`` job."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from aaflow_stream import pipeline, spec
from aaflow_stream.errors import ActorFailed
from aaflow_stream.procs import alive
from aaflow_stream.runtime.supervisor import Supervisor

pytestmark = pytest.mark.mpi


def _topology(tmp_path: Path, shards: int) -> spec.TopologySpec:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one small document")
    return spec.decode(
        f"name: idle\ndata_dir: {tmp_path / 'data'}\nrun_dir: {tmp_path / 'run'}\n"
        f"sources: [{{paths: [{corpus}]}}]\n"
        "stages: [{operator: load}, {operator: transform}, {operator: embed}, {operator: upsert}]\n"
        f"shards: {{count: {shards}}}\n"
    )


def test_an_idle_shard_job_uses_under_five_percent_of_a_core_per_rank(tmp_path: Path) -> None:
    topology = _topology(tmp_path, shards=4)
    graph = pipeline.ingestion_graph(topology)

    async def main() -> list[float]:
        async with Supervisor(graph, pipeline.run_dir(topology)) as sup:
            ranks = [
                psutil.Process(a.pid)
                for a in sup.actors.values()
                if a.spec.stage == "shard" and a.pid is not None
            ]
            assert len(ranks) == 4
            await asyncio.sleep(0.5)  # let the ranks settle after Ready
            before = [sum(p.cpu_times()[:2]) for p in ranks]
            started = time.monotonic()
            await asyncio.sleep(3.0)
            elapsed = time.monotonic() - started
            after = [sum(p.cpu_times()[:2]) for p in ranks]
            report = await sup.wait()  # then let it finish the one document
            assert sum(report.stats[f"shard.{r}"].extra["vectors"] for r in range(4)) == 1
            return [(b - a) / elapsed for a, b in zip(before, after, strict=True)]

    usage = asyncio.run(asyncio.wait_for(main(), 90))
    print(f"idle CPU per rank (fraction of a core): {[round(u, 4) for u in usage]}")
    assert max(usage) < 0.05, f"idle ranks used {usage} of a core"


def test_a_rank_that_is_not_where_the_plan_expects_fails_with_a_clear_reason(
    tmp_path: Path,
) -> None:
    topology = _topology(tmp_path, shards=2)
    graph = pipeline.ingestion_graph(topology)
    # Run the shard stage as a plain process: it is rank 0 of 1, not of 2.
    shard = msgspec.structs.replace(graph.stages[-1], launcher="process")
    graph = msgspec.structs.replace(graph, stages=[*graph.stages[:-1], shard])

    async def main() -> None:
        async with Supervisor(graph, pipeline.run_dir(topology)):
            pass

    with pytest.raises(ActorFailed, match=r"runs as MPI rank 0 of 1; expected rank \d of 2"):
        asyncio.run(asyncio.wait_for(main(), 60))


def _hydra_files() -> set[Path]:
    return set(Path("/tmp").glob("hydra_hwloc_xmlfile_*"))


@pytest.mark.timeout(120)
def test_a_rank_that_does_not_stop_in_time_is_killed_and_mpiexec_cleans_up(
    tmp_path: Path,
) -> None:
    """A frozen rank ignores SIGTERM: the supervisor SIGKILLs that rank, not mpiexec, so
    mpiexec exits by itself and removes its /tmp/hydra_hwloc_xmlfile_* (SIGKILLed, it
    would leave the file behind)."""
    topology = _topology(tmp_path, shards=2)
    graph = pipeline.ingestion_graph(topology)
    before = _hydra_files()
    ranks: list[int] = []
    stopped = False

    async def main() -> None:
        nonlocal stopped
        async with Supervisor(graph, pipeline.run_dir(topology), stop_timeout_s=3.0) as sup:
            ranks.extend(a.pid for a in sup.actors.values() if a.spec.stage == "shard" and a.pid)
            os.kill(ranks[1], signal.SIGSTOP)  # frozen: it will never drain
            stopped = True

    try:
        with contextlib.suppress(ActorFailed):  # the frozen rank's job ends killed
            asyncio.run(asyncio.wait_for(main(), 90))
    finally:
        if stopped and alive(ranks[1]):
            os.kill(ranks[1], signal.SIGKILL)
    assert len(ranks) == 2
    assert not any(alive(pid) for pid in ranks)
    assert _hydra_files() <= before
