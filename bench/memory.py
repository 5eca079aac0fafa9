"""MEM1 memory (docs/benchmarks.md): what the memory operator costs a query and how fast it learns.

The engine (`aaflow-stream up --detach`, 4 shard ranks, hash embedder) ingests a W1 corpus
and serves; 16 sessions get 200 memory entries each. Measured in one run, one blocking
`Client`, queries interleaved so that every system sees the same machine state:

- round: a knowledge-only query (`mode: knowledge`), the plain retrieval round;
- dual: the same query in `mode: both` with a session: one round that searches every rank's
  knowledge shard and memory, merged under the weighted score;
- memory: `mode: memory` alone;
- thin: the baseline without the shard job's collectives. Four processes each hold one rank's
  memory (the same `MemoryStore`, the same owner rule) behind a ZeroMQ socket; the client
  sends the query to every one and merges the answers itself (`shard.scoring.merge_dual`).

Promotion: `Client.remember` of new entries in batches of 1, 16 and 256 (texts embedded by
the gateway, merged, sent to their owner in one exchange, logged and synced there), entries
per second; the thin path embeds in the client and sends each owner its part directly.

Targets (the issue): dual p50 - round p50 <= 0.3 ms; promotion of 256-entry batches
>= 20,000 entries/s.

Floors, measured in the same run on the same machine, bound what the targets can reach:
the gateway's embedding of 256 texts and the owner's WAL append + fdatasync of them (a
promotion cannot beat 256 / (embed + sync) entries/s); ``MemoryStore.remember`` of 256
entries in-process (the owner's whole share, sync included); the cheapest round trip there is
(``Client.stats``: client, gateway, wake-ups, one gather of counts, reply), which every
exchange pays on top of its work; and one in-process memory lookup in a 200-entry session,
which the owning rank adds to a dual round.
The gateway's own ``retrieve_ms`` (the round alone, without the client and the reply) is
reported beside each query system's latency.

    python -m bench.memory --quick
    python -m bench.memory --json
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import zmq

from aaflow_stream.client import Client
from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.query.memory_rows import memory_table
from aaflow_stream.query.protocol import MemoryEntry
from aaflow_stream.shard.memory import MemoryStore, memory_id, owner, rows_to_table
from aaflow_stream.shard.memory_sessions import Entry
from aaflow_stream.shard.scoring import merge_dual
from aaflow_stream.shard.wal import WriteAheadLog
from aaflow_stream.spec import MemorySpec, MemoryWeights
from aaflow_stream.synthetic import generate

from .kit import cli
from .kit.table import Column, render

N_SHARDS = 4
DIM = 384
SESSIONS = 16
ENTRIES_PER_SESSION = 200
K = 10
BATCHES = (1, 16, 256)
FLOOR_BATCHES = 20  # 256-entry batches timed for each promotion floor
FLOOR_LOOKUPS = 300
FLOOR_ROUND_TRIPS = 50
TARGET_DUAL_OVER_ROUND_MS = 0.3
TARGET_PROMOTE_EPS = 20_000
UP_TIMEOUT_S = 600.0

F32 = npt.NDArray[np.float32]


# ---------------------------------------------------------------- the thin path


class ThinSearch(msgspec.Struct, frozen=True, tag="search"):
    queries: bytes  # float32 (n, DIM)
    sessions: list[str]
    k: int
    now: float


class ThinRemember(msgspec.Struct, frozen=True, tag="remember"):
    rows: bytes  # an Arrow stream of memory rows


class ThinStop(msgspec.Struct, frozen=True, tag="stop"):
    pass


ThinRequest = ThinSearch | ThinRemember | ThinStop
WEIGHTS = MemoryWeights()


def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def thin_server(rank: int, directory: str, endpoint: str) -> None:
    """One rank's memory behind a ROUTER: answers searches and remembers until told to stop."""
    store = MemoryStore(Path(directory), dim=DIM, metric="ip", spec=MemorySpec(), record=True)
    decoder = msgspec.msgpack.Decoder(ThinRequest)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(endpoint)
    try:
        while True:
            peer, raw = sock.recv_multipart()
            request = decoder.decode(raw)
            if isinstance(request, ThinStop):
                sock.send_multipart([peer, b"bye"])
                return
            if isinstance(request, ThinSearch):
                queries = np.frombuffer(request.queries, dtype=np.float32).reshape(-1, DIM)
                hits = store.search(
                    queries, request.sessions, request.k, WEIGHTS, request.now, rank
                )
                sock.send_multipart([peer, _ipc(hits)])
            else:
                table = pa.ipc.open_stream(pa.py_buffer(request.rows)).read_all()
                store.remember(table)
                sock.send_multipart([peer, b"ok"])
    finally:
        store.close()
        sock.close()
        ctx.term()


