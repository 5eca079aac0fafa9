"""One actor: one OS process, one uvloop event loop, one operator.

Lifecycle: start (build the operator, bind and connect, report Ready), run (a source pulls from
its operator; a stage consumes its input port), drain (flush the operator, end the stream
downstream and wait for it to be confirmed), stop (close sockets with a chosen linger).

SIGTERM (how the supervisor stops actors) drains: a source stops reading at once; a stage keeps
consuming until its upstream ends, for at most ``drain_timeout_s``. Then exit 0. An async
source (``abatches()``: a directory watch, the ingest endpoint) never ends by itself: a stop
cuts its wait for input, and its in-flight documents get up to ``drain_timeout_s`` to be
acknowledged before its checkpoint is saved.

A stage whose operators hold rows back for batching (they have ``idle()``) gets ``idle()``
called once no input arrived for ``flush_ms``, so a trickle is not stuck in a partial batch.
An exception in any task ends the actor: logged once with its reason, reported to the
supervisor, exit code 1 (2 when the operator could not even be built).

Run as ``python -m aaflow_stream.runtime.actor SPEC.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Final, NoReturn

import msgspec
import pyarrow as pa
import zmq
import zmq.asyncio

from ..channels.acks import AckInbox
from ..channels.inport import InPort, Received
from ..channels.outport import LinkSpec, OutPort
from ..channels.sockets import CLEAN_LINGER_MS, FAILED_LINGER_MS
from ..errors import LinkTimeout, OperatorError, RetryLater
from ..mpi.abort import DeferredAbort
from ..observe.events import SLOW_CONSUMER_S, event
from ..observe.trace import Arrival, TraceRecorder
from ..operators.base import OperatorContext, Output, Routed, build
from ..plan import ActorSpec
from ..protocol import ActorStats, Done, Failed, InputStats, Ready, Stats
from . import imports
from .chain import Chain, OperatorRun
from .lifeline import Lifeline
from .supervisor_link import SupervisorLink

log = logging.getLogger(__name__)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_BAD_OPERATOR: Final = 2
PARENT_PID_ENV: Final = "AAFLOW_SUPERVISOR_PID"
# Set by MPICH's process manager for every rank; replaces ``{rank}`` in the spec path.
MPI_RANK_ENV: Final = "PMI_RANK"
PROFILE_DIR_ENV: Final = "AAFLOW_PROFILE_DIR"
# A failed MPI rank ends its whole job at most this long after its failure (mpi.abort).
MPI_ABORT_GRACE_S: Final = 2.0
# How long past its drain and EOS timeouts an actor whose supervisor died may take to stop.
LIFELINE_MARGIN_S: Final = 30.0


class Actor:
    def __init__(
        self, spec: ActorSpec, ctx: zmq.asyncio.Context, lifeline: Lifeline | None = None
    ) -> None:
        self.spec = spec
        self._ctx = ctx
        self._lifeline = lifeline
        self._stop = asyncio.Event()
        self._start = asyncio.Event()
        self._on_stop: Callable[[], None] = lambda: None
        self._chain: Chain | None = None
        self._inport: InPort | None = None
        self._outport: OutPort | None = None
        self._acks: AckInbox | None = None
        self._supervisor = SupervisorLink(ctx, spec.supervisor_endpoint, spec.name)
        self._batches_out = 0
        self._rows_out = 0
        self._cpu_at_ready = 0.0
        self._trace: TraceRecorder | None = None
        # Origin time (trace) of the oldest input not yet passed on in a sent message.
        self._origin = 0.0

    # --- lifecycle ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self._stop.is_set():
            log.info("stop requested: draining")
            self._stop.set()
            self._start.set()
            self._on_stop()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        self._chain = self._build_chain()
        if self._lifeline is not None:
            # From here the loop runs and can drain in order; while the operators were being
            # built (a rank's MPI start-up, say) it could not, and the lifeline would just end
            # the process. Grace: the drain, the EOS acks, a margin for a rank's snapshot.
            grace_s = self.spec.drain_timeout_s + self.spec.eos_timeout_s + LIFELINE_MARGIN_S
            self._lifeline.running(lambda: loop.call_soon_threadsafe(self.request_stop), grace_s)
        # Every port opened is closed as the run ends, on every path (``sockets.Port``).
        async with contextlib.AsyncExitStack() as ports:
            await self._open_ports(ports, self._chain)
            await self._serve_and_work(self._chain)
            await self._supervisor.send(Done(stats=self.stats()))
        log.info("done: %s", self.summary())
        self._event(logging.INFO, "actor_stop")

    async def _open_ports(self, ports: contextlib.AsyncExitStack, chain: Chain) -> None:
        spec = self.spec
        if spec.input is not None:
            self._inport = await ports.enter_async_context(
                InPort(
                    self._ctx,
                    spec.name,
                    data_endpoint=spec.input.data_endpoint,
                    control_endpoint=spec.input.control_endpoint,
                    window=spec.input.window,
                    expected_senders=spec.input.senders,
                )
            )
        if spec.ack_endpoint is not None:
            self._acks = await ports.enter_async_context(
                AckInbox(self._ctx, spec.name, spec.ack_endpoint, chain.runs[0])
            )
        if spec.outputs:
            links = [LinkSpec(o.data_endpoint, o.control_endpoint, o.peer) for o in spec.outputs]
            self._outport = await ports.enter_async_context(
                OutPort(self._ctx, spec.name, links, window=spec.window, encoding=spec.encoding)
            )

    async def _serve_and_work(self, chain: Chain) -> None:
        """The services beside the work (supervisor link, stats, ports, the operator's own),
        from Ready until the work ended; they are cancelled then."""
        spec = self.spec
        async with asyncio.TaskGroup() as tg:
            services = [
                tg.create_task(self._supervisor.serve(self._start.set)),
                tg.create_task(self._report_stats()),
            ]
            if self._inport is not None:
                services.append(tg.create_task(self._inport.serve()))
            if self._outport is not None:
                services.append(tg.create_task(self._outport.serve()))
                await self._outport.open()
                await self._wait_open_unless_stopped(spec.eos_timeout_s)
            if self._acks is not None:
                services.append(tg.create_task(self._acks.serve()))
            serve = getattr(chain.runs[0].operator, "serve", None)
            if serve is not None:  # e.g. a shard answering queries beside its ingestion
                services.append(tg.create_task(serve()))
            self._cpu_at_ready = time.process_time()
            await self._supervisor.send(Ready(actor=spec.name, pid=os.getpid()))
            self._event(logging.INFO, "actor_ready", pid=os.getpid())
            if spec.wait_for_start:
                await self._start.wait()
            if spec.is_source:
                await self._run_source()
            else:
                await self._run_stage()
            if spec.linger:
                log.info("stream ended; serving until stopped")
                await self._stop.wait()
            for task in services:
                task.cancel()

    async def _wait_open_unless_stopped(self, timeout_s: float) -> None:
        """The downstream's initial credit, or a stop request, whichever comes first. A stop
        during start-up (Ctrl-C, the supervisor died and took the downstream along) must not
        wait out the open timeout: the drain then bounds the wait for the downstream."""
        assert self._outport is not None
        opening = asyncio.ensure_future(self._outport.wait_open(timeout_s))
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((opening, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not opening.done():
                opening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await opening
        if not opening.cancelled():
            opening.result()  # its LinkTimeout, if it timed out

    def _event(self, level: int, name: str, **fields: object) -> None:
        event(log, level, name, actor=self.spec.name, replica=self.spec.replica, **fields)

    def _build_chain(self) -> Chain:
        spec = self.spec

        def context(stage: str) -> OperatorContext:
            return OperatorContext(
                spec.name,
                stage,
                spec.replica,
                spec.replicas,
                Path(spec.run_dir),
                tuple(spec.ack_peers),
                self._ctx,
            )

        runs = [
            OperatorRun(
                spec.stage,
                build(spec.operator, context(spec.stage), spec.params, source=spec.is_source),
            )
        ]
        for link in spec.chain:
            runs.append(
                OperatorRun(
                    link.stage, build(link.operator, context(link.stage), link.params, source=False)
                )
            )
        if spec.trace_dir is not None:
            self._trace = TraceRecorder(Path(spec.trace_dir), spec.name, spec.replica)
            for run in runs:
                run.trace = self._trace.call
        return Chain(runs, source=spec.is_source)

    @contextlib.asynccontextmanager
    async def _drain_bounded(self, waiting_for: str) -> AsyncIterator[asyncio.Timeout]:
        """A scope that a stop bounds by the drain: from the stop request on, what it waits
        for (credit from a downstream that may be gone, the end of an upstream) gets
        ``drain_timeout_s`` more; then the scope ends with a warning. An operator's own
        ``TimeoutError`` stays a failure."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(None) as deadline:
                self._on_stop = lambda: deadline.reschedule(loop.time() + self.spec.drain_timeout_s)
                if self._stop.is_set():
                    self._on_stop()
                yield deadline
        except TimeoutError:
            if not deadline.expired():
                raise
            log.warning(
                "%s within %.1fs of the stop request; ending the stream anyway",
                waiting_for,
                self.spec.drain_timeout_s,
            )
        finally:
            self._on_stop = lambda: None  # the deadline is gone; a late stop has nothing to cut

    async def _run_source(self) -> None:
        assert self._chain is not None
        if self._chain.async_source:
            await self._run_async_source()
            return
        # A stop ends the reading at once; a send waiting for credit gets the drain.
        async with self._drain_bounded("the downstream took nothing"):
            while not self._stop.is_set():
                self._origin = time.time()  # what this read returns is born now (trace)
                if self._trace is not None:
                    self._trace.arrived(Arrival(origin_at=self._origin))
                outputs = self._chain.next_from_source()
                if outputs is None:
                    break
                await self._emit(outputs)
        await self._finish_stream()
        if self._acks is not None:
            # A finite feed is done once the shards acknowledged all of it (a stop request
            # only saves the checkpoint: what is unacknowledged is resumed next time).
            wait_s = 0.0 if self._stop.is_set() else self.spec.eos_timeout_s
            await self._acks.settle(wait_s, self._stop)

    async def _run_async_source(self) -> None:
        """A source that awaits its input; only a stop (or its own end) ends it."""
        assert self._chain is not None
        loop = asyncio.get_running_loop()
        async with self._drain_bounded("the downstream took nothing"):
            drained = self._on_stop  # what a stop does outside the wait for input
            while not self._stop.is_set():
                # A stop cuts the wait for input at once, never a send half done: a send
                # waiting for credit gets the drain (as in ``_run_source``).
                try:
                    async with asyncio.timeout(None) as waiting:

                        def cut() -> None:
                            waiting.reschedule(loop.time())
                            drained()

                        self._on_stop = cut
                        outputs = await self._chain.anext_from_source()
                except TimeoutError:
                    if not waiting.expired():
                        raise
                    break
                finally:
                    self._on_stop = drained
                if outputs is None:
                    break
                self._origin = time.time()  # what this read returns is born now (trace)
                await self._emit(outputs)
                await _let_others_run()
        await self._finish_stream()
        if self._acks is not None:
            # What is in flight usually becomes durable within moments: wait for it (bounded)
            # so that the checkpoint covers it and nothing is ingested twice next time.
            await self._acks.settle(self.spec.drain_timeout_s, asyncio.Event())

    async def _run_stage(self) -> None:
        assert self._inport is not None and self._chain is not None
        async with self._drain_bounded("the upstream did not end"):
            chain, flush_s = self._chain, self.spec.flush_ms / 1000.0
            async for item in self._inport.items(lambda: flush_s if chain.holding else None):
                if item is None:  # idle: release what is held back for batching
                    await self._emit(chain.idle())
                    continue
                self._arrived(item)
                for batch in item.batches:
                    await self._emit(await _process_when_ready(chain, batch))
                await self._inport.finished(item)
                await _let_others_run()
        await self._finish_stream()

    def _arrived(self, item: Received) -> None:
        if item.origin_at and (not self._origin or item.origin_at < self._origin):
            self._origin = item.origin_at
        if self._trace is not None:
            self._trace.arrived(
                Arrival(item.sender, item.seq, item.origin_at, item.sent_at, time.time())
            )

    async def _emit(self, outputs: Iterable[Output]) -> None:
        blocked = 0.0
        for item in outputs:
            batch, target = (item.batch, item.replica) if isinstance(item, Routed) else (item, None)
            rows = (
                batch.num_rows
                if isinstance(batch, pa.RecordBatch)
                else sum(b.num_rows for b in batch)
            )
            if self._outport is not None and rows:
                before = self._outport.blocked_s
                await self._outport.send(batch, target, origin_at=self._origin)
                waited = self._outport.blocked_s - before
                if waited >= SLOW_CONSUMER_S:
                    self._event(
                        logging.WARNING,
                        "slow_consumer",
                        waited_s=waited,
                        link="any" if target is None else self.spec.outputs[target].peer,
                    )
                blocked += waited
                self._batches_out += 1
                self._rows_out += rows
                if not self.spec.is_source:
                    self._origin = 0.0  # passed on; the next input starts the next message
        if self._trace is not None and self._chain is not None:
            self._trace.sent(blocked, self._chain.runs[-1].stage)

    async def _finish_stream(self) -> None:
        """Flush the chain, then end the stream. Draining on a stop, the flush gets the drain
        at most: a downstream that is gone grants no credit (``_end_stream`` bounds its own)."""
        assert self._chain is not None
        if not self._stop.is_set():
            await self._emit(self._chain.flush())
        else:
            try:
                async with asyncio.timeout(self.spec.drain_timeout_s):
                    await self._emit(self._chain.flush())
            except TimeoutError:
                log.warning(
                    "the downstream took no flushed batch within %.1fs; ending the stream anyway",
                    self.spec.drain_timeout_s,
                )
        await self._end_stream()

    async def _end_stream(self) -> None:
        if self._outport is None:
            return
        if not self._stop.is_set():
            await self._outport.send_eos(self.spec.eos_timeout_s)
            return
        # Draining on a stop request, the downstream may be stopping too (everyone got the
        # signal when the supervisor died): wait for its acks no longer than the drain allows.
        try:
            await self._outport.send_eos(self.spec.drain_timeout_s)
        except LinkTimeout as exc:
            log.warning("stopping without every end-of-stream ack: %s", exc)

    # --- reporting ----------------------------------------------------------------------------

    def stats(self) -> ActorStats:
        spec = self.spec
        operators = self._chain.stats() if self._chain is not None else []
        started = [o.first_work_at for o in operators if o.first_work_at]
        return ActorStats(
            actor=spec.name,
            stage=spec.stage,
            replica=spec.replica,
            busy_s=sum(o.busy_s for o in operators),
            cpu_s=time.process_time() - self._cpu_at_ready,
            operator_cpu_s=sum(o.cpu_s for o in operators),
            batches_out=self._batches_out,
            rows_out=self._rows_out,
            blocked_s=self._outport.blocked_s if self._outport else 0.0,
            first_work_at=min(started, default=0.0),
            last_work_at=max((o.last_work_at for o in operators), default=0.0),
            input=self._inport.stats() if self._inport else InputStats(),
            outputs=self._outport.stats() if self._outport else [],
            extra=operators[0].extra if operators else {},
            operators=operators,
        )

    def summary(self) -> str:
        s = self.stats()
        return (
            f"busy {s.busy_s:.3f}s, in {s.input.batches} batches/{s.input.rows} rows "
            f"({s.input.rejected} rejected), out {s.batches_out} batches/{s.rows_out} rows, "
            f"blocked on credit {s.blocked_s:.3f}s"
        )

    async def _report_stats(self) -> None:
        while True:
            await asyncio.sleep(self.spec.stats_interval_s)
            await self._supervisor.send(Stats(stats=self.stats()))
            if self._trace is not None:
                self._trace.flush()  # a crash loses at most one interval of trace rows

    async def report_failure(self, reason: str) -> None:
        with contextlib.suppress(zmq.ZMQError):
            await asyncio.wait_for(
                self._supervisor.send(Failed(actor=self.spec.name, reason=reason)), 1.0
            )

    def close(self, linger_ms: int) -> None:
        """What ``run`` leaves open: the supervisor link, the operators, the trace (the ports
        closed as ``run`` ended)."""
        self._supervisor.close(linger_ms)
        if self._chain is not None:
            for error in self._chain.close():
                log.error("operator close() failed: %r", error)
        if self._trace is not None:
            self._trace.close()


def _ignore_stop_signals() -> None:
    """From the end of the run on, a stop request (the supervisor's ordered stop racing the
    actor's own end) must not kill the teardown with the default action."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


async def _process_when_ready(chain: Chain, batch: pa.RecordBatch) -> list[Output]:
    """``chain.process(batch)``, offered again after each ``RetryLater`` of its head operator
    (a full disk): the wait sleeps on the loop, which keeps serving everything else."""
    while True:
        try:
            return chain.process(batch)
        except RetryLater as wait:
            await asyncio.sleep(wait.after_s)


async def _let_others_run() -> None:
    """A receive or send that need not wait does not suspend, so under steady input the main
    loop would never yield: the actor's other tasks (a shard's log syncs and snapshots, acks,
    credits, stats) would wait until the input ran dry. One yield per message (~5 us)."""
    await asyncio.sleep(0)


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def run_actor(spec: ActorSpec, lifeline: Lifeline | None = None) -> int:
    ctx = zmq.asyncio.Context()
    actor = Actor(spec, ctx, lifeline)
    code, linger = EXIT_OK, CLEAN_LINGER_MS
    abort: DeferredAbort | None = None
    try:
        await actor.run()
    except Exception as exc:  # every failure of the actor ends here, logged once
        cause = _root_cause(exc)
        code = EXIT_BAD_OPERATOR if isinstance(cause, OperatorError) else EXIT_FAILED
        reason = f"{type(cause).__name__}: {cause}"
        log.error(
            "actor failed: %s\n%s", reason, "".join(traceback.format_exception(cause)).rstrip()
        )
        actor._event(logging.ERROR, "actor_crash", reason=reason)
        await actor.report_failure(reason)
        linger = FAILED_LINGER_MS
        if MPI_RANK_ENV in os.environ:
            # A rank cannot end alone: its peers would wait for it in collectives, and
            # MPI_Finalize for them. The whole job ends once the report is out (the close
            # below), or after MPI_ABORT_GRACE_S should the close hang.
            abort = DeferredAbort(f"{spec.name} failed: {reason}", MPI_ABORT_GRACE_S, code)
    finally:
        if lifeline is not None:
            lifeline.stopped()
        _ignore_stop_signals()
        actor.close(linger)
        ctx.term()
        if abort is not None:
            abort.now()
    return code


def _start_lifeline() -> Lifeline | None:
    """Make sure this process ends when the supervisor does (``runtime.lifeline``); a stage
    actor (the supervisor's child) is also sent SIGTERM by Linux the moment it dies."""
    parent = os.environ.get(PARENT_PID_ENV)
    if not parent:
        return None
    if sys.platform.startswith("linux") and MPI_RANK_ENV not in os.environ:
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != int(parent):  # it died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)
    return Lifeline(int(parent), exit_code=EXIT_FAILED).start()


def configure_logging(name: str, level: str) -> None:
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s actor={name} %(name)s: %(message)s",
    )


