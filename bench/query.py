"""Q1 retrieval (docs/benchmarks.md): the engine's query path next to in-process FAISS baselines.

The engine (`aaflow-stream up --detach`) ingests a W1 corpus into 4 `IndexFlatIP` shard ranks
and serves queries on the topology's endpoint; once every shard has taken its end-of-stream
snapshot (`<data_dir>/shard-*/snapshot/`), the shards are read back from disk and the same vectors
are loaded in this process for the baselines. Query texts are deterministic 100-300
character slices of the corpus's documents. Measured, on the same query texts:

- aaflow: p50 / p99 latency of single queries from one blocking `Client`, one at a time,
  after a warm-up (client -> gateway -> embed -> MPI broadcast / gather -> client), and
  queries/s with `--concurrency` (64) queries in flight: 64 blocking clients, one thread
  each. Then a probe: one `AsyncClient` keeping 64 in flight over 512 queries, reported as
  answered or stalled (a client that pipelines requests on one socket can lose the
  gateway's wake-up; several clients mask it).
- floor: one in-process `faiss.IndexFlatIP` over all vectors. Single-query latency is
  embed + search of one query; queries/s embeds and searches batches of 64.
- shards: `faiss.IndexShards` over 4 `IndexFlatIP` (the engine's shards) in one process,
  measured like the floor.

Exactness: for a sample of queries, the engine's top-k ids must equal the exact top-k of
the floor's full float32 score vector, ties going to the smaller chunk id (numpy lexsort).
A mismatch whose true (float64) scores differ by at most 1e-6 is counted as a float32
near-tie: there rounding, which differs between BLAS and SIMD paths, decides the order (the
floor's own FAISS top-k disagrees with the numpy order in the same places). `exact` is true
when every mismatch is such a near-tie; `exact_strict` when there is no mismatch at all.

Targets (the issue): aaflow p50 <= floor p50 + 1 ms; aaflow qps64 >= 0.5x floor qps64.

    python -m bench.query --quick
    python -m bench.query --json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from aaflow_stream.client import AsyncClient, Client
from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.synthetic import corpus_files, generate
from tests.support.shards import drained_shards, read_shards

from .kit import cli
from .kit.engine import Served
from .kit.table import Column, render

N_SHARDS = 4
DIM = 384
XLARGE_DIR = Path("/tmp/aaflow-w1-xlarge")
SMALL_DIR = Path("/tmp/aaflow-w1-small")
TARGET_P50_OVER_FLOOR_MS = 1.0
TARGET_QPS_VS_FLOOR = 0.5
UP_TIMEOUT_S = 600.0
INGEST_TIMEOUT_S = 600.0
ASYNC_PROBE_TIMEOUT_S = 5.0
NEAR_TIE = 1e-6  # a few float32 ulps at scores <= 1
ASYNC_PROBE_QUERIES = 512
SYSTEMS = ("aaflow", "floor", "shards")

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]


# ---------------------------------------------------------------- corpus and queries


def build_corpus(work: Path, quick: bool, n_files: int) -> tuple[Path, list[Path]]:
    """The corpus directory: W1 small (quick) or symlinks to the first files of xlarge."""
    if quick:
        generate(SMALL_DIR, "small")
        return SMALL_DIR, corpus_files(SMALL_DIR)
    generate(XLARGE_DIR, "xlarge")
    files = corpus_files(XLARGE_DIR)[:n_files]
    corpus = work / "corpus"
    corpus.mkdir()
    for f in files:
        (corpus / f.name).symlink_to(f)
    return corpus, files


def query_texts(files: Sequence[Path], n: int, seed: int = 0) -> list[str]:
    """`n` deterministic 100-300 character slices of the corpus's documents."""
    docs: list[str] = []
    for path in files:
        with path.open("rb") as fh:
            docs.extend(json.loads(line)["text"] for line in fh)
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for d in rng.integers(0, len(docs), size=n).tolist():
        text = docs[d]
        length = int(rng.integers(100, 301))
        start = int(rng.integers(0, max(1, len(text) - length)))
        out.append(text[start : start + length])
    return out


# ---------------------------------------------------------------- the engine


