"""The benchmark report: W1, T1, Q1 and M1 with their baselines and floors, a W1 scaling sweep
with the scaling model fitted to it, written into docs/benchmarks.md between its report markers,
with PNG charts beside it (docs/img/).

Each workload runs through its own script, ``python -m bench.<name> ... --json``, exactly as a
user would run it; the report reads the JSON each prints last and measures nothing itself, so
its tables are those scripts' figures (medians, and ratios against the baselines and floors of
the same run). The W1 sweep (``--sweep-preset``) runs the engine (``bench.ingest``'s
``run_engine``) and the baselines that have a worker count (``bench.kit.w1_sweep``) at replicas
1-2-4 and two embed batch sizes with 4 shards, and at shards 1-2-4-8 with W1's 2 replicas and
batch 256; ``bench/scaling.py`` fits ``T = N*beta/P + N*alpha/(b*P) + Omega`` per system to it.

    python -m bench.report --quick --out /tmp/benchmarks.md  # smoke test: a few minutes
    python -m bench.report --repeats 3 --save run.json       # the real thing: 30-60 minutes
    python -m bench.report --from-json saved.json            # re-render a saved --json line

Exit codes: 0 every workload ran and its checks held; 1 a workload failed or a check did not
hold (the report is still written, saying so); 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .kit import charts, cli, machine
from .kit import report_doc as md
from .kit.report_figures import (
    TARGET_PRESET,
    analyse_m1,
    analyse_q1,
    analyse_t1,
    analyse_w1,
    div,
    median,
)
from .kit.w1_sweep import SYSTEMS as SWEEPABLE
from .kit.w1_sweep import run_point
from .scaling import Fit, Point, effective_workers, fit

REPO_DIR = Path(__file__).resolve().parents[1]
WORKLOADS = ("w1", "sweep", "t1", "q1", "m1")
ENGINE = "aaflow"
SCRIPT_TIMEOUT_S = 3600.0
# The sweep's systems: the engine and baselines with a worker count (ray and llamaindex take
# minutes a sweep on 2 cores: --sweep-systems adds them).
FULL_SWEEP = (ENGINE, "mp_pool", "asyncio", "dask")
QUICK_SWEEP = (ENGINE, "mp_pool")


@dataclass(frozen=True)
class Plan:
    """What one report runs."""

    repeats: int
    w1_args: tuple[str, ...]
    sweep_preset: str
    sweep_systems: tuple[str, ...]
    sweep_batches: tuple[int, ...]
    t1_args: tuple[str, ...]
    q1_args: tuple[str, ...]
    m1_args: tuple[str, ...]
    workers: tuple[int, ...] = (1, 2, 4)
    shards: tuple[int, ...] = (1, 2, 4, 8)
    default_workers: int = 2  # W1's
    default_batch: int = 256
    default_shards: int = 4


def make_plan(args: argparse.Namespace) -> Plan:
    quick, rep = args.quick, ("--repeats", str(args.repeats))
    if args.w1_preset:
        w1: tuple[str, ...] = ("--preset", args.w1_preset, *rep)
    else:
        w1 = ("--quick", *rep) if quick else ("--preset", TARGET_PRESET, *rep)
    return Plan(
        repeats=args.repeats,
        w1_args=w1,
        sweep_preset=args.sweep_preset or ("tiny" if quick else "small"),
        sweep_systems=tuple(args.sweep_systems or (QUICK_SWEEP if quick else FULL_SWEEP)),
        sweep_batches=(32, 256),
        # T1 interleaves its own rounds (30; --quick 8): its medians are over those.
        t1_args=("--quick",) if quick else (),
        q1_args=("--quick", "--samples") if quick else ("--samples",),
        m1_args=("--quick", *rep) if quick else rep,
    )


# ---------------------------------------------------------------- running the workloads


def run_script(name: str, args: Sequence[str]) -> dict[str, Any]:
    """``python -m bench.NAME ARGS --json``: its JSON, exit status and the load around it. Its
    progress goes to our stderr as it runs; its printed report follows it there."""
    cmd = ["-m", f"bench.{name}", *args, "--json"]
    cli.progress(f"== python {' '.join(cmd)}")
    load_start, t0 = cli.load_avg(), time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, *cmd],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_DIR,
            timeout=SCRIPT_TIMEOUT_S,
        )
        code, stdout = proc.returncode, proc.stdout
    except subprocess.TimeoutExpired as exc:
        code, stdout = None, str(exc.stdout or "")
    lines = stdout.strip().splitlines()
    result = None
    if lines and lines[-1].startswith("{"):
        result = json.loads(lines.pop())
    for line in lines:
        cli.progress(f"   {line}")
    return {
        "command": f"python {' '.join(cmd)}",
        "exit": code,
        "wall_s": round(time.perf_counter() - t0, 1),
        "load_avg": [load_start, cli.load_avg()],
        "result": result,
    }


def sweep_points(plan: Plan) -> list[tuple[str, int, int, int]]:
    """(system, replicas, batch, shards): replicas x batches at the default shards, then the
    other shard counts at the default replicas and batch."""
    configs = [(p, b, plan.default_shards) for p in plan.workers for b in plan.sweep_batches]
    configs += [
        (plan.default_workers, plan.default_batch, s)
        for s in plan.shards
        if (plan.default_workers, plan.default_batch, s) not in configs
    ]
    return [(name, *config) for config in configs for name in plan.sweep_systems]


def run_sweep(plan: Plan) -> dict[str, Any]:
    """Every sweep point ``plan.repeats`` times, in a shuffled order each repeat."""
    from aaflow_stream.synthetic import expected_chunk_ids, generate

    from . import ingest  # lazily: it loads the shard readers, which a re-render never needs

    corpus = Path(f"/tmp/aaflow-w1-{plan.sweep_preset}")  # bench.ingest's default place
    info = generate(corpus, plan.sweep_preset)
    expected = expected_chunk_ids(corpus)
    skipped = {n: why for n in plan.sweep_systems if (why := ingest.available(n))}
    points = [p for p in sweep_points(plan) if p[0] not in skipped]
    load_start = cli.load_avg()
    runs = []
    for rep in range(plan.repeats):
        # A new order each repeat (seeded: the same every report), so that a burst of load from
        # elsewhere on the machine does not fall on the same points every time.
        order = random.Random(rep).sample(points, len(points))
        for name, workers, batch, shards in order:
            if name == ENGINE:
                knobs = ingest.EngineKnobs(embed_replicas=workers, embed_batch=batch, shards=shards)
                run = ingest.run_engine(corpus, expected, knobs)
                result, ok = run.result, run.ok
            else:
                result = run_point(name, corpus, workers=workers, batch=batch, shards=shards)
                ok = not result.skipped and result.verified
            runs.append(
                {
                    "system": name,
                    "workers": workers,
                    "batch": batch,
                    "shards": shards,
                    "ok": ok,
                    "total_s": result.total_s if ok else None,
                    "startup_s": result.startup_s if ok else None,
                    "chunks": result.chunks,
                    "failure": None if ok else (result.skipped or "failed the W1 check"),
                }
            )
            state = f"total {result.total_s:.3f} s" if ok else runs[-1]["failure"]
            cli.progress(
                f"[{rep + 1}/{plan.repeats}] sweep {name:<8} replicas {workers} batch {batch:>3} "
                f"shards {shards}: {state}"
            )
    return {
        "preset": plan.sweep_preset,
        "chunks": info.chunks,
        "repeats": plan.repeats,
        "systems": [n for n in plan.sweep_systems if n not in skipped],
        "skipped": skipped,
        "workers": list(plan.workers),
        "batches": list(plan.sweep_batches),
        "shards": list(plan.shards),
        "default_workers": plan.default_workers,
        "default_batch": plan.default_batch,
        "default_shards": plan.default_shards,
        "load_avg": [load_start, cli.load_avg()],
        "runs": runs,
    }


def run_all(plan: Plan, workloads: Sequence[str], doc: dict[str, Any], save: Path | None) -> None:
    """Each workload's measurements into ``doc["workloads"]``; after each, ``doc`` is written to
    ``save`` (when given) as one JSON line, so that a run cut short can still be rendered."""
    steps = {
        "w1": lambda: run_script("ingest", plan.w1_args),
        "sweep": lambda: run_sweep(plan),
        "t1": lambda: run_script("transport", plan.t1_args),
        "q1": lambda: [run_script("query", plan.q1_args) for _ in range(plan.repeats)],
        "m1": lambda: run_script("embed", plan.m1_args),
    }
    for name, step in steps.items():
        if name in workloads:
            doc["workloads"][name] = step()
            if save is not None:
                save.write_text(json.dumps(doc) + "\n")


# ---------------------------------------------------------------- what the measurements say


def _fit_dict(f: Fit, startup_s: float | None, model: list[tuple[int, float]]) -> dict[str, Any]:
    return {
        "alpha": f.alpha,
        "beta": f.beta,
        "omega": f.omega,
        "rms_s": f.rms_s,
        "rms_rel": f.rms_rel,
        "r2": f.r2,
        "points": f.points,
        "startup_s": startup_s,
        "model_cps": model,  # (replicas, chunks/s the model predicts) at the default batch
    }


def analyse_sweep(sweep: dict[str, Any], cores: int) -> dict[str, Any]:
    """Median chunks/s per point (keyed ``system/replicas/batch/shards``) and each system's
    fit of the scaling model to its runs at the default shard count."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sweep["runs"]:
        groups.setdefault(f"{r['system']}/{r['workers']}/{r['batch']}/{r['shards']}", []).append(r)
    cps = {}
    for key, runs in groups.items():
        t = median([r["total_s"] for r in runs if r["ok"]])
        cps[key] = div(runs[0]["chunks"], t)
    fits: dict[str, dict[str, Any]] = {}
    for name in sweep["systems"]:
        mine = [r for r in sweep["runs"] if r["system"] == name and r["ok"]]
        points = [
            Point(r["chunks"], effective_workers(r["workers"], cores), r["batch"], r["total_s"])
            for r in mine
            if r["shards"] == sweep["default_shards"]
        ]
        if not points:
            fits[name] = {"error": "no verified run"}
            continue
        try:
            got = fit(points)
        except ValueError as exc:
            fits[name] = {"error": str(exc)}
            continue
        n, b = sweep["chunks"], sweep["default_batch"]
        model = [(p, n / got.predict(n, effective_workers(p, cores), b)) for p in sweep["workers"]]
        fits[name] = _fit_dict(got, median([r["startup_s"] for r in mine]), model)
    return {**{k: v for k, v in sweep.items() if k != "runs"}, "cps": cps, "fits": fits}


