"""The supervisor: starts a graph's actors as processes, watches them, stops them in order.

* Start: actors are planned, written as JSON specs under the run directory and started sinks
  first (``launch.py``), each as ``python -m aaflow_stream.runtime.actor`` in its own session
  (a Ctrl-C in the terminal reaches the supervisor only, which then stops actors in order).
  The supervisor is *started* once every actor reported Ready; only then are sources told to
  Start.
* Watch: actors report Stats periodically and Done at the end over a ROUTER socket. A failure
  is any of: a launch that exited non-zero; an MPI rank whose own process ended without its
  Done (also while its mpiexec still runs, or when the job then exits 0); an actor silent for
  the heartbeat timeout whose event loop is stopped or blocked (``liveness.py``: it is
  declared *hung*, shown so in the status, and SIGKILLed). A failure is reported with the
  exit code and the last error (the actor's Failed message, else the tail of its log).
* Restart: the policy allows ``max_restarts`` attempts in all; a crash while a restarted graph
  starts consumes the next one. At the very first start-up an operator that could not be
  built (exit code 2) fails at once (``BadOperator``): it would fail the same way again.
* Stop: sources first (they end their streams, which drains every stage behind them), then
  whatever is still running is sent SIGTERM stage by stage, then SIGKILL after a deadline.
  Every process is reaped and the socket directory removed, also when the supervisor itself is
  cancelled or interrupted. Actors also die with the supervisor (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import zmq
import zmq.asyncio

from ..channels import sockets
from ..errors import ActorFailed
from ..observe.events import event
from ..observe.status import StatusBoard
from ..plan import GraphSpec
from ..procs import alive
from ..protocol import ActorStats, Done, Failed, Ready, Start, Stats, actor_up_decoder, encode
from ..spec import MetricsSpec, RestartSpec
from ..untrusted import MalformedMessage, decode
from . import launches, watch
from .actor import EXIT_BAD_OPERATOR
from .failures import BadOperator, StartTimeout
from .launch import GraphLauncher
from .launches import ActorProcess, Launch, mpiexec_path
from .liveness import heartbeat_timeout

if TYPE_CHECKING:
    from ..observe.metrics import MetricsServer

log = logging.getLogger(__name__)

POLL_S = 0.05

__all__ = ["ActorProcess", "Launch", "Restart", "RunReport", "Supervisor", "mpiexec_path"]


def _in_stages(stages: set[str], actor: ActorProcess) -> bool:
    return actor.spec.stage in stages


@dataclass(frozen=True)
class Restart:
    """One restart of the graph: the crash it answered, and when (epoch seconds) the crash was
    seen and the restarted graph was ready again."""

    reason: str
    detected_at: float
    ready_at: float


@dataclass(frozen=True)
class RunReport:
    """What a finished run did: final stats and exit code per actor, and its timings."""

    stats: dict[str, ActorStats]
    exit_codes: dict[str, int]
    startup_s: float
    run_s: float
    restarts: list[Restart] = field(default_factory=list)


@dataclass
class _Clock:
    started: float = field(default_factory=time.perf_counter)
    ready_at: float = 0.0


class Supervisor:
    def __init__(
        self,
        graph: GraphSpec,
        run_dir: Path,
        *,
        log_level: str = "INFO",
        env: dict[str, str] | None = None,
        start_timeout_s: float = 60.0,
        stop_timeout_s: float = 15.0,
        on_stats: Callable[[ActorStats], None] | None = None,
        restart: RestartSpec | None = None,
        metrics: MetricsSpec | None = None,
        trace_dir: Path | None = None,
        inherit_fds: tuple[int, ...] = (),
    ) -> None:
        self.graph = graph
        self.run_dir = run_dir
        self._launcher = GraphLauncher(
            graph,
            run_dir,
            log_level=log_level,
            env=env,
            trace_dir=trace_dir,
            inherit_fds=inherit_fds,  # the run's directory locks
        )
        self._start_timeout_s = start_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._on_stats = on_stats
        self._restart_policy = restart
        self._heartbeat_s = heartbeat_timeout(graph.stats_interval_s, graph.heartbeat_s)
        self.restarts: list[Restart] = []  # the restarts that got the graph ready again
        self.restart_attempts = 0  # every attempt, including those that failed to start
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._actors: dict[str, ActorProcess] = {}
        self._stop_requested = asyncio.Event()
        self._clock = _Clock()
        self._closed = False
        self._crashed = False
        # Observability (observe/): status.json, the metrics endpoint, the trace, events.
        self._metrics_spec = metrics
        self._metrics: MetricsServer | None = None
        self._trace_dir = trace_dir
        self.board = StatusBoard(graph, run_dir)
        self._exited: set[str] = set()  # actors whose exit was logged (or caused by us)
        self._dead_letters: dict[str, int] = {}
        self.malformed: Counter[str] = Counter()  # dropped control messages, by reason

    # --- public API ---------------------------------------------------------------------------

    async def __aenter__(self) -> Supervisor:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def actors(self) -> dict[str, ActorProcess]:
        return self._actors

    @property
    def heartbeat_s(self) -> float:
        """The silence after which an actor is suspect (``liveness.heartbeat_timeout``)."""
        return self._heartbeat_s

    def request_stop(self) -> None:
        """Ask ``wait`` to stop the graph in order (what Ctrl-C does)."""
        self._stop_requested.set()

    async def start(self) -> None:
        """Start every actor and return once all of them report Ready.

        A crash during this first start-up is retried by the restart policy, unless it is
        deterministic (an operator that could not be built: ``BadOperator``) or the start
        timed out (``StartTimeout``: it already took ``start_timeout_s``).
        """
        self._clock = _Clock()
        self._launcher.make_run_dir()
        self._start_observing()
        router_path = self._launcher.make_socket_dir() / "supervisor"
        endpoint = f"ipc://{router_path}"
        self._ctx = zmq.asyncio.Context()
        self._router = sockets.control_socket(self._ctx, zmq.ROUTER, bind=endpoint)
        router_path.chmod(0o600)  # the directory is 0700 already: defence in depth
        self._launcher.plan(endpoint)
        self._launch_all()
        try:
            await self._await_ready()
        except StartTimeout:
            raise
        except ActorFailed as error:
            if error.exit_code == EXIT_BAD_OPERATOR:
                log.error("%s: not restarted (the operator cannot be built)", error)
                raise BadOperator(error.actor, error.exit_code, error.last_error) from error
            await self._recover(error, start_sources=False)
        self.board.run_state("running")
        self._clock.ready_at = time.perf_counter()
        log.info("%d actors ready in %.2fs", len(self._actors), self.startup_s)

    def _launch_all(self) -> None:
        self._launcher.launch_all(self._actors)
        for a in self._actors.values():
            self._event(logging.INFO, "actor_start", a, pid=a.popen.pid)
            self.board.actor_state(a.spec.name, "starting", a.popen.pid)

    # --- observability ------------------------------------------------------------------------

    def _event(self, level: int, name: str, actor: ActorProcess, **fields: object) -> None:
        event(log, level, name, actor=actor.spec.name, replica=actor.spec.replica, **fields)

    def _start_observing(self) -> None:
        if self._trace_dir is not None:
            shutil.rmtree(self._trace_dir, ignore_errors=True)  # a trace is of one run
            self._trace_dir.mkdir(parents=True)
        if self._metrics_spec is not None and self._metrics is None:
            from ..observe.metrics import MetricsServer  # prometheus_client only when asked

            board = self.board
            self._metrics = MetricsServer(
                lambda: board.latest, self._metrics_spec.host, self._metrics_spec.port
            )
            self.board.metrics_url = self._metrics.url
            log.info("metrics on %s", self._metrics.url)
        self.board.write()

    def _observe(self) -> None:
        """Log exits not logged yet; write status.json when due. Runs on every pump."""
        for name, a in self._actors.items():
            code = a.exit_code
            if code is None or name in self._exited:
                continue
            self._exited.add(name)
            if code == 0:
                self._event(logging.INFO, "actor_stop", a, code=0)
                self.board.actor_state(name, "stopped")
            else:
                self._event(logging.ERROR, "actor_crash", a, code=code, reason=a.last_error())
                self.board.actor_state(name, "crashed")
        if self.board.due():
            self.board.write()

    def _on_actor_stats(self, actor: ActorProcess, stats: ActorStats) -> None:
        actor.stats = stats
        self.board.on_stats(stats)
        dead = int(stats.extra.get("dead_letters", 0))
        before = self._dead_letters.get(actor.spec.name, 0)
        if dead > before:
            self._event(logging.WARNING, "dead_letter", actor, count=dead - before, total=dead)
        self._dead_letters[actor.spec.name] = dead
        if self._on_stats is not None:
            self._on_stats(stats)

    async def _await_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        while not all(a.ready for a in self._actors.values()):
            self._check()
            if time.monotonic() > deadline:
                waiting = sorted(n for n, a in self._actors.items() if not a.ready)
                raise StartTimeout(
                    waiting[0],
                    None,
                    f"not ready after {self._start_timeout_s}s (waiting for {waiting})",
                )
            await self._pump(POLL_S)
        self._launcher.write_pids(self._actors)

    @property
    def startup_s(self) -> float:
        return self._clock.ready_at - self._clock.started if self._clock.ready_at else 0.0

    async def wait(self) -> RunReport:
        """Let sources run; return when every actor ended cleanly.

        A failure raises ActorFailed, unless the restart policy allows another try: then the
        whole graph is restarted (see ``_restart``) and the wait goes on.
        """
        await self._start_sources()
        run_started = time.perf_counter()
        while True:
            try:
                await self._watch()
                break
            except ActorFailed as error:
                await self._recover(error, start_sources=True)
        return RunReport(
            stats={n: a.stats for n, a in self._actors.items() if a.stats is not None},
            exit_codes={n: a.exit_code or 0 for n, a in self._actors.items()},
            startup_s=self.startup_s,
            run_s=time.perf_counter() - run_started,
            restarts=list(self.restarts),
        )

    async def _start_sources(self) -> None:
        assert self._router is not None
        for a in self._actors.values():
            if a.spec.wait_for_start:
                await self._router.send_multipart([a.spec.name.encode(), encode(Start())])

    async def _watch(self) -> None:
        while True:
            if self._stop_requested.is_set():
                await self.stop()
                break
            self._check()
            if all(a.exit_code is not None for a in self._actors.values()):
                if not self._awaiting_done():
                    break
            await self._pump(POLL_S)
        await self._pump(0)  # final Done messages
        self._check(final=True)

    def _awaiting_done(self) -> bool:
        return watch.awaiting_done(self._groups(), time.monotonic())

    # --- restarts -----------------------------------------------------------------------------

    def _may_restart(self) -> bool:
        return self._restart_policy is not None and (
            self.restart_attempts < self._restart_policy.max_restarts
        )

    async def _recover(self, failure: ActorFailed, *, start_sources: bool) -> None:
        """Restart the graph until it is ready again; each attempt consumes one restart of
        the policy, also one whose graph crashed while starting. Raises the last failure
        once the policy is spent (or a stop was requested)."""
        while True:
            if self._stop_requested.is_set() or not self._may_restart():
                raise failure
            try:
                await self._restart(failure, start_sources=start_sources)
                return
            except ActorFailed as error:
                failure = error

    async def _restart(self, error: ActorFailed, *, start_sources: bool) -> None:
        """Kill every actor, wait the backoff, start the graph again and restart its sources.

        The whole graph is the unit of restart (as a pipelined region is in Flink): a stage's
        links hold credits and end-of-stream state of their peers, and shards rebuild from
        their logs while sources resume from their checkpoints, so a fresh start of
        everything is exact and simple. What was in flight is sent again (idempotent).
        """
        detected_at = time.time()
        policy = self._restart_policy
        assert policy is not None
        self.restart_attempts += 1
        attempt = self.restart_attempts
        backoff = min(policy.backoff_s * 2 ** (attempt - 1), policy.max_backoff_s)
        log.error(
            "restarting the graph after %s (restart %d of at most %d, in %.2fs)",
            error,
            attempt,
            policy.max_restarts,
            backoff,
        )
        event(
            log,
            logging.WARNING,
            "graph_restart",
            attempt=attempt,
            backoff_s=backoff,
            actor=error.actor,
            reason=str(error),
        )
        self.board.run_state("restarting")
        self.board.restarted(str(error))
        self._exited.update(self._actors)  # killed by us: not crashes of their own
        await self._kill_all()
        await asyncio.sleep(backoff)
        self._actors = {}
        self._exited = set()
        self._dead_letters = {}
        self._crashed = False
        self._launch_all()
        for a in self._actors.values():
            self._event(logging.WARNING, "actor_restart", a, attempt=attempt)
        await self._await_ready()
        self.board.run_state("running")
        self.restarts.append(Restart(str(error), detected_at, time.time()))
        if start_sources:
            await self._start_sources()
        log.info("graph restarted: %d actors ready", len(self._actors))

    async def _kill_all(self) -> None:
        await launches.kill_all(list(self._actors.values()), self._stop_timeout_s)

    # --- stopping -----------------------------------------------------------------------------

    async def stop(self) -> None:
        """Sources first, then stage by stage; SIGKILL whatever outlives the deadline.

        After a crash the order cannot help (a stage behind the dead one never gets end of
        stream, one before it never gets credit): every actor is asked to drain at once.
        """
        self.board.run_state("stopping")
        names = [s.name for s in self.graph.stages]
        groups = [set(names)] if self._crashed else [{name} for name in names]
        deadline = time.monotonic() + self._stop_timeout_s
        for index, stages in enumerate(groups):
            for stage in stages:
                self._signal_stage(stage, signal.SIGTERM)
            # A stage normally ends by itself once the one before it ended its stream.
            share = (deadline - time.monotonic()) / max(1, len(groups) - index)
            await self._wait_exit(partial(_in_stages, stages), share)
        await self._wait_exit(lambda a: True, max(0.0, deadline - time.monotonic()))
        stragglers = [a for a in self._actors.values() if a.exit_code is None]
        for a in stragglers:
            self._exited.add(a.spec.name)  # its job's exit code is ours, not a crash
            if a.is_rank and a.pid is not None and not alive(a.pid):
                continue  # the rank ended, its mpiexec did not (yet)
            log.warning("%s did not stop in time: SIGKILL", a.spec.name)
            self._event(logging.WARNING, "actor_kill", a, reason="did not stop in time")
        if stragglers:
            # Ranks by their own pid, and what an MPI job still had below it: a rank that was
            # not Ready yet has no known pid, and a SIGKILLed mpiexec leaves its ranks behind.
            await launches.kill_all(stragglers, timeout_s=5.0)

    async def aclose(self) -> None:
        """Idempotent: stop what still runs, reap every process, remove the socket directory."""
        if self._closed:
            return
        self._closed = True
        try:
            if any(a.exit_code is None for a in self._actors.values()):
                await self.stop()
        finally:
            for launch in self._launches():
                if launch.popen.poll() is None:
                    launch.popen.kill()
                launch.popen.wait()
                launch.log_file.close()
            if self._router is not None:
                sockets.close(self._router, 0)
            if self._ctx is not None:
                self._ctx.term()
            self._launcher.remove_socket_dir()
            self._stop_observing()

    def _stop_observing(self) -> None:
        self._observe()
        self.board.run_state("failed" if self._crashed else "stopped")
        with contextlib.suppress(OSError):  # the run directory may be gone (a test's tmp)
            self.board.write()
        if self._metrics is not None:
            self._metrics.close()

    # --- processes -----------------------------------------------------------------------------

    def _launches(self) -> list[Launch]:
        return list({id(a.launch): a.launch for a in self._actors.values()}.values())

    def _members(self, launch: Launch) -> list[ActorProcess]:
        return [a for a in self._actors.values() if a.launch is launch]

    # --- messages -----------------------------------------------------------------------------

    async def _pump(self, timeout_s: float) -> None:
        """Handle every actor message that arrives within ``timeout_s``."""
        assert self._router is not None
        self._observe()
        for launch in self._launches():
            launches.release_finished(launch, self._members(launch))
        if not await self._router.poll(int(timeout_s * 1000)):
            return
        while await self._router.poll(0):
            parts = await self._router.recv_multipart()
            name = parts[0].decode(errors="replace")
            actor = self._actors.get(name)
            if actor is None or len(parts) != 2:
                self.malformed["unknown_peer"] += 1
                log.warning("message from unknown peer %r dropped", name)
                continue
            try:
                msg = decode(
                    actor_up_decoder,
                    parts[1],
                    max_bytes=sockets.MAX_CONTROL_BYTES,
                    what=f"control message from {name}",
                )
            except MalformedMessage as exc:
                self.malformed[exc.reason] += 1
                log.warning("%s: dropped", exc)
                continue
            actor.heard_at = time.monotonic()
            match msg:
                case Ready(pid=pid):
                    actor.ready, actor.pid = True, pid
                    self._event(logging.INFO, "actor_ready", actor, pid=pid)
                    self.board.actor_state(name, "running", pid)
                case Stats(stats=stats):
                    self._on_actor_stats(actor, stats)
                case Done(stats=stats):
                    actor.done = True
                    self._on_actor_stats(actor, stats)
                    self.board.actor_state(name, "done")
                case Failed(reason=reason):
                    actor.failure = reason

    # --- failure detection --------------------------------------------------------------------

    def _check(self, *, final: bool = False) -> None:
        """Raise ActorFailed for the first failure ``watch.find`` sees. ``final``: every
        process has ended and its last messages were read: no more grace for a Done."""
        found = watch.find(self._groups(), self._heartbeat_s, time.monotonic(), final)
        if found is None:
            return
        if found.hung:
            raise self._hung(found.actor, found.why)
        raise self._failed(found.actor, found.code, found.why)

    def _groups(self) -> list[watch.Group]:
        return [(launch, self._members(launch)) for launch in self._launches()]

    def _hung(self, actor: ActorProcess, reason: str) -> ActorFailed:
        actor.hung = True
        name = actor.spec.name
        self._exited.add(name)  # its SIGKILL is ours: not logged as a crash of its own
        error = ActorFailed(name, None, f"hung: {reason}")
        log.error("%s; SIGKILL", error)
        self._event(logging.ERROR, "actor_hung", actor, pid=actor.pid, reason=reason)
        self.board.actor_state(name, "hung")
        assert actor.pid is not None
        launches.kill_pid(actor.pid)
        self._crashed = True
        with contextlib.suppress(OSError):
            self.board.write()  # status shows it now, not at the next due write
        return error

    def _failed(self, culprit: ActorProcess, code: int | None, why: str = "") -> ActorFailed:
        reason = culprit.last_error()
        error = ActorFailed(culprit.spec.name, code, f"{why}; {reason}" if why else reason)
        if not self._crashed:
            log.error("%s", error)
            if culprit.spec.name not in self._exited:
                self._exited.add(culprit.spec.name)
                self._event(
                    logging.ERROR, "actor_crash", culprit, code=code, reason=error.last_error
                )
                self.board.actor_state(culprit.spec.name, "crashed")
        self._crashed = True
        return error

    def _signal_stage(self, stage: str, sig: signal.Signals) -> None:
        for a in self._actors.values():
            if a.spec.stage == stage and a.exit_code is None:
                try:
                    if a.pid is not None:
                        os.kill(a.pid, sig)
                    else:
                        a.popen.send_signal(sig)
                except ProcessLookupError:
                    pass

    async def _wait_exit(self, which: Callable[[ActorProcess], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(a.exit_code is not None for a in self._actors.values() if which(a)):
                return
            await self._pump(POLL_S)
