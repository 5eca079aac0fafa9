"""The report's figures for W1, T1, Q1 and M1, worked out from the JSON their scripts print:
medians over repeated runs, ratios against the baselines and floors of the same run, and the
issue's W1 targets with MEETS / MISSES. Pure functions of plain dicts; ``bench/report.py``
runs the scripts and ``report_doc`` / ``charts`` show what these return.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..w1_targets import (
    MAX_CPU_RATIO,
    MAX_FASTEST_SIMPLE_RATIO,
    MAX_RAW_ZMQ_RATIO,
    MAX_SHUTDOWN_S,
    MAX_STARTUP_S,
)
from . import report_doc as md

ENGINE = "aaflow"
# The W1 targets (ratios in one run, medians) are set for this preset.
TARGET_PRESET = "xlarge"
SIMPLE = ("asyncio", "mp_pool")  # "the simple baselines" of the speed-up target


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def target(label: str, value: float | None, bound: float, unit: str = "x") -> dict[str, Any]:
    """A ratio (or seconds, ``unit`` "s") against its upper bound: MEETS / MISSES."""
    suffix, op = ("x", "≤") if unit == "x" else (" s", "<")
    shown = None if value is None else f"{value:.2f}{suffix}"
    verdict = "" if value is None else (" MEETS" if value <= bound else " MISSES")
    return {"label": label, "value": shown, "target": f"{op} {bound:g}{suffix}{verdict}"}


def analyse_w1(run: dict[str, Any]) -> dict[str, Any] | None:
    r = run.get("result")
    if not r:
        return None
    found = r["systems"]
    engine = found.get(ENGINE, {})
    mine = engine.get("total_s")
    systems = [
        {
            "name": name,
            "verified": s["verified"],
            "total_s": s["total_s"],
            "chunks_per_s": div(s["chunks"], s["total_s"]),
            "startup_s": s["startup_s"],
            "cpu_s": s["cpu_s"],
            "peak_rss_mb": s["peak_rss_mb"],
            "stages": s["stages"],
            "runs": s["runs"],
            "ratio": div(mine, s["total_s"]),
        }
        for name, s in found.items()
    ]

    def total(name: str) -> float | None:
        return found.get(name, {}).get("total_s")

    simple = [t for t in map(total, SIMPLE) if t]
    cpu_seq = found.get("sequential", {}).get("cpu_s")
    detail = r.get("engine") or {}
    # Later versions of bench.ingest print these keys; where missing they are worked out here.
    raw_zmq_ratio = r.get("raw_zmq_ratio", div(mine, total("raw_zmq")))
    simple_ratio = r.get("fastest_simple_ratio", div(mine, min(simple) if simple else None))
    cpu_ratio = r.get("cpu_ratio", div(engine.get("cpu_s"), cpu_seq))
    startup = r.get("startup_s", engine.get("startup_s"))
    shutdown = r.get("shutdown_s", detail.get("shutdown_s"))
    ratios = [
        # the bounds are bench.ingest's own (bench/w1_targets.py): one place for them
        target("aaflow / raw_zmq (total)", raw_zmq_ratio, MAX_RAW_ZMQ_RATIO),
        target(
            "aaflow / the faster of asyncio and mp_pool (total)",
            simple_ratio,
            MAX_FASTEST_SIMPLE_RATIO,
        ),
        target("aaflow / sequential (CPU seconds)", cpu_ratio, MAX_CPU_RATIO),
        {
            "label": "aaflow / sequential (total)",
            "value": md.ratio(div(mine, total("sequential"))),
            "target": md.MISSING,
        },
        target("aaflow start-up", startup, MAX_STARTUP_S, "s"),
        target("aaflow last vector applied → exit", shutdown, MAX_SHUTDOWN_S, "s"),
    ]
    return {
        "preset": r.get("preset"),
        "target_preset": TARGET_PRESET,
        "chunks": max((s["chunks"] for s in found.values()), default=0),
        "repeats": max((len(s["runs"]) for s in found.values()), default=0),
        "systems": systems,
        "skipped": r.get("skipped", {}),
        "ratios": ratios,
        "load_avg": run["load_avg"],
    }


def analyse_t1(run: dict[str, Any]) -> dict[str, Any] | None:
    r = run.get("result")
    if not r:
        return None
    found = r.get("systems") or {  # an older bench.transport: medians only
        name: {"gbps": r[f"{name}_gbps"]}
        for name in ("arrow", "arrow_ipc", "raw", "raw_frames", "mpqueue")
        if r.get(f"{name}_gbps")
    }
    raw = found.get("raw", {}).get("gbps")
    raw_frames = found.get("raw_frames", {}).get("gbps")
    systems = []
    for name, s in found.items():
        rounds = s.get("gbps_rounds") or []
        systems.append(
            {
                "name": name,
                "batches_per_s": s.get("batches_per_s"),
                "gbps": s["gbps"],
                **({"gbps_min": min(rounds), "gbps_max": max(rounds)} if rounds else {}),
                "vs_raw": div(s["gbps"], raw),
                "vs_raw_frames": div(s["gbps"], raw_frames),
            }
        )
    return {
        "systems": systems,
        "rounds": r.get("repeats"),
        "paired": r.get("arrow_raw_paired_median"),
        "zero_copy": r.get("zero_copy_receive"),
        "load_avg": run["load_avg"],
    }


Q1_SYSTEMS = {"aaflow": ("p50_ms", "p99_ms", "qps64"), "floor": ("floor_p50_ms", None,
              "floor_qps64"), "shards": ("shards_p50_ms", None, "shards_qps64")}  # fmt: skip


def percentile(xs: Sequence[float], q: float) -> float | None:
    """As bench/query.py computes its own (numpy's linear interpolation); None without samples."""
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) if len(xs) else None


