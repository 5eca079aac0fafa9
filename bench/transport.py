"""T1 — transport: one Arrow RecordBatch sent repeatedly between two processes over ``ipc://``.

What is measured (T1 in docs/benchmarks.md; the wire layout and the credits are described in
docs/architecture.md): a 1,024-row batch (``doc_id`` string, ``text`` ~1 KiB string,
``embedding`` fixed_size_list<float32>[384]) goes from a sender process to a receiver process
(both started with the ``spawn`` method), over ZeroMQ ``ipc://`` endpoints in a temporary
directory, by five systems, all open in the same two processes for the whole run:

``arrow``
    ``OutPort`` → ``InPort`` with credit flow control on (window 16), encoding ``buffers``: each
    large Arrow buffer a frame, the small ones packed into one; the receiver rebuilds every
    batch over the received frames (zero copy) and calls ``finished``; both event loops run
    on uvloop.
``arrow_ipc``
    the same with encoding ``ipc`` (one encapsulated Arrow IPC message per batch).
``raw``
    plain pyzmq PUSH/PULL (blocking sockets, a ZeroMQ context of their own) of one pre-built
    bytes message of the same size, sent with ``copy=False`` and received with
    ``recv(copy=False)``; the high-water marks equal the arrow link's (window + ``HWM_SLACK``).
    No flow control, no header, no decoding.
``raw_frames`` (a reference, not a target's baseline)
    raw's sockets carrying the very frames of an arrow message (``frames.batch_message``:
    header, packed small buffers, one frame per large buffer), sent with ``copy=False``: the
    wire layout the issue requires, without credits, decoding or an event loop. What lies
    between it and ``raw`` is the layout's cost; between ``arrow`` and it, the engine's.
``mpqueue``
    ``multiprocessing.Queue`` (pickle) carrying the RecordBatch object; its ``maxsize`` is the
    credit window, so it too holds at most that many batches in flight.

A run is ``--repeats`` rounds; in each round every system runs one segment (``--warmup`` then
``--messages`` batches; mpqueue, ~8x slower, ``--mpqueue-messages``), the first system rotating
from round to round, and a segment starts only when the receiver has had the last batch of the
one before (a barrier message), so segments never overlap. Short interleaved segments replaced
separate processes per trial: on this shared 2-core VM the machine's speed drifts by 20-50%
from one minute to the next, and trials a few seconds apart gave arrow/raw ratios from 0.58 to
1.13 for the same code. Single segments are hit by the VM's stalls too (one round's ratio can
be 0.3 or 3), but the medians of 30 pairs, each a fraction of a second apart, gave 0.72-0.81
over full runs of one version of the code, against 0.58-0.83 for the per-trial way.

Timing is done in the receiver: a segment's clock starts when its last warm-up message has been
handled and stops when its last message has been handled, so process start-up, socket set-up,
the credit handshake and the schema announcement are all excluded. Throughput = measured
messages / elapsed time. Bytes per message are the same for every system: the sum of the sizes
of the batch's Arrow buffers. GB/s means 10^9 bytes per second. The table reports each system's
median over the rounds, and arrow/raw round by round (the two ran within a second or so).

The first batch of every arrow and mpqueue segment is checked: it equals the batch that was
sent and, on arrow links, its column buffers lie inside the received ZeroMQ frames
(``frames.batch_lies_within``); a failed check makes the exit status 1.

Diagnostics next to throughput: CPU per message of each process (``time.process_time``, so
every thread counts: ZeroMQ's I/O thread and pyzmq's garbage-collector thread included), over
the measured messages for the receiver and over a segment's sends for the sender, and in
brackets the part of it spent in the main (Python) thread (``time.thread_time``): the engine's
own work, which varies far less from run to run than throughput does; for arrow, the share of
the sender's time spent waiting for credit. ``--profile DIR`` writes cProfile
stats of both workers (slows them down: do not read its throughput).

    python -m bench.transport                 # full run: 30 rounds
    python -m bench.transport --quick --json  # < 1 minute; last line is one JSON object
    python -m bench.transport --systems arrow,raw --window 32 -v
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import functools
import math
import multiprocessing as mp
import os
import queue
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import uvloop
import zmq
import zmq.asyncio

from aaflow_stream import frames
from aaflow_stream.channels.inport import InPort
from aaflow_stream.channels.loopsocket import LoopSocket
from aaflow_stream.channels.outport import LinkSpec, OutPort
from aaflow_stream.channels.sockets import HWM_SLACK

from .kit import cli
from .kit.table import Column, render

ROWS = 1024
DIM = 384
TEXT_LEN = 1024
WINDOW = 16
SEED = 20260501
SYSTEMS = ("arrow", "arrow_ipc", "raw", "raw_frames", "mpqueue")
RAW = ("raw", "raw_frames")
ENCODING = {"arrow": frames.BUFFERS, "arrow_ipc": frames.IPC}
SENDER, RECEIVER = "tx", "rx"
READY_TIMEOUT_S = 60.0
EOS_TIMEOUT_S = 30.0


# --- the payload ---------------------------------------------------------------------------------


def make_batch(rows: int = ROWS, seed: int = SEED) -> pa.RecordBatch:
    """The T1 batch; deterministic, so sender and receiver build the same one independently."""
    rng = np.random.default_rng(seed)
    letters = rng.integers(ord("a"), ord("z") + 1, size=rows * TEXT_LEN, dtype=np.uint8)
    letters[rng.random(letters.size) < 0.15] = ord(" ")
    blob = letters.tobytes().decode("ascii")
    texts = [blob[i * TEXT_LEN : (i + 1) * TEXT_LEN] for i in range(rows)]
    embedding = rng.standard_normal((rows, DIM), dtype=np.float32)
    return pa.record_batch(
        [
            pa.array([f"doc-{i:06d}" for i in range(rows)], pa.string()),
            pa.array(texts, pa.string()),
            pa.FixedSizeListArray.from_arrays(pa.array(embedding.ravel()), DIM),
        ],
        names=["doc_id", "text", "embedding"],
    )


def batch_bytes(batch: pa.RecordBatch) -> int:
    """Sum of the sizes of every Arrow buffer of the batch (children included)."""
    return sum(b.size for col in batch.columns for b in col.buffers() if b is not None)


# --- what a run is -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Everything both worker processes need: which systems run, in which order, how long.

    A run is a sequence of segments, one system each: ``rounds`` rounds of every system, the
    first system rotating each round. Both processes keep every system's sockets open for the
    whole run, so a segment starts within milliseconds of the one before."""

    systems: tuple[str, ...]
    rounds: int
    warmup: int
    messages: int
    mpqueue_messages: int
    window: int
    directory: str
    profile_dir: str | None = None

    def segments(self) -> list[tuple[int, str]]:
        order: list[tuple[int, str]] = []
        for r in range(self.rounds):
            k = r % len(self.systems)
            order += [(r, s) for s in self.systems[k:] + self.systems[:k]]
        return order

    def measured(self, system: str) -> int:
        return self.mpqueue_messages if system == "mpqueue" else self.messages

    def total(self, system: str) -> int:
        return self.warmup + self.measured(system)

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.directory}/{name}"

    @property
    def arrow_systems(self) -> list[str]:
        return [s for s in self.systems if s in ENCODING]


