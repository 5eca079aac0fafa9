"""W1 ingestion (docs/benchmarks.md): the aaflow-stream engine next to the baselines, in one run.

Each system ingests the same synthetic corpus; systems are interleaved round-robin across
`--repeats` (the order rotates each repeat) so that machine noise hits all of them. What is
measured, per system (median over its verified runs):

- total_s: wall seconds from the first document read to the last vector applied, start-up
  excluded. For the engine ("aaflow") it is the `total_s` of `aaflow-stream up --json`.
- startup_s, apart: topology / pool / cluster ready. For the engine: every actor and
  shard rank ready.
- chunks and chunks/s (chunks / total_s).
- verified, the W1 check: the stored ids equal the expected chunk ids exactly (none lost,
  none twice, each in shard `id % 4`). For the engine the shards are read back from disk
  (`shard-<r>/snapshot/index.faiss` ids, and the `chunk_id` column of its `meta.arrow`). A
  run that fails the check, or that fails, has no time.
- stages: busy seconds of load, transform, embed and upsert, summed over workers. The
  engine's upsert is the shuffle (`upsert` busy) plus the shard ranks' busy time less
  their final flush (syncing the log, the end-of-stream snapshot and the last acks), which
  is shown apart.
- cpu_s: CPU seconds of the whole command, start-up and teardown included (user + system of
  it and of every process it reaped; the engine's end-of-run snapshots count too): the more
  stable figure on a noisy machine.
- peak_rss_mb: peak RSS summed over the process tree, sampled every 50 ms (for the engine:
  the `aaflow-stream up` process and all its descendants, the mpiexec ranks included).

Then: each system's total next to aaflow's (aaflow / system), the issue's targets with
MEETS / MISSES (set for W1 xlarge: aaflow <= 0.65x sequential, >= 1.25x faster than the
fastest other baseline, start-up < 3 s), and the engine's per-stage span, blocked time and
persist/flush seconds. The load average is printed at start and end.

Two reference floors may run beside them (bench/floors.py; in the default system list, apart
from the "other baselines" of the speed-up target): ``two_procs``, the stage functions on two
processes with nothing moved between them, and ``raw_zmq``, the engine's process layout (two
workers, four shard processes) with nothing but plain pyzmq between them. Their totals over
``sequential`` bound what any engine can reach on the machine at hand.

    python -m bench.ingest --quick
    python -m bench.ingest --preset xlarge --repeats 3 --json
    python -m bench.ingest --preset small --systems sequential,mp_pool   # baselines alone
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aaflow_stream.errors import StorageError
from aaflow_stream.synthetic import PRESETS, expected_chunk_ids, generate
from tests.support.shards import read_shards

from . import w1_targets
from .baselines import SYSTEMS as BASELINES
from .baselines import run_isolated
from .kit import cli
from .kit.engine import run_up
from .kit.table import Column, render
from .w1_stages import N_SHARDS, STAGES, BaselineResult, Ids, w1_check

ENGINE = "aaflow"
ALL_SYSTEMS = (ENGINE, *BASELINES)
FLOOR = "sequential"  # the floor cost of each stage; not one of the "other" baselines
# Engine-free bounds of what two cores allow (bench/floors.py); not "other" baselines either.
REFERENCES = {
    "two_procs": "the stage functions on two processes, nothing moved",
    "raw_zmq": "two workers, ids, vectors and texts over plain pyzmq to 4 shard processes",
}
ENGINE_STAGES = ("load", "transform", "embed", "upsert", "shard")
# Modules a baseline needs beyond the project's own dependencies.
OPTIONAL_MODULES = {"dask": "dask.distributed", "ray": "ray", "llamaindex": "llama_index.core"}
QUICK = {"preset": "small", "systems": f"{ENGINE},sequential,mp_pool,raw_zmq"}
TARGET_PRESET = "xlarge"
TARGET_VS_FLOOR = 0.65  # aaflow total <= 0.65x sequential
TARGET_SPEEDUP = 1.25  # >= 1.25x faster than the fastest other baseline
TARGET_STARTUP_S = 3.0
ENGINE_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class EngineKnobs:
    """The topology's tunables (defaults: the W1 topology)."""

    load_replicas: int = 1
    transform_replicas: int = 1
    embed_replicas: int = 2
    upsert_replicas: int = 1
    window: int = 16
    embed_batch: int = 256
    upsert_batch: int = 2048
    batch_docs: int = 256
    # Operator chaining (a chained stage runs in the actors of the stage before it: no hop,
    # no process of its own, its replicas those of that stage). 0: every stage apart;
    # 1: transform onto load and upsert onto embed; 2: all of them onto load, one actor per
    # replica doing load -> transform -> embed -> shuffle (`embed_replicas` of them).
    chain: int = 2
    # The shards' durability.wal_sync: "interval" (the engine's default: every batch logged,
    # synced by group commit), "batch", or "none" (no log: durable at snapshots, the
    # end-of-run one here; the baselines persist nothing at all).
    wal_sync: str = "interval"
    # Shard ranks (W1: 4); a chunk goes to shard `chunk_id % shards` (the report's sweep).
    shards: int = N_SHARDS


