"""Hostile input against a real served topology (issue 15): the gateway, its TCP port and the
shard ranks' wake-up sockets; and the liveness of the shard job when a rank stops or dies."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import selectors
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import psutil
import pytest
import zmq

from aaflow_stream import pipeline, spec
from aaflow_stream.client import Client, GatewayUnavailable
from aaflow_stream.observe.status import read_status
from aaflow_stream.query import protocol as q
from aaflow_stream.runtime.supervisor import Supervisor
from aaflow_stream.shard.wakeup import WakeupIssuer, new_token
from aaflow_stream.synthetic import generate

from ..support.hostile import deep, hostile_messages
from .ingest import detached, wait_drained, write_topology

pytestmark = pytest.mark.mpi

SHARDS = 3
REPLY_TIMEOUT_MS = 10_000
REFERENCE = "the shards and the credit of the stream"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    def __init__(self, endpoint: str, root: Path) -> None:
        self.endpoint = endpoint
        self.run_dir = root / "run"
        self.pids = self.current_pids()
        with Client(endpoint) as client:
            self.reference = [(h.chunk_id, h.score) for h in client.query(REFERENCE, k=5)]
            self.vectors = client.stats().vectors

    def current_pids(self) -> dict[str, int]:
        pids: dict[str, int] = json.loads((self.run_dir / "actors" / "pids.json").read_text())
        return {name: pid for name, pid in pids.items() if name.startswith("shard.")}

    def assert_unharmed(self) -> None:
        """Same answer as before, same vectors, the same shard processes (no restart)."""
        with Client(self.endpoint) as client:
            assert [(h.chunk_id, h.score) for h in client.query(REFERENCE, k=5)] == self.reference
            assert client.stats().vectors == self.vectors
        assert self.current_pids() == self.pids
        assert all(psutil.pid_exists(pid) for pid in self.pids.values())
        assert read_status(self.run_dir).restarts == 0

    def metric(self, actor: str, name: str, at_least: float, timeout_s: float = 10.0) -> float:
        """A shard's metric from status.json, once it reaches ``at_least``."""
        deadline = time.monotonic() + timeout_s
        while True:
            rows = [s for s in read_status(self.run_dir).stages if s.actor == actor]
            value = rows[0].metrics.get(name, 0.0) if rows else 0.0
            if value >= at_least or time.monotonic() > deadline:
                return value
            time.sleep(0.1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A detached topology whose gateway listens on loopback TCP."""
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "corpus"
    generate(corpus, "tiny")
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    topology = write_topology(
        root / "t.yaml",
        corpus,
        root / "data",
        shards=SHARDS,
        extra=f"query: {{endpoint: '{endpoint}', max_wait_ms: 2}}\n",
    )
    with detached(topology, timeout_s=120):
        wait_drained(root / "data", SHARDS, timeout_s=90)
        yield Served(endpoint, root)


@contextlib.contextmanager
def _dealer(endpoint: str) -> Iterator[zmq.Socket[Any]]:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def _ask(sock: zmq.Socket[Any], frames: list[bytes]) -> q.Reply:
    sock.send_multipart(frames)
    assert sock.poll(REPLY_TIMEOUT_MS), f"no reply to {frames[0][:40]!r}"
    return q.reply_decoder.decode(sock.recv())


def _query(**fields: object) -> bytes:
    return msgspec.msgpack.encode({"kind": "query", "id": 77, "text": "credit", **fields})


HOSTILE: dict[str, list[bytes]] = {
    "invalid utf-8": [b"\xa1\xff"],
    "deep arrays": [deep(5000)],
    "deep maps": [deep(5000, 0x81)],
    "deep before the tag": [b"\x82\xa2id" + deep(5000) + b"\xa4kind\xa5query"],
    "invalid utf-8 text": [b"\x83\xa4kind\xa5query\xa2id\x01\xa4text\xa2\xff\xfe"],
    "several frames": [b"\x80", b"\x81", b"garbage"],
    "over the request size": [_query(text="x " * (q.MAX_REQUEST_BYTES // 2 + 10))],
    "ts_from_ms 2**64-1": [_query(filter={"ts_from_ms": 2**64 - 1})],
    "no sources": [_query(filter={"sources": []})],
    "inverted time range": [_query(filter={"ts_from_ms": 5, "ts_to_ms": 4})],
    "k 2**64-1": [_query(k=2**64 - 1)],
    "doc id of 1025 bytes": [q.encode(q.DeleteRequest(id=3, doc_ids=["d" * 1025]))],
}


def test_hostile_messages_each_get_an_error_reply_and_no_shard_restarts(served: Served) -> None:
    rng = random.Random(15)
    cases = list(HOSTILE.items())
    cases += [(f"random bytes {i}", [rng.randbytes(rng.randint(1, 64))]) for i in range(100)]
    cases += [
        (f"fuzz {i}", [m]) for i, m in enumerate(hostile_messages(15, 300, [_query(), _query(k=3)]))
    ]
    with _dealer(served.endpoint) as sock:
        for name, frames in cases:
            reply = _ask(sock, frames)
            if isinstance(reply, q.QueryReply):  # a mutation can stay a valid query
                continue
            assert isinstance(reply, q.ErrorReply), name
            assert reply.code == "bad_request", (name, reply)
    served.assert_unharmed()
    assert served.metric("shard.0", "rejected_invalid_utf8", 1) >= 1
    assert served.metric("shard.0", "rejected_too_deep", 1) >= 1
    assert served.metric("shard.0", "rejected_multipart", 1) >= 1
    assert served.metric("shard.0", "rejected_too_large", 1) >= 1
    assert served.metric("shard.0", "rejected_internal", 0) == 0


def test_a_frame_over_the_hard_cap_is_refused_by_zeromq_and_the_gateway_goes_on(
    served: Served,
) -> None:
    with _dealer(served.endpoint) as sock:
        sock.send(b"\x00" * (q.MAX_FRAME_BYTES + 1))
        sock.send_multipart([b"\x00" * q.MAX_FRAME_BYTES] * 3)
    served.assert_unharmed()


def test_raw_bytes_over_tcp_to_the_gateway_port_harm_nothing(served: Served) -> None:
    host, port = served.endpoint[len("tcp://") :].rsplit(":", 1)
    rng = random.Random(16)
    greeting = b"\xff" + b"\x00" * 8 + b"\x7f\x03\x00NULL" + b"\x00" * 16
    payloads = [rng.randbytes(rng.randint(1, 4096)) for _ in range(50)]
    payloads += [greeting + rng.randbytes(rng.randint(1, 256)) for _ in range(20)]
    for payload in payloads:
        with contextlib.suppress(OSError):  # hanging up on garbage is the peer's right
            with socket.create_connection((host, int(port)), timeout=2) as conn:
                conn.sendall(payload)
    served.assert_unharmed()


def _wake_dir(served: Served) -> Path:
    """Where member 1 listens for wake-ups: the one unix socket it bound named ``r1``."""
    member = psutil.Process(served.pids["shard.1"])
    (path,) = {c.laddr for c in member.net_connections("unix") if c.laddr.endswith("/r1")}
    return Path(path).parent


def test_the_wake_up_sockets_are_private_ipc_files_the_members_listen_on(served: Served) -> None:
    directory = _wake_dir(served)
    assert directory.parent == served.run_dir.resolve()  # the run dir is short enough here
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert directory.stat().st_uid == os.getuid()
    for rank in range(1, SHARDS):
        path = directory / f"r{rank}"
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
        bound = {
            c.laddr for c in psutil.Process(served.pids[f"shard.{rank}"]).net_connections("unix")
        }
        assert str(path) in bound
    assert sorted(p.name for p in directory.iterdir()) == [f"r{r}" for r in range(1, SHARDS)]


def _zmtp_listeners(ports: list[tuple[str, int]], timeout_s: float = 1.0) -> set[int]:
    """Which of these TCP listeners greet a new connection as ZeroMQ does (ZMTP signature:
    0xFF, 8 bytes, 0x7F), probed at once; a listener that says nothing is not ZeroMQ."""
    selector = selectors.DefaultSelector()
    got: dict[int, bytes] = {}
    for host, port in ports:
        with contextlib.suppress(OSError):
            conn = socket.create_connection((host, port), timeout=timeout_s)
            conn.setblocking(False)
            selector.register(conn, selectors.EVENT_READ, port)
            got[port] = b""
    deadline = time.monotonic() + timeout_s
    while selector.get_map() and (left := deadline - time.monotonic()) > 0:
        for key, _ in selector.select(left):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            data = b""
            with contextlib.suppress(OSError):
                data = conn.recv(10 - len(got[key.data]))
            got[key.data] += data
            if not data or len(got[key.data]) >= 10:
                selector.unregister(conn)
                conn.close()
    for key in list(selector.get_map().values()):
        selector.unregister(key.fileobj)
        key.fileobj.close()  # type: ignore[union-attr]
    return {port for port, data in got.items() if data[:1] == b"\xff" and data[9:10] == b"\x7f"}


def test_no_shard_rank_listens_on_tcp_with_zeromq_but_the_gateway(served: Served) -> None:
    listeners: list[tuple[str, int]] = []
    for pid in served.pids.values():
        for conn in psutil.Process(pid).net_connections("inet"):
            if conn.status == psutil.CONN_LISTEN:
                host = "127.0.0.1" if conn.laddr.ip in ("0.0.0.0", "::") else conn.laddr.ip
                listeners.append((host, conn.laddr.port))
    gateway_port = int(served.endpoint.rsplit(":", 1)[1])
    assert ("127.0.0.1", gateway_port) in listeners
    # The gateway speaks ZeroMQ (the probe works); MPI's own listeners do not; no wake-up.
    assert _zmtp_listeners(listeners) == {gateway_port}
    served.assert_unharmed()


@contextlib.contextmanager
def _pusher(endpoint: str) -> Iterator[zmq.Socket[Any]]:
    """A PUSH to ``endpoint``, kept connected until the block ends: messages a receiver holds
    back at its high-water mark are lost when the sender hangs up, so wait before."""
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDTIMEO, 5000)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()


def test_forged_and_malformed_wake_ups_are_dropped_and_the_rounds_stay_in_step(
    served: Served,
) -> None:
    with Client(served.endpoint) as client:
        doc_id = client.query(REFERENCE, k=1)[0].doc_id
    forger = WakeupIssuer(new_token())
    forged = [[forger.delete([doc_id])] for _ in range(5)]
    forged += [[forger.count()], [forger.search(1, 3, 384, None)], [b"\x01"], [b"S" + b"\0" * 24]]
    junk = [[m] for m in hostile_messages(17, 300, [f[0] for f in forged[:3]])]
    messages = [*forged, *junk, [b"\x80", b"x"]]
    with contextlib.ExitStack() as stack:
        for rank in range(1, SHARDS):
            sock = stack.enter_context(_pusher(f"ipc://{_wake_dir(served) / f'r{rank}'}"))
            for frames in messages:
                sock.send_multipart(frames)
        for rank in range(1, SHARDS):
            dropped = served.metric(f"shard.{rank}", "wakeups_dropped", len(messages))
            assert dropped == len(messages)
            assert served.metric(f"shard.{rank}", "wakeups_dropped_forged", 5) >= 5
    served.assert_unharmed()  # the forged deletes deleted nothing: same vectors, same hits


# --- liveness: a rank that stops answering, or dies ------------------------------------------


def _topology(root: Path, endpoint: str) -> spec.TopologySpec:
    corpus = root / "corpus"
    generate(corpus, "tiny")
    return spec.decode(
        f"name: liveness\ndata_dir: {root / 'data'}\nrun_dir: {root / 'run'}\n"
        f"sources: [{{paths: [{corpus}]}}]\n"
        "stages: [{operator: load}, {operator: transform}, {operator: embed}, {operator: upsert}]\n"
        f"shards: {{count: {SHARDS}}}\nquery: {{endpoint: '{endpoint}'}}\n"
        "durability: {restart: {max_restarts: 2, backoff_s: 0.1}}\n"
        # These tests are about rounds: a repeated query must reach the ranks, not the cache.
        "cache: {enabled: false}\n"
    )


def _until(check: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``check()`` holds, polled: a process exit and a restart done by the
    supervisor's own loop have no event to wait on. Run it in a thread."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "not within the deadline"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.mark.timeout(300)
def test_a_frozen_rank_or_a_killed_root_ends_the_job_and_the_graph_is_restarted(
    run_dir: Path,
) -> None:
    """A member frozen (SIGSTOP) mid-round: the round misses its deadline and the job is
    aborted instead of hanging; the root killed: hydra ends the job. Either way mpiexec exits
    and the supervisor restarts the graph within seconds, which then answers again."""
    endpoint = f"ipc://{run_dir}/q.sock"
    topology = _topology(run_dir, endpoint)
    graph = pipeline.ingestion_graph(topology, serve=True)
    shard = graph.stages[-1]
    shard = msgspec.structs.replace(shard, params={**shard.params, "round_timeout_s": 2.0})
    graph = msgspec.structs.replace(graph, stages=[*graph.stages[:-1], shard])
    timings: dict[str, float] = {}

    def shard_pids(sup: Supervisor) -> dict[str, int]:
        return {n: a.pid for n, a in sup.actors.items() if a.spec.stage == "shard" and a.pid}

    def query(timeout_s: float = 30.0) -> list[q.Hit]:
        with Client(endpoint, timeout_s=timeout_s) as client:
            return client.query(REFERENCE, k=3)

    async def main() -> None:
        async with Supervisor(graph, run_dir / "run", restart=topology.durability.restart) as sup:
            watching = asyncio.create_task(sup.wait())
            try:
                await asyncio.to_thread(query)
                before = shard_pids(sup)
                frozen = before["shard.2"]
                os.kill(frozen, signal.SIGSTOP)
                started = time.monotonic()
                with pytest.raises(GatewayUnavailable):
                    await asyncio.to_thread(query, 1.0)  # its round can never complete
                job = sup.actors["shard.0"]
                await asyncio.to_thread(_until, lambda: job.exit_code is not None, 30)
                timings["frozen member: the job ended"] = time.monotonic() - started
                assert job.exit_code != 0
                # Hydra signals the ranks of an aborted job, but a stopped process takes no
                # signal but SIGKILL: the test ends what it froze (unless the supervisor did).
                with contextlib.suppress(ProcessLookupError):
                    os.kill(frozen, signal.SIGKILL)
                await asyncio.to_thread(_until, lambda: len(sup.restarts) == 1, 60)
                timings["frozen member: restarted"] = time.monotonic() - started
                await asyncio.to_thread(query)
                after = shard_pids(sup)
                assert set(after.values()).isdisjoint(before.values())
                started = time.monotonic()
                os.kill(after["shard.0"], signal.SIGKILL)
                await asyncio.to_thread(_until, lambda: len(sup.restarts) == 2, 60)
                timings["killed root: restarted"] = time.monotonic() - started
                await asyncio.to_thread(query)
            finally:
                sup.request_stop()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(watching, 60)

    asyncio.run(asyncio.wait_for(main(), 240))
    print(f"from the fault on: {timings}")
    assert timings["frozen member: the job ended"] < 10, timings  # a round deadline of 2s
    assert all(t < 40 for t in timings.values()), timings