@dataclass(frozen=True)
class Outcome:
    """What the receiver measured in one segment (the sender's figures added by the parent)."""

    system: str
    seconds: float
    messages: int
    nbytes: int
    zero_copy: bool | None
    equal: bool | None
    rx_cpu_s: float  # receiver process CPU (all threads) over the measured messages
    rx_main_cpu_s: float  # of which its main (Python) thread
    tx_cpu_s: float = 0.0  # sender process CPU (all threads) over all its sends, warm-up included
    tx_main_cpu_s: float = 0.0  # of which its main (Python) thread
    tx_messages: int = 0
    tx_wall_s: float = 0.0  # sender's time from go to its last send confirmed
    tx_blocked_s: float | None = None  # of which waiting for credit (arrow only)

    @property
    def rx_cpu_us(self) -> float:
        """Receiver CPU per message, microseconds."""
        return self.rx_cpu_s / self.messages * 1e6

    @property
    def rx_main_cpu_us(self) -> float:
        """Receiver main-thread CPU per message, microseconds."""
        return self.rx_main_cpu_s / self.messages * 1e6

    @property
    def tx_cpu_us(self) -> float:
        """Sender CPU per message, microseconds."""
        return self.tx_cpu_s / self.tx_messages * 1e6 if self.tx_messages else 0.0

    @property
    def tx_main_cpu_us(self) -> float:
        """Sender main-thread CPU per message, microseconds."""
        return self.tx_main_cpu_s / self.tx_messages * 1e6 if self.tx_messages else 0.0

    @property
    def tx_blocked_pct(self) -> float | None:
        if self.tx_blocked_s is None or not self.tx_wall_s:
            return None
        return 100 * self.tx_blocked_s / self.tx_wall_s

    @property
    def batches_per_s(self) -> float:
        return self.messages / self.seconds

    @property
    def gbps(self) -> float:
        return self.messages * self.nbytes / self.seconds / 1e9


