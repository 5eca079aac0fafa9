"""The supervisor sees failures that no exit code reports: a stopped (silent) actor, an MPI
rank that died while its mpiexec lives; and restarts count crashes while a graph starts."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import psutil
import pytest

from aaflow_stream.errors import ActorFailed
from aaflow_stream.plan import StageSpec
from aaflow_stream.protocol import ActorStats
from aaflow_stream.runtime.failures import StartTimeout
from aaflow_stream.runtime.supervisor import Supervisor
from aaflow_stream.spec import RestartSpec

from .graphs import BASIC, TEST_ENV, graph, sink, source, supervisor
from .ingest import up

OPS = "tests.support.liveness_ops"
HEARTBEAT_S = 1.0
# Detection bound past the heartbeat: one probe interval and the pump, on a loaded machine.
DETECT_SLACK_S = 2.5


def _events(text: str, name: str) -> list[dict[str, str]]:
    found = []
    for line in text.splitlines():
        if f"event={name} " in line:
            found.append(dict(re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", line.split("event=", 1)[1])))
    return found


class _Flow:
    """Events set from the stats the supervisor receives: data reached ``actor`` (in the
    current graph), and that again after each restart."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.sup: Supervisor | None = None
        self.flowing = asyncio.Event()
        self.restarted = asyncio.Event()

    def __call__(self, stats: ActorStats) -> None:
        if stats.actor != self.actor or stats.input.rows == 0 or self.sup is None:
            return
        self.flowing.set()
        if self.sup.restarts:
            self.restarted.set()


async def _stop_and_wait(sup: Supervisor, waiting: asyncio.Task[object]) -> None:
    sup.request_stop()
    async with asyncio.timeout(30):
        await waiting