def analyse(doc: dict[str, Any]) -> dict[str, Any]:
    """Every workload's figures, worked out from the raw measurements of ``doc``."""
    found = doc["workloads"]
    cores = doc["machine"].get("cores") or 1
    out: dict[str, Any] = {}
    if "w1" in found:
        out["w1"] = analyse_w1(found["w1"])
    if "sweep" in found:
        out["sweep"] = analyse_sweep(found["sweep"], cores)
    if "t1" in found:
        out["t1"] = analyse_t1(found["t1"])
    if "q1" in found:
        out["q1"] = analyse_q1(found["q1"])
    if "m1" in found:
        out["m1"] = analyse_m1(found["m1"])
    return out


# ---------------------------------------------------------------- writing it down


def draw(a: dict[str, Any], img_dir: Path) -> dict[str, Path]:
    """The charts that have figures to draw: {name: path}."""
    made: dict[str, Path | None] = {}
    if a.get("w1"):
        w1 = a["w1"]
        title = f"W1 {w1['preset']}: stage busy time per system (medians)"
        made["w1_stages"] = charts.stage_bars(w1["systems"], title, img_dir / "w1_stages.png")
    if a.get("sweep"):
        s = a["sweep"]
        d_w, d_b, d_s = s["default_workers"], s["default_batch"], s["default_shards"]

        def series(keys: dict[int, str]) -> list[tuple[int, float]]:
            return [(x, c) for x, key in keys.items() if (c := s["cps"].get(key)) is not None]

        by_replicas = {n: series({p: f"{n}/{p}/{d_b}/{d_s}" for p in s["workers"]})
                       for n in s["systems"]}  # fmt: skip
        by_shards = {n: series({x: f"{n}/{d_w}/{d_b}/{x}" for x in s["shards"]})
                     for n in s["systems"]}  # fmt: skip
        models = {n: f["model_cps"] for n, f in s["fits"].items() if "model_cps" in f}
        title = f"W1 {s['preset']}: throughput (medians), embed batch {d_b}"
        made["w1_scaling"] = charts.scaling_lines(
            {n: v for n, v in by_replicas.items() if v},
            models,
            {n: v for n, v in by_shards.items() if v},
            title,
            img_dir / "w1_scaling.png",
        )
    if a.get("t1"):
        title = "T1: GB/s per system (1,024-row Arrow batch, ipc://)"
        made["t1_gbps"] = charts.transport_bars(a["t1"]["systems"], title, img_dir / "t1_gbps.png")
    if a.get("q1"):
        title = "Q1: single-query latency, every query of every run"
        made["q1_latency"] = charts.latency_cdf(
            a["q1"]["samples"], title, img_dir / "q1_latency.png"
        )
    return {name: path for name, path in made.items() if path is not None}