class Stopwatch:
    """Start after the warm-up messages, stop at the last message."""

    def __init__(self, warmup: int) -> None:
        self._warmup = warmup
        self.count = 0
        self.start = self.last = 0.0
        self.cpu_start = self.cpu_last = 0.0
        self.main_start = self.main_last = 0.0

    def tick(self) -> None:
        self.count += 1
        self.last = time.perf_counter()
        self.cpu_last = time.process_time()
        self.main_last = time.thread_time()
        if self.count == self._warmup:
            self.start, self.cpu_start, self.main_start = self.last, self.cpu_last, self.main_last

    def seconds(self) -> float:
        return self.last - self.start

    def cpu_seconds(self) -> float:
        return self.cpu_last - self.cpu_start

    def main_cpu_seconds(self) -> float:
        return self.main_last - self.main_start


def _report(
    plan: Plan, system: str, sw: Stopwatch, nbytes: int, zc: bool | None, eq: bool | None
) -> Outcome:
    if sw.count != plan.total(system):
        raise RuntimeError(f"{system}: received {sw.count} of {plan.total(system)} messages")
    return Outcome(
        system,
        sw.seconds(),
        plan.measured(system),
        nbytes,
        zc,
        eq,
        sw.cpu_seconds(),
        sw.main_cpu_seconds(),
    )


# --- raw: plain pyzmq PUSH/PULL ------------------------------------------------------------------


def _raw_socket(ctx: zmq.Context[Any], kind: int, window: int) -> zmq.Socket[Any]:
    """High-water marks as on an arrow link (``sockets.data_socket``)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, window + HWM_SLACK)
    sock.setsockopt(zmq.RCVHWM, window + HWM_SLACK)
    sock.setsockopt(zmq.LINGER, int(EOS_TIMEOUT_S * 1000))  # deliver what is queued, not forever
    return sock


def raw_payload(batch: pa.RecordBatch) -> bytes:
    """The batch's buffers back to back: a bytes message of exactly ``batch_bytes(batch)``."""
    return b"".join(b.to_pybytes() for c in batch.columns for b in c.buffers() if b is not None)


# --- the receiver --------------------------------------------------------------------------------


