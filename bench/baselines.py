"""W1 baseline pipelines (docs/benchmarks.md): the same stage functions run by other systems.

Every baseline loads and parses the JSONL files, cuts 512/64 windows with `chunk_windows`
and `chunk_id`, embeds batches with `HashEmbedder`, and upserts into 4 FAISS shards
(`shard = chunk_id % 4`, batches of 2,048 a shard). Each returns a `BaselineResult`:

- total_s: wall seconds from the first document read to the last vector applied. The
  first read is stamped with `time.time()` where it happens (often in a worker process),
  so pool, cluster and actor start-up stay outside it even when a framework starts its
  workers lazily.
- startup_s: pool / cluster ready, measured apart (for lazily started workers: from the
  start call to the first read).
- stages: busy seconds of load, transform, embed and upsert, summed over workers.
- verified: the shards hold exactly the expected chunk ids, each once, each in its shard.
- peak_rss_mb: peak RSS summed over the process tree, sampled every 50 ms (shared pages,
  e.g. Ray's object store, count once per process that maps them).
- cpu_s: CPU seconds (user + system) of the whole command, start-up and teardown included:
  the child interpreter and every process it waited for (``RUSAGE_CHILDREN``). A more stable
  figure than wall time on a noisy machine; processes a system leaves for others to reap
  (Ray's daemons) are not counted.

Each run happens in a fresh interpreter (``run_isolated``), so that RSS and imports do not leak
from one run into the next. The baselines alone, without the engine:

    python -m bench.ingest --preset small --systems sequential,mp_pool
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aaflow_stream.synthetic import corpus_files, expected_chunk_ids
from aaflow_stream.text.chunking import chunk_id, chunk_windows

from .floors import run_raw_zmq, run_two_procs
from .kit.procs import ChildrenCpu, RssSampler
from .w1_stages import (
    CHUNK_OVERLAP,
    CHUNK_SIZE,
    DIM,
    N_SHARDS,
    STAGES,
    BaselineResult,
    FileResult,
    Ids,
    ShardWriter,
    Vecs,
    embed_texts,
    embed_timed,
    embedder,
    load_file,
    process_file,
    transform_docs,
    worker_ready,
)

REPO_DIR = Path(__file__).resolve().parents[1]
WORKERS = 2


def _finish(
    name: str,
    shards: ShardWriter,
    expected: set[int],
    first_read: float,
    startup_s: float,
    busy: dict[str, float],
    rss: RssSampler,
) -> BaselineResult:
    shards.flush()
    stages = {**busy, "upsert": shards.busy_s}
    total = shards.last_applied - first_read
    verified = shards.verify(expected)
    chunks = sum(int(ix.ntotal) for ix in shards.indexes)
    return BaselineResult(name, total, startup_s, chunks, verified, stages, rss.peak_mb)


def _add_file(busy: dict[str, float], res: FileResult) -> None:
    busy["load"] += res.load_s
    busy["transform"] += res.transform_s
    busy["embed"] += res.embed_s


# ---------------------------------------------------------------- the baselines


def run_sequential(
    corpus_dir: Path, shards: int = N_SHARDS, embed_batch: int = 256, upsert_batch: int = 2048
) -> BaselineResult:
    """One process, stage after stage over the whole corpus: the floor of each stage."""
    expected = expected_chunk_ids(corpus_dir)
    files = corpus_files(corpus_dir)
    with RssSampler() as rss:
        t_start = time.perf_counter()
        writer = ShardWriter(shards, DIM, upsert_batch)
        embedder()
        startup_s = time.perf_counter() - t_start
        busy = dict.fromkeys(STAGES, 0.0)
        first_read = time.time()
        t0 = time.perf_counter()
        docs = [doc for path in files for doc in load_file(path)]
        t1 = time.perf_counter()
        ids, texts = transform_docs(docs)
        t2 = time.perf_counter()
        vecs = embed_texts(texts, embed_batch)
        t3 = time.perf_counter()
        busy.update(load=t1 - t0, transform=t2 - t1, embed=t3 - t2)
        writer.add(np.array(ids, np.int64), vecs)
        return _finish("sequential", writer, expected, first_read, startup_s, busy, rss)


async def _asyncio_flow(
    files: list[Path],
    pool: concurrent.futures.ProcessPoolExecutor,
    writer: ShardWriter,
    busy: dict[str, float],
    embed_batch: int,
) -> float:
    """load -> transform -> embed (pool) -> upsert, bounded queues between the stages."""
    loop = asyncio.get_running_loop()
    n_embedders = 2 * WORKERS  # two batches in flight a worker keeps both busy
    docs_q: asyncio.Queue[list[dict[str, Any]] | None] = asyncio.Queue(maxsize=4)
    batch_q: asyncio.Queue[tuple[Ids, list[str]] | None] = asyncio.Queue(maxsize=4)
    vecs_q: asyncio.Queue[tuple[Ids, Vecs] | None] = asyncio.Queue(maxsize=4)
    first_read = time.time()

    async def load() -> None:
        for path in files:
            t0 = time.perf_counter()
            docs = load_file(path)
            busy["load"] += time.perf_counter() - t0
            await docs_q.put(docs)
        await docs_q.put(None)

    async def transform() -> None:
        ids: list[int] = []
        texts: list[str] = []
        while (docs := await docs_q.get()) is not None:
            t0 = time.perf_counter()
            more_ids, more_texts = transform_docs(docs)
            ids += more_ids
            texts += more_texts
            busy["transform"] += time.perf_counter() - t0
            while len(texts) >= embed_batch:
                await batch_q.put((np.array(ids[:embed_batch], np.int64), texts[:embed_batch]))
                del ids[:embed_batch], texts[:embed_batch]
        if texts:
            await batch_q.put((np.array(ids, np.int64), texts))
        for _ in range(n_embedders):
            await batch_q.put(None)

    async def embed() -> None:
        while (item := await batch_q.get()) is not None:
            ids, texts = item
            vecs, busy_s = await loop.run_in_executor(pool, embed_timed, texts)
            busy["embed"] += busy_s
            await vecs_q.put((ids, vecs))
        await vecs_q.put(None)

    async def upsert() -> None:
        finished = 0
        while finished < n_embedders:
            item = await vecs_q.get()
            if item is None:
                finished += 1
            else:
                writer.add(*item)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(load())
        tg.create_task(transform())
        for _ in range(n_embedders):
            tg.create_task(embed())
        tg.create_task(upsert())
    return first_read


def run_asyncio(
    corpus_dir: Path, shards: int = N_SHARDS, embed_batch: int = 256, upsert_batch: int = 2048
) -> BaselineResult:
    """One process and an event loop; embedding in a ProcessPoolExecutor of 2."""
    expected = expected_chunk_ids(corpus_dir)
    files = corpus_files(corpus_dir)
    with RssSampler() as rss:
        t_start = time.perf_counter()
        writer = ShardWriter(shards, DIM, upsert_batch)
        ctx = mp.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
            pids: set[int] = set()
            for _ in range(50):
                pids |= {f.result() for f in [pool.submit(worker_ready) for _ in range(WORKERS)]}
                if len(pids) >= WORKERS:
                    break
            startup_s = time.perf_counter() - t_start
            busy = dict.fromkeys(STAGES, 0.0)
            first_read = asyncio.run(_asyncio_flow(files, pool, writer, busy, embed_batch))
            return _finish("asyncio", writer, expected, first_read, startup_s, busy, rss)


def run_mp_pool(
    corpus_dir: Path, shards: int = N_SHARDS, embed_batch: int = 256, upsert_batch: int = 2048
) -> BaselineResult:
    """multiprocessing.Pool(2) loads, transforms and embeds a file a task; main upserts."""
    expected = expected_chunk_ids(corpus_dir)
    paths = [str(p) for p in corpus_files(corpus_dir)]
    with RssSampler() as rss:
        t_start = time.perf_counter()
        writer = ShardWriter(shards, DIM, upsert_batch)
        with mp.get_context("spawn").Pool(WORKERS) as pool:
            pids: set[int] = set()
            for _ in range(50):
                pids |= set(pool.starmap(worker_ready, [()] * WORKERS, chunksize=1))
                if len(pids) >= WORKERS:
                    break
            startup_s = time.perf_counter() - t_start
            busy = dict.fromkeys(STAGES, 0.0)
            first_read = float("inf")
            jobs = [(p, embed_batch) for p in paths]
            for res in pool.imap_unordered(_process_file_star, jobs, chunksize=1):
                first_read = min(first_read, res.first_read)
                _add_file(busy, res)
                writer.add(res.ids, res.vecs)
            return _finish("mp_pool", writer, expected, first_read, startup_s, busy, rss)


def _process_file_star(job: tuple[str, int]) -> FileResult:
    return process_file(*job)


def _export_pythonpath() -> None:
    """Workers started by a framework (not forked from us) must find the ``bench`` package."""
    parts = [str(REPO_DIR), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in parts if p))


def run_dask(
    corpus_dir: Path, shards: int = N_SHARDS, embed_batch: int = 256, upsert_batch: int = 2048
) -> BaselineResult:
    """dask.distributed LocalCluster, 2 worker processes of 1 thread; a task per file."""
    import logging

    from dask.distributed import Client, LocalCluster, as_completed

    expected = expected_chunk_ids(corpus_dir)
    paths = [str(p) for p in corpus_files(corpus_dir)]
    _export_pythonpath()
    with RssSampler() as rss:
        t_start = time.perf_counter()
        writer = ShardWriter(shards, DIM, upsert_batch)
        with (
            LocalCluster(
                n_workers=WORKERS,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            client.wait_for_workers(WORKERS)
            client.run(worker_ready)
            startup_s = time.perf_counter() - t_start
            busy = dict.fromkeys(STAGES, 0.0)
            first_read = float("inf")
            futures = client.map(process_file, paths, embed_batch=embed_batch, pure=False)
            for fut in as_completed(futures):
                res: FileResult = fut.result()
                fut.release()
                first_read = min(first_read, res.first_read)
                _add_file(busy, res)
                writer.add(res.ids, res.vecs)
            return _finish("dask", writer, expected, first_read, startup_s, busy, rss)


class RayFileActor:
    """Ray Data actor: load + transform + embed of each file in its batch."""

    def __init__(self, embed_batch: int) -> None:
        self.embed_batch = embed_batch
        embedder()

    def __call__(self, batch: dict[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        results = [process_file(str(p), self.embed_batch) for p in batch["path"]]
        n = sum(len(r.ids) for r in results)
        # Per-file statistics travel in the first row of each output batch.
        stats = {k: np.zeros(n) for k in ("load_s", "transform_s", "embed_s")}
        stats["first_read"] = np.full(n, np.inf)
        if n:
            stats["load_s"][0] = sum(r.load_s for r in results)
            stats["transform_s"][0] = sum(r.transform_s for r in results)
            stats["embed_s"][0] = sum(r.embed_s for r in results)
            stats["first_read"][0] = min(r.first_read for r in results)
        return {
            "id": np.concatenate([r.ids for r in results]),
            "embedding": np.concatenate([r.vecs for r in results]),
            **stats,
        }


def run_ray(
    corpus_dir: Path, shards: int = N_SHARDS, embed_batch: int = 256, upsert_batch: int = 2048
) -> BaselineResult:
    """Ray Data: map_batches over files on an actor pool of 2; the driver upserts."""
    import logging

    import ray

    expected = expected_chunk_ids(corpus_dir)
    paths = [str(p) for p in corpus_files(corpus_dir)]
    _export_pythonpath()
    with RssSampler() as rss:
        t_start = time.perf_counter()
        writer = ShardWriter(shards, DIM, upsert_batch)
        ray.init(
            num_cpus=WORKERS,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        try:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            init_s = time.perf_counter() - t_start
            exec_start = time.time()
            items = [{"path": p} for p in paths]
            files_ds = ray.data.from_items(items, override_num_blocks=len(paths))
            ds = files_ds.map_batches(
                RayFileActor,
                fn_constructor_kwargs={"embed_batch": embed_batch},
                batch_size=1,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=WORKERS),
                num_cpus=1,
            )
            busy = dict.fromkeys(STAGES, 0.0)
            first_read = float("inf")
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                busy["load"] += float(batch["load_s"].sum())
                busy["transform"] += float(batch["transform_s"].sum())
                busy["embed"] += float(batch["embed_s"].sum())
                first_read = min(first_read, float(batch["first_read"].min()))
                writer.add(batch["id"].astype(np.int64), np.ascontiguousarray(batch["embedding"]))
            # Actors start lazily inside the execution: their start-up counts as start-up.
            startup_s = init_s + max(0.0, first_read - exec_start)
            return _finish("ray", writer, expected, first_read, startup_s, busy, rss)
        finally:
            ray.shutdown()


def run_llamaindex(
    corpus_dir: Path, shards: int = N_SHARDS, embed_batch: int = 256, upsert_batch: int = 2048
) -> BaselineResult:
    """LlamaIndex IngestionPipeline(num_workers=2) of custom TransformComponents."""
    try:
        from llama_index.core import Document
        from llama_index.core.ingestion import IngestionPipeline
    except ImportError as exc:
        return BaselineResult("llamaindex", skipped=f"llama-index-core not importable: {exc}")
    transforms = _llama_transforms()

    expected = expected_chunk_ids(corpus_dir)
    paths = [str(p) for p in corpus_files(corpus_dir)]
    with RssSampler() as rss:
        pipeline = IngestionPipeline(
            transformations=[
                transforms["W1Load"](),
                transforms["W1Chunk"](),
                transforms["W1Embed"](embed_batch=embed_batch),
            ],
            disable_cache=True,  # the cache hashes every node's text: not part of W1
        )
        writer = ShardWriter(shards, DIM, upsert_batch)
        # One input Document per file (its text is the path): workers do the reading.
        inputs = [Document(text=p, id_=p) for p in paths]
        run_start = time.time()
        nodes = pipeline.run(documents=inputs, num_workers=WORKERS)
        busy = dict.fromkeys(STAGES, 0.0)
        first_read = float("inf")
        for node in nodes:
            stats = node.metadata.pop(LLAMA_STATS_KEY, None)
            if stats:
                for stage in ("load", "transform", "embed"):
                    busy[stage] += stats[stage]
                first_read = min(first_read, stats["first_read"])
        t0 = time.perf_counter()
        ids = np.array([node.metadata["chunk_id"] for node in nodes], np.int64)
        vecs = np.array([node.embedding for node in nodes], np.float32)
        # Converting LlamaIndex's list-of-floats embeddings back counts as upsert work.
        writer.busy_s += time.perf_counter() - t0
        writer.add(ids, vecs)
        startup_s = max(0.0, first_read - run_start)  # the pool is spawned inside run()
        return _finish("llamaindex", writer, expected, first_read, startup_s, busy, rss)


# LlamaIndex TransformComponents are pydantic classes that spawned workers unpickle by
# name; they are built on first use (module __getattr__) so that no other baseline pays
# for importing llama_index.
LLAMA_STATS_KEY = "_w1_stats"
_LLAMA_NAMES = ("W1Load", "W1Chunk", "W1Embed")
_LLAMA_STATS: dict[str, float] = {}


def _llama_stat(stage: str, seconds: float) -> None:
    _LLAMA_STATS[stage] = _LLAMA_STATS.get(stage, 0.0) + seconds


def _llama_transforms() -> dict[str, Any]:
    if "W1Load" in globals():
        return {name: globals()[name] for name in _LLAMA_NAMES}
    from llama_index.core.schema import BaseNode, Document, TextNode, TransformComponent

    class W1Load(TransformComponent):
        """Each input node's text is a JSONL path; emits one Document a line."""

        def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
            _LLAMA_STATS["first_read"] = min(_LLAMA_STATS.get("first_read", np.inf), time.time())
            t0 = time.perf_counter()
            out: list[BaseNode] = []
            for node in nodes:
                for doc in load_file(node.get_content()):
                    meta = {"source": doc["source"], "ts": doc["ts"]}
                    out.append(Document(text=doc["text"], id_=doc["doc_id"], metadata=meta))
            _llama_stat("load", time.perf_counter() - t0)
            return out

    class W1Chunk(TransformComponent):
        """W1 windows as TextNodes carrying their chunk id."""

        def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
            t0 = time.perf_counter()
            out: list[BaseNode] = []
            for doc in nodes:
                chunks = chunk_windows(doc.get_content(), CHUNK_SIZE, CHUNK_OVERLAP)
                for seq, text in enumerate(chunks):
                    cid = chunk_id(doc.id_, seq)
                    out.append(TextNode(text=text, id_=str(cid), metadata={"chunk_id": cid}))
            _llama_stat("transform", time.perf_counter() - t0)
            return out

    class W1Embed(TransformComponent):
        """HashEmbedder in batches; embeddings become LlamaIndex's lists of floats."""

        embed_batch: int = 256

        def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[BaseNode]:
            t0 = time.perf_counter()
            vecs = embed_texts([n.get_content() for n in nodes], self.embed_batch)
            for node, vec in zip(nodes, vecs.tolist(), strict=True):
                node.embedding = vec
            _llama_stat("embed", time.perf_counter() - t0)
            if nodes:  # the worker's statistics ride back on its first node
                nodes[0].metadata[LLAMA_STATS_KEY] = dict(_LLAMA_STATS)
                _LLAMA_STATS.clear()
            return list(nodes)

    classes: dict[str, Any] = {"W1Load": W1Load, "W1Chunk": W1Chunk, "W1Embed": W1Embed}
    for name, cls in classes.items():
        cls.__qualname__ = name  # pickled by reference: bench.baselines.<name>
        globals()[name] = cls
    return classes