class ThinClient:
    """Fans a request out to every thin server and merges the answers itself."""

    def __init__(self, endpoints: list[str]) -> None:
        self._ctx = zmq.Context()
        self._socks = []
        for endpoint in endpoints:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            self._socks.append(sock)
        self._encoder = msgspec.msgpack.Encoder()

    def search(self, query: F32, session: str, k: int) -> list[pa.Table]:
        message = self._encoder.encode(ThinSearch(query.tobytes(), [session], k, time.time()))
        for sock in self._socks:
            sock.send(message)
        tables = [pa.ipc.open_stream(pa.py_buffer(sock.recv())).read_all() for sock in self._socks]
        return merge_dual(tables, 1, k)

    def remember(self, session: str, texts: list[str], embedder: HashEmbedder) -> None:
        vectors = embedder.embed(texts)
        now = time.time()
        rows = [
            (Entry(memory_id(session, t), session, "summary", t, "user", now, 1.0, False), v)
            for t, v in zip(texts, vectors, strict=True)
        ]
        target = owner(session, 0, len(self._socks))  # a session lives on one rank
        table = rows_to_table(rows, DIM)
        self._socks[target].send(self._encoder.encode(ThinRemember(_ipc(table))))
        self._socks[target].recv()

    def close(self) -> None:
        stop = self._encoder.encode(ThinStop())
        for sock in self._socks:
            sock.send(stop)
            sock.recv()
            sock.close()
        self._ctx.term()


# ---------------------------------------------------------------- the engine


def topology_yaml(corpus: Path, data_dir: Path, run_dir: Path, endpoint: str) -> str:
    return f"""\
name: m1
data_dir: {data_dir}
run_dir: {run_dir}
sources:
  - paths: [{corpus}]
stages:
  - {{operator: load, batch_docs: 64}}
  - {{operator: transform, chunk_size: 512, overlap: 64, chain: true}}
  - {{operator: embed, replicas: 2, batch_size: 256}}
  - {{operator: upsert, replicas: 2, batch_size: 2048, chain: true}}
embedder: {{kind: hash, dim: {DIM}}}
shards: {{count: {N_SHARDS}, index: Flat, metric: ip}}
query: {{endpoint: "{endpoint}", max_batch: 64}}
"""


