"""The report's PNG charts (matplotlib, drawn off-screen): W1 stage time per system, W1
throughput against replicas and shards, T1 GB/s per system, Q1 latency distribution.

Each function takes the figures the report has already worked out (plain dicts, see
``bench/report.py``), writes one PNG and returns its path, or None when there is nothing to
draw. Nothing here measures or decides anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("load", "transform", "embed", "upsert")
STAGE_COLORS = ("#8da0cb", "#66c2a5", "#fc8d62", "#e78ac3")
ENGINE = "aaflow"
DPI = 110


def _pyplot() -> Any:
    """pyplot on the Agg backend: no display, the same PNG on every machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    # No software/date metadata: a re-render of the same figures gives the same bytes.
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    _pyplot().close(fig)
    return path


def stage_bars(systems: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path | None:
    """Stacked bars of load / transform / embed / upsert busy seconds (summed over workers) per
    system, each bar's wall time (first read to last vector) marked beside it."""
    timed = [s for s in systems if s.get("stages")]
    if not timed:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    x = np.arange(len(timed))
    bottom = np.zeros(len(timed))
    for stage, color in zip(STAGES, STAGE_COLORS, strict=True):
        height = np.array([s["stages"].get(stage, 0.0) for s in timed])
        ax.bar(x, height, 0.6, bottom=bottom, label=stage, color=color)
        bottom += height
    walls = [s.get("total_s") for s in timed]
    wall_x = [xi for xi, w in zip(x, walls, strict=True) if w]
    ax.scatter(wall_x, [w for w in walls if w], marker="_", s=900, color="black", zorder=3,
               label="wall time (total_s)")  # fmt: skip
    ax.set_xticks(x, [s["name"] for s in timed], rotation=20)
    ax.set_ylabel("busy seconds (summed over workers)")
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    return _save(fig, path)


def scaling_lines(
    by_replicas: Mapping[str, Sequence[tuple[int, float]]],
    models: Mapping[str, Sequence[tuple[int, float]]],
    by_shards: Mapping[str, Sequence[tuple[int, float]]],
    title: str,
    path: Path,
) -> Path | None:
    """Two panels: chunks/s against replicas (the fitted model dashed, where there is one) and
    chunks/s against shards; each a line per system of (x, chunks/s) points."""
    if not by_replicas and not by_shards:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    colors = {}
    for name, points in by_replicas.items():
        (line,) = left.plot(*zip(*points, strict=True), marker="o", label=name)
        colors[name] = line.get_color()
        if name in models:
            left.plot(*zip(*models[name], strict=True), ls="--", lw=1, color=colors[name])
    for name, points in by_shards.items():
        right.plot(*zip(*points, strict=True), marker="o", label=name, color=colors.get(name))
    panels = ((left, "replicas (workers)", by_replicas), (right, "shards", by_shards))
    for ax, what, lines in panels:
        ax.set_xscale("log", base=2)
        ticks = sorted({x for points in lines.values() for x, _ in points})
        ax.set_xticks(ticks, [str(x) for x in ticks])
        ax.set_xlabel(what)
        ax.set_ylabel("chunks/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    left.set_title("against replicas (dashed: fitted model)", fontsize=9)
    right.set_title("against shards", fontsize=9)
    left.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def transport_bars(systems: Sequence[Mapping[str, Any]], title: str, path: Path) -> Path | None:
    """Median GB/s per system, whiskers from the slowest to the fastest round."""
    if not systems:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = np.arange(len(systems))
    med = np.array([s["gbps"] for s in systems])
    low = np.array([s.get("gbps_min", s["gbps"]) for s in systems])
    high = np.array([s.get("gbps_max", s["gbps"]) for s in systems])
    colors = ["#fc8d62" if s["name"].startswith("arrow") else "#8da0cb" for s in systems]
    ax.bar(x, med, 0.6, color=colors, yerr=[med - low, high - med], capsize=4)
    for xi, m in zip(x, med, strict=True):  # inside the bar, clear of the whiskers
        ax.annotate(f"{m:.2f}", (xi, 0), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 3), textcoords="offset points")  # fmt: skip
    ax.set_xticks(x, [s["name"] for s in systems])
    ax.set_ylabel("GB/s (median; whiskers: min-max round)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def latency_cdf(samples: Mapping[str, Sequence[float]], title: str, path: Path) -> Path | None:
    """The distribution of single-query latency per system, as a CDF on a log axis."""
    drawn = {name: np.sort(np.asarray(xs)) for name, xs in samples.items() if len(xs)}
    if not drawn:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for name, xs in drawn.items():
        ax.step(xs, np.arange(1, len(xs) + 1) / len(xs), where="post", label=name)
    for q in (0.5, 0.99):
        ax.axhline(q, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    plain = plt.FuncFormatter(lambda v, _: f"{v:g}")  # 20, 50, 100 rather than 2x10^1
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="both", labelsize=8)
    ax.set_xlabel("single-query latency, ms (log)")
    ax.set_ylabel("fraction of queries")
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)
