"""Fuzz a serving topology: hostile bytes at every socket it has, and proof that nothing broke.

A topology is started with `aaflow-stream up --detach` (a watched corpus directory, the query
gateway on loopback TCP, an ingest endpoint). Then, round after round, every endpoint gets
`--batch` hostile messages from a seeded generator:

- random bytes, random msgpack values (strings that are not UTF-8, NaN, infinities, numbers at
  the edges of 64 bits, nesting thousands deep) and mutations of valid messages of that
  endpoint (flipped bits, truncations, spliced-in garbage); some as multipart messages;
- the endpoints: the gateway and the ingest endpoint (each message must get a reply), every
  actor's data and link-control sockets, every ack inbox, the supervisor's control socket,
  every other ipc socket file in the run directory (the shard ranks' wake-ups), and raw bytes
  that are not ZeroMQ at all over TCP to the gateway and over unix sockets to each ipc file.

After every round: the reference query returns exactly the answer it gave before fuzzing, a
fresh document sent to the ingest endpoint is acknowledged as durable, no process of the
topology died or changed (same pids) and the supervisor counts no restart. At the end, the
resident memory of every process against its value after warm-up.

The hostile messages come from ``tests/support/hostile.py``, the generators the decoding
boundaries' own tests use.

    python -m bench.fuzz --quick                 # 6 rounds of 50 messages per endpoint
    python -m bench.fuzz --messages 100000       # the long run (100,000 per endpoint)
    python -m bench.fuzz --quick --json          # last line: the report as one JSON object
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import socket
import stat
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import psutil
import zmq

from aaflow_stream import protocol
from aaflow_stream.client import Client
from aaflow_stream.ingest import protocol as ingest_protocol
from aaflow_stream.plan import ActorSpec
from aaflow_stream.query import protocol as query_protocol
from aaflow_stream.synthetic import generate
from tests.support.hostile import hostile_messages

from .kit import cli
from .kit.engine import Served
from .kit.table import Column, render

# --- the topology under test ----------------------------------------------------------------

REFERENCE_QUERY = "distributed retrieval of streaming documents"
QUERY_TIMEOUT_S = 20.0
INGEST_TIMEOUT_S = 60.0
REPLY_TIMEOUT_S = 30.0
UP_TIMEOUT_S = 180.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_topology(root: Path, shards: int) -> tuple[Path, str, str]:
    """A serving topology over a watched copy of the tiny corpus: (file, gateway, ingest)."""
    watched = root / "watched"
    generate(watched, "tiny")
    gateway = f"tcp://127.0.0.1:{_free_port()}"
    ingest = f"ipc://{root}/in.sock"
    path = root / "fuzz.yaml"
    path.write_text(
        f"name: fuzz\ndata_dir: {root}/data\nrun_dir: {root}/run\n"
        f"sources:\n  - {{paths: [{watched}], watch: true}}\n"
        f"ingest: {{endpoint: '{ingest}'}}\n"
        f"query: {{endpoint: '{gateway}', max_wait_ms: 2}}\n"
        "stages:\n"
        "  - {operator: load, batch_docs: 16}\n"
        "  - {operator: transform, chain: true}\n"
        "  - {operator: embed, batch_size: 256}\n"
        "  - {operator: upsert, batch_size: 512, chain: true}\n"
        f"shards: {{count: {shards}}}\nflow: {{window: 4}}\n"
    )
    return path, gateway, ingest


def _wait_settled(client: Client, timeout_s: float = 120) -> int:
    """Until the vector count stops changing (the watched corpus is in): that count."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        count = client.stats().vectors
        if count != last:
            last, since = count, time.monotonic()
        elif count > 0 and time.monotonic() - since > 2.0:
            return count
        time.sleep(0.25)
    raise RuntimeError("the corpus never settled")


# --- targets --------------------------------------------------------------------------------


@dataclass
class Target:
    """One endpoint and how to talk to it: ``kind`` is the ZeroMQ socket type to connect
    (PUSH, DEALER) or ``raw`` (bytes that are not ZeroMQ, over TCP or a unix socket)."""

    name: str
    endpoint: str
    kind: str
    valid: list[bytes] = field(default_factory=list)
    replies: bool = False  # every message gets one reply