def topology_yaml(corpus: Path, data_dir: Path, run_dir: Path, endpoint: str) -> str:
    return f"""\
name: q1
data_dir: {data_dir}
run_dir: {run_dir}
sources:
  - paths: [{corpus}]
stages:
  - {{operator: load, replicas: 1, batch_docs: 64}}
  - {{operator: transform, replicas: 1, chunk_size: 512, overlap: 64, normalize: false,
     chain: true}}
  - {{operator: embed, replicas: 2, batch_size: 256}}
  - {{operator: upsert, replicas: 2, batch_size: 2048, chain: true}}
embedder: {{kind: hash, dim: {DIM}}}
shards: {{count: {N_SHARDS}, index: Flat, metric: ip}}
query: {{endpoint: "{endpoint}", max_batch: 64}}
cache: {{enabled: false}}  # Q1 measures rounds; repeated texts would hit the semantic cache
"""


def wait_persisted(data_dir: Path, timeout_s: float) -> float:
    """Wait for every shard's end-of-stream snapshot; returns the seconds waited."""
    t0 = time.perf_counter()
    while drained_shards(data_dir) < N_SHARDS:
        if time.perf_counter() - t0 > timeout_s:
            raise SystemExit(f"shards not persisted within {timeout_s}s")
        time.sleep(0.1)
    return time.perf_counter() - t0


def load_shards(data_dir: Path) -> list[tuple[I64, F32]]:
    """Each shard's (ids, vectors), read back from its snapshot."""
    return [(shard.ids, shard.vectors()) for shard in read_shards(data_dir)]


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def engine_single(endpoint: str, texts: list[str], k: int, warmup: int) -> dict[str, Any]:
    """One blocking client, one query at a time: latency and per-query server timings."""
    lat: list[float] = []
    embed: list[float] = []
    retrieve: list[float] = []
    total: list[float] = []
    hits: list[list[int]] = []
    with Client(endpoint, timeout_s=30.0) as client:
        for i in range(warmup):
            client.query(texts[i % len(texts)], k)
        for text in texts:
            t0 = time.perf_counter()
            reply = client.query_reply(text, k)
            lat.append((time.perf_counter() - t0) * 1e3)
            hits.append([h.chunk_id for h in reply.hits])
            embed.append(reply.timings.embed_ms)
            retrieve.append(reply.timings.retrieve_ms)
            total.append(reply.timings.total_ms)
        vectors = client.stats().vectors
    return {
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "server_embed_p50_ms": percentile(embed, 50),
        "server_retrieve_p50_ms": percentile(retrieve, 50),
        "server_total_p50_ms": percentile(total, 50),
        "latencies_ms": lat,
        "hits": hits,
        "vectors": vectors,
    }