def _workload(
    title: str, run: Any, body: list[str] | None, image: str | None, alt: str
) -> list[str]:
    """A workload's sub-section: its table(s), chart and the command(s) that measured it."""
    lines = ["", f"### {title}", ""]
    runs = run if isinstance(run, list) else [run]
    if body is None:
        failed = "; ".join(f"`{r['command']}` exited {r['exit']}" for r in runs if r)
        return [*lines, f"No result: {failed or 'not run'}."]
    lines += body
    if image:
        lines += ["", f"![{alt}]({image})"]
    if run and "command" in runs[0]:
        codes = {r["exit"] for r in runs}
        status = "" if codes == {0} else f" (exit {', '.join(map(str, sorted(codes, key=str)))})"
        times = f"{len(runs)} × " if len(runs) > 1 else ""
        lines += ["", f"Measured by {times}`{runs[0]['command']}`{status}."]
    return lines


def section(doc: dict[str, Any], a: dict[str, Any], images: dict[str, str]) -> str:
    """The generated Markdown that goes between the report markers."""
    found = doc["workloads"]
    cores = doc["machine"].get("cores")
    lines = [
        "## Results",
        "",
        "*Written by `python -m bench.report` (`make bench-report`); every run rewrites what "
        "lies between the report markers. The sections after it say how each figure is "
        "measured.*",
        "",
        *md.machine(doc["machine"], doc["generated"], doc["command"]),
    ]
    if "w1" in found:
        body = md.w1(a["w1"]) if a.get("w1") else None
        alt = "W1 stage busy time per system"
        lines += _workload("W1 — ingestion", found["w1"], body, images.get("w1_stages"), alt)
    if "sweep" in found:
        s = a["sweep"]
        skipped = [f"{n} ({why})" for n, why in s.get("skipped", {}).items()]
        body = [*md.sweep(s), *([f"\nNot run: {', '.join(skipped)}."] if skipped else [])]
        body += [
            "",
            "Measured by the report itself: the engine through `bench.ingest`'s `run_engine`, "
            "each baseline in a fresh interpreter (`python -m bench.kit.w1_sweep`).",
            "",
            "#### Scaling model",
            "",
            *md.fits(s, cores),
        ]
        alt = "W1 throughput against replicas and shards"
        lines += _workload("W1 — scaling", None, body, images.get("w1_scaling"), alt)
    if "t1" in found:
        body = md.t1(a["t1"]) if a.get("t1") else None
        lines += _workload("T1 — transport", found["t1"], body, images.get("t1_gbps"), "T1 GB/s")
    if "q1" in found:
        body = md.q1(a["q1"]) if a.get("q1") else None
        alt = "Q1 latency distribution"
        lines += _workload("Q1 — retrieval", found["q1"], body, images.get("q1_latency"), alt)
    if "m1" in found:
        body = md.m1(a["m1"]) if a.get("m1") else None
        lines += _workload("M1 — real model", found["m1"], body, None, "")
    return "\n".join(lines) + "\n"