def test_a_stopped_actor_is_declared_hung_within_seconds_and_the_graph_restarts(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = graph(
        source(batches=10**7, rows=16),
        StageSpec("relay", f"{BASIC}:PassThrough", {"delay_ms": 1.0}),
        sink(run_dir / "out"),
        heartbeat_s=HEARTBEAT_S,
    )
    policy = RestartSpec(max_restarts=1, backoff_s=0.1)
    flow = _Flow("sink.0")

    async def main() -> tuple[ActorFailed, list[float], Supervisor]:
        sup = supervisor(g, run_dir / "run", restart=policy, on_stats=flow)
        flow.sup = sup
        stopped_at = []
        async with sup:
            waiting = asyncio.create_task(sup.wait())
            async with asyncio.timeout(30):
                await flow.flowing.wait()
            pid = sup.actors["relay.0"].pid
            assert pid is not None
            os.kill(pid, signal.SIGSTOP)  # silent from now on, and alive
            stopped_at.append(time.time())
            async with asyncio.timeout(30):
                await flow.restarted.wait()
            again = sup.actors["relay.0"].pid
            assert again is not None and again != pid
            os.kill(again, signal.SIGSTOP)  # no restart left: the run fails with it
            stopped_at.append(time.time())
            with pytest.raises(ActorFailed) as failed:
                async with asyncio.timeout(30):
                    await waiting
        return failed.value, stopped_at, sup

    with caplog.at_level("INFO", logger="aaflow_stream.runtime.supervisor"):
        failure, stopped_at, sup = asyncio.run(main())
    assert failure.actor == "relay.0" and failure.exit_code is None
    assert "hung" in failure.last_error and "stopped" in failure.last_error
    [restart] = sup.restarts
    assert "relay.0" in restart.reason and "hung" in restart.reason
    assert restart.detected_at - stopped_at[0] < HEARTBEAT_S + DETECT_SLACK_S
    hung = _events(caplog.text, "actor_hung")
    assert [e["actor"] for e in hung] == ["relay.0", "relay.0"]
    status = json.loads((run_dir / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["restarts"] == 1
    assert "hung" in status["last_restart"]
    assert {s["state"] for s in status["stages"] if s["actor"] == "relay.0"} == {"hung"}


@pytest.mark.mpi
def test_a_rank_killed_with_kill_9_while_its_mpiexec_lives_is_detected_and_restarted(
    run_dir: Path,
) -> None:
    """Its mpiexec is stopped first, so that it cannot end the job by itself (as it does
    when it notices; ``test_durability`` kills ranks that way): only the rank's own death
    tells."""
    ranks = StageSpec("sink", f"{BASIC}:ArrowFileSink", {"path": str(run_dir / "out")}, 2)
    g = graph(
        source(batches=10**7, rows=16),
        StageSpec(ranks.name, ranks.operator, ranks.params, 2, launcher="mpi"),
        heartbeat_s=30.0,  # not the heartbeat: the death itself must be seen
    )
    policy = RestartSpec(max_restarts=1, backoff_s=0.1)
    flow = _Flow("sink.1")

    async def main() -> tuple[Supervisor, float, int | None]:
        sup = supervisor(g, run_dir / "run", restart=policy, on_stats=flow)
        flow.sup = sup
        async with sup:
            waiting = asyncio.create_task(sup.wait())
            async with asyncio.timeout(30):
                await flow.flowing.wait()
            rank = sup.actors["sink.1"]
            assert rank.pid is not None and rank.is_rank
            job = rank.launch.popen
            os.kill(job.pid, signal.SIGSTOP)
            os.kill(rank.pid, signal.SIGKILL)
            killed_at = time.time()
            async with asyncio.timeout(30):
                await flow.restarted.wait()
            await _stop_and_wait(sup, waiting)
            return sup, killed_at, job.poll()

    sup, killed_at, old_job = asyncio.run(main())
    [restart] = sup.restarts
    assert "sink.1" in restart.reason
    assert "ended while its mpiexec job still runs" in restart.reason
    assert restart.detected_at - killed_at < 2.0 + DETECT_SLACK_S
    assert old_job is not None  # the stopped mpiexec was reaped too


@pytest.mark.parametrize(
    ("plan", "attempts"),
    [
        (["crash_after", "crash_at_init"], 2),  # a crash while the restarted graph starts
        (["crash_at_init"], 1),  # a crash during the first start-up, not deterministic
    ],
)
def test_a_crash_while_starting_consumes_a_restart_and_the_next_one_recovers(
    run_dir: Path, plan: list[str], attempts: int
) -> None:
    g = graph(
        source(batches=60, rows=16),
        StageSpec(
            "flaky",
            f"{OPS}:FailsByLaunch",
            {"counter": str(run_dir / "launches"), "plan": plan, "after": 5},
        ),
        sink(run_dir / "out"),
    )
    policy = RestartSpec(max_restarts=2, backoff_s=0.05)

    async def main() -> Supervisor:
        async with asyncio.timeout(90), supervisor(g, run_dir / "run", restart=policy) as sup:
            report = await sup.wait()
        assert set(report.exit_codes.values()) == {0}
        return sup

    sup = asyncio.run(main())
    assert sup.restart_attempts == attempts
    assert int((run_dir / "launches").read_text()) == attempts + 1
    assert "fails while starting" in sup.restarts[-1].reason
    status = json.loads((run_dir / "run" / "status.json").read_text())
    assert status["state"] == "stopped" and status["restarts"] == attempts


@pytest.mark.mpi
def test_up_fails_fast_with_exit_2_and_no_restart_given_an_operator_that_cannot_be_built(
    tmp_path: Path,
) -> None:
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.txt").write_text("one document")
    topology = tmp_path / "t.yaml"
    topology.write_text(
        f"name: bad\ndata_dir: {tmp_path}/data\nrun_dir: {tmp_path}/run\n"
        f"sources: [{{paths: ['{tmp_path}/corpus']}}]\n"
        "stages:\n"
        "  - {operator: load}\n"
        f"  - {{operator: custom, name: broken, ref: '{OPS}:CannotBeBuilt',"
        " params: {message: 'no such model: xyz'}}\n"
        "  - {operator: embed}\n"
        "  - {operator: upsert}\n"
        f"shards: {{count: 1}}\nquery: {{endpoint: 'ipc://{tmp_path}/q.sock'}}\n"
        "durability: {restart: {max_restarts: 5, backoff_s: 1.0}}\n"
    )
    started = time.monotonic()
    result = up(topology, timeout_s=60)
    assert result.code == 2, result.stderr
    assert "no such model: xyz" in result.stderr and "not restarted" in result.stderr
    assert "restarting the graph" not in result.stderr
    assert time.monotonic() - started < 30  # five restarts would back off 31 s alone
    log = (tmp_path / "run" / "logs" / "broken.0.log").read_text()
    assert log.count("actor failed: OperatorError") == 1  # built once, never again
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["restarts"] == 0


def _stuck_ranks(marker: Path, count: int, timeout_s: float = 30.0) -> list[psutil.Process]:
    """The processes of the ``NeverStarts`` ranks, once ``count`` of them are in their
    constructor."""
    deadline = time.monotonic() + timeout_s
    while len(list(marker.glob("*.pid"))) < count:
        assert time.monotonic() < deadline, "the ranks did not start"
        time.sleep(0.05)
    return [psutil.Process(int(p.stem)) for p in marker.glob("*.pid")]


def _still_running(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    _gone, alive = psutil.wait_procs(procs, timeout=timeout_s)
    # An exited process whose parent died stays a zombie until init reaps it: it is gone.
    running = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in running:  # the test ends what it started, whatever it asserts
        p.kill()
    return running


def _never_starting_ranks(marker: Path) -> StageSpec:
    return StageSpec("stuck", f"{OPS}:NeverStarts", {"marker": str(marker)}, 2, launcher="mpi")


@pytest.mark.mpi
def test_mpi_ranks_that_never_became_ready_are_gone_after_the_start_timeout(
    run_dir: Path,
) -> None:
    marker = run_dir / "started"
    marker.mkdir()
    g = graph(source(batches=1, rows=1), _never_starting_ranks(marker))
    seen: list[psutil.Process] = []

    async def main() -> None:
        sup = supervisor(g, run_dir / "run", start_timeout_s=5.0)
        watching = asyncio.create_task(asyncio.to_thread(_stuck_ranks, marker, 2))
        with pytest.raises(StartTimeout):
            async with asyncio.timeout(60), sup:
                pass
        seen.extend(await watching)

    asyncio.run(main())
    assert _still_running(seen, timeout_s=10) == []


@pytest.mark.mpi
def test_mpi_ranks_still_starting_die_with_a_killed_supervisor(run_dir: Path) -> None:
    """Ranks are children of MPICH's process manager, not of the supervisor, and a rank in its
    start-up runs no event loop: the lifeline thread ends it (runtime/lifeline.py)."""
    marker = run_dir / "started"
    marker.mkdir()
    g = graph(source(batches=1, rows=1), _never_starting_ranks(marker))
    spec = run_dir / "graph.json"
    spec.write_bytes(msgspec.json.encode(g))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aaflow_stream.cli",
            "run-graph",
            str(spec),
            "--run-dir",
            str(run_dir / "run"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **TEST_ENV},
    )
    try:
        ranks = _stuck_ranks(marker, 2)
    finally:
        proc.kill()
        _out, err = proc.communicate(timeout=10)
    started = time.monotonic()
    assert _still_running(ranks, timeout_s=10) == [], err.decode()[-2000:]
    assert time.monotonic() - started < 10