class _Receiver:
    """The receiving end of every system, open for the whole run."""

    def __init__(self, plan: Plan, data: Any) -> None:
        self.plan = plan
        self.data = data  # the mpqueue's multiprocessing.Queue
        self.expected = make_batch()
        self.nbytes = batch_bytes(self.expected)
        self.ctx = zmq.asyncio.Context()
        self.raw_ctx: zmq.Context[Any] = zmq.Context()  # raw: its own context, as plain pyzmq
        self.raw = {s: _raw_socket(self.raw_ctx, zmq.PULL, plan.window) for s in RAW}
        for s, sock in self.raw.items():
            sock.bind(plan.endpoint(s))
        # Tells the sender that a segment's last message arrived, so segments never overlap.
        self.barrier = self.raw_ctx.socket(zmq.PUSH)
        self.barrier.bind(plan.endpoint("barrier"))
        self.ports = {
            s: InPort(
                self.ctx,
                RECEIVER,
                data_endpoint=plan.endpoint(f"{s}-data"),
                control_endpoint=plan.endpoint(f"{s}-control"),
                window=plan.window,
                expected_senders=[f"{SENDER}-{s}"],
            )
            for s in plan.arrow_systems
        }
        self.items = {s: port.__aiter__() for s, port in self.ports.items()}

    async def segment(self, system: str) -> Outcome:
        sw = Stopwatch(self.plan.warmup)
        zero_copy: bool | None = None
        equal: bool | None = None
        n = self.plan.total(system)
        if system == "raw":
            for _ in range(n):
                frame = self.raw[system].recv(copy=False)
                sw.tick()
            if len(frame) != self.nbytes:
                raise RuntimeError(f"raw: got a {len(frame)}-byte message, not {self.nbytes}")
        elif system == "raw_frames":
            for _ in range(n):
                parts = self.raw[system].recv_multipart(copy=False)
                sw.tick()
            if sum(len(p) for p in parts[1:]) < self.nbytes:
                raise RuntimeError(f"raw_frames: a {len(parts)}-frame message is short")
        elif system == "mpqueue":
            for _ in range(n):
                batch = self.data.get(timeout=EOS_TIMEOUT_S)
                if equal is None:
                    equal = batch.equals(self.expected)
                sw.tick()
        else:
            port, items = self.ports[system], self.items[system]
            for _ in range(n):
                item = await items.__anext__()
                if zero_copy is None:
                    zero_copy = frames.batch_lies_within(item.batch, item.frames[1:])
                    equal = item.batch.equals(self.expected)
                await port.finished(item)
                sw.tick()
        self.barrier.send(b"")
        return _report(self.plan, system, sw, self.nbytes, zero_copy, equal)

    async def run(self, ready: Callable[[], None]) -> list[Outcome]:
        async with asyncio.TaskGroup() as tg:
            serving = [tg.create_task(port.serve()) for port in self.ports.values()]
            ready()
            # Every arrow sender must have said hello before a raw segment blocks the loop.
            deadline = time.monotonic() + READY_TIMEOUT_S
            while any(port.stats().senders == 0 for port in self.ports.values()):
                if time.monotonic() > deadline:
                    raise TimeoutError("the arrow senders did not say hello")
                await asyncio.sleep(0.01)
            outcomes = [await self.segment(system) for _, system in self.plan.segments()]
            for items in self.items.values():  # to each link's end of stream (and its ack)
                async for _ in items:
                    raise RuntimeError("a batch after the last segment")
            for task in serving:
                task.cancel()
        return outcomes

    def close(self) -> None:
        for port in self.ports.values():
            port.close(linger_ms=1000)  # let the EosAcks leave
        self.ctx.term()
        for sock in self.raw.values():
            sock.close(linger=0)
        self.barrier.close(linger=1000)
        self.raw_ctx.term()


# --- the sender ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """What the sender measured in one segment (its warm-up included)."""

    cpu_s: float
    main_cpu_s: float
    wall_s: float
    blocked_s: float | None  # waiting for credit (arrow only)


