"""W1 reference floors: how fast two cores can go with no engine at all.

Neither is a system a user would run; they bound what any engine can reach on this machine,
so that a target can be judged against physics and not only against other frameworks.

- ``two_procs``: two processes, each loading, cutting, embedding and adding to its own
  four FAISS shards its half of the files (the engine's static split: ``files[i::2]``).
  Nothing moves between processes: the best case for two cores.
- ``raw_zmq``: the engine's process layout with nothing but the data path. Two workers
  (load -> transform -> embed -> route by ``chunk_id % 4``, batches of 2,048 a shard) send
  ids, vectors and chunk texts over plain pyzmq PUSH/PULL (``copy=False``, ``ipc://``) to
  four shard processes that add them to FAISS and keep the texts. No flow control beyond
  the high-water marks, no metadata columns, no acknowledgements, no log, no supervisor.

Both report like a baseline: total from the first read to the last vector added, start-up
(every process warm, sockets bound and connected) apart, the W1 check on the ids the shards
hold.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import tempfile
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from aaflow_stream.synthetic import corpus_files, expected_chunk_ids

from .kit.procs import RssSampler
from .w1_stages import (
    DIM,
    N_SHARDS,
    STAGES,
    BaselineResult,
    Ids,
    ShardWriter,
    embed_texts,
    embedder,
    load_file,
    transform_docs,
    verify_ids,
)

WORKERS = 2
EMBED_BATCH = 256
UPSERT_BATCH = 2048
HWM = 20  # messages a link may queue each side: the engine's window of 16 plus slack
READY_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 900.0


_children: list[mp.process.BaseProcess] = []  # of the run in progress


def _spawn(target: Callable[..., None], *args: Any) -> mp.process.BaseProcess:
    proc = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    proc.start()
    _children.append(proc)
    return proc


def _next(report: Any, deadline: float, waiting_for: str) -> tuple[str, Any]:
    """The children's next report; a child's error, or its death, is raised here."""
    while True:
        try:
            what, payload = report.get(timeout=0.5)
            break
        except queue.Empty:
            dead = [p for p in _children if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a child exited with code {dead[0].exitcode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no report while waiting for {waiting_for}") from None
    if what == "error":
        raise RuntimeError(payload)
    return what, payload


def _gather(report: Any, kind: str, count: int, timeout: float) -> list[Any]:
    """`count` reports of `kind` from the children."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        what, payload = _next(report, deadline, f"{count} '{kind}' reports")
        if what != kind:
            raise RuntimeError(f"expected a '{kind}' report, got '{what}'")
        got.append(payload)
    return got


def _guarded(report: Any, body: Callable[[], None]) -> None:
    try:
        body()
    except BaseException as exc:  # the parent must hear of it, not time out
        report.put(("error", f"{type(exc).__name__}: {exc}"))
        raise


def _run(
    name: str,
    corpus_dir: Path,
    start: Callable[[Any, Event], None],
    n_ready: int,
    collect: Callable[[Any], tuple[float, float, dict[str, float], list[Ids]]],
) -> BaselineResult:
    """Start the children, time start-up until all are ready, go, check what they stored."""
    expected = expected_chunk_ids(corpus_dir)
    ctx = mp.get_context("spawn")
    report: Any = ctx.Queue()
    go = ctx.Event()
    with RssSampler() as rss:
        t_start = time.perf_counter()
        try:
            start(report, go)  # spawns the children (_spawn)
            _gather(report, "ready", n_ready, READY_TIMEOUT_S)
            startup_s = time.perf_counter() - t_start
            go.set()
            first_read, last_applied, busy, per_shard = collect(report)
        finally:
            for proc in _children:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            _children.clear()
    chunks = sum(len(ids) for ids in per_shard)
    verified = verify_ids(per_shard, expected)
    total = last_applied - first_read
    return BaselineResult(name, total, startup_s, chunks, verified, busy, rss.peak_mb)


def _ready_then_go(report: Any, go: Event, who: str) -> tuple[dict[str, float], float]:
    """Warm the embedder, say ready, wait for go: (zeroed busy seconds, the first read's time)."""
    embedder()
    report.put(("ready", who))
    go.wait()
    return dict.fromkeys(STAGES, 0.0), time.time()