def _profiled(name: str, run: Callable[[], int]) -> int:
    """``run()``, under cProfile when ``AAFLOW_PROFILE_DIR`` names a directory: the stats go
    to ``<dir>/<actor>-<pid>.prof``, in CPU seconds of the event-loop thread (a diagnostic;
    it slows the actor down)."""
    directory = os.environ.get(PROFILE_DIR_ENV)
    if not directory:
        return run()
    import cProfile

    profile = cProfile.Profile(time.thread_time)  # CPU of the loop thread, not wall time
    try:
        return profile.runcall(run)
    finally:
        profile.dump_stats(str(Path(directory) / f"{name}-{os.getpid()}.prof"))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m aaflow_stream.runtime.actor SPEC.json", file=sys.stderr)
        return EXIT_BAD_OPERATOR
    path = args[0].replace("{rank}", os.environ.get(MPI_RANK_ENV, "0"))
    try:
        spec = msgspec.json.decode(Path(path).read_bytes(), type=ActorSpec)
    except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"cannot read actor spec {args[0]}: {exc}", file=sys.stderr)
        return EXIT_BAD_OPERATOR
    configure_logging(spec.name, spec.log_level)
    imports.block(spec.block_imports)
    lifeline = _start_lifeline()
    import uvloop

    code = _profiled(spec.name, lambda: uvloop.run(run_actor(spec, lifeline)))
    _ignore_stop_signals()  # closing the loop restored the default handlers
    return code


def _exit_now(code: int) -> NoReturn:
    """End the process without the interpreter's teardown. By now the run is over: the loop
    and its executor are closed, every file is closed and synced, MPI is finalised. What is
    left (freeing every module's objects, FAISS's and OpenMP's teardown) took 1-3 s of a
    shard rank's exit on a loaded 2-core machine, and the topology's exit waits for the
    slowest rank."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    _exit_now(main())