class _Sender:
    """The sending end of every system, open for the whole run."""

    def __init__(self, plan: Plan, data: Any) -> None:
        self.plan = plan
        self.data = data
        self.batch = make_batch()
        self.payload = raw_payload(self.batch)
        fingerprint = frames.schema_fingerprint(self.batch.schema)
        self.parts = frames.batch_message(self.batch, SENDER, 1, fingerprint, frames.BUFFERS)
        self.ctx = zmq.asyncio.Context()
        self.raw_ctx: zmq.Context[Any] = zmq.Context()
        self.raw = {s: _raw_socket(self.raw_ctx, zmq.PUSH, plan.window) for s in RAW}
        for s, sock in self.raw.items():
            sock.connect(plan.endpoint(s))
        barrier = self.raw_ctx.socket(zmq.PULL)
        barrier.connect(plan.endpoint("barrier"))
        self.barrier = LoopSocket(barrier)
        self.outs = {
            s: OutPort(
                self.ctx,
                f"{SENDER}-{s}",
                [LinkSpec(plan.endpoint(f"{s}-data"), plan.endpoint(f"{s}-control"), RECEIVER)],
                window=plan.window,
                encoding=ENCODING[s],
            )
            for s in plan.arrow_systems
        }

    async def segment(self, system: str) -> Sent:
        cpu, main, wall = time.process_time(), time.thread_time(), time.perf_counter()
        n = self.plan.total(system)
        blocked: float | None = None
        if system == "raw":
            for _ in range(n):
                self.raw[system].send(self.payload, copy=False)
        elif system == "raw_frames":
            for _ in range(n):
                self.raw[system].send_multipart(self.parts, copy=False)
        elif system == "mpqueue":
            for _ in range(n):
                self.data.put(self.batch)
        else:
            out = self.outs[system]
            before = out.blocked_s
            for _ in range(n):
                await out.send(self.batch)
            blocked = out.blocked_s - before
        await asyncio.wait_for(self.barrier.recv(), EOS_TIMEOUT_S)
        return Sent(
            time.process_time() - cpu,
            time.thread_time() - main,
            time.perf_counter() - wall,
            blocked,
        )

    async def run(self, go: Event) -> list[Sent]:
        async with asyncio.TaskGroup() as tg:
            serving = [tg.create_task(out.serve()) for out in self.outs.values()]
            for out in self.outs.values():
                await out.open()
                await out.wait_open(READY_TIMEOUT_S)
            if not go.wait(READY_TIMEOUT_S):
                raise TimeoutError("no go from the parent")
            sent = [await self.segment(system) for _, system in self.plan.segments()]
            for out in self.outs.values():
                await out.send_eos(EOS_TIMEOUT_S)
            for task in serving:
                task.cancel()
        if self.data is not None:
            self.data.close()
            self.data.join_thread()
        return sent

    def close(self) -> None:
        for out in self.outs.values():
            out.close()
        self.ctx.term()
        for sock in self.raw.values():
            sock.close()
        self.barrier.close(linger=0)
        self.raw_ctx.term()


# --- worker processes ----------------------------------------------------------------------------


def _profiled(plan: Plan, role: str, fn: Callable[[], Any]) -> Any:
    if plan.profile_dir is None:
        return fn()
    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        path = Path(plan.profile_dir) / f"{role}-{os.getpid()}.prof"
        prof.dump_stats(str(path))


def receiver_main(plan: Plan, report: Any, data: Any) -> None:
    """Receiver process: says ready once bound, then sends its outcomes (or an error) home."""
    try:
        receiver = _Receiver(plan, data)
        try:
            ready = functools.partial(report.put, ("ready", RECEIVER))
            outcomes = _profiled(plan, RECEIVER, lambda: uvloop.run(receiver.run(ready)))
        finally:
            receiver.close()
        report.put(("result", outcomes))
    except BaseException:
        report.put(("error", f"receiver: {traceback.format_exc()}"))