def _valid_internal() -> dict[str, list[bytes]]:
    """Well-formed messages for the internal sockets, from a sender that does not exist (a
    mutation of them reaches deeper than random bytes, and none can pass for a real peer)."""
    enc = protocol.encode
    return {
        "data": [
            enc(protocol.EosHeader(sender="mallory", seq=1)),
            enc(protocol.SchemaHeader(sender="mallory", fingerprint="f")),
            enc(
                protocol.BatchHeader(
                    sender="mallory", seq=2, fingerprint="f", rows=1, encoding="buffers"
                )
            ),
        ],
        "control": [
            enc(protocol.Hello(sender="mallory")),
            enc(protocol.Credit(receiver="mallory", batches=4)),
        ],
        "ack": [enc(protocol.Ack(sender="mallory", shard=0))],
        "supervisor": [
            enc(protocol.Failed(actor="mallory", reason="x")),
        ],
    }


def _valid_gateway() -> list[bytes]:
    q = query_protocol
    return [
        q.encode(q.QueryRequest(id=1, text="hello world", k=3)),
        q.encode(q.QueryRequest(id=2, vector=[0.1] * 8, k=2)),
        q.encode(
            q.QueryRequest(
                id=3, text="x", filter=q.QueryFilter(sources=["a"], ts_from_ms=0, ts_to_ms=9)
            )
        ),
        q.encode(q.StatsRequest(id=4)),
        q.encode(q.DeleteRequest(id=5, doc_ids=["no-such-document"])),
    ]


def _valid_ingest() -> list[bytes]:
    # Mutations may leave a request valid: its documents are then really ingested, under a
    # source of their own that the reference query filters out.
    doc = {"doc_id": "fuzz-doc", "text": "zz qq fuzz", "source": "fuzz", "ts": 1.5e9}
    return [ingest_protocol.encode_request(7, [doc, {**doc, "doc_id": "fuzz-2"}])]


def discover_targets(run_dir: Path, gateway: str, ingest: str) -> list[Target]:
    valid = _valid_internal()
    targets = [
        Target("gateway", gateway, "DEALER", _valid_gateway(), replies=True),
        Target("ingest", ingest, "DEALER", _valid_ingest(), replies=True),
        Target("gateway raw tcp", gateway, "raw"),
    ]
    known: set[str] = {gateway, ingest}
    supervisor = None
    for path in sorted((run_dir / "actors").glob("*.json")):
        try:
            spec = msgspec.json.decode(path.read_bytes(), type=ActorSpec)
        except (msgspec.ValidationError, msgspec.DecodeError):
            continue  # pids.json
        supervisor = supervisor or spec.supervisor_endpoint
        if spec.input is not None:
            targets.append(
                Target(f"{spec.name} data", spec.input.data_endpoint, "PUSH", valid["data"])
            )
            targets.append(
                Target(
                    f"{spec.name} control", spec.input.control_endpoint, "DEALER", valid["control"]
                )
            )
            known |= {spec.input.data_endpoint, spec.input.control_endpoint}
        if spec.ack_endpoint is not None:
            targets.append(Target(f"{spec.name} acks", spec.ack_endpoint, "PUSH", valid["ack"]))
            known.add(spec.ack_endpoint)
    if supervisor is not None:
        targets.append(Target("supervisor", supervisor, "DEALER", valid["supervisor"]))
        known.add(supervisor)
    # Every other socket file the topology made (the shard ranks' wake-ups): both socket types.
    for path in _socket_files(run_dir, known):
        endpoint = f"ipc://{path}"
        targets.append(Target(f"{path.name} push", endpoint, "PUSH"))
        targets.append(Target(f"{path.name} dealer", endpoint, "DEALER"))
        known.add(endpoint)
    for endpoint in sorted(e for e in known if e.startswith("ipc://")):
        targets.append(Target(f"{Path(endpoint[6:]).name} raw unix", endpoint, "raw"))
    return targets


def _socket_files(run_dir: Path, known: set[str]) -> list[Path]:
    found = []
    for path in run_dir.rglob("*"):
        try:
            if stat.S_ISSOCK(path.lstat().st_mode) and f"ipc://{path}" not in known:
                found.append(path)
        except OSError:
            continue
    return sorted(found)


# --- one round ------------------------------------------------------------------------------


@dataclass
class EndpointTally:
    name: str
    sent: int = 0
    replies_expected: int = 0
    replies: int = 0


def _send_raw(endpoint: str, payloads: list[bytes]) -> None:
    """Bytes that are not ZeroMQ: each payload on a fresh TCP or unix connection."""
    for payload in payloads:
        try:
            if endpoint.startswith("tcp://"):
                host, port = endpoint[6:].rsplit(":", 1)
                conn = socket.create_connection((host, int(port)), timeout=2)
            else:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.settimeout(2)
                conn.connect(endpoint[6:])
            with conn:
                conn.sendall(payload)
        except OSError:
            pass  # a peer that hangs up on garbage is doing its job


