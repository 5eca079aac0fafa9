"""A rank that fails alone ends its whole MPI job at once: never a job left half-alive."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aaflow_stream.errors import ActorFailed
from aaflow_stream.plan import StageSpec
from aaflow_stream.runtime.failures import BadOperator
from aaflow_stream.spec import RestartSpec

from ..integration.graphs import SUPPORT, graph, source, supervisor

pytestmark = pytest.mark.mpi


@pytest.mark.timeout(120)
def test_a_rank_that_fails_while_its_peers_wait_in_a_collective_ends_the_job_within_seconds(
    run_dir: Path,
) -> None:
    ranks = StageSpec(
        "ranks",
        f"{SUPPORT.replace('ops', 'mpi_ops')}:RankThatFailsAlone",
        {"fail_rank": 1},
        replicas=2,
        launcher="mpi",
    )
    g = graph(source(batches=4, rows=8), ranks)
    waited: list[float] = []

    async def main() -> None:
        async with supervisor(g, run_dir) as sup:
            started = time.monotonic()
            try:
                await asyncio.wait_for(sup.wait(), 60)
            finally:
                waited.append(time.monotonic() - started)

    with pytest.raises(ActorFailed) as caught:
        asyncio.run(main())
    assert caught.value.actor == "ranks.1"
    assert "rank 1 failed alone" in caught.value.last_error
    assert caught.value.exit_code not in (0, None)
    print(f"the failed job ended {waited[0]:.2f}s after the sources started")
    assert waited[0] < 15


@pytest.mark.timeout(120)
def test_a_rank_whose_operator_cannot_be_built_fails_the_start_with_no_restart(
    run_dir: Path,
) -> None:
    ranks = StageSpec(
        "ranks",
        f"{SUPPORT.replace('ops', 'mpi_ops')}:RankThatCannotBeBuilt",
        {"fail_rank": 1},
        replicas=2,
        launcher="mpi",
    )
    g = graph(source(batches=4, rows=8), ranks)
    sup = supervisor(g, run_dir, restart=RestartSpec(max_restarts=3, backoff_s=0.1))

    async def main() -> None:
        async with sup:
            await asyncio.wait_for(sup.wait(), 60)

    # The job's exit code says "cannot be built" (2): deterministic, so never retried.
    with pytest.raises(BadOperator, match="no such model"):
        asyncio.run(asyncio.wait_for(main(), 90))
    assert sup.restart_attempts == 0