def analyse_q1(runs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    results = [run["result"] for run in runs if run.get("result")]
    if not results:
        return None
    samples: dict[str, list[float]] = {name: [] for name in Q1_SYSTEMS}
    per_run: dict[str, list[tuple[float | None, float | None, float | None]]] = {}
    for r in results:
        lat = r.get("latencies_ms", {})
        for name, (p50_key, p99_key, qps_key) in Q1_SYSTEMS.items():
            xs = lat.get(name) or []
            samples[name] += xs
            # The script's own figures where it prints them; the samples fill in the rest.
            p50 = r.get(p50_key, percentile(xs, 50))
            p99 = r[p99_key] if p99_key in r else percentile(xs, 99)
            per_run.setdefault(name, []).append((p50, p99, r.get(qps_key)))
    figures = {
        name: [median([run[i] for run in rows]) for i in range(3)] for name, rows in per_run.items()
    }
    floor_p50, _, floor_qps = figures["floor"]
    systems = [
        {
            "name": name,
            "p50_ms": p50,
            "p99_ms": p99,
            "qps": qps,
            "p50_vs_floor": div(p50, floor_p50),
            "qps_vs_floor": div(qps, floor_qps),
        }
        for name, (p50, p99, qps) in figures.items()
    ]
    exact = all(r.get("exact") for r in results)
    return {
        "systems": systems,
        "samples": samples,
        "vectors": results[0]["vectors"],
        "queries": results[0]["queries"],
        "runs": len(results),
        "exact": exact,
        "load_avg": [runs[0]["load_avg"][0], runs[-1]["load_avg"][-1]],
    }


def analyse_m1(run: dict[str, Any]) -> dict[str, Any] | None:
    r = run.get("result")
    if not r:
        return None
    repeats = max((len(s["runs"]) for s in r["systems"]), default=0)
    return {
        "systems": r["systems"],
        "chunks": r["chunks"],
        "device": r["device"],
        "repeats": repeats,
        "load_avg": run["load_avg"],
    }