def sender_main(plan: Plan, report: Any, go: Event, data: Any) -> None:
    """Sender process: opens its links, says ready, waits for go, runs every segment."""
    try:
        sender = _Sender(plan, data)
        try:
            report.put(("ready", SENDER))
            sent = _profiled(plan, SENDER, lambda: uvloop.run(sender.run(go)))
        finally:
            sender.close()
        report.put(("sent", sent))
    except BaseException:
        report.put(("error", f"sender: {traceback.format_exc()}"))


# --- the parent ----------------------------------------------------------------------------------


def _collect(report: Any, kinds: list[str], timeout: float) -> dict[str, Any]:
    """One message of each of ``kinds`` from the workers, in any order (a kind may repeat)."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + timeout
    for _ in kinds:
        try:
            tag, value = report.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty as exc:
            raise TimeoutError(f"workers did not report {kinds} within {timeout}s") from exc
        if tag == "error":
            raise RuntimeError(value)
        if tag not in kinds:
            raise RuntimeError(f"expected one of {kinds} from a worker, got {tag!r}")
        got[tag] = value
    return got


def run_plan(plan: Plan, timeout: float) -> dict[str, list[Outcome]]:
    """Start the two workers, wait until both are ready, say go, collect every segment."""
    ctx = mp.get_context("spawn")
    report = ctx.Queue()
    go = ctx.Event()
    data = ctx.Queue(maxsize=plan.window) if "mpqueue" in plan.systems else None
    procs = [
        ctx.Process(target=receiver_main, args=(plan, report, data), name="t1-receiver"),
        ctx.Process(target=sender_main, args=(plan, report, go, data), name="t1-sender"),
    ]
    for p in procs:
        p.start()
    try:
        _collect(report, ["ready", "ready"], READY_TIMEOUT_S)
        go.set()
        got = _collect(report, ["result", "sent"], timeout)
    except BaseException:
        for p in procs:  # a failed or stuck run: do not wait for the workers
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join(EOS_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
                p.join()
    results: dict[str, list[Outcome]] = {s: [] for s in plan.systems}
    for (_, system), outcome, sent in zip(plan.segments(), got["result"], got["sent"], strict=True):
        results[system].append(
            dataclasses.replace(
                outcome,
                tx_cpu_s=sent.cpu_s,
                tx_main_cpu_s=sent.main_cpu_s,
                tx_messages=plan.total(system),
                tx_wall_s=sent.wall_s,
                tx_blocked_s=sent.blocked_s,
            )
        )
    return results


def run_all(args: argparse.Namespace, tmp: str) -> dict[str, list[Outcome]]:
    plan = Plan(
        systems=tuple(args.systems),
        rounds=args.repeats,
        warmup=args.warmup,
        messages=args.messages,
        mpqueue_messages=args.mpqueue_messages,
        window=args.window,
        directory=tmp,
        profile_dir=args.profile,
    )
    results = run_plan(plan, timeout=args.timeout)
    if args.verbose:  # every segment, in the order they ran
        for r, system in plan.segments():
            o = results[system][r]
            print(
                f"  round {r + 1:>2} {system:<10} {o.gbps:6.2f} GB/s  CPU/msg "
                f"tx {o.tx_cpu_us:5.0f} us (main {o.tx_main_cpu_us:4.0f}), "
                f"rx {o.rx_cpu_us:5.0f} us (main {o.rx_main_cpu_us:4.0f})"
                + _blocked_note(o.tx_blocked_pct)
            )
    return results


def _blocked_note(pct: float | None) -> str:
    return "" if pct is None else f", sender blocked on credit {pct:4.1f}%"


# --- report --------------------------------------------------------------------------------------


def _median(outcomes: list[Outcome], key: Callable[[Outcome], float]) -> float:
    return statistics.median(key(o) for o in outcomes)


def summarize(results: dict[str, list[Outcome]]) -> dict[str, dict[str, float]]:
    return {
        system: {
            "batches_per_s": _median(outs, lambda o: o.batches_per_s),
            "gbps": _median(outs, lambda o: o.gbps),
            "gbps_min": min(o.gbps for o in outs),
            "gbps_max": max(o.gbps for o in outs),
            "tx_cpu_us": _median(outs, lambda o: o.tx_cpu_us),
            "rx_cpu_us": _median(outs, lambda o: o.rx_cpu_us),
            "tx_main_cpu_us": _median(outs, lambda o: o.tx_main_cpu_us),
            "rx_main_cpu_us": _median(outs, lambda o: o.rx_main_cpu_us),
            "credit_wait_pct": statistics.median(
                o.tx_blocked_pct if o.tx_blocked_pct is not None else float("nan") for o in outs
            ),
        }
        for system, outs in results.items()
    }


def paired_ratios(results: dict[str, list[Outcome]], a: str, b: str) -> list[float]:
    """``a``'s GB/s over ``b``'s, round by round: the two ran minutes apart at most, so a
    drift of the machine's speed between rounds cancels out of each ratio."""
    pairs = zip(results.get(a, []), results.get(b, []), strict=False)
    return [x.gbps / y.gbps for x, y in pairs if y.gbps]