def headline(a: dict[str, Any]) -> list[str]:
    """One line a workload: the ratios a reader looks for first (the README quotes them)."""
    out = []
    if a.get("w1"):
        ratios = {r["label"]: r["value"] for r in a["w1"]["ratios"]}
        out.append(
            f"W1 {a['w1']['preset']}: aaflow / raw_zmq {ratios['aaflow / raw_zmq (total)']}, "
            f"/ faster of asyncio and mp_pool "
            f"{ratios['aaflow / the faster of asyncio and mp_pool (total)']}, "
            f"CPU / sequential {ratios['aaflow / sequential (CPU seconds)']}"
        )
    if a.get("t1"):
        arrow = next((s for s in a["t1"]["systems"] if s["name"] == "arrow"), None)
        if arrow:
            out.append(
                f"T1: arrow {arrow['gbps']:.2f} GB/s, {md.cell(arrow['vs_raw'], '.2f')}x raw"
            )
    if a.get("q1"):
        engine = a["q1"]["systems"][0]
        out.append(
            f"Q1: aaflow p50 {md.cell(engine['p50_ms'], '.3f')} ms "
            f"({md.cell(engine['p50_vs_floor'], '.2f')}x the floor's), "
            f"{md.cell(engine['qps_vs_floor'], '.2f')}x its queries/s"
        )
    if a.get("m1"):
        stages = [s for s in a["m1"]["systems"] if s["system"] != "direct"]
        if stages:
            best = max(stages, key=lambda s: s["chunks_per_s"])
            out.append(f"M1: embed stage {best['ratio']:.2f}x one direct encode ({best['system']})")
    return out


