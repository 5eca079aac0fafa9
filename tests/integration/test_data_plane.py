"""One real actor process sending to a port in the test process, over real ZeroMQ sockets."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import numpy as np
import psutil
import pyarrow as pa
import zmq
import zmq.asyncio

from aaflow_stream import frames
from aaflow_stream.channels.inport import InPort
from aaflow_stream.plan import ActorSpec, OutputLink
from aaflow_stream.protocol import BatchHeader, Credit, encode

from .graphs import BASIC, graph, sink, sink_seqs, source, supervisor

WINDOW = 4


def _source_spec(
    run_dir: Path, params: dict[str, int], *, eos_timeout_s: float, drain_timeout_s: float = 10.0
) -> tuple[str, str, Path]:
    """A SyntheticSource actor's spec file, sending to a receiver "rx" at the returned data and
    control endpoints."""
    data, control = f"ipc://{run_dir}/rx.d", f"ipc://{run_dir}/rx.c"
    spec = ActorSpec(
        name="source.0",
        stage="source",
        replica=0,
        replicas=1,
        operator=f"{BASIC}:SyntheticSource",
        params=dict(params),
        input=None,
        outputs=[OutputLink(data, control, "rx")],
        window=WINDOW,
        encoding="auto",
        run_dir=str(run_dir),
        eos_timeout_s=eos_timeout_s,
        drain_timeout_s=drain_timeout_s,
    )
    spec_path = run_dir / "source.json"
    spec_path.write_bytes(msgspec.json.encode(spec))
    return data, control, spec_path


@asynccontextmanager
async def source_process(
    run_dir: Path, *, batches: int, rows: int, text_bytes: int = 1024
) -> AsyncIterator[tuple[InPort, asyncio.subprocess.Process]]:
    """A SyntheticSource actor process linked to an InPort served by this process."""
    data, control, spec_path = _source_spec(
        run_dir,
        {"batches": batches, "rows": rows, "text_bytes": text_bytes},
        eos_timeout_s=20.0,
    )
    ctx = zmq.asyncio.Context()
    port = InPort(
        ctx,
        "rx",
        data_endpoint=data,
        control_endpoint=control,
        window=WINDOW,
        expected_senders=["source.0"],
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "aaflow_stream.runtime.actor", str(spec_path)
    )
    try:
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(port.serve())
            yield port, proc
            serving.cancel()
    finally:
        port.close()
        ctx.term()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def test_received_column_buffers_lie_inside_the_zeromq_frames(run_dir: Path) -> None:
    async def main() -> None:
        async with source_process(run_dir, batches=3, rows=1024) as (port, proc):
            checked = 0
            async for item in port:
                assert frames.batch_lies_within(item.batch, item.frames[1:])
                assert item.batch.column("text")[0].as_py() == "x" * 1024
                assert item.batch.column("seq").to_pylist() == list(
                    range(checked * 1024, (checked + 1) * 1024)
                )
                checked += 1
                await port.finished(item)
            assert checked == 3
            assert await asyncio.wait_for(proc.wait(), 20) == 0

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_fast_producer_never_exceeds_the_window_and_memory_stays_flat(run_dir: Path) -> None:
    batches = 10_000  # 64 rows of 1 KiB text: ~0.8 GB in total if nothing held it back

    async def main() -> None:
        async with source_process(run_dir, batches=batches, rows=64) as (port, proc):
            producer = psutil.Process(proc.pid)
            consumer = psutil.Process()
            rss: list[tuple[int, int]] = []
            held: list[object] = []
            received = max_unfinished = 0
            async for item in port:
                received += 1
                held.append(item)
                max_unfinished = max(max_unfinished, len(held))
                # A slow consumer: finishes in bursts, so the producer must wait for credit.
                if len(held) == WINDOW or received % 7 == 0:
                    await asyncio.sleep(0.0005)
                    for done in held:
                        await port.finished(done)  # type: ignore[arg-type]
                    held.clear()
                if received % 500 == 0:
                    rss.append((producer.memory_info().rss, consumer.memory_info().rss))
            assert received == batches
            assert max_unfinished <= WINDOW
            assert port.overruns == 0
            assert await asyncio.wait_for(proc.wait(), 20) == 0
        warm = rss[len(rss) // 4]
        late = max(r[0] for r in rss[len(rss) // 4 :]), max(r[1] for r in rss[len(rss) // 4 :])
        growth_mb = [(late[i] - warm[i]) / 2**20 for i in range(2)]
        assert growth_mb[0] < 32 and growth_mb[1] < 32, f"RSS grew by {growth_mb} MiB"

    asyncio.run(asyncio.wait_for(main(), 120))


def _garbage(fingerprint: str) -> list[list[bytes]]:
    rng = np.random.default_rng(7)
    foreign = pa.record_batch({"n": pa.array(np.arange(10, dtype=np.int64))})
    wrong = frames.batch_message(foreign, "source.0", 1, fingerprint, frames.BUFFERS)
    truncated = frames.batch_message(foreign, "source.0", 1, fingerprint, frames.BUFFERS)[:2]
    stranger = BatchHeader(
        sender="mallory", seq=1, fingerprint=fingerprint, rows=1, encoding=frames.BUFFERS
    )
    return [
        [rng.bytes(100)],  # random bytes
        [rng.bytes(64), rng.bytes(4096)],  # random multipart
        [b"\x93\xa5batch"],  # truncated header
        [b"\x00" * (1 << 20)],  # a huge header
        [b"\x92\xa5batch\xa2\xff\xfe"],  # a header whose sender is not UTF-8
        [b"\x91" * 5000 + b"\xc0"],  # a header nested 5000 deep
        [bytes(memoryview(f)) for f in wrong],  # a batch of the wrong schema
        [bytes(memoryview(f)) for f in truncated],  # frames missing
        [encode(stranger), b"1234"],  # a sender that never said hello
        [bytes(memoryview(frames.schema_message(foreign.schema, "mallory")[0])), b"junk"],
    ]


def test_garbage_on_a_data_endpoint_is_dropped_and_good_traffic_flows(run_dir: Path) -> None:
    out = run_dir / "out"
    g = graph(source(batches=300, rows=20), sink(out, delay_ms=2.0))

    async def main() -> None:
        async with supervisor(g, run_dir) as sup:
            endpoint = sup.actors["sink.0"].spec.input.data_endpoint  # type: ignore[union-attr]
            schema = pa.schema(
                [
                    ("doc_id", pa.string()),
                    ("seq", pa.int64()),
                    ("text", pa.large_string()),
                    ("embedding", pa.list_(pa.float32(), 384)),
                ]
            )
            messages = _garbage(frames.schema_fingerprint(schema))
            ctx = zmq.asyncio.Context()
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.LINGER, 2000)
            push.connect(endpoint)
            control = ctx.socket(zmq.DEALER)  # garbage on the link's control socket too
            control.setsockopt(zmq.LINGER, 2000)
            control.connect(sup.actors["sink.0"].spec.input.control_endpoint)  # type: ignore[union-attr]
            waiting = asyncio.create_task(sup.wait())
            for message in messages:
                await push.send_multipart(message)
                await asyncio.sleep(0.05)
            hello_not_utf8 = b"\x92\xa5hello\xa2\xff\xfe"
            for bad in ([hello_not_utf8], [b"\x91" * 5000 + b"\xc0"], [b"a", b"b"]):
                await control.send_multipart(bad)
            push.close()
            control.close()
            ctx.term()
            report = await waiting
        received = report.stats["sink.0"].input
        assert received.rejected == len(messages) + 3
        assert received.rejected_by_reason == {
            "HeaderError": 8,
            "PayloadError": 2,
            "control_invalid_utf8": 1,
            "control_invalid": 1,
            "control_frames": 1,
        }
        assert sorted(sink_seqs(out)) == list(range(300 * 20))

    asyncio.run(asyncio.wait_for(main(), 60))


def _silent_receiver_case(run_dir: Path, *, grant: int) -> tuple[float, int]:
    """A SyntheticSource actor whose receiver hears its Hello, grants ``grant`` batches of
    credit (0: the link never opens) and then nothing more, as if it were gone. The actor gets
    SIGTERM once it waits; returns (seconds it took to exit, its exit code)."""
    data, control, spec_path = _source_spec(
        run_dir, {"batches": 10**6, "rows": 8}, eos_timeout_s=60.0, drain_timeout_s=2.0
    )
    ctx = zmq.Context()
    receiver = ctx.socket(zmq.ROUTER)
    receiver.bind(control)
    sink = ctx.socket(zmq.PULL)  # takes the frames in, never reads them
    sink.bind(data)
    proc = subprocess.Popen([sys.executable, "-m", "aaflow_stream.runtime.actor", str(spec_path)])
    try:
        assert receiver.poll(30_000), "the actor never said hello"
        routing_id, _hello = receiver.recv_multipart()  # its signal handlers are set by now
        if grant:
            receiver.send_multipart([routing_id, encode(Credit(receiver="rx", batches=grant))])
            time.sleep(1.0)  # it spends the credit, then waits for more
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        return time.monotonic() - started, code
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        receiver.close(linger=0)
        sink.close(linger=0)
        ctx.term()


def test_a_stop_while_the_downstream_has_not_opened_ends_the_actor_within_the_drain(
    run_dir: Path,
) -> None:
    """The open timeout is 60 s; a stop must cut it: only the drain (2 s) bounds the exit."""
    seconds, code = _silent_receiver_case(run_dir, grant=0)
    assert code == 0
    assert seconds < 2.0 + 3.0


def test_a_stop_while_blocked_on_credit_ends_the_actor_within_the_drain(run_dir: Path) -> None:
    """A source waiting for credit that never comes: the drain bounds the wait, then the
    end-of-stream's own waits (2 s each at most)."""
    seconds, code = _silent_receiver_case(run_dir, grant=WINDOW)
    assert code == 0
    assert seconds < 2 * 2.0 + 3.0