def engine_concurrent(endpoint: str, texts: list[str], k: int, concurrency: int) -> dict[str, Any]:
    """Queries/s with `concurrency` blocking clients (one thread each), one query in flight each.

    Several clients rather than one `AsyncClient` with 64 outstanding: the gateway loses its
    wake-up when one client pipelines requests (see `async_probe`), and stalls.
    """
    barrier = threading.Barrier(concurrency + 1)
    batches: list[int] = []
    errors: list[str] = []

    def worker(i: int) -> None:
        with Client(endpoint, timeout_s=30.0) as client:
            client.query(texts[i % len(texts)], k)  # warm-up: connect
            barrier.wait()
            for text in texts[i::concurrency]:
                try:
                    batches.append(client.query_reply(text, k).timings.batch)
                except Exception as exc:  # a stall: report it, do not hang the run
                    errors.append(repr(exc))
                    return

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    return {
        "qps": len(batches) / elapsed if not errors else 0.0,
        "batch_mean": float(np.mean(batches)) if batches else 0.0,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


async def _async_probe(endpoint: str, texts: list[str], k: int, concurrency: int) -> int:
    done = 0
    sem = asyncio.Semaphore(concurrency)
    async with AsyncClient(endpoint, timeout_s=ASYNC_PROBE_TIMEOUT_S) as client:

        async def one(text: str) -> None:
            nonlocal done
            async with sem:
                await client.query(text, k)
                done += 1

        with contextlib.suppress(Exception):
            await asyncio.gather(*(one(t) for t in texts))
    return done


def async_probe(endpoint: str, texts: list[str], k: int, concurrency: int) -> dict[str, Any]:
    """One AsyncClient keeping `concurrency` queries in flight: answered all, or stalled?"""
    t0 = time.perf_counter()
    done = asyncio.run(_async_probe(endpoint, texts, k, concurrency))
    elapsed = time.perf_counter() - t0
    ok = done == len(texts)
    return {
        "async_ok": ok,
        "async_answered": done,
        "async_sent": len(texts),
        "async_qps": done / elapsed if ok else 0.0,
    }


# ---------------------------------------------------------------- in-process baselines


def measure_inprocess(
    search: Callable[[F32, int], tuple[Any, Any]],
    texts: list[str],
    k: int,
    warmup: int,
    batch: int,
) -> dict[str, Any]:
    """Single-query latency (embed + search one query) and qps with batches of `batch`."""
    emb = HashEmbedder(DIM)
    for i in range(warmup):
        search(emb.embed([texts[i % len(texts)]]), k)
    lat: list[float] = []
    for text in texts:
        t0 = time.perf_counter()
        search(emb.embed([text]), k)
        lat.append((time.perf_counter() - t0) * 1e3)
    emb = HashEmbedder(DIM)  # a cold token cache, as for the single queries
    t0 = time.perf_counter()
    for s in range(0, len(texts), batch):
        search(emb.embed(texts[s : s + batch]), k)
    elapsed = time.perf_counter() - t0
    return {
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "qps": len(texts) / elapsed,
        "latencies_ms": lat,
    }


def exact_topk(vectors: F32, ids: I64, queries: F32, k: int) -> list[list[int]]:
    """Exact top-k by inner product, ties by smaller chunk id, from the full score vectors."""
    scores = queries @ vectors.T  # (nq, n) float32: the floor's full scores
    out = []
    for row in scores:
        order = np.lexsort((ids, -row))[:k]
        out.append(ids[order].tolist())
    return out


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "MEETS" if ok else "MISSES"


COLUMNS = [
    Column("system", 8, left=True),
    Column("p50 ms", 9, ".3f"),
    Column("p99 ms", 9, ".3f"),
    Column("qps@64", 10, ".1f"),
]


def table(res: dict[str, Any]) -> list[str]:
    a, f = res["aaflow"], res["floor"]
    systems = [[name, *(res[name][key] for key in ("p50_ms", "p99_ms", "qps"))] for name in SYSTEMS]
    return [
        f"Q1 retrieval: {res['vectors']:,} vectors in {N_SHARDS} shards, "
        f"{res['queries']:,} queries, k={res['k']}; qps@64: aaflow {res['concurrency']} blocking "
        f"clients in threads, in-process batches of {res['concurrency']}",
        *render(COLUMNS, systems),
        "",
        f"aaflow server timings (p50): embed {a['server_embed_p50_ms']:.3f} ms, "
        f"retrieve {a['server_retrieve_p50_ms']:.3f} ms, "
        f"total {a['server_total_p50_ms']:.3f} ms; "
        f"mean batch at {res['concurrency']} in flight: {a['batch_mean']:.1f}",
        f"one AsyncClient, {res['concurrency']} in flight: "
        + (
            f"{a['async_qps']:.1f} q/s on {a['async_sent']} queries"
            if a["async_ok"]
            else f"STALLED ({a['async_answered']} of {a['async_sent']} answered)"
        ),
        f"exact top-{res['k']} on {res['exact_sample']} queries: {res['exact']} "
        f"({res['mismatches']} mismatched, {res['near_ties']} at a float32 near-tie; "
        f"floor faiss top-k exact: {res['floor_exact']})",
        "",
        "targets:",
        f"  p50 <= floor p50 + {TARGET_P50_OVER_FLOOR_MS:g} ms: "
        f"{a['p50_ms']:.3f} vs {f['p50_ms'] + TARGET_P50_OVER_FLOOR_MS:.3f}  "
        f"{verdict(res['meets_p50'])}",
        f"  qps64 >= {TARGET_QPS_VS_FLOOR:g}x floor: {a['qps']:.1f} vs "
        f"{TARGET_QPS_VS_FLOOR * f['qps']:.1f}  {verdict(res['meets_qps'])}",
        f"  exact top-k: {verdict(res['exact'])}",
        f"load average: start {res['load_avg_start']}, end {res['load_avg_end']}",
    ]


def to_json(res: dict[str, Any]) -> dict[str, Any]:
    """The --json object: the figures the targets are judged on."""
    a, f, s = res["aaflow"], res["floor"], res["shards"]
    return {
        "p50_ms": round(a["p50_ms"], 4),
        "p99_ms": round(a["p99_ms"], 4),
        "qps64": round(a["qps"], 2),
        "floor_p50_ms": round(f["p50_ms"], 4),
        "floor_qps64": round(f["qps"], 2),
        "shards_qps64": round(s["qps"], 2),
        "exact": res["exact"],
        "exact_strict": res["exact_strict"],
        "async_client_ok": a["async_ok"],
        "shards_p50_ms": round(s["p50_ms"], 4),
        "vectors": res["vectors"],
        "queries": res["queries"],
        "load_avg": res["load_avg_end"],
    }


# ---------------------------------------------------------------- the run


def measure_engine(args: argparse.Namespace, endpoint: str, texts: list[str]) -> dict[str, Any]:
    """Latency, queries/s and the async probe through the gateway; the hits of every query."""
    k, concurrency = args.k, args.concurrency
    engine = engine_single(endpoint, texts, k, args.warmup)
    engine.update(engine_concurrent(endpoint, texts, k, concurrency))
    if engine["errors"]:
        cli.progress(f"odd: {engine['errors']} clients failed: {engine['first_error']}")
    engine.update(async_probe(endpoint, texts[:ASYNC_PROBE_QUERIES], k, concurrency))
    if not engine["async_ok"]:
        cli.progress(
            f"odd: one AsyncClient with {concurrency} in flight stalled: "
            f"{engine['async_answered']} of {engine['async_sent']} answered "
            f"(no reply in {ASYNC_PROBE_TIMEOUT_S:g} s)"
        )
    cli.progress(f"aaflow: p50 {engine['p50_ms']:.3f} ms, qps {engine['qps']:.1f}")
    return engine


def measure_baselines(
    args: argparse.Namespace,
    shards: list[tuple[I64, F32]],
    every: tuple[I64, F32],
    texts: list[str],
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The floor (one flat index over ``every`` vector) and the in-process shards: (the floor's
    index, its figures, the shards' figures)."""
    import faiss

    ids, vectors = every
    floor_index = faiss.IndexFlatIP(DIM)
    floor_index.add(vectors)

    def floor_search(q: F32, kk: int) -> tuple[Any, Any]:
        d, i = floor_index.search(q, kk)
        return d, ids[i]

    floor = measure_inprocess(floor_search, texts, args.k, args.warmup, args.concurrency)
    cli.progress(f"floor: p50 {floor['p50_ms']:.3f} ms, qps {floor['qps']:.1f}")

    sharded = faiss.IndexShards(DIM, True, False)  # type: ignore[call-arg]  # threaded, own ids
    parts = []  # the shards must outlive the search: IndexShards does not own them
    for sid, svec in shards:
        part = faiss.IndexIDMap2(faiss.IndexFlatIP(DIM))
        part.add_with_ids(np.ascontiguousarray(svec), sid)
        parts.append(part)
        sharded.add_shard(part)
    shard_res = measure_inprocess(
        lambda q, kk: sharded.search(q, kk), texts, args.k, args.warmup, args.concurrency
    )
    cli.progress(f"shards: p50 {shard_res['p50_ms']:.3f} ms, qps {shard_res['qps']:.1f}")
    return floor_index, floor, shard_res


def exactness(
    hits: list[list[int]],
    every: tuple[I64, F32],
    floor_index: Any,
    texts: list[str],
    k: int,
    sample_size: int,
) -> dict[str, Any]:
    """The engine's top-k against the exact top-k on a deterministic sample of the queries."""
    ids, vectors = every
    step = max(1, len(texts) // sample_size)
    sample = list(range(0, len(texts), step))[:sample_size]
    q = HashEmbedder(DIM).embed([texts[i] for i in sample])
    want = exact_topk(vectors, ids, q, k)
    got = [hits[i] for i in sample]
    mismatches = sum(g != w for g, w in zip(got, want, strict=True))
    _, fi = floor_index.search(q, k)
    floor_exact = all(ids[row].tolist() == w for row, w in zip(fi, want, strict=True))
    ties = 0
    pos = {int(c): j for j, c in enumerate(ids.tolist())}
    for qi, g, w in zip(range(len(q)), got, want, strict=True):
        if g == w:
            continue
        # the true (float64) scores: within NEAR_TIE, float32 rounding decides the order
        d = next(j for j in range(min(len(g), len(w))) if g[j] != w[j])
        sg, sw = (
            float(vectors[pos[c]].astype(np.float64) @ q[qi].astype(np.float64))
            for c in (g[d], w[d])
        )
        ties += abs(sg - sw) <= NEAR_TIE
        cli.progress(
            f"mismatch, query {sample[qi]} rank {d + 1}: engine id {g[d]} score {sg!r}, "
            f"exact id {w[d]} score {sw!r}"
            + (" (a float32 near-tie)" if abs(sg - sw) <= NEAR_TIE else "")
        )
    return {
        "exact_sample": len(sample),
        "mismatches": mismatches,
        "near_ties": ties,
        "exact": ties == mismatches,
        "exact_strict": mismatches == 0,
        "floor_exact": floor_exact,
    }


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, quick="W1 small (~20k vectors), 256 queries")
    parser.add_argument("--files", type=cli.positive, default=320, help="xlarge files to ingest")
    parser.add_argument("--queries", type=cli.positive, help="default 2048 (quick 256)")
    parser.add_argument("--k", type=cli.positive, default=10)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=cli.positive, default=64)
    parser.add_argument("--exact-sample", type=cli.positive, default=100)
    parser.add_argument(
        "--samples", action="store_true", help="--json adds every single query's latency"
    )
    args = parser.parse_args(argv)
    n_queries = args.queries or (256 if args.quick else 2048)
    load_start = cli.load_avg()
    cli.progress(f"load average at start: {load_start}")
    work = Path(tempfile.mkdtemp(prefix="aaf-q1-"))
    data_dir, run_dir = work / "data", work / "run"
    topo = work / "q1.yaml"
    endpoint = f"ipc://{work}/q.sock"
    try:
        corpus, files = build_corpus(work, args.quick, args.files)
        texts = query_texts(files, n_queries)
        topo.write_text(topology_yaml(corpus, data_dir, run_dir, endpoint))
        t0 = time.perf_counter()
        # The baselines run with the engine stopped: its idle ranks must not share the CPUs.
        with Served(topo, run_dir, timeout_s=UP_TIMEOUT_S) as served:
            waited = wait_persisted(data_dir, INGEST_TIMEOUT_S)
            served.track()
            cli.progress(
                f"engine up ({len(files)} files), ingested and persisted in "
                f"{time.perf_counter() - t0:.1f} s ({waited:.1f} s after the gateway answered)"
            )
            shards = load_shards(data_dir)
            n_vectors = sum(len(s[0]) for s in shards)
            per_shard = ", ".join(str(len(s[0])) for s in shards)
            cli.progress(f"{n_vectors:,} vectors ({per_shard} per shard)")
            engine = measure_engine(args, endpoint, texts)
        if engine["vectors"] != n_vectors:
            cli.progress(f"odd: the gateway reports {engine['vectors']} vectors, disk {n_vectors}")
        every = (
            np.concatenate([s[0] for s in shards]),
            np.ascontiguousarray(np.concatenate([s[1] for s in shards])),
        )
        floor_index, floor, shard_res = measure_baselines(args, shards, every, texts)
        hits = engine.pop("hits")
        exact = exactness(hits, every, floor_index, texts, args.k, args.exact_sample)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    res: dict[str, Any] = {
        "vectors": n_vectors,
        "queries": len(texts),
        "k": args.k,
        "concurrency": args.concurrency,
        "aaflow": engine,
        "floor": floor,
        "shards": shard_res,
        **exact,
        "meets_p50": engine["p50_ms"] <= floor["p50_ms"] + TARGET_P50_OVER_FLOOR_MS,
        "meets_qps": engine["qps"] >= TARGET_QPS_VS_FLOOR * floor["qps"],
        "load_avg_start": load_start,
        "load_avg_end": cli.load_avg(),
    }
    doc = to_json(res)
    if args.samples:  # the latency distribution (bench/report.py charts it)
        doc["latencies_ms"] = {
            name: [round(x, 4) for x in res[name]["latencies_ms"]] for name in SYSTEMS
        }
    cli.report(table(res), doc, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