@dataclass
class Run:
    """One run of one system; `detail` holds the engine's own summary (aaflow only)."""

    result: BaselineResult
    detail: dict[str, Any] = field(default_factory=dict)
    why: str | None = None  # what the W1 check found wrong, where it says

    @property
    def completed(self) -> bool:
        """It ran to the end (verified or not)."""
        return not self.result.skipped

    @property
    def ok(self) -> bool:
        return self.completed and self.result.verified

    @property
    def failure(self) -> str:
        return self.result.skipped or f"failed the W1 check: {self.why or 'ids differ'}"


# ---------------------------------------------------------------- the engine


def topology_yaml(corpus: Path, data_dir: Path, run_dir: Path, knobs: EngineKnobs) -> str:
    """The W1 topology with `knobs` applied."""
    k = knobs
    full = k.chain >= 2
    load_replicas = k.embed_replicas if full else k.load_replicas
    transform_replicas = load_replicas if k.chain else k.transform_replicas
    embed_replicas = load_replicas if full else k.embed_replicas
    upsert_replicas = embed_replicas if k.chain else k.upsert_replicas

    def chained(on: bool) -> str:
        return ", chain: true" if on else ""

    return f"""\
name: w1
data_dir: {data_dir}
run_dir: {run_dir}
sources:
  - paths: [{corpus}]
stages:
  - {{operator: load, replicas: {load_replicas}, batch_docs: {k.batch_docs}}}
  - {{operator: transform, replicas: {transform_replicas}, chunk_size: 512, overlap: 64,
     normalize: false{chained(k.chain >= 1)}}}
  - {{operator: embed, replicas: {embed_replicas}, batch_size: {k.embed_batch}{chained(full)}}}
  - {{operator: upsert, replicas: {upsert_replicas}, batch_size: {k.upsert_batch}\
{chained(k.chain >= 1)}}}
embedder: {{kind: hash, dim: 384}}
shards: {{count: {k.shards}, index: Flat, metric: ip}}
flow: {{window: {k.window}}}
durability: {{wal_sync: {k.wal_sync}}}
"""


def engine_stage_busy(summary: dict[str, Any]) -> dict[str, float]:
    """W1 stage busy seconds; upsert = the shuffle + the shard ranks less their flush."""
    st = summary["stages"]
    shard = st["shard"]
    return {
        "load": st["load"]["busy_s"],
        "transform": st["transform"]["busy_s"],
        "embed": st["embed"]["busy_s"],
        "upsert": st["upsert"]["busy_s"] + shard["busy_s"] - shard["metrics"].get("flush_s", 0.0),
    }


def stored_shard_ids(data_dir: Path) -> list[Ids] | None:
    """Each shard's ids read back from its snapshot, or None where a shard's files disagree
    (among themselves, or the index's ids with the metadata's ``chunk_id`` column)."""
    try:
        shards = read_shards(data_dir)
    except StorageError:
        return None
    for shard in shards:
        if not np.array_equal(np.sort(shard.meta_ids), np.sort(shard.ids)):
            return None
    return [shard.ids for shard in shards]


