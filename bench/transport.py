"""T1 — transport: one Arrow RecordBatch sent repeatedly between two processes over ``ipc://``.

What is measured (BENCH.md "T1 — transport", DESIGN.md sections 3-4): a 1,024-row batch
(``doc_id`` string, ``text`` ~1 KiB string, ``embedding`` fixed_size_list<float32>[384]) goes
from a sender process to a receiver process (both started with the ``spawn`` method), over
ZeroMQ ``ipc://`` endpoints in a temporary directory, by four systems:

``arrow``
    ``OutPort`` → ``InPort`` with credit flow control on (window 16), encoding ``buffers``: each
    large Arrow buffer a frame, the small ones packed into one; the receiver rebuilds every
    batch over the received frames (zero copy) and calls ``finished``; both event loops run
    on uvloop.
``arrow_ipc``
    the same with encoding ``ipc`` (one encapsulated Arrow IPC message per batch).
``raw``
    plain pyzmq PUSH/PULL (blocking sockets) of one pre-built bytes message of the same size,
    sent with ``copy=False`` and received with ``recv(copy=False)``; the high-water marks equal
    the arrow link's (window + ``HWM_SLACK``). No flow control, no header, no decoding.
``mpqueue``
    ``multiprocessing.Queue`` (pickle) carrying the RecordBatch object; its ``maxsize`` is the
    credit window, so it too holds at most that many batches in flight.

Timing is done in the receiver: the clock starts when the last of the warm-up messages has been
handled and stops when the last message has been handled, so process start-up, socket set-up,
the credit handshake and the schema announcement are all excluded; the sender starts only when
both processes are ready ("go"). Throughput = measured messages / elapsed time. Bytes per
message are the same for every system: the sum of the sizes of the batch's Arrow buffers.
GB/s means 10^9 bytes per second.

Every system runs ``--repeats`` times, round-robin (the starting system rotates each round), so
that machine noise hits all of them alike; the table reports the median per system. The first
batch received on each arrow link is checked once: its column buffers lie inside the received
ZeroMQ frames (``frames.batch_lies_within``) and it equals the batch that was sent (the
mpqueue batch too); a failed check makes the exit status 1.

Diagnostics next to throughput: CPU per message of each process (``time.process_time``, so
every thread counts: ZeroMQ's I/O thread and pyzmq's garbage-collector thread included), over
the measured messages for the receiver and over all sends for the sender, and in brackets the
part of it spent in the main (Python) thread (``time.thread_time``): the engine's own work,
which varies far less from run to run than throughput does on a shared machine; for arrow,
the share of the sender's time spent waiting for credit. On a 2-core machine the two processes
share the cores, so throughput follows the total CPU per message. ``--profile DIR`` writes cProfile
stats of both workers (slows them down: do not read its throughput).

    python bench/transport.py                 # full run: 5 repeats
    python bench/transport.py --quick --json  # < 1 minute; last line is one JSON object
    python bench/transport.py --systems arrow,raw --window 32 -v
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import json
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

# Repo root on sys.path so the script runs from anywhere without installing the package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aaflow_stream import frames
from aaflow_stream.channels.inport import InPort
from aaflow_stream.channels.outport import LinkSpec, OutPort
from aaflow_stream.channels.sockets import HWM_SLACK

ROWS = 1024
DIM = 384
TEXT_LEN = 1024
WINDOW = 16
SEED = 20260501
SYSTEMS = ("arrow", "arrow_ipc", "raw", "mpqueue")
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


# --- what a trial is -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """Everything both worker processes need to run one system once."""

    system: str
    warmup: int
    messages: int
    data_endpoint: str
    control_endpoint: str
    window: int = WINDOW
    profile_dir: str | None = None

    @property
    def total(self) -> int:
        return self.warmup + self.messages


@dataclass(frozen=True)
class Outcome:
    """What the receiver measured in one trial."""

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


def _report(trial: Trial, sw: Stopwatch, nbytes: int, zc: bool | None, eq: bool | None) -> Outcome:
    if sw.count != trial.total:
        raise RuntimeError(f"{trial.system}: received {sw.count} of {trial.total} messages")
    return Outcome(
        trial.system,
        sw.seconds(),
        trial.messages,
        nbytes,
        zc,
        eq,
        sw.cpu_seconds(),
        sw.main_cpu_seconds(),
    )


# --- arrow: OutPort → InPort ---------------------------------------------------------------------


async def _arrow_receive(trial: Trial, ready: Callable[[], None]) -> Outcome:
    ctx = zmq.asyncio.Context()
    inp = InPort(
        ctx,
        RECEIVER,
        data_endpoint=trial.data_endpoint,
        control_endpoint=trial.control_endpoint,
        window=trial.window,
        expected_senders=[SENDER],
    )
    expected = make_batch()
    sw = Stopwatch(trial.warmup)
    zero_copy: bool | None = None
    equal: bool | None = None
    serve = asyncio.create_task(inp.serve())
    ready()
    try:
        async for item in inp:
            if zero_copy is None:
                zero_copy = frames.batch_lies_within(item.batch, item.frames[1:])
                equal = item.batch.equals(expected)
            await inp.finished(item)
            sw.tick()
    finally:
        serve.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serve
        inp.close(linger_ms=1000)  # let the EosAck leave
        ctx.term()
    return _report(trial, sw, batch_bytes(expected), zero_copy, equal)


async def _arrow_send(trial: Trial, batch: pa.RecordBatch) -> float:
    """Send ``trial.total`` batches and the EOS; returns the seconds spent blocked on credit."""
    ctx = zmq.asyncio.Context()
    spec = LinkSpec(trial.data_endpoint, trial.control_endpoint, RECEIVER)
    out = OutPort(ctx, SENDER, [spec], window=trial.window, encoding=ENCODING[trial.system])
    serve = asyncio.create_task(out.serve())
    try:
        await out.open()
        for _ in range(trial.total):
            await out.send(batch)
        await out.send_eos(EOS_TIMEOUT_S)
    finally:
        serve.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serve
        out.close()
        ctx.term()
    return out.blocked_s


# --- raw: plain pyzmq PUSH/PULL ------------------------------------------------------------------


def _raw_socket(ctx: zmq.Context[Any], kind: int, window: int) -> zmq.Socket[Any]:
    """High-water marks as on an arrow link (``sockets.data_socket``)."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.SNDHWM, window + HWM_SLACK)
    sock.setsockopt(zmq.RCVHWM, window + HWM_SLACK)
    return sock