def session_texts(session: int, n: int, offset: int = 0) -> list[str]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()
    return [
        f"session {session} note {i}: {words[i % 10]} {words[(i * 7) % 10]} {i * 7919 % 10007}"
        for i in range(offset, offset + n)
    ]


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def timed(call: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    call()
    return (time.perf_counter() - t0) * 1e3


def measure_queries(
    client: Client, thin: ThinClient, queries: F32, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Each query through every system in turn (rotating the first): latencies in ms, and
    the gateway's ``retrieve_ms`` (the round alone) of the engine's systems."""

    def engine(q: F32, **kw: Any) -> float:
        return client.query_reply(q.tolist(), k=K, **kw).timings.retrieve_ms

    def thin_search(q: F32, session: str) -> None:
        thin.search(q[None, :], session, K)

    systems: dict[str, Callable[[F32, str], float | None]] = {
        "round": lambda q, s: engine(q),
        "dual": lambda q, s: engine(q, mode="both", session=s),
        "memory": lambda q, s: engine(q, mode="memory", session=s),
        "thin": thin_search,
    }
    names = list(systems)
    out: dict[str, list[float]] = {name: [] for name in names}
    retrieve: dict[str, list[float]] = {name: [] for name in names[:3]}
    for i, query in enumerate(queries):
        session = f"s{i % SESSIONS}"
        for j in range(len(names)):
            name = names[(i + j) % len(names)]
            t0 = time.perf_counter()
            round_ms = systems[name](query, session)
            ms = (time.perf_counter() - t0) * 1e3
            if i >= warmup:
                out[name].append(ms)
                if round_ms is not None:
                    retrieve[name].append(round_ms)
    return out, retrieve


def measure_promotion(
    client: Client, thin: ThinClient, totals: dict[int, int]
) -> dict[str, dict[int, float]]:
    """Entries per second of remembering new entries in batches of each size."""
    embedder = HashEmbedder(DIM)
    out: dict[str, dict[int, float]] = {"aaflow": {}, "thin": {}}
    for size, total in totals.items():
        for system in ("aaflow", "thin"):
            t0 = time.perf_counter()
            for b in range(total // size):
                session = f"p{size}-{b % 64}"
                texts = session_texts(b, size, offset=100_000 + b * size)
                texts = [f"{system} {t}" for t in texts]
                if system == "aaflow":
                    client.remember(session, texts)
                else:
                    thin.remember(session, texts, embedder)
            out[system][size] = (total // size) * size / (time.perf_counter() - t0)
    return out


def measure_floors(work: Path, client: Client) -> dict[str, float]:
    """The floors (module docstring), p50 in ms."""
    embedder = HashEmbedder(DIM)
    texts = [session_texts(b, 256, offset=500_000 + b * 256) for b in range(FLOOR_BATCHES)]
    embed = [timed(lambda: embedder.embed(t)) for t in texts]  # noqa: B023
    tables = [
        memory_table(f"floor-{b}", [MemoryEntry(text=t) for t in batch], embedder)
        for b, batch in enumerate(texts)
    ]
    wal = WriteAheadLog.open(
        work / "floor-wal", first_segment=1, after_lsn=0, apply=lambda _lsn, _batch: None
    )

    def log(table: pa.Table) -> None:
        wal.append(table.combine_chunks().to_batches()[0])
        wal.sync()

    sync = [timed(lambda: log(t)) for t in tables]  # noqa: B023
    wal.close()
    store = MemoryStore(work / "floor-memory", dim=DIM, metric="ip", spec=MemorySpec(), record=True)
    try:
        remember = [timed(lambda: store.remember(t)) for t in tables]  # noqa: B023
        held = [MemoryEntry(text=t) for t in session_texts(0, ENTRIES_PER_SESSION)]
        store.remember(memory_table("floor-lookup", held, embedder))
        query = embedder.embed(session_texts(0, 1))
        lookup = [
            timed(lambda: store.search(query, ["floor-lookup"], K, WEIGHTS, time.time(), 0))
            for _ in range(FLOOR_LOOKUPS)
        ]
    finally:
        store.close()
    # The gateway refuses an exchange of no entries; a census is the cheapest round there is.
    round_trip = [timed(client.stats) for _ in range(FLOOR_ROUND_TRIPS)]
    return {
        "embed_256_ms": percentile(embed, 50),
        "wal_sync_256_ms": percentile(sync, 50),
        "remember_256_ms": percentile(remember, 50),
        "round_trip_ms": percentile(round_trip, 50),
        "memory_lookup_ms": percentile(lookup, 50),
    }


# ---------------------------------------------------------------- the report


def table(res: dict[str, Any]) -> list[str]:
    f = res["floors"]
    q = res["queries"]
    cols = [
        Column("system", 8, left=True),
        Column("p50 ms", 8, ".3f"),
        Column("p99 ms", 8, ".3f"),
        Column("round p50 ms", 12, ".3f"),
    ]
    rows = [
        [name, q[name]["p50_ms"], q[name]["p99_ms"], q[name].get("retrieve_p50_ms")]
        for name in ("round", "dual", "memory", "thin")
    ]
    lines = [
        f"MEM1 memory: {res['vectors']:,} chunk vectors, {res['memory_entries']:,} memory entries "
        f"over {N_SHARDS} ranks, {res['n_queries']} queries, k={K}",
        "",
        *render(cols, rows),
        "",
        "(round p50: the gateway's retrieve_ms, the collective round alone)",
        f"dual - round p50: {res['dual_over_round_ms']:+.3f} ms "
        f"(target <= {TARGET_DUAL_OVER_ROUND_MS} ms): {'met' if res['meets_dual'] else 'MISSED'}; "
        f"in the round alone {res['dual_over_round_retrieve_ms']:+.3f} ms",
        f"floor: one memory lookup in-process (200-entry session) "
        f"{res['floors']['memory_lookup_ms']:.3f} ms, done by the owning rank inside the round",
        "",
    ]
    pcols = [Column("batch", 6), Column("aaflow e/s", 12, ",.0f"), Column("thin e/s", 12, ",.0f")]
    prow = [
        [size, res["promote_eps"][str(size)], res["thin_promote_eps"][str(size)]]
        for size in BATCHES
    ]
    lines += render(pcols, prow)
    lines += [
        "",
        f"promotion, 256-entry batches: {res['promote_eps']['256']:,.0f} entries/s "
        f"(target >= {TARGET_PROMOTE_EPS:,}): {'met' if res['meets_promote'] else 'MISSED'}",
        f"floors per 256-entry batch: embed {f['embed_256_ms']:.2f} ms + WAL append and "
        f"fdatasync {f['wal_sync_256_ms']:.2f} ms = a ceiling of "
        f"{res['promote_ceiling_eps']:,.0f} entries/s; remember in-process (the owner's share) "
        f"{f['remember_256_ms']:.2f} ms; a round trip with one collective (stats) "
        f"{f['round_trip_ms']:.2f} ms",
        f"load average {res['load_avg_start']} -> {res['load_avg_end']}",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, quick="W1 tiny, 200 queries, fewer promotions")
    parser.add_argument("--queries", type=cli.positive, help="default 1000 (quick 200)")
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args(argv)
    n_queries = args.queries or (200 if args.quick else 1000)
    totals = {1: 200, 16: 1024, 256: 4096} if args.quick else {1: 1000, 16: 4096, 256: 16384}
    load_start = cli.load_avg()
    work = Path(tempfile.mkdtemp(prefix="aaf-m1-"))
    data_dir, run_dir, topo = work / "data", work / "run", work / "m1.yaml"
    endpoint = f"ipc://{work}/q.sock"
    corpus = work / "corpus"
    generate(corpus, "tiny" if args.quick else "small")
    topo.write_text(topology_yaml(corpus, data_dir, run_dir, endpoint))
    spawn = multiprocessing.get_context("spawn")
    thin_endpoints = [f"ipc://{work}/thin-{r}.sock" for r in range(N_SHARDS)]
    servers = [
        spawn.Process(target=thin_server, args=(r, str(work / f"thin-{r}"), thin_endpoints[r]))
        for r in range(N_SHARDS)
    ]
    from tests.support.shards import drained_shards

    from .kit.engine import Served

    try:
        for server in servers:
            server.start()
        thin = ThinClient(thin_endpoints)
        with Served(topo, run_dir, timeout_s=UP_TIMEOUT_S) as served:
            deadline = time.monotonic() + UP_TIMEOUT_S
            while drained_shards(data_dir) < N_SHARDS and time.monotonic() < deadline:
                time.sleep(0.1)
            served.track()
            embedder = HashEmbedder(DIM)
            with Client(endpoint, timeout_s=60) as client:
                cli.progress("remembering the sessions' entries")
                for s in range(SESSIONS):
                    texts = session_texts(s, ENTRIES_PER_SESSION)
                    client.remember(f"s{s}", texts)
                    thin.remember(f"s{s}", texts, embedder)
                stats = client.stats()
                rng = np.random.default_rng(3)
                base = embedder.embed(session_texts(0, n_queries + args.warmup))
                queries = (base + 0.05 * rng.standard_normal(base.shape)).astype(np.float32)
                cli.progress(f"{len(queries)} queries through 4 systems")
                latencies, retrieve = measure_queries(client, thin, queries, args.warmup)
                cli.progress("promotions")
                promoted = measure_promotion(client, thin, totals)
                cli.progress("floors")
                floors = measure_floors(work, client)
        thin.close()
    finally:
        for server in servers:
            server.join(timeout=10)
            if server.is_alive():
                server.kill()
        shutil.rmtree(work, ignore_errors=True)
    summary: dict[str, dict[str, float]] = {
        name: {"p50_ms": percentile(xs, 50), "p99_ms": percentile(xs, 99)}
        for name, xs in latencies.items()
    }
    for name, xs in retrieve.items():
        summary[name]["retrieve_p50_ms"] = percentile(xs, 50)
    dual_over = summary["dual"]["p50_ms"] - summary["round"]["p50_ms"]
    batch_floor_ms = floors["embed_256_ms"] + floors["wal_sync_256_ms"]
    res: dict[str, Any] = {
        "vectors": stats.vectors,
        "memory_entries": sum(stats.memory_entries),
        "n_queries": n_queries,
        "queries": summary,
        "round_p50_ms": summary["round"]["p50_ms"],
        "dual_p50_ms": summary["dual"]["p50_ms"],
        "memory_p50_ms": summary["memory"]["p50_ms"],
        "thin_p50_ms": summary["thin"]["p50_ms"],
        "dual_over_round_ms": dual_over,
        "dual_over_round_retrieve_ms": (
            summary["dual"]["retrieve_p50_ms"] - summary["round"]["retrieve_p50_ms"]
        ),
        "floors": floors,
        "promote_ceiling_eps": 256 / batch_floor_ms * 1e3,
        "promote_eps": {str(k): v for k, v in promoted["aaflow"].items()},
        "thin_promote_eps": {str(k): v for k, v in promoted["thin"].items()},
        "meets_dual": dual_over <= TARGET_DUAL_OVER_ROUND_MS,
        "meets_promote": promoted["aaflow"][256] >= TARGET_PROMOTE_EPS,
        "load_avg_start": load_start,
        "load_avg_end": cli.load_avg(),
    }
    cli.report(table(res), res, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
