"""The report's Markdown: a table per workload, built from the figures ``bench/report.py`` has
worked out, and the splice that puts the generated section between two markers of a document
written by hand, leaving everything outside them as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

BEGIN = "<!-- report:begin -->"
END = "<!-- report:end -->"
MISSING = "–"


def cell(value: object, fmt: str = "") -> str:
    """A value formatted with ``fmt``; None is a dash, a string is left as it is."""
    if value is None:
        return MISSING
    if isinstance(value, str):
        return value
    return format(value, fmt)


def table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[object]]) -> list[str]:
    """A Markdown table: ``columns`` are (title, format spec); text columns (empty spec) are
    aligned left, numbers right."""
    lines = [
        "| " + " | ".join(title for title, _ in columns) + " |",
        "| " + " | ".join("---" if not fmt else "---:" for _, fmt in columns) + " |",
    ]
    for row in rows:
        cells = (cell(v, fmt) for v, (_, fmt) in zip(row, columns, strict=True))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def splice(document: str, section: str) -> str:
    """``document`` with ``section`` between its markers; a document without them gets them
    after its first paragraph under the title (near the top, before the hand-written part)."""
    block = f"{BEGIN}\n{section.strip()}\n{END}"
    start, end = document.find(BEGIN), document.find(END)
    if start >= 0 and end > start:
        return document[:start] + block + document[end + len(END) :]
    if start >= 0 or end >= 0:
        raise ValueError(f"the document has one of {BEGIN} / {END} without the other")
    paragraphs = document.split("\n\n")
    head = 2 if paragraphs and paragraphs[0].startswith("# ") and len(paragraphs) > 1 else 1
    return "\n\n".join([*paragraphs[:head], block, *paragraphs[head:]])


def _load(pair: Sequence[Sequence[float]] | None) -> str:
    if not pair:
        return "not recorded"
    start, end = pair[0], pair[-1]
    return f"{' '.join(map(str, start))} at start, {' '.join(map(str, end))} at end"


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def ratio(value: float | None, fmt: str = ".2f") -> str | None:
    return None if value is None else f"{value:{fmt}}x"


# ---------------------------------------------------------------- the sections


def machine(m: Mapping[str, Any], generated: str, command: str) -> list[str]:
    return [
        f"Generated {generated} by `{command}` on: {m.get('cpu')}, {m.get('cores')} cores, "
        f"{m.get('memory_gib')} GiB memory, Python {m.get('python')}, {m.get('os')}; "
        f"commit `{m.get('commit')}`. Load averages are 1, 5 and 15 minute figures.",
    ]


W1_COLUMNS = [
    ("system", ""),
    ("verified", ""),
    ("total s", ".3f"),
    ("chunks/s", ",.0f"),
    ("start-up s", ".2f"),
    ("CPU s", ".1f"),
    ("peak RSS MB", ",.0f"),
    ("load s", ".2f"),
    ("transform s", ".2f"),
    ("embed s", ".2f"),
    ("upsert s", ".2f"),
    ("aaflow / system", ""),
    ("runs (total s)", ""),
]


def w1(a: Mapping[str, Any]) -> list[str]:
    rows = []
    for s in a["systems"]:
        stages = s.get("stages") or {}
        runs = " ".join(MISSING if t is None else f"{t:.3f}" for t in s.get("runs", []))
        rows.append(
            [
                s["name"],
                "yes" if s["verified"] else "NO",
                s["total_s"],
                s["chunks_per_s"],
                s["startup_s"],
                s["cpu_s"],
                s["peak_rss_mb"],
                *(stages.get(k) for k in ("load", "transform", "embed", "upsert")),
                ratio(s.get("ratio")),
                runs,
            ]
        )
    lines = [
        f"W1 `{a['preset']}` ({a['chunks']:,} chunks), medians over "
        f"{plural(a['repeats'], 'run')} of each system, systems interleaved round-robin. "
        "Total: first document read to last vector applied, start-up apart; stage columns: "
        "busy seconds summed over workers; CPU: the whole command. Load average: "
        f"{_load(a.get('load_avg'))}.",
        "",
        *table(W1_COLUMNS, rows),
    ]
    lines += [f"\nNot run: {name} ({why})." for name, why in a.get("skipped", {}).items()]
    if a.get("ratios"):
        lines += ["", *table(
            [("the engine against the floors and baselines", ""), ("value", ""), ("target", "")],
            [[r["label"], r["value"], r["target"]] for r in a["ratios"]],
        )]  # fmt: skip
        if a["preset"] != a.get("target_preset", a["preset"]):
            lines.append(f"\n(The targets are set for W1 `{a['target_preset']}`.)")
    return lines


def sweep(a: Mapping[str, Any]) -> list[str]:
    workers, batches, shards = a["workers"], a["batches"], a["shards"]
    lines = [
        f"W1 `{a['preset']}` ({a['chunks']:,} chunks), chunks/s (median over "
        f"{plural(a['repeats'], 'run')} a point). Replicas: the engine's chained "
        "load→transform→embed actors, a baseline's worker processes; "
        f"{a['default_shards']} shards. Load average: {_load(a.get('load_avg'))}.",
        "",
    ]
    by_replicas = [
        [name, b, *(a["cps"].get(f"{name}/{p}/{b}/{a['default_shards']}") for p in workers)]
        for name in a["systems"]
        for b in batches
    ]
    lines += table(
        [("system", ""), ("embed batch", "d"), *((plural(p, "replica"), ",.0f") for p in workers)],
        by_replicas,
    )
    by_shards = [
        [name, *(a["cps"].get(f"{name}/{a['default_workers']}/{a['default_batch']}/{s}")
                 for s in shards)]
        for name in a["systems"]
    ]  # fmt: skip
    lines += [
        "",
        f"Against shards ({a['default_workers']} replicas, embed batch {a['default_batch']}):",
        "",
        *table([("system", ""), *((plural(s, "shard"), ",.0f") for s in shards)], by_shards),
    ]
    return lines


FIT_COLUMNS = [
    ("system", ""),
    ("beta, µs a chunk", ".2f"),
    ("alpha, ms a batch", ".3f"),
    ("Omega, s", ".3f"),
    ("RMS residual, s", ".3f"),
    ("residual / mean", ".1%"),
    ("R²", ".3f"),
    ("runs", "d"),
    ("start-up s (apart)", ".2f"),
]


def fits(a: Mapping[str, Any], cores: int | None) -> list[str]:
    rows = []
    for name, f in a["fits"].items():
        if "error" in f:
            rows.append([name, *([None] * 7), f"not fitted: {f['error']}"])
            continue
        rows.append(
            [name, f["beta"] * 1e6, f["alpha"] * 1e3, f["omega"], f["rms_s"], f["rms_rel"],
             f["r2"], f["points"], f.get("startup_s")]
        )  # fmt: skip
    return [
        "`T = N·beta/P + N·alpha/(b·P) + Omega` fitted by least squares to every verified run "
        f"of the replica sweep above ({a['default_shards']} shards; N chunks, b the embed "
        f"batch). P is the replicas capped at the {cores} cores, since workers beyond the "
        "cores do not run at the same time. beta is the work a chunk needs, alpha what each "
        "batch costs on top, Omega what does not shrink as replicas are added: filling and "
        "draining the pipeline and any part that runs in one place (at this N, not a cost "
        "per run). Start-up is excluded from T and shown apart.",
        "",
        *table(FIT_COLUMNS, rows),
    ]


T1_COLUMNS = [
    ("system", ""),
    ("batches/s", ",.0f"),
    ("GB/s", ".2f"),
    ("min–max GB/s", ""),
    ("vs raw", ""),
    ("vs raw_frames", ""),
]


def t1(a: Mapping[str, Any]) -> list[str]:
    rows = [
        [s["name"], s["batches_per_s"], s["gbps"],
         f"{s['gbps_min']:.2f}–{s['gbps_max']:.2f}" if "gbps_min" in s else None,
         ratio(s.get("vs_raw")), ratio(s.get("vs_raw_frames"))]
        for s in a["systems"]
    ]  # fmt: skip
    lines = [
        f"T1: one 1,024-row Arrow batch between two processes over `ipc://`, medians over "
        f"{plural(a['rounds'], 'interleaved round')}. Load average: {_load(a.get('load_avg'))}.",
        "",
        *table(T1_COLUMNS, rows),
    ]
    if a.get("paired") is not None:
        lines.append(
            f"\narrow / raw paired round by round: {a['paired']:.2f}x (median); "
            f"zero-copy receive: {a.get('zero_copy')}."
        )
    return lines


Q1_COLUMNS = [
    ("system", ""),
    ("p50 ms", ".3f"),
    ("p99 ms", ".3f"),
    ("queries/s @64", ",.0f"),
    ("p50 vs floor", ""),
    ("queries/s vs floor", ""),
]


def q1(a: Mapping[str, Any]) -> list[str]:
    rows = [
        [s["name"], s["p50_ms"], s["p99_ms"], s["qps"], ratio(s.get("p50_vs_floor")),
         ratio(s.get("qps_vs_floor"))]
        for s in a["systems"]
    ]  # fmt: skip
    exact = {True: "yes", False: "NO", None: "not checked"}[a.get("exact")]
    return [
        f"Q1: {a['vectors']:,} vectors in 4 shards, {a['queries']:,} queries, medians over "
        f"{plural(a['runs'], 'run')}. Latency: one client, one query at a time (aaflow: "
        "client → gateway → MPI round → client; floor and shards: embed + search in one "
        f"process). Exact top-k: {exact}. Load average: {_load(a.get('load_avg'))}.",
        "",
        *table(Q1_COLUMNS, rows),
    ]


M1_COLUMNS = [
    ("system", ""),
    ("replicas × threads", ""),
    ("chunks/s", ",.1f"),
    ("vs direct", ""),
    ("start-up s", ".2f"),
    ("min cosine", ".5f"),
]


def _startup(s: Mapping[str, Any]) -> float | None:
    """A stage's start-up; the direct run has none to report (one process, timed after its
    model load and warm-up)."""
    return None if s["system"] == "direct" else s.get("startup_s")


def m1(a: Mapping[str, Any]) -> list[str]:
    rows = [
        [s["system"], f"{s['replicas']} × {s['threads']}", s["chunks_per_s"],
         ratio(s.get("ratio")), _startup(s), s.get("min_cosine")]
        for s in a["systems"]
    ]  # fmt: skip
    return [
        f"M1: all-MiniLM-L6-v2 on {a['device']}, {a['chunks']:,} chunks of standard-library "
        f"docstrings, medians over {plural(a['repeats'], 'run')}. Load average: "
        f"{_load(a.get('load_avg'))}.",
        "",
        *table(M1_COLUMNS, rows),
    ]