def _raw_receive(trial: Trial, ready: Callable[[], None]) -> Outcome:
    nbytes = batch_bytes(make_batch())
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _raw_socket(ctx, zmq.PULL, trial.window)
    sock.bind(trial.data_endpoint)
    sw = Stopwatch(trial.warmup)
    ready()
    try:
        for _ in range(trial.total):
            frame = sock.recv(copy=False)
            sw.tick()
        if len(frame) != nbytes:
            raise RuntimeError(f"raw: got a {len(frame)}-byte message, expected {nbytes}")
    finally:
        sock.close(linger=0)
        ctx.term()
    return _report(trial, sw, nbytes, None, None)


def raw_payload(batch: pa.RecordBatch) -> bytes:
    """The batch's buffers back to back: a bytes message of exactly ``batch_bytes(batch)``."""
    return b"".join(b.to_pybytes() for c in batch.columns for b in c.buffers() if b is not None)


def _raw_send(trial: Trial, payload: bytes) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = _raw_socket(ctx, zmq.PUSH, trial.window)
    sock.connect(trial.data_endpoint)
    try:
        for _ in range(trial.total):
            sock.send(payload, copy=False)
    finally:
        sock.close(linger=int(EOS_TIMEOUT_S * 1000))  # deliver what is queued, but not forever
        ctx.term()


