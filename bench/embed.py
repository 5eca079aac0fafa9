"""M1 — real model (docs/benchmarks.md): chunks/s through the embed stage vs one direct encode.

The corpus: the docstrings (``inspect.getdoc``) of the standard library's public modules (each
package followed by its public submodules) and of their public members (classes' methods
included), each text once, in sorted module order, joined with blank lines and cut into
512-character windows with 64 overlap (the project's chunker); the first ``--chunks`` (2,000)
windows (repeated beyond what the stdlib gives); they depend on the Python version. The model:
``all-MiniLM-L6-v2``, offline.

Systems, each ``--repeats`` times round-robin (the order rotates each repeat), medians reported:

``direct``
    one fresh process: the model built like the stage builds it, one warm-up call, then one
    timed ``model.encode(chunks, batch_size=64)`` with ``--direct-threads`` torch threads
    (default: every core), normalised like the stage.
``stage RxT``
    the engine: a source actor (``ArrowFileSource``, batches of ``--source-rows``) → R embed
    actors (``EmbedChunks``, stage batch ``--stage-batch``, T torch threads each) → a sink
    actor (``ArrowFileSink`` writing seq and embedding), over the engine's ZeroMQ links with
    credit flow control. Timed from the source's first batch to the sink's last row; start-up
    (processes, imports, model load, warm-up) is reported apart.

Every stage run's vectors are checked against the direct run's (same model and device):
the smallest cosine over the chunks must be at least ``--min-cosine``; the exit status is 1
otherwise. The table shows each split's ratio to ``direct``; the target is >= 0.9x with one
replica (M1 in docs/benchmarks.md; issue 6). The load average is printed at start and end.

    python -m bench.embed                          # M1: 2,000 chunks, 3 repeats, 1x2 and 2x1
    python -m bench.embed --quick --json           # < 1 minute; last line: one JSON object
    python -m bench.embed --device cuda --splits 1x4,2x4,4x4 --chunks 2000
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import os
import pkgutil
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from aaflow_stream.embedders import factory
from aaflow_stream.plan import GraphSpec, StageSpec
from aaflow_stream.spec import SentenceTransformerSpec
from aaflow_stream.text.chunking import chunk_windows

from .kit import cli
from .kit.table import Column, render

REPO = Path(__file__).resolve().parents[1]
CHUNKS = 2000
ENCODE_BATCH = 64
TARGET = 0.9
# Modules whose import has side effects (a browser, a print, a GUI) or that are not prose.
SKIP_MODULES = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "__main__",
    "__future__",
}
QUICK_CHUNKS = 192
RUN_TIMEOUT_S = 900.0
LINK_SETTLE_S = 1.0


# --- the M1 corpus -------------------------------------------------------------------------------


def _docs(module: Any, name: str) -> Iterator[str | None]:
    yield inspect.getdoc(module)
    members = vars(module)
    for attr in sorted(members):
        obj = members[attr]
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        yield inspect.getdoc(obj)
        if inspect.isclass(obj):
            for method in sorted(vars(obj)):
                value = vars(obj)[method]
                if not method.startswith("_") and callable(value):
                    yield inspect.getdoc(value)


def _import(name: str) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:  # platform-specific modules (winreg, msvcrt, ...)
        return None


def _modules() -> Iterator[tuple[str, Any]]:
    """Public stdlib modules in sorted order, each package followed by its public submodules."""
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP_MODULES or (module := _import(name)) is None:
            continue
        yield name, module
        for sub in sorted(m.name for m in pkgutil.iter_modules(getattr(module, "__path__", []))):
            if not sub.startswith("_") and (submodule := _import(f"{name}.{sub}")) is not None:
                yield f"{name}.{sub}", submodule


def m1_chunks(count: int = CHUNKS) -> list[str]:
    """The first ``count`` 512-character windows (64 overlap) of the stdlib's docstrings."""
    texts: dict[str, None] = {}  # ordered and each text once (inherited docs repeat)
    need = count * (512 - 64) + 512
    for name, module in _modules():
        texts.update(dict.fromkeys(d for d in _docs(module, name) if d))
        if sum(map(len, texts)) >= need:
            break
    chunks = chunk_windows("\n\n".join(texts), 512, 64)
    if len(chunks) < count:  # more than M1 asks (a GPU run): the windows repeat
        chunks *= -(-count // len(chunks))
    return chunks[:count]


def write_chunks(path: Path, chunks: Sequence[str]) -> None:
    table = pa.table(
        {
            "seq": pa.array(range(len(chunks)), pa.int64()),
            "text": pa.array(chunks, pa.large_string()),
        }
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


# --- direct: one process, one encode -------------------------------------------------------------


def embedder_spec(args: argparse.Namespace) -> SentenceTransformerSpec:
    return SentenceTransformerSpec(
        model=args.model,
        dim=args.dim,
        device=args.device,
        batch_size=ENCODE_BATCH,
        dtype=args.dtype,
    )


def direct_worker(args: argparse.Namespace) -> int:
    """Run in a fresh process: load, warm up, time one encode; vectors to --out (.npy)."""
    with pa.memory_map(str(args.chunks_file)) as source:
        chunks = pa.ipc.open_file(source).read_all().column("text").to_pylist()
    started = time.perf_counter()
    embedder = factory.build(embedder_spec(args), threads=args.direct_threads)
    load_s = time.perf_counter() - started
    model = embedder.encoder  # type: ignore[attr-defined]
    cuda = args.device.startswith("cuda")
    if cuda:
        import torch
    t0 = time.perf_counter()
    vectors = model.encode(
        chunks, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_numpy=True
    )
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    np.save(args.out, np.ascontiguousarray(vectors, dtype=np.float32))
    print(json.dumps({"seconds": seconds, "load_s": load_s, "chunks": len(chunks)}))
    return 0


@dataclass
class Result:
    system: str
    replicas: int
    threads: int
    seconds: float
    chunks: int
    startup_s: float = 0.0
    load_s: float = 0.0
    busy_s: float = 0.0
    min_cosine: float | None = None

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds


def run_direct(args: argparse.Namespace, chunks_file: Path, out: Path) -> Result:
    command = [
        sys.executable,
        "-m",
        "bench.embed",
        "--direct-worker",
        "--chunks-file",
        str(chunks_file),
        "--out",
        str(out),
        "--direct-threads",
        str(args.direct_threads),
        "--model",
        args.model,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        *(["--dim", str(args.dim)] if args.dim else []),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"direct run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    return Result(
        "direct", 1, args.direct_threads, got["seconds"], got["chunks"], load_s=got["load_s"]
    )


# --- the engine's embed stage ---------------------------------------------------------------------


def stage_graph(
    args: argparse.Namespace, chunks_file: Path, out_dir: Path, replicas: int, threads: int
) -> GraphSpec:
    ops = "aaflow_stream.operators"
    embed_params = {
        "batch_size": args.stage_batch,
        "embedder": factory.to_params(embedder_spec(args)),
        "threads": threads,
    }
    return GraphSpec(
        stages=[
            StageSpec(
                "source",
                f"{ops}.basic:ArrowFileSource",
                {"path": str(chunks_file), "rows": args.source_rows},
                block_imports=["pandas"],
            ),
            StageSpec("embed", f"{ops}.embed:EmbedChunks", embed_params, replicas),
            StageSpec(
                "sink",
                f"{ops}.basic:ArrowFileSink",
                {"path": str(out_dir), "columns": ["seq", "embedding"]},
                block_imports=["pandas"],
            ),
        ],
        window=args.window,
        eos_timeout_s=RUN_TIMEOUT_S,
        drain_timeout_s=30.0,
        stats_interval_s=1.0,
    )


def run_stage(
    args: argparse.Namespace, chunks_file: Path, work: Path, replicas: int, threads: int
) -> tuple[Result, np.ndarray]:
    from aaflow_stream.runtime.supervisor import Supervisor

    out_dir = work / f"out-{replicas}x{threads}"
    shutil.rmtree(out_dir, ignore_errors=True)
    graph = stage_graph(args, chunks_file, out_dir, replicas, threads)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run_dir = Path(tempfile.mkdtemp(prefix="aaf-m1-"))  # short: unix socket paths

    async def main() -> Any:
        supervisor = Supervisor(graph, run_dir, log_level="WARNING", env=env, start_timeout_s=300)
        async with asyncio.timeout(RUN_TIMEOUT_S), supervisor:
            # A source reports Ready once it has said Hello on its links, not once each
            # receiver's initial credit is back; started at once, it sent every batch of a
            # short stream to the first embed replica. Give the credits a moment (untimed).
            await asyncio.sleep(LINK_SETTLE_S)
            return await supervisor.wait()

    try:
        report = asyncio.run(main())
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    stats = report.stats.values()
    source = [s for s in stats if s.stage == "source"]
    embed = [s for s in stats if s.stage == "embed"]
    sink = [s for s in stats if s.stage == "sink"]
    seconds = max(s.last_work_at for s in sink) - min(s.first_work_at for s in source)
    table = pa.concat_tables(
        pa.ipc.open_stream(str(path)).read_all() for path in sorted(out_dir.glob("*.arrow"))
    ).sort_by("seq")
    column = table.column("embedding").combine_chunks()
    vectors = column.values.to_numpy().reshape(len(table), -1)
    result = Result(
        "stage",
        replicas,
        threads,
        seconds,
        len(table),
        startup_s=report.startup_s,
        load_s=statistics.median(s.extra.get("embedder_load_s", 0.0) for s in embed),
        busy_s=sum(s.busy_s for s in embed),
    )
    return result, vectors


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return -1.0
    dots = np.einsum("ij,ij->i", a, b)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(np.min(dots / np.maximum(norms, 1e-12)))


# --- the run --------------------------------------------------------------------------------------


@dataclass
class Summary:
    system: str
    replicas: int
    threads: int
    chunks_per_s: float
    runs: list[float]
    startup_s: float
    load_s: float
    busy_s: float
    min_cosine: float | None
    ratio: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(name: str, results: Sequence[Result]) -> Summary:
    first = results[0]
    cosines = [r.min_cosine for r in results if r.min_cosine is not None]
    return Summary(
        name,
        first.replicas,
        first.threads,
        statistics.median(r.chunks_per_s for r in results),
        [round(r.chunks_per_s, 2) for r in results],
        statistics.median(r.startup_s for r in results),
        statistics.median(r.load_s for r in results),
        statistics.median(r.busy_s for r in results),
        min(cosines) if cosines else None,
    )


def parse_splits(text: str) -> list[tuple[int, int]]:
    splits = []
    for item in text.split(","):
        replicas, _, threads = item.strip().partition("x")
        splits.append((int(replicas), int(threads)))
    return splits


COLUMNS = [
    Column("system", 12, left=True),
    Column("replicas", 8),
    Column("threads", 7),
    Column("chunks/s", 9, ".1f"),
    Column("x direct", 8, ".2f"),
    Column("start-up s", 10, ".2f"),
    Column("load s", 7, ".2f"),
    Column("busy s", 7, ".2f"),
    Column("min cos", 8, ".5f"),
    Column(" runs (chunks/s)", left=True),
]


def table(summaries: Sequence[Summary]) -> list[str]:
    def row(s: Summary) -> list[object]:
        figures = [s.chunks_per_s, s.ratio, s.startup_s, s.load_s, s.busy_s, s.min_cosine]
        return [s.system, s.replicas, s.threads, *figures, f" {s.runs}"]

    return render(COLUMNS, [row(s) for s in summaries])


def _parser() -> argparse.ArgumentParser:
    cores = os.cpu_count() or 1
    parser = cli.parser(
        __doc__,
        quick=f"< 1 minute: {QUICK_CHUNKS} chunks, 1 repeat",
        repeats="runs of each system (default 3)",
    )
    parser.add_argument("--chunks", type=cli.positive, help=f"default {CHUNKS} (M1)")
    parser.add_argument(
        "--splits",
        default=",".join(f"{r}x{cores // r}" for r in (1, 2) if cores // r),
        help="stage replicas x torch threads, comma-separated (default: 1xC,2x(C/2))",
    )
    parser.add_argument("--direct-threads", type=cli.positive, default=cores)
    parser.add_argument("--stage-batch", type=cli.positive, default=256, help="embed batch_size")
    parser.add_argument("--source-rows", type=cli.positive, default=100, help="rows a batch")
    parser.add_argument("--window", type=cli.positive, default=16, help="credit window")
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="packaged name or directory")
    parser.add_argument("--dim", type=int, help="the model's dim, for a model directory")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--min-cosine", type=float, default=0.9999)
    parser.add_argument("--direct-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--chunks-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser


def run_all(
    args: argparse.Namespace, systems: list[str], chunks_file: Path, work: Path
) -> dict[str, list[Result]]:
    """Every system ``args.repeats`` times round-robin, the first run direct (the reference
    every stage run's vectors are checked against)."""
    results: dict[str, list[Result]] = {name: [] for name in systems}
    reference: np.ndarray | None = None
    for repeat in range(args.repeats):
        order = systems[repeat % len(systems) :] + systems[: repeat % len(systems)]
        if reference is None:
            order = ["direct", *(s for s in order if s != "direct")]
        for name in order:
            if name == "direct":
                out = work / "direct.npy"
                result = run_direct(args, chunks_file, out)
                reference = np.load(out) if reference is None else reference
            else:
                replicas, threads = parse_splits(name.split()[1])[0]
                result, vectors = run_stage(args, chunks_file, work, replicas, threads)
                assert reference is not None
                result.min_cosine = min_cosine(vectors, reference)
            results[name].append(result)
            cli.progress(
                f"  [{repeat + 1}/{args.repeats}] {name:<10} {result.chunks_per_s:8.1f} "
                f"chunks/s  ({result.seconds:.2f} s)"
            )
    return results


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 every stage run matched the direct vectors, 1 one did not, 2 usage."""
    args = _parser().parse_args(argv)
    if args.direct_worker:
        return direct_worker(args)
    args.chunks = args.chunks or (QUICK_CHUNKS if args.quick else CHUNKS)
    args.repeats = cli.repeats(args, full=3, quick=1)
    splits = parse_splits(args.splits)
    factory.check(embedder_spec(args))
    load_start = cli.load_avg()
    systems = ["direct", *(f"stage {r}x{t}" for r, t in splits)]
    work = Path(tempfile.mkdtemp(prefix="aaflow-m1-"))
    try:
        chunks = m1_chunks(args.chunks)
        chunks_file = work / "chunks.arrow"
        write_chunks(chunks_file, chunks)
        mean_chars = statistics.mean(map(len, chunks))
        results = run_all(args, systems, chunks_file, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summaries = [summarize(name, results[name]) for name in systems]
    direct = summaries[0]
    for s in summaries:
        s.ratio = s.chunks_per_s / direct.chunks_per_s
    stages = summaries[1:]
    best = max(stages, key=lambda s: s.chunks_per_s)
    one = [s for s in stages if s.replicas == 1]
    matched = all(s.min_cosine is not None and s.min_cosine >= args.min_cosine for s in stages)
    load_end = cli.load_avg()
    lines = [
        f"M1: {len(chunks)} chunks of stdlib docstrings (mean {mean_chars:.0f} chars)",
        f"model {args.model} on {args.device} ({args.dtype}); encode batch {ENCODE_BATCH}",
        f"repeats {args.repeats}, round-robin; stage batch {args.stage_batch}, source rows "
        f"{args.source_rows}, window {args.window}",
        "",
        *table(summaries),
        "",
        f"best split: {best.replicas} x {best.threads} ({best.chunks_per_s:.1f} chunks/s)",
    ]
    if one:
        single = max(one, key=lambda s: s.chunks_per_s)
        verdict = "MEETS " if single.ratio and single.ratio >= TARGET else "MISSES"
        lines.append(f"{verdict} one replica at {single.ratio:.2f}x direct (target >= {TARGET}x)")
    lines += [
        f"{'OK    ' if matched else 'FAILED'} stage vectors vs direct: "
        f"min cosine >= {args.min_cosine}",
        f"load average: start {load_start}, end {load_end} ({os.cpu_count()} CPUs)",
    ]
    doc = {  # the best split first; the rest for the record
        "stage_chunks_per_s": round(best.chunks_per_s, 2),
        "direct_chunks_per_s": round(direct.chunks_per_s, 2),
        "replicas": best.replicas,
        "threads": best.threads,
        "workload": "M1",
        "chunks": args.chunks,
        "device": args.device,
        "dtype": args.dtype,
        "systems": [asdict(s) for s in summaries],
        "load_avg": [load_start, load_end],
    }
    cli.report(lines, doc, args.json)
    return 0 if matched else 1


if __name__ == "__main__":
    sys.exit(main())