def render(doc: dict[str, Any], out: Path, img_dir: Path) -> dict[str, Any]:
    """Write the charts under ``img_dir`` and the results section into ``out`` (created if
    missing, else spliced between its markers); returns the analysis."""
    a = analyse(doc)
    made = draw(a, img_dir)
    images = {n: os.path.relpath(p, out.parent) for n, p in made.items()}
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(md.splice(text, section(doc, a, images)))
    return a


def checks_held(doc: dict[str, Any]) -> bool:
    """Every script exited 0 and every sweep run verified."""
    found = doc["workloads"]
    runs = [found[k] for k in ("w1", "t1", "m1") if k in found] + found.get("q1", [])
    sweep_ok = all(r["ok"] for r in found.get("sweep", {}).get("runs", []))
    return sweep_ok and all(r["exit"] == 0 and r["result"] for r in runs)


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = cli.parser(
        __doc__,
        quick="small presets, 1 repeat: a smoke test of a few minutes",
        repeats="runs of each system (default 3; --quick 1); T1 keeps its own rounds",
    )
    p.add_argument("--out", type=Path, default=REPO_DIR / "docs" / "benchmarks.md")
    p.add_argument("--img-dir", type=Path, help="default: img/ beside --out")
    p.add_argument("--w1-preset", help=f"W1's table (default {TARGET_PRESET}; --quick: small)")
    p.add_argument("--sweep-preset", help="the scaling sweep's (default small; --quick: tiny)")
    p.add_argument("--sweep-systems", type=lambda s: s.split(","), help="comma-separated")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated subset")
    p.add_argument(
        "--save", type=Path, metavar="FILE", help="the measurements so far, after each workload"
    )
    p.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="render saved --json lines (a later file's workloads replace an earlier one's); "
        "run nothing",
    )
    return p


def load_saved(paths: Sequence[Path]) -> dict[str, Any]:
    """The measurements of saved ``--json`` outputs (their last lines), merged workload by
    workload: a report run in parts renders as one."""
    docs = [json.loads(path.read_text().strip().splitlines()[-1]) for path in paths]
    merged = {**docs[-1], "workloads": {}}
    merged.pop("analysis", None)
    for doc in docs:
        merged["workloads"].update(doc["workloads"])
    merged["command"] = "; ".join(dict.fromkeys(doc["command"] for doc in docs))
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.repeats = cli.repeats(args, full=3, quick=1)
    img_dir = args.img_dir or args.out.parent / "img"
    if args.from_json:
        doc = load_saved(args.from_json)
    else:
        workloads = [w for w in args.workloads.split(",") if w]
        if unknown := set(workloads) - set(WORKLOADS):
            parser.error(f"unknown workloads {sorted(unknown)}; choose from {WORKLOADS}")
        if bad := set(args.sweep_systems or ()) - {ENGINE, *SWEEPABLE}:
            parser.error(f"unknown sweep systems {sorted(bad)}; choose from {ENGINE}, {SWEEPABLE}")
        plan = make_plan(args)
        doc = {
            "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python -m bench.report " + " ".join(argv or sys.argv[1:]),
            "machine": machine.describe(),
            "workloads": {},
        }
        run_all(plan, workloads, doc, args.save)
    a = render(doc, args.out, img_dir)
    ok = checks_held(doc)
    lines = [f"wrote {args.out} and its charts in {img_dir}", *headline(a)]
    if not ok:
        lines.append("a workload failed or a check did not hold: see the report")
    if a.get("q1"):  # the samples are in doc already
        a["q1"] = {k: v for k, v in a["q1"].items() if k != "samples"}
    cli.report(lines, {**doc, "analysis": a}, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