def _load_and_cut(path: str, busy: dict[str, float]) -> tuple[list[int], list[str]]:
    """Load and transform one file, its seconds added to `busy`."""
    t0 = time.perf_counter()
    docs = load_file(path)
    t1 = time.perf_counter()
    ids, texts = transform_docs(docs)
    busy["load"] += t1 - t0
    busy["transform"] += time.perf_counter() - t1
    return ids, texts


# ---------------------------------------------------------------- two_procs


def _two_procs_worker(report: Any, go: Event, paths: list[str], part: int) -> None:
    def body() -> None:
        writer = ShardWriter(N_SHARDS, DIM, UPSERT_BATCH)
        busy, first_read = _ready_then_go(report, go, f"worker {part}")
        for path in paths[part::WORKERS]:
            ids, texts = _load_and_cut(path, busy)
            t0 = time.perf_counter()
            vecs = embed_texts(texts, EMBED_BATCH)
            busy["embed"] += time.perf_counter() - t0
            writer.add(np.array(ids, np.int64), vecs)
        writer.flush()
        busy["upsert"] = writer.busy_s
        report.put(("done", (first_read, writer.last_applied, busy, _stored_ids(writer.indexes))))

    _guarded(report, body)


def _stored_ids(indexes: list[Any]) -> list[Ids]:
    import faiss

    return [faiss.vector_to_array(ix.id_map).astype(np.int64) for ix in indexes]


def _merge(
    results: list[tuple[float, float, dict[str, float], list[Ids]]],
) -> tuple[float, float, dict[str, float], list[Ids]]:
    """Earliest first read, latest last add, busy summed, each shard's ids concatenated."""
    busy = dict.fromkeys(STAGES, 0.0)
    for _, _, b, _ in results:
        for stage, seconds in b.items():
            busy[stage] += seconds
    shards = [
        np.concatenate([ids[s] for *_, ids in results if s < len(ids)] or [np.empty(0, np.int64)])
        for s in range(N_SHARDS)
    ]
    return min(r[0] for r in results), max(r[1] for r in results), busy, shards


def run_two_procs(corpus_dir: Path) -> BaselineResult:
    """Two processes, half the files each, nothing moved between them."""
    paths = [str(p) for p in corpus_files(corpus_dir)]

    def start(report: Any, go: Event) -> None:
        for i in range(WORKERS):
            _spawn(_two_procs_worker, report, go, paths, i)

    def collect(report: Any) -> tuple[float, float, dict[str, float], list[Ids]]:
        return _merge(_gather(report, "done", WORKERS, RUN_TIMEOUT_S))

    return _run("two_procs", corpus_dir, start, WORKERS, collect)


# ---------------------------------------------------------------- raw_zmq


def _shard_endpoint(run_dir: str, shard: int) -> str:
    return f"ipc://{run_dir}/shard-{shard}.sock"


def _raw_zmq_shard(report: Any, go: Event, run_dir: str, shard: int) -> None:
    def body() -> None:
        import faiss

        index = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        ctx = zmq.Context()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.bind(_shard_endpoint(run_dir, shard))
        report.put(("ready", f"shard {shard}"))
        texts: list[zmq.Frame] = []  # what a store keeps to return hits with their text
        busy = 0.0
        last_applied = 0.0
        ended = 0
        while ended < WORKERS:
            frames = sock.recv_multipart(copy=False)
            if len(frames) == 1:  # a worker's end of stream
                ended += 1
                continue
            t0 = time.perf_counter()
            ids = np.frombuffer(frames[0].buffer, np.int64)
            vecs = np.frombuffer(frames[1].buffer, np.float32).reshape(len(ids), DIM)
            index.add_with_ids(vecs, ids)
            texts += frames[2:]
            busy += time.perf_counter() - t0
            last_applied = time.time()
        sock.close(linger=0)
        ctx.term()
        report.put(("shard", (shard, last_applied, busy, _stored_ids([index])[0])))

    _guarded(report, body)


