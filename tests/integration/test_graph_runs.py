"""Graphs of real actor processes under a real supervisor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aaflow_stream.errors import ActorFailed
from aaflow_stream.plan import StageSpec
from aaflow_stream.protocol import ActorStats
from aaflow_stream.runtime.supervisor import Restart
from aaflow_stream.spec import RestartSpec

from .graphs import BASIC, SUPPORT, graph, run, sink, sink_seqs, source, supervisor


def test_eos_passes_every_replica_and_every_row_arrives_exactly_once(run_dir: Path) -> None:
    out = run_dir / "out"
    g = graph(
        source(batches=200, rows=50),
        StageSpec("relay", f"{BASIC}:PassThrough", replicas=3),
        sink(out, replicas=2),
    )
    report = run(g, run_dir)
    assert report.exit_codes == {n: 0 for n in report.exit_codes} and len(report.exit_codes) == 6
    assert sorted(sink_seqs(out)) == list(range(200 * 50))
    relays = [s for n, s in report.stats.items() if n.startswith("relay")]
    assert sum(s.input.rows for s in relays) == 200 * 50
    assert all(s.input.eos_received == 1 for s in relays)
    sinks = [s for n, s in report.stats.items() if n.startswith("sink")]
    assert all(s.input.eos_received == 3 for s in sinks)


def test_several_source_replicas_end_the_stream_only_when_all_are_done(run_dir: Path) -> None:
    out = run_dir / "out"
    g = graph(source(batches=90, rows=10, replicas=3), sink(out, replicas=1))
    run(g, run_dir)
    assert sorted(sink_seqs(out)) == list(range(900))


def test_a_fast_replica_gets_proportionally_more_batches(run_dir: Path) -> None:
    out = run_dir / "out"
    g = graph(
        source(batches=400, rows=16),
        StageSpec("work", f"{SUPPORT}:DelayByReplica", {"delays_ms": [0.0, 20.0]}, 2),
        sink(out),
        window=4,
    )
    report = run(g, run_dir)
    links = {link.peer: link.batches_sent for link in report.stats["source.0"].outputs}
    assert links["work.0"] + links["work.1"] == 400
    assert links["work.0"] >= 4 * links["work.1"], links
    assert sorted(sink_seqs(out)) == list(range(400 * 16))


def test_a_crashing_actor_is_reported_and_the_rest_stop_in_bounded_time(run_dir: Path) -> None:
    g = graph(
        source(batches=10**6, rows=16),
        StageSpec("crash", f"{SUPPORT}:Crash", {"after": 20, "message": "boom at 20"}),
        sink(run_dir / "out"),
    )

    async def main() -> tuple[ActorFailed, float]:
        sup = supervisor(g, run_dir, stop_timeout_s=8.0)
        async with sup:
            with pytest.raises(ActorFailed) as failed:
                await sup.wait()
            started = time.monotonic()
        return failed.value, time.monotonic() - started

    failure, stop_s = asyncio.run(asyncio.wait_for(main(), 60))
    assert failure.actor == "crash.0"
    assert failure.exit_code == 1
    assert "RuntimeError: boom at 20" in failure.last_error
    assert stop_s < 15
    assert not (run_dir / "sock").exists()


def test_restarts_are_bounded_with_backoff_and_then_fail_clearly(run_dir: Path) -> None:
    g = graph(
        source(batches=10**6, rows=16),
        StageSpec("crash", f"{SUPPORT}:Crash", {"after": 5, "message": "boom again"}),
        sink(run_dir / "out"),
    )
    policy = RestartSpec(max_restarts=2, backoff_s=0.2, max_backoff_s=5.0)

    async def main() -> tuple[ActorFailed, list[Restart]]:
        sup = supervisor(g, run_dir, stop_timeout_s=8.0, restart=policy)
        async with sup:
            with pytest.raises(ActorFailed) as failed:
                await sup.wait()
        return failed.value, sup.restarts

    failure, restarts = asyncio.run(asyncio.wait_for(main(), 120))
    assert "boom again" in failure.last_error
    assert len(restarts) == 2 and all("boom again" in r.reason for r in restarts)
    # The second restart waited twice the first one's backoff.
    assert restarts[0].ready_at - restarts[0].detected_at >= 0.2
    assert restarts[1].ready_at - restarts[1].detected_at >= 0.4
    assert not (run_dir / "sock").exists()


def test_an_operator_that_cannot_be_built_fails_start_with_its_reason(run_dir: Path) -> None:
    g = graph(source(batches=1), StageSpec("bad", f"{BASIC}:PassThrough", {"speed": 1}))

    async def main() -> None:
        async with supervisor(g, run_dir):
            pass

    with pytest.raises(ActorFailed, match="does not take") as failed:
        asyncio.run(asyncio.wait_for(main(), 60))
    assert failed.value.exit_code == 2


def test_a_stop_request_drains_everything_already_sent(run_dir: Path) -> None:
    out = run_dir / "out"
    g = graph(
        source(batches=10**7, rows=32),
        StageSpec("relay", f"{BASIC}:PassThrough", {"delay_ms": 1.0}, 2),
        sink(out),
    )

    async def main() -> None:
        flowing = asyncio.Event()

        def watch(stats: ActorStats) -> None:
            if stats.actor == "sink.0" and stats.input.rows >= 500:
                flowing.set()

        async with supervisor(g, run_dir, on_stats=watch) as sup:
            waiting = asyncio.create_task(sup.wait())
            await flowing.wait()
            sup.request_stop()
            report = await waiting
        assert set(report.exit_codes.values()) == {0}
        sent = report.stats["source.0"].rows_out
        seqs = sink_seqs(out)
        assert len(seqs) == sent == len(set(seqs)) and sent >= 500

    asyncio.run(asyncio.wait_for(main(), 60))