def fuzz_round(
    ctx: zmq.Context[Any],
    targets: list[Target],
    tallies: dict[str, EndpointTally],
    seed: int,
    batch: int,
) -> None:
    waiting: list[tuple[Target, zmq.Socket[Any], int]] = []
    for index, target in enumerate(targets):
        messages = list(hostile_messages(seed * 1000 + index, batch, target.valid))
        rng = random.Random(seed * 7919 + index)
        tally = tallies.setdefault(target.name, EndpointTally(target.name))
        tally.sent += len(messages)
        if target.kind == "raw":
            _send_raw(target.endpoint, messages)
            continue
        sock = ctx.socket(zmq.PUSH if target.kind == "PUSH" else zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDTIMEO, 2000)
        sock.connect(target.endpoint)
        sent = 0
        for message in messages:
            # One in ten goes as a multipart message of 2-3 frames.
            parts = [message] + [rng.randbytes(8) for _ in range(rng.choice((0,) * 9 + (2,)))]
            try:
                sock.send_multipart(parts)
                sent += 1
            except zmq.Again:
                break  # the peer is not there or not reading: its own HWM says so
        if target.replies:
            tally.replies_expected += sent
            waiting.append((target, sock, sent))
        else:
            sock.close(linger=500)
    for target, sock, expected in waiting:
        got, deadline = 0, time.monotonic() + REPLY_TIMEOUT_S
        while got < expected and sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            sock.recv_multipart()
            got += 1
        tallies[target.name].replies += got
        sock.close(linger=0)


# --- checks ---------------------------------------------------------------------------------


def _topology_pids(run_dir: Path) -> dict[str, int]:
    pids: dict[str, int] = json.loads((run_dir / "actors" / "pids.json").read_text())
    pids["supervisor"] = int((run_dir / "up.pid").read_text())
    return pids


def _rss_mb(pids: dict[str, int]) -> dict[str, float]:
    out = {}
    for name, pid in pids.items():
        try:
            out[name] = psutil.Process(pid).memory_info().rss / 2**20
        except psutil.Error:
            out[name] = float("nan")
    return out


def _restarts(run_dir: Path) -> int:
    return int(json.loads((run_dir / "status.json").read_text())["restarts"])


def _answer(client: Client, sources: list[str]) -> list[tuple[int, float]]:
    where = query_protocol.QueryFilter(sources=sources)
    return [
        (h.chunk_id, round(h.score, 5)) for h in client.query(REFERENCE_QUERY, k=10, where=where)
    ]


@dataclass
class FuzzReport:
    rounds: int
    per_endpoint: int
    endpoints: list[EndpointTally]
    failed_checks: list[str]
    crashed: list[str]  # processes that died or were replaced
    restarts: int
    rss_mb_after_warmup: dict[str, float]
    rss_mb_end: dict[str, float]
    seconds: float

    @property
    def rss_growth_mb(self) -> float:
        growth = [
            self.rss_mb_end[n] - before
            for n, before in self.rss_mb_after_warmup.items()
            if n in self.rss_mb_end
        ]
        return max((g for g in growth if not math.isnan(g)), default=0.0)

    @property
    def rss_bounded(self) -> bool:
        """Every process grew by less than 20 MB or 20% of its warm size, whichever is larger."""
        for name, before in self.rss_mb_after_warmup.items():
            after = self.rss_mb_end.get(name, math.nan)
            if not math.isnan(after) and after - before > max(20.0, 0.2 * before):
                return False
        return True

    @property
    def unanswered(self) -> int:
        return sum(t.replies_expected - t.replies for t in self.endpoints)

    @property
    def passed(self) -> bool:
        return (
            not self.failed_checks
            and not self.crashed
            and self.restarts == 0
            and self.unanswered == 0
            and self.rss_bounded
        )