def __getattr__(name: str) -> Any:
    if name in _LLAMA_NAMES:
        return _llama_transforms()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


SYSTEMS: dict[str, Callable[..., BaselineResult]] = {
    "sequential": run_sequential,
    "asyncio": run_asyncio,
    "mp_pool": run_mp_pool,
    "dask": run_dask,
    "ray": run_ray,
    "llamaindex": run_llamaindex,
    # Reference floors (bench/floors.py), not systems a user would run.
    "two_procs": run_two_procs,
    "raw_zmq": run_raw_zmq,
}


# ---------------------------------------------------------------- one isolated run


def run_isolated(name: str, corpus_dir: Path) -> BaselineResult:
    """Run one baseline in a fresh interpreter so RSS and imports do not leak across runs."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "bench.baselines", name, "--corpus", str(corpus_dir.resolve())]
        with ChildrenCpu() as cpu:
            proc = subprocess.run(
                [*cmd, "--result", str(out)], capture_output=True, text=True, cwd=REPO_DIR
            )
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return BaselineResult(name, skipped="failed: " + " | ".join(tail))
        data = json.loads(out.read_text())
        return BaselineResult(**{**data, "cpu_s": cpu.seconds})


def main(argv: list[str] | None = None) -> int:
    """The fresh interpreter of ``run_isolated``: one run, its result as JSON into --result."""
    parser = argparse.ArgumentParser(description="one isolated W1 baseline run (for bench.ingest)")
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    result = SYSTEMS[args.system](args.corpus)
    args.result.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    # Run as the module bench.baselines, not __main__: workers unpickle what it defines by name.
    from bench import baselines

    sys.exit(baselines.main())
