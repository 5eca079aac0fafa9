"""Faults: ``kill -9`` of a random actor, shard rank or the supervisor at seeded random times,
and the recovery, timed.

The plan (``--faults every=60s,kinds=...``) puts fault *i* at ``i * every`` give or take a
quarter of ``every``, none in the last half interval (the recovery must fit in the run); the
kinds come in seeded shuffled rounds, so that every kind is hit as often as any other.

- ``actor``: a stage actor of ``<run_dir>/actors/pids.json`` (not a shard rank); ``shard``: a
  shard rank (``shard.N``). The supervisor restarts the graph by itself: the fault is
  *restarted* once ``status.json`` counts one more restart and reads ``running``.
- ``supervisor``: the detached ``up`` process (``up.pid``). Its actors and ranks follow it; the
  soak then runs ``aaflow-stream up TOPOLOGY --detach`` again, as a user would, once the last
  of them has let the directory locks go.

A fault is *recovered* when a new probe document sent after the restart is acknowledged and
reads back exactly through a query (``Workload.probe``); recovery time is kill to that. Faults
never overlap: the next waits for the previous recovery. A supervisor that exits without
being killed is an unexpected error, and is started again the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from . import probe
from .options import FaultPlan
from .record import Fault, Recorder
from .workload import Workload

RESTART_TIMEOUT_S = 120.0
RECOVERY_TIMEOUT_S = 120.0
WATCH_EVERY_S = 1.0


def schedule(plan: FaultPlan, duration_s: float, rng: random.Random) -> list[tuple[float, str]]:
    """(seconds after the start, kind) of every fault of the run."""
    out: list[tuple[float, str]] = []
    kinds: list[str] = []
    i = 1
    while plan.every_s * i <= duration_s - plan.every_s / 2:
        if not kinds:
            kinds = list(plan.kinds)
            rng.shuffle(kinds)
        jitter = rng.uniform(-plan.every_s / 4, plan.every_s / 4)
        out.append((plan.every_s * i + jitter, kinds.pop()))
        i += 1
    return out


def _status(run_dir: Path) -> tuple[int, str, int]:
    """(restarts, state, supervisor pid) from ``status.json``; (-1, "", 0) when unreadable."""
    try:
        raw = json.loads((run_dir / "status.json").read_text())
        return int(raw["restarts"]), str(raw["state"]), int(raw["supervisor_pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1, "", 0


class Faults:
    def __init__(
        self,
        plan: FaultPlan | None,
        seed: int,
        run_dir: Path,
        recorder: Recorder,
        workload: Workload,
        restart: Callable[[], Awaitable[float]],
    ) -> None:
        self._plan = plan
        self._rng = random.Random(f"{seed}:faults")
        self._run_dir = run_dir
        self._recorder = recorder
        self._workload = workload
        self._restart = restart
        self._running = True
        self._stopped = asyncio.Event()
        self._supervisor_down = False  # a supervisor fault (or restart) is in progress

    def stop(self) -> None:
        """No new fault; the one in progress runs to its recovery."""
        self._running = False
        self._stopped.set()

    async def run(self, started: float, duration_s: float) -> None:
        if self._plan is None:
            return
        for number, (offset, kind) in enumerate(
            schedule(self._plan, duration_s, self._rng), start=1
        ):
            try:
                await asyncio.wait_for(self._stopped.wait(), started + offset - time.time())
                return  # stopped before this fault was due
            except TimeoutError:
                pass
            await self._inject(number, kind)

    async def _inject(self, number: int, kind: str) -> None:
        pids = probe.actor_pids(self._run_dir)
        if kind == "supervisor":
            victim, pid = "supervisor", probe.supervisor_pid(self._run_dir) or 0
        else:
            names = sorted(n for n in pids if n.startswith("shard.") == (kind == "shard"))
            if not names:
                self._recorder.error("fault", "no_victim", time.time(), f"no {kind} to kill")
                return
            victim = self._rng.choice(names)
            pid = pids[victim]
        restarts_before = _status(self._run_dir)[0]
        fault = Fault(number, kind, victim, pid, time.time())
        self._recorder.fault(fault)
        if kind == "supervisor":
            self._supervisor_down = True
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError) as exc:
            fault.error = f"kill: {exc}"
        try:
            if kind == "supervisor":
                await self._restart()
            else:
                await self._until_restarted(restarts_before)
            fault.restarted_at = time.time()
        except Exception as exc:
            fault.error = f"not restarted: {exc}"
        finally:
            self._supervisor_down = False
        if await self._workload.probe(time.time() + RECOVERY_TIMEOUT_S):
            fault.recovered_at = time.time()
        else:
            fault.error = fault.error or f"no recovery within {RECOVERY_TIMEOUT_S:.0f}s"
            self._recorder.error("fault", "no_recovery", fault.at, f"{victim}: {fault.error}")

    async def _until_restarted(self, restarts_before: int) -> None:
        deadline = time.monotonic() + RESTART_TIMEOUT_S
        while time.monotonic() < deadline:
            restarts, state, _ = _status(self._run_dir)
            if restarts > restarts_before and state == "running":
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"the supervisor did not restart the graph in {RESTART_TIMEOUT_S}s")

    async def watch_supervisor(self) -> None:
        """A supervisor gone without a fault of ours: record it, start the topology again."""
        while self._running:
            await asyncio.sleep(WATCH_EVERY_S)
            if self._supervisor_down or probe.supervisor_pid(self._run_dir) is not None:
                continue
            started = time.time()
            self._recorder.error(
                "supervisor", "supervisor_exit", started, "the supervisor exited by itself"
            )
            self._supervisor_down = True
            try:
                await self._restart()
            except Exception as exc:
                self._recorder.error("supervisor", "no_recovery", started, str(exc))
            finally:
                self._supervisor_down = False