def _all_true(outcomes: list[Outcome], attr: str) -> bool | None:
    values = [getattr(o, attr) for o in outcomes]
    return None if not values or None in values else all(values)


COLUMNS = [
    Column("system", 10, left=True),
    Column("batches/s", 10, ",.0f"),
    Column("GB/s", 7, ".2f"),
    Column("min-max GB/s", 14),
    Column("vs raw", 7),
    Column("tx CPU us/msg (main)", 20),
    Column("rx CPU us/msg (main)", 20),
    Column("credit wait", 11),
]


def _cpu(figures: dict[str, float], side: str) -> str:
    return f"{figures[f'{side}_cpu_us']:,.0f} ({figures[f'{side}_main_cpu_us']:,.0f})"


def table(
    summary: dict[str, dict[str, float]],
    results: dict[str, list[Outcome]],
    args: argparse.Namespace,
    nbytes: int,
    load: list[float],
) -> list[str]:
    end = cli.load_avg()
    raw = summary.get("raw", {}).get("gbps")
    rows: list[list[object]] = []
    for system, s in summary.items():
        wait = s["credit_wait_pct"]
        rows.append(
            [
                system,
                s["batches_per_s"],
                s["gbps"],
                f"{s['gbps_min']:.2f}-{s['gbps_max']:.2f}",
                f"{s['gbps'] / raw:.2f}x" if raw else None,
                _cpu(s, "tx"),
                _cpu(s, "rx"),
                None if math.isnan(wait) else f"{wait:.0f}%",
            ]
        )
    lines = [
        f"T1 transport: {ROWS:,}-row batch of {nbytes:,} bytes (sum of Arrow buffers), ipc://, "
        f"window {args.window}, median of {args.repeats} rounds",
        f"messages per segment: {args.messages:,} (mpqueue {args.mpqueue_messages:,}) after "
        f"{args.warmup} warm-up; load average at start: {' '.join(map(str, load))}, at end: "
        f"{' '.join(map(str, end))} ({os.cpu_count()} CPUs)",
        *render(COLUMNS, rows),
    ]
    arrow = summary.get("arrow", {}).get("gbps")
    mpq = summary.get("mpqueue", {}).get("gbps")
    if arrow and raw:
        verdict = "meets" if arrow >= 0.8 * raw else "MISSES"
        paired = paired_ratios(results, "arrow", "raw")
        lines += [
            f"arrow / raw     = {arrow / raw:.2f}  (target >= 0.8: {verdict})",
            f"arrow / raw round by round: {' '.join(f'{r:.2f}' for r in paired)} "
            f"(median {statistics.median(paired):.2f})",
        ]
    raw_frames = summary.get("raw_frames", {}).get("gbps")
    if arrow and raw and raw_frames:
        lines.append(
            f"the frame layout: raw_frames / raw = {raw_frames / raw:.2f}; the engine: "
            f"arrow / raw_frames = {arrow / raw_frames:.2f} (medians; references, no target)"
        )
    if arrow and mpq:
        verdict = "meets" if arrow >= 3 * mpq else "MISSES"
        lines.append(f"arrow / mpqueue = {arrow / mpq:.2f}  (target >= 3: {verdict})")
    for system in ("arrow", "arrow_ipc"):
        if system in results:
            outs = results[system]
            lines.append(
                f"{system}: zero-copy receive {_all_true(outs, 'zero_copy')}, "
                f"received batch equals sent {_all_true(outs, 'equal')}"
            )
    if "mpqueue" in results:
        lines.append(
            f"mpqueue: received batch equals sent {_all_true(results['mpqueue'], 'equal')}"
        )
    return lines