# --- mpqueue: multiprocessing.Queue (pickle) -----------------------------------------------------


def _queue_receive(trial: Trial, ready: Callable[[], None], data: Any) -> Outcome:
    expected = make_batch()
    sw = Stopwatch(trial.warmup)
    equal: bool | None = None
    ready()
    for _ in range(trial.total):
        batch = data.get(timeout=EOS_TIMEOUT_S)
        if equal is None:
            equal = batch.equals(expected)
        sw.tick()
    return _report(trial, sw, batch_bytes(expected), None, equal)


def _queue_send(trial: Trial, batch: pa.RecordBatch, data: Any) -> None:
    for _ in range(trial.total):
        data.put(batch)
    data.close()
    data.join_thread()


# --- worker processes ----------------------------------------------------------------------------


def _profiled(trial: Trial, role: str, fn: Callable[[], Any]) -> Any:
    if trial.profile_dir is None:
        return fn()
    prof = cProfile.Profile()
    try:
        return prof.runcall(fn)
    finally:
        path = Path(trial.profile_dir) / f"{trial.system}-{role}-{os.getpid()}.prof"
        prof.dump_stats(str(path))


def receiver_main(trial: Trial, report: Any, data: Any) -> None:
    """Receiver process: says ready once bound, then sends one Outcome (or an error) home."""

    def ready() -> None:
        report.put(("ready", RECEIVER))

    def run() -> Outcome:
        if trial.system in ENCODING:
            return uvloop.run(_arrow_receive(trial, ready))
        if trial.system == "raw":
            return _raw_receive(trial, ready)
        return _queue_receive(trial, ready, data)

    try:
        report.put(("result", _profiled(trial, RECEIVER, run)))
    except BaseException:
        report.put(("error", f"receiver: {traceback.format_exc()}"))


def sender_main(trial: Trial, report: Any, go: Event, data: Any) -> None:
    """Sender process: builds the batch, says ready, waits for go, sends ``trial.total`` times."""
    try:
        batch = make_batch()
        payload = raw_payload(batch) if trial.system == "raw" else b""
        report.put(("ready", SENDER))
        if not go.wait(READY_TIMEOUT_S):
            raise TimeoutError("no go from the parent")

        def run() -> float | None:
            if trial.system in ENCODING:
                return uvloop.run(_arrow_send(trial, batch))
            if trial.system == "raw":
                _raw_send(trial, payload)
            else:
                _queue_send(trial, batch, data)
            return None

        cpu, main, wall = time.process_time(), time.thread_time(), time.perf_counter()
        blocked = _profiled(trial, SENDER, run)
        spent = (time.process_time() - cpu, time.thread_time() - main, time.perf_counter() - wall)
        report.put(("sent", (*spent, blocked)))
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


def run_trial(trial: Trial, timeout: float) -> Outcome:
    """Start receiver and sender processes, wait until both are ready, say go, collect."""
    ctx = mp.get_context("spawn")
    report = ctx.Queue()
    go = ctx.Event()
    data = ctx.Queue(maxsize=trial.window) if trial.system == "mpqueue" else None
    procs = [
        ctx.Process(target=receiver_main, args=(trial, report, data), name="t1-receiver"),
        ctx.Process(target=sender_main, args=(trial, report, go, data), name="t1-sender"),
    ]
    for p in procs:
        p.start()
    try:
        _collect(report, ["ready", "ready"], READY_TIMEOUT_S)
        go.set()
        got = _collect(report, ["result", "sent"], timeout)
    except BaseException:
        for p in procs:  # a failed or stuck trial: do not wait for the workers
            p.terminate()
        raise
    finally:
        for p in procs:
            p.join(EOS_TIMEOUT_S)
            if p.is_alive():
                p.terminate()
                p.join()
    outcome: Outcome = got["result"]
    cpu, main, wall, blocked = got["sent"]
    return dataclasses.replace(
        outcome,
        tx_cpu_s=cpu,
        tx_main_cpu_s=main,
        tx_messages=trial.total,
        tx_wall_s=wall,
        tx_blocked_s=blocked,
    )