def _failed(name: str, why: str) -> Run:
    return Run(BaselineResult(name, skipped=f"failed: {why}"))


def run_engine(corpus: Path, expected: set[int], knobs: EngineKnobs) -> Run:
    """One `aaflow-stream up` on a fresh data directory, its process tree measured."""
    work = Path(tempfile.mkdtemp(prefix="aaf-w1-"))
    try:
        data_dir, topology = work / "data", work / "w1.yaml"
        topology.write_text(topology_yaml(corpus, data_dir, work / "run", knobs))
        up = run_up(topology, ENGINE_TIMEOUT_S)
        if up.failure is not None or up.summary is None:
            return _failed(ENGINE, up.failure or "no summary")
        summary = up.summary
        per_shard = stored_shard_ids(data_dir)
        chunks = sum(len(ids) for ids in per_shard) if per_shard is not None else 0
        why = w1_check(per_shard, expected)
        result = BaselineResult(
            ENGINE,
            total_s=summary["total_s"],
            startup_s=summary["startup_s"],
            chunks=chunks,
            verified=why is None,
            stages=engine_stage_busy(summary),
            peak_rss_mb=up.peak_rss_mb,
            cpu_s=up.cpu_s,
        )
        return Run(result, {**summary, "command_wall_s": up.wall_s}, why)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------- running the systems


def available(name: str) -> str | None:
    """Why `name` cannot run here, or None if it can."""
    module = OPTIONAL_MODULES.get(name)
    try:
        found = module is None or importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        found = False
    return None if found else f"{module} is not installed (pip install -e '.[bench]')"


def run_once(name: str, corpus: Path, expected: set[int], knobs: EngineKnobs) -> Run:
    """One run of one system; a baseline runs in a fresh interpreter."""
    if name == ENGINE:
        return run_engine(corpus, expected, knobs)
    return Run(run_isolated(name, corpus))


def run_all(
    systems: Sequence[str], repeats: int, corpus: Path, knobs: EngineKnobs
) -> dict[str, list[Run]]:
    """Every system `repeats` times, round-robin, the order rotated each repeat."""
    expected = expected_chunk_ids(corpus) if ENGINE in systems else set()
    runs: dict[str, list[Run]] = {name: [] for name in systems}
    for rep in range(repeats):
        shift = rep % len(systems)
        for name in [*systems[shift:], *systems[:shift]]:
            run = run_once(name, corpus, expected, knobs)
            runs[name].append(run)
            cli.progress(f"[{rep + 1}/{repeats}] {name:<11} {_describe(run)}")
    return runs


def _describe(run: Run) -> str:
    r = run.result
    if r.skipped:
        return r.skipped
    state = "verified" if r.verified else run.failure
    return f"total {r.total_s:.3f} s, start-up {r.startup_s:.2f} s, {state}"


# ---------------------------------------------------------------- aggregation


@dataclass
class SystemSummary:
    """A system's medians over its verified runs; total_s is None when none verified."""

    name: str
    total_s: float | None
    startup_s: float | None
    chunks: int
    verified: bool  # every run passed the W1 check
    stages: dict[str, float]
    peak_rss_mb: float
    cpu_s: float | None
    runs: list[float | None]  # each run's total; None for a failed run
    failures: list[str]
    skipped: str | None = None
    unverified: list[float] = field(default_factory=list)  # totals of runs that failed the check

    @property
    def chunks_per_s(self) -> float | None:
        return self.chunks / self.total_s if self.total_s else None