def to_json(
    summary: dict[str, dict[str, float]],
    results: dict[str, list[Outcome]],
    repeats: int,
    load: list[float],
) -> dict[str, Any]:
    def gbps(system: str) -> float | None:
        return round(summary[system]["gbps"], 3) if system in summary else None

    paired = paired_ratios(results, "arrow", "raw")
    return {
        "arrow_gbps": gbps("arrow"),
        "raw_gbps": gbps("raw"),
        "mpqueue_gbps": gbps("mpqueue"),
        "zero_copy_receive": _all_true(results.get("arrow", []), "zero_copy") is True,
        "arrow_ipc_gbps": gbps("arrow_ipc"),
        "raw_frames_gbps": gbps("raw_frames"),
        "arrow_raw_paired_median": round(statistics.median(paired), 3) if paired else None,
        "cpu_us_per_msg": {
            system: {
                key: round(figures[key], 1)
                for key in ("tx_cpu_us", "tx_main_cpu_us", "rx_cpu_us", "rx_main_cpu_us")
            }
            for system, figures in summary.items()
        },
        "repeats": repeats,
        "load_avg": load,
        # every system's median and its rounds, for charts (bench/report.py)
        "systems": {
            system: {
                "batches_per_s": round(figures["batches_per_s"], 1),
                "gbps": round(figures["gbps"], 3),
                "gbps_rounds": [round(o.gbps, 3) for o in results[system]],
            }
            for system, figures in summary.items()
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = cli.parser(
        __doc__, quick="8 rounds, shorter segments (< 1 minute)", repeats="rounds (default 30)"
    )
    p.add_argument("--messages", type=cli.positive, help="measured batches per zmq segment")
    p.add_argument("--mpqueue-messages", type=cli.positive, help="measured batches, mpqueue")
    p.add_argument("--warmup", type=cli.positive, help="warm-up batches per segment")
    p.add_argument(
        "--window", type=cli.positive, default=WINDOW, help="credit window (raw: HWM - slack)"
    )
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    p.add_argument("--profile", default=None, metavar="DIR", help="cProfile workers into DIR")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument("-v", "--verbose", action="store_true", help="print every segment")
    args = p.parse_args(argv)
    quick = args.quick
    args.repeats = cli.repeats(args, full=30, quick=8)
    args.messages = args.messages or (150 if quick else 300)
    args.mpqueue_messages = args.mpqueue_messages or (20 if quick else 40)
    args.warmup = args.warmup or (10 if quick else 20)
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        args.profile = str(Path(args.profile).resolve())
    return args


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 every check held, 1 a received batch differed or was copied, 2 usage."""
    args = parse_args(argv)
    load = cli.load_avg()
    nbytes = batch_bytes(make_batch())
    tmp = tempfile.mkdtemp(prefix="t1-")
    try:
        results = run_all(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(results)
    lines = table(summary, results, args, nbytes, load)
    bad = [
        s
        for s, outs in results.items()
        if _all_true(outs, "equal") is False or (s == "arrow" and not _all_true(outs, "zero_copy"))
    ]
    if bad:
        lines.append(f"FAILED checks (zero copy / equality): {bad}")
    cli.report(lines, to_json(summary, results, args.repeats, load), args.json)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