class _Outbox:
    """One shard's pending rows; sent as [ids, vectors, text offsets, text bytes]."""

    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self.sock = sock
        self.ids: list[Ids] = []
        self.vecs: list[np.ndarray[Any, Any]] = []
        self.texts: list[bytes] = []
        self.rows = 0

    def add(self, ids: Ids, vecs: np.ndarray[Any, Any], texts: list[bytes]) -> None:
        self.ids.append(ids)
        self.vecs.append(vecs)
        self.texts += texts
        self.rows += len(ids)
        if self.rows >= UPSERT_BATCH:
            self.send()

    def send(self) -> None:
        if not self.rows:
            return
        offsets = np.cumsum([0] + [len(t) for t in self.texts], dtype=np.int64)
        ids, vecs = np.concatenate(self.ids), np.concatenate(self.vecs)
        self.sock.send_multipart(
            [ids.data, vecs.data, offsets.data, b"".join(self.texts)], copy=False
        )
        self.ids, self.vecs, self.texts, self.rows = [], [], [], 0


def _raw_zmq_worker(report: Any, go: Event, run_dir: str, paths: list[str], part: int) -> None:
    def body() -> None:
        ctx = zmq.Context()
        outboxes = []
        for shard in range(N_SHARDS):
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, HWM)
            sock.connect(_shard_endpoint(run_dir, shard))
            outboxes.append(_Outbox(sock))
        busy, first_read = _ready_then_go(report, go, f"worker {part}")
        for path in paths[part::WORKERS]:
            ids, texts = _load_and_cut(path, busy)
            for i in range(0, len(ids), EMBED_BATCH):
                t2 = time.perf_counter()
                batch_texts = texts[i : i + EMBED_BATCH]
                vecs = embed_texts(batch_texts, EMBED_BATCH)
                t3 = time.perf_counter()
                batch_ids = np.array(ids[i : i + EMBED_BATCH], np.int64)
                encoded = [t.encode() for t in batch_texts]
                shard_of = batch_ids % N_SHARDS
                for shard, box in enumerate(outboxes):
                    rows = np.flatnonzero(shard_of == shard)
                    box.add(batch_ids[rows], vecs[rows], [encoded[r] for r in rows])
                busy["embed"] += t3 - t2
                busy["upsert"] += time.perf_counter() - t3
        for box in outboxes:
            box.send()
            box.sock.send(b"")  # end of stream
            box.sock.close(linger=-1)  # everything must arrive
        ctx.term()
        report.put(("worker", (first_read, busy)))

    _guarded(report, body)


def run_raw_zmq(corpus_dir: Path) -> BaselineResult:
    """Two workers, four shard processes, plain pyzmq between them; nothing else."""
    paths = [str(p) for p in corpus_files(corpus_dir)]
    run_dir = tempfile.mkdtemp(prefix="w1-raw-zmq-")

    def start(report: Any, go: Event) -> None:
        for shard in range(N_SHARDS):
            _spawn(_raw_zmq_shard, report, go, run_dir, shard)
        _gather(report, "ready", N_SHARDS, READY_TIMEOUT_S)  # bound before anyone connects
        for i in range(WORKERS):
            _spawn(_raw_zmq_worker, report, go, run_dir, paths, i)

    def collect(report: Any) -> tuple[float, float, dict[str, float], list[Ids]]:
        workers: list[tuple[float, dict[str, float]]] = []
        shards: dict[int, tuple[float, float, Ids]] = {}
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while len(workers) < WORKERS or len(shards) < N_SHARDS:
            what, payload = _next(report, deadline, "the workers and shards to finish")
            if what == "worker":
                workers.append(payload)
            else:
                shard, last, busy_s, ids = payload
                shards[shard] = (last, busy_s, ids)
        busy = dict.fromkeys(STAGES, 0.0)
        for _, b in workers:
            for stage, seconds in b.items():
                busy[stage] += seconds
        busy["upsert"] += sum(b for _, b, _ in shards.values())
        first_read = min(w[0] for w in workers)
        last_applied = max(s[0] for s in shards.values())
        return first_read, last_applied, busy, [shards[s][2] for s in range(N_SHARDS)]

    try:
        return _run("raw_zmq", corpus_dir, start, WORKERS, collect)
    finally:
        for sock in Path(run_dir).glob("*.sock"):
            sock.unlink()
        Path(run_dir).rmdir()