def run_fuzz(
    root: Path, *, per_endpoint: int, batch: int, seed: int = 1, shards: int = 2
) -> FuzzReport:
    """Start a topology under ``root``, fuzz it, stop it; the report of what happened."""
    topology, gateway, ingest = write_topology(root, shards)
    run_dir = root / "run"
    started = time.monotonic()
    with (
        Served(topology, run_dir, timeout_s=UP_TIMEOUT_S),
        Client(gateway, timeout_s=QUERY_TIMEOUT_S, ingest_endpoint=ingest) as client,
    ):
        _wait_settled(client)
        sources = sorted({h.source for h in client.query(REFERENCE_QUERY, k=50)})
        reference = _answer(client, sources)
        pids = _topology_pids(run_dir)
        targets = discover_targets(run_dir, gateway, ingest)
        ctx: zmq.Context[Any] = zmq.Context()
        tallies: dict[str, EndpointTally] = {}
        failed: list[str] = []
        rounds = max(1, math.ceil(per_endpoint / batch))
        warm_rss: dict[str, float] = {}
        try:
            for number in range(rounds):
                fuzz_round(ctx, targets, tallies, seed * 100_000 + number, batch)
                failed += _check(client, sources, reference, number)
                if number == min(1, rounds - 1):  # the first round warms the caches up
                    warm_rss = _rss_mb(pids)
                if failed or _changed(pids, run_dir):
                    break
        finally:
            ctx.destroy(linger=0)
        crashed = _changed(pids, run_dir)
        return FuzzReport(
            rounds=number + 1,
            per_endpoint=per_endpoint,
            endpoints=list(tallies.values()),
            failed_checks=failed,
            crashed=crashed,
            restarts=_restarts(run_dir),
            rss_mb_after_warmup=warm_rss,
            rss_mb_end=_rss_mb(pids),
            seconds=time.monotonic() - started,
        )


def _check(
    client: Client, sources: list[str], reference: list[tuple[int, float]], number: int
) -> list[str]:
    problems = []
    try:
        if _answer(client, sources) != reference:
            problems.append(f"round {number}: the reference query's answer changed")
        result = client.ingest(
            [{"doc_id": f"alive-{number}", "text": f"still alive after round {number}"}],
            timeout_s=INGEST_TIMEOUT_S,
        )
        if result.accepted != 1:
            problems.append(f"round {number}: a valid document was not accepted: {result}")
    except Exception as exc:  # a hung or dead endpoint: the finding, not a crash of the bench
        problems.append(f"round {number}: {type(exc).__name__}: {exc}")
    return problems


def _changed(pids: dict[str, int], run_dir: Path) -> list[str]:
    """Processes that are gone, or that a restart replaced."""
    try:
        now = _topology_pids(run_dir)
    except (OSError, ValueError):
        return ["pids.json or up.pid unreadable"]
    out = []
    for name, pid in pids.items():
        if now.get(name) != pid or not psutil.pid_exists(pid):
            out.append(name)
    return out


# --- output ---------------------------------------------------------------------------------


ENDPOINT_COLUMNS = [
    Column("endpoint", 34, left=True),
    Column("sent", 9),
    Column("replies", 9),
    Column("expected", 9),
]
RSS_COLUMNS = [
    Column("process", 20, left=True),
    Column("rss warm MB", 12, ".1f"),
    Column("rss end MB", 11, ".1f"),
]


def table(report: FuzzReport) -> list[str]:
    endpoints = [[t.name, t.sent, t.replies, t.replies_expected] for t in report.endpoints]
    rss = [
        [name, before, report.rss_mb_end.get(name, math.nan)]
        for name, before in sorted(report.rss_mb_after_warmup.items())
    ]
    return [
        *render(ENDPOINT_COLUMNS, endpoints),
        "",
        *render(RSS_COLUMNS, rss),
        "",
        f"{report.rounds} rounds, {sum(t.sent for t in report.endpoints)} messages over "
        f"{len(report.endpoints)} endpoints in {report.seconds:.0f}s; crashes "
        f"{len(report.crashed)} {report.crashed}, restarts {report.restarts}, unanswered "
        f"{report.unanswered}, failed checks {len(report.failed_checks)}, max RSS growth "
        f"{report.rss_growth_mb:.1f} MB",
        *(f"  {problem}" for problem in report.failed_checks),
        f"verdict: {'PASS' if report.passed else 'FAIL'}",
    ]


def to_json(report: FuzzReport) -> dict[str, Any]:
    return {**asdict(report), "unanswered": report.unanswered, "passed": report.passed}


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 the topology came through unharmed, 1 it did not, 2 usage."""
    parser = cli.parser(__doc__, quick="6 rounds of 50 messages per endpoint")
    parser.add_argument("--messages", type=cli.positive, default=20_000, help="per endpoint")
    parser.add_argument(
        "--batch", type=cli.positive, default=500, help="messages per endpoint per round"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--shards", type=cli.positive, default=2)
    args = parser.parse_args(argv)
    per_endpoint, batch = (300, 50) if args.quick else (args.messages, args.batch)
    root = Path(tempfile.mkdtemp(prefix="aaf-fuzz-"))  # short: unix socket paths
    try:
        report = run_fuzz(
            root, per_endpoint=per_endpoint, batch=batch, seed=args.seed, shards=args.shards
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    cli.report(table(report), to_json(report), args.json)
    return 0 if report.passed else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the topology's processes inherit it
    sys.exit(main())