def run_all(args: argparse.Namespace, tmp: str) -> dict[str, list[Outcome]]:
    systems: list[str] = args.systems
    results: dict[str, list[Outcome]] = {s: [] for s in systems}
    for r in range(args.repeats):
        k = r % len(systems)
        for system in systems[k:] + systems[:k]:
            n = args.mpqueue_messages if system == "mpqueue" else args.messages
            trial = Trial(
                system=system,
                warmup=args.warmup,
                messages=n,
                data_endpoint=f"ipc://{tmp}/{system}-{r}-data",
                control_endpoint=f"ipc://{tmp}/{system}-{r}-control",
                window=args.window,
                profile_dir=args.profile,
            )
            outcome = run_trial(trial, timeout=args.trial_timeout)
            results[system].append(outcome)
            if args.verbose:
                print(
                    f"  round {r + 1} {system:<10} {outcome.gbps:6.2f} GB/s  CPU/msg "
                    f"tx {outcome.tx_cpu_us:5.0f} us (main {outcome.tx_main_cpu_us:4.0f}), "
                    f"rx {outcome.rx_cpu_us:5.0f} us (main {outcome.rx_main_cpu_us:4.0f})"
                    + _blocked_note(outcome.tx_blocked_pct),
                    flush=True,
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


def print_table(
    summary: dict[str, dict[str, float]],
    results: dict[str, list[Outcome]],
    args: argparse.Namespace,
    nbytes: int,
    load: tuple[float, float, float],
) -> None:
    end = os.getloadavg()
    print(
        f"T1 transport: {ROWS:,}-row batch of {nbytes:,} bytes (sum of Arrow buffers), ipc://, "
        f"window {args.window}, median of {args.repeats} repeats"
    )
    print(
        f"messages per trial: {args.messages:,} (mpqueue {args.mpqueue_messages:,}) after "
        f"{args.warmup} warm-up; load average at start: "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, at end: {end[0]:.2f} {end[1]:.2f} "
        f"{end[2]:.2f} ({os.cpu_count()} CPUs)"
    )
    raw = summary.get("raw", {}).get("gbps")
    print(
        f"{'system':<10} {'batches/s':>10} {'GB/s':>7} {'min-max GB/s':>14} {'vs raw':>7} "
        f"{'tx CPU us/msg':>14} {'rx CPU us/msg':>14} {'credit wait':>11}"
    )
    print(f"{'':53}{'(main thread)':>14} {'(main thread)':>14}")
    for system, s in summary.items():
        ratio = f"{s['gbps'] / raw:6.2f}x" if raw else "     -"
        spread = f"{s['gbps_min']:.2f}-{s['gbps_max']:.2f}"
        rate = f"{s['batches_per_s']:>10,.0f} {s['gbps']:>7.2f}"
        cpu = (
            f"{s['tx_cpu_us']:>6,.0f} ({s['tx_main_cpu_us']:>5,.0f}) "
            f"{s['rx_cpu_us']:>6,.0f} ({s['rx_main_cpu_us']:>5,.0f})"
        )
        wait = s["credit_wait_pct"]
        waited = "-" if math.isnan(wait) else f"{wait:.0f}%"
        print(f"{system:<10} {rate} {spread:>14} {ratio:>7} {cpu} {waited:>11}")
    arrow = summary.get("arrow", {}).get("gbps")
    mpq = summary.get("mpqueue", {}).get("gbps")
    if arrow and raw:
        verdict = "meets" if arrow >= 0.8 * raw else "MISSES"
        print(f"arrow / raw     = {arrow / raw:.2f}  (target >= 0.8: {verdict})")
        paired = paired_ratios(results, "arrow", "raw")
        print(
            f"arrow / raw round by round: {' '.join(f'{r:.2f}' for r in paired)} "
            f"(median {statistics.median(paired):.2f})"
        )
    if arrow and mpq:
        verdict = "meets" if arrow >= 3 * mpq else "MISSES"
        print(f"arrow / mpqueue = {arrow / mpq:.2f}  (target >= 3: {verdict})")
    for system in ("arrow", "arrow_ipc"):
        if system in results:
            outs = results[system]
            print(
                f"{system}: zero-copy receive {_all_true(outs, 'zero_copy')}, "
                f"received batch equals sent {_all_true(outs, 'equal')}"
            )
    if "mpqueue" in results:
        print(f"mpqueue: received batch equals sent {_all_true(results['mpqueue'], 'equal')}")


def json_line(
    summary: dict[str, dict[str, float]],
    results: dict[str, list[Outcome]],
    repeats: int,
    load: tuple[float, float, float],
) -> str:
    def gbps(system: str) -> float | None:
        return round(summary[system]["gbps"], 3) if system in summary else None

    return json.dumps(
        {
            "arrow_gbps": gbps("arrow"),
            "raw_gbps": gbps("raw"),
            "mpqueue_gbps": gbps("mpqueue"),
            "zero_copy_receive": _all_true(results.get("arrow", []), "zero_copy") is True,
            "arrow_ipc_gbps": gbps("arrow_ipc"),
            "arrow_raw_paired_median": (
                round(statistics.median(paired), 3)
                if (paired := paired_ratios(results, "arrow", "raw"))
                else None
            ),
            "cpu_us_per_msg": {
                system: {
                    key: round(figures[key], 1)
                    for key in ("tx_cpu_us", "tx_main_cpu_us", "rx_cpu_us", "rx_main_cpu_us")
                }
                for system, figures in summary.items()
            },
            "repeats": repeats,
            "load_avg": [round(x, 2) for x in load],
        }
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="3 repeats, fewer messages (< 1 minute)")
    p.add_argument("--repeats", type=int, default=None, help="rounds per system (default 5)")
    p.add_argument("--messages", type=int, default=None, help="measured batches per zmq trial")
    p.add_argument("--mpqueue-messages", type=int, default=None, help="measured batches, mpqueue")
    p.add_argument("--warmup", type=int, default=None, help="warm-up batches per trial")
    p.add_argument("--window", type=int, default=WINDOW, help="credit window (raw: HWM - slack)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset")
    p.add_argument("--profile", default=None, metavar="DIR", help="cProfile workers into DIR")
    p.add_argument("--trial-timeout", type=float, default=120.0)
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    p.add_argument("-v", "--verbose", action="store_true", help="print every trial")
    args = p.parse_args(argv)
    quick = args.quick
    args.repeats = args.repeats or (3 if quick else 5)
    args.messages = args.messages or (600 if quick else 3000)
    args.mpqueue_messages = args.mpqueue_messages or (100 if quick else 400)
    args.warmup = args.warmup or (10 if quick else 30)
    if min(args.repeats, args.messages, args.mpqueue_messages, args.warmup, args.window) < 1:
        p.error("--repeats, --messages, --mpqueue-messages, --warmup and --window must be >= 1")
    args.systems = [s for s in args.systems.split(",") if s]
    unknown = set(args.systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown systems {sorted(unknown)}; choose from {SYSTEMS}")
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        args.profile = str(Path(args.profile).resolve())
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()
    nbytes = batch_bytes(make_batch())
    tmp = tempfile.mkdtemp(prefix="t1-")
    try:
        results = run_all(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = summarize(results)
    print_table(summary, results, args, nbytes, load)
    bad = [
        s
        for s, outs in results.items()
        if _all_true(outs, "equal") is False or (s == "arrow" and not _all_true(outs, "zero_copy"))
    ]
    if bad:
        print(f"FAILED checks (zero copy / equality): {bad}")
    if args.json:
        print(json_line(summary, results, args.repeats, load))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