def summarize(name: str, runs: Sequence[Run]) -> SystemSummary:
    """Medians over the verified runs; a failed run counts as a failure, not a time."""
    skipped = [r.result.skipped for r in runs if r.result.skipped]
    if skipped and len(skipped) == len(runs) and not skipped[0].startswith("failed"):
        return SystemSummary(name, None, None, 0, False, {}, 0.0, None, [], [], skipped=skipped[0])
    good = [r.result for r in runs if r.ok]
    failures = [r.failure for r in runs if not r.ok]

    def med(values: Sequence[float]) -> float | None:
        return statistics.median(values) if values else None

    return SystemSummary(
        name=name,
        total_s=med([r.total_s for r in good]),
        startup_s=med([r.startup_s for r in good]),
        chunks=good[0].chunks if good else 0,
        verified=bool(good) and not failures,
        stages={s: statistics.median(r.stages[s] for r in good) for s in STAGES} if good else {},
        peak_rss_mb=max((r.peak_rss_mb for r in good), default=0.0),
        cpu_s=med([r.cpu_s for r in good]),
        runs=[r.result.total_s if r.ok else None for r in runs],
        failures=failures,
        unverified=[r.result.total_s for r in runs if r.completed and not r.ok],
    )


def median_run(runs: Sequence[Run]) -> Run | None:
    """The run whose total is the median (the lower one for an even count), among the
    verified runs, or where none verified among those that completed."""
    pool = [r for r in runs if r.ok] or [r for r in runs if r.completed]
    ranked = sorted(pool, key=lambda r: r.result.total_s)
    return ranked[(len(ranked) - 1) // 2] if ranked else None


@dataclass
class Comparison:
    """aaflow's total against the floor and against the fastest other baseline."""

    vs_floor: float | None  # aaflow / sequential
    fastest_other: str | None
    speedup: float | None  # fastest other baseline / aaflow
    startup_s: float | None
    references: dict[str, float] = field(default_factory=dict)  # reference / sequential


def compare(summaries: dict[str, SystemSummary]) -> Comparison:
    engine = summaries.get(ENGINE)
    mine = engine.total_s if engine else None
    floor = summaries.get(FLOOR)
    vs_floor = mine / floor.total_s if mine and floor and floor.total_s else None
    apart = (ENGINE, FLOOR, *REFERENCES)
    others = {n: s.total_s for n, s in summaries.items() if n not in apart and s.total_s}
    fastest = min(others, key=lambda n: others[n]) if others else None
    speedup = others[fastest] / mine if fastest and mine else None
    references = {
        n: s.total_s / floor.total_s
        for n, s in summaries.items()
        if n in REFERENCES and s.total_s and floor and floor.total_s
    }
    return Comparison(vs_floor, fastest, speedup, engine.startup_s if engine else None, references)


# ---------------------------------------------------------------- reporting


STAGE_COLUMNS = [
    Column("system", 11, left=True),
    Column("ok", 6, left=True),
    Column("chunks", 7),
    Column("total_s", 8, ".3f"),
    Column("chunks/s", 9, ".0f"),
    Column("startup", 8, ".2f"),
    *(Column(title, 7, ".3f") for title in ("load", "xform", "embed", "upsert")),
    Column("rss_mb", 7, ".0f"),
    Column("cpu_s", 6, ".1f"),
    Column("aaflow/x", 8, ".2f"),
    Column(" runs", left=True),
]


def stage_table(summaries: dict[str, SystemSummary]) -> list[str]:
    """The W1 stage table; `aaflow/x` is aaflow's total over each system's."""
    engine = summaries.get(ENGINE)
    mine = engine.total_s if engine else None
    rows: list[list[object] | str] = []
    for s in summaries.values():
        if s.skipped:
            rows.append(f"{s.name:<11} skipped: {s.skipped}")
            continue
        ok = "yes" if s.verified else ("FAILED" if s.total_s is None else "SOME")
        ratio = mine / s.total_s if mine and s.total_s else None
        runs = " ".join("fail" if t is None else f"{t:.3f}" for t in s.runs)
        if s.unverified:
            runs += "  (unverified: " + " ".join(f"{t:.3f}" for t in s.unverified) + ")"
        stages = [s.stages.get(stage) for stage in STAGES]
        figures = [s.chunks, s.total_s, s.chunks_per_s, s.startup_s, *stages, s.peak_rss_mb]
        rows.append([s.name, ok, *figures, s.cpu_s, ratio, f" {runs}"])
        rows += [f"{'':<11} failed run: {why}" for why in dict.fromkeys(s.failures)]
    return render(STAGE_COLUMNS, rows)


ENGINE_COLUMNS = [
    Column("stage", 10, left=True),
    Column("replicas", 8),
    *(Column(title, 8, ".3f") for title in ("busy_s", "span_s", "blocked_s")),
    Column("rows_in", 8),
    Column("rows_out", 8),
]


def engine_table(detail: dict[str, Any]) -> list[str]:
    """aaflow only: per-stage busy, span and blocked seconds, rows, and the shard flush."""
    keys = ("replicas", "busy_s", "span_s", "blocked_s", "rows_in", "rows_out")
    stages = [(name, detail["stages"].get(name)) for name in ENGINE_STAGES]
    lines = render(ENGINE_COLUMNS, [[name, *(st[k] for k in keys)] for name, st in stages if st])
    metrics = detail["stages"].get("shard", {}).get("metrics", {})
    lines.append(
        f"shard flush_s {metrics.get('flush_s', 0.0):.3f} (summed over ranks: the log sync, "
        "the end-of-stream snapshot and the last acks), "
        f"total_s {detail['total_s']:.3f}, startup_s {detail['startup_s']:.2f}, "
        f"whole command {detail['command_wall_s']:.2f} s"
    )
    return lines


def _verdict(ok: bool) -> str:
    return "MEETS " if ok else "MISSES"


def target_lines(
    cmp: Comparison, preset: str, summaries: dict[str, SystemSummary]
) -> Iterator[str]:
    """The issue's targets, each with MEETS / MISSES (or n/a where it could not be told)."""
    if preset != TARGET_PRESET:
        yield f"(the targets are set for W1 {TARGET_PRESET}; this run is W1 {preset})"
    if cmp.vs_floor is None:
        yield f"n/a    aaflow <= {TARGET_VS_FLOOR}x sequential: not measured"
    else:
        ok = cmp.vs_floor <= TARGET_VS_FLOOR
        yield f"{_verdict(ok)} aaflow/sequential = {cmp.vs_floor:.2f} (<= {TARGET_VS_FLOOR})"
    timed = {n for n, s in summaries.items() if s.total_s is not None}
    missing = [n for n in BASELINES if n not in (FLOOR, *REFERENCES) and n not in timed]
    among = f" (without a time: {', '.join(missing)})" if missing else ""
    if cmp.speedup is None:
        yield f"n/a    >= {TARGET_SPEEDUP}x faster than the fastest other baseline{among}"
    else:
        ok = cmp.speedup >= TARGET_SPEEDUP
        yield (
            f"{_verdict(ok)} {cmp.speedup:.2f}x faster than the fastest other baseline, "
            f"{cmp.fastest_other} (>= {TARGET_SPEEDUP}x){among}"
        )
    if cmp.startup_s is None:
        yield f"n/a    start-up < {TARGET_STARTUP_S:.0f} s: not measured"
    else:
        ok = cmp.startup_s < TARGET_STARTUP_S
        yield f"{_verdict(ok)} aaflow start-up {cmp.startup_s:.2f} s (< {TARGET_STARTUP_S:.0f} s)"
    for name, ratio in cmp.references.items():
        yield f"floor  {name} = {ratio:.2f}x sequential, with no engine ({REFERENCES[name]})"


def unverified_note(summaries: dict[str, SystemSummary]) -> Iterator[str]:
    """Where aaflow never passed the check: its unverified times, for diagnosis only."""
    engine = summaries.get(ENGINE)
    if engine is None or engine.total_s is not None or not engine.unverified:
        return
    mine = statistics.median(engine.unverified)
    yield f"note: aaflow failed the W1 check; its UNVERIFIED median total is {mine:.3f} s, i.e."
    for s in summaries.values():
        if s.name != ENGINE and s.total_s:
            yield f"      {mine / s.total_s:.2f}x {s.name} (not a result: the run has no time)"


def to_json(
    preset: str,
    summaries: dict[str, SystemSummary],
    detail: dict[str, Any] | None,
    cmp: Comparison,
    load_avg: list[list[float]],
) -> dict[str, Any]:
    """The --json object; `load_avg` is [[1, 5, 15 min] at start, [...] at end]."""
    keys = ("total_s", "startup_s", "chunks", "verified", "stages", "peak_rss_mb", "cpu_s", "runs")
    ran = {n: s for n, s in summaries.items() if not s.skipped}
    return {
        "preset": preset,
        "systems": {n: {k: getattr(s, k) for k in keys} for n, s in ran.items()},
        "skipped": {n: s.skipped for n, s in summaries.items() if s.skipped},
        "comparison": asdict(cmp),
        "engine": detail,
        "load_avg": load_avg,
    }


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = cli.parser(
        __doc__,
        quick=f"preset {QUICK['preset']}, systems {QUICK['systems']}, 1 repeat",
        repeats="runs of each system (default: 3)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="default: large")
    parser.add_argument("--systems", help=f"comma-separated (default: {','.join(ALL_SYSTEMS)})")
    parser.add_argument("--corpus-dir", type=Path, help="default: /tmp/aaflow-w1-<preset>")
    knobs = parser.add_argument_group("engine knobs")
    for name, value in asdict(EngineKnobs()).items():
        knobs.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    return parser


def _resolve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[str]:
    """Apply --quick and the defaults; return the systems to run."""
    quick = QUICK if args.quick else {}
    args.preset = args.preset or quick.get("preset", "large")
    args.repeats = cli.repeats(args, full=3, quick=1)
    systems_arg = args.systems or quick.get("systems") or ",".join(ALL_SYSTEMS)
    names = list(dict.fromkeys(s.strip() for s in str(systems_arg).split(",") if s.strip()))
    unknown = [n for n in names if n not in ALL_SYSTEMS]
    if unknown or not names:
        parser.error(f"systems must be some of {','.join(ALL_SYSTEMS)}")
    args.corpus_dir = args.corpus_dir or Path(f"/tmp/aaflow-w1-{args.preset}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 every run of every system verified, 1 a run failed, 2 usage."""
    parser = _parser()
    args = parser.parse_args(argv)
    names = _resolve(args, parser)
    knobs = EngineKnobs(**{k: getattr(args, k) for k in asdict(EngineKnobs())})
    load_start = cli.load_avg()
    info = generate(args.corpus_dir, args.preset)
    lines = [
        f"W1 {info.preset}: {info.docs} docs, {info.chunks} chunks in {args.corpus_dir}",
        f"load average at start: {' '.join(map(str, load_start))}  ({os.cpu_count()} CPUs)",
        f"repeats {args.repeats}, round-robin; engine knobs {asdict(knobs)}",
    ]
    skipped = {n: why for n in names if (why := available(n))}
    runnable = [n for n in names if n not in skipped]
    runs = run_all(runnable, args.repeats, args.corpus_dir, knobs)
    summaries = {n: summarize(n, runs[n]) for n in runnable}
    for n, why in skipped.items():
        summaries[n] = SystemSummary(n, None, None, 0, False, {}, 0.0, None, [], [], skipped=why)
    load_end = cli.load_avg()

    lines += ["", *stage_table(summaries)]
    best = median_run(runs.get(ENGINE, []))
    if best is not None:
        label = "" if best.ok else ", UNVERIFIED: " + best.failure
        lines += ["", f"aaflow engine (the median run{label}):", *engine_table(best.detail)]
    cmp = compare(summaries)
    engine_details = [r.detail for r in runs.get(ENGINE, []) if r.ok]
    efficiency = w1_targets.measure(summaries, engine_details)
    lines += ["", "targets (against the floors, this run):"]
    lines += list(w1_targets.lines(efficiency, args.preset))
    lines += ["", "earlier targets (against sequential):"]
    lines += list(target_lines(cmp, args.preset, summaries))
    lines += [
        *unverified_note(summaries),
        "",
        f"load average at end: {' '.join(map(str, load_end))}",
    ]
    detail = best.detail if best else None
    doc = to_json(args.preset, summaries, detail, cmp, [load_start, load_end])
    doc.update(efficiency.as_json())  # raw_zmq_ratio, fastest_simple_ratio, cpu_ratio, ...
    cli.report(lines, doc, args.json)
    return 0 if all(s.verified for s in summaries.values() if not s.skipped) else 1


if __name__ == "__main__":
    sys.exit(main())
