"""The soak's report: one row per interval (a table on the terminal, a JSON line in
``minutes.jsonl``), the chart (``chart.png``, when matplotlib is installed: the ``soak`` extra)
and the verdict.

The verdict passes when the audit is clean, no unexpected error occurred (``record.py`` says
which are expected) and no process grew its RSS after warm-up by more than the bound: 10% of
its warm size or 20 MB, whichever is larger. A process is judged from its first sample at
least ``warmup_s`` after it was first seen to its last sample; one that did not live that long
(a restart replaced it) is not judged. A shard rank's growth is net of the data it reports
holding in memory (``status.json`` ``bytes``): the vectors and rows it was sent are not a leak.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .audit import AuditResult
from .record import ErrorEvent, Fault, Proc, Recorder, Sample

log = logging.getLogger(__name__)

RSS_GROWTH_FRACTION = 0.10
RSS_GROWTH_FLOOR_MB = 20.0


def _pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass
class Row:
    index: int  # 1-based
    start_s: float  # offset of the interval from the soak's start
    end_s: float
    sent: int = 0
    acked: int = 0
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    queries: int = 0
    answered: int = 0
    query_p50_ms: float | None = None
    query_p99_ms: float | None = None
    checks: int = 0
    checks_failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    expected_errors: int = 0
    unexpected_errors: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    processes: dict[str, dict[str, float]] = field(default_factory=dict)
    rss_total_mb: float = 0.0
    fds_total: int = 0
    data_mb: float = 0.0


def row(recorder: Recorder, index: int, interval_s: float, now: float | None = None) -> Row:
    """The figures of interval ``index`` (1-based) of the soak."""
    start = recorder.started + (index - 1) * interval_s
    end = start + interval_s

    def inside(at: float) -> bool:
        return start <= at < end

    out = Row(index, (index - 1) * interval_s, index * interval_s)
    out.sent = sum(n for at, n in list(recorder.sent) if inside(at))
    lags = [lag * 1000 for at, lag in list(recorder.acked) if inside(at)]
    out.acked = len(lags)
    out.lag_p50_ms, out.lag_p99_ms = _pct(lags, 50), _pct(lags, 99)
    queries = [(took, ok) for at, took, ok in list(recorder.queries) if inside(at)]
    answered = [took * 1000 for took, ok in queries if ok]
    out.queries, out.answered = len(queries), len(answered)
    out.query_p50_ms, out.query_p99_ms = _pct(answered, 50), _pct(answered, 99)
    checks = [ok for at, ok in list(recorder.checks) if inside(at)]
    out.checks, out.checks_failed = len(checks), checks.count(False)
    windows = recorder.windows(now)
    errors = [e for e in list(recorder.errors) if inside(e.end)]
    out.errors = dict(Counter(e.kind for e in errors))
    out.expected_errors = sum(recorder.expected(e, windows) for e in errors)
    out.unexpected_errors = len(errors) - out.expected_errors
    out.faults = [f.as_json() for f in list(recorder.faults) if inside(f.at)]
    samples = [s for s in list(recorder.samples) if inside(s.at)]
    if samples:
        last = samples[-1]
        out.processes = {k: asdict(v) for k, v in last.processes.items()}
        out.rss_total_mb = sum(p.rss_mb for p in last.processes.values())
        out.fds_total = sum(p.fds for p in last.processes.values())
        out.data_mb = last.data_mb
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


HEADER = (
    f"{'min':>4} {'sent':>6} {'acked':>6} {'lag p50/p99 ms':>15} {'queries':>8} "
    f"{'q p50/p99 ms':>13} {'checks':>7} {'err exp/unexp':>13} {'faults (recovery s)':>24} "
    f"{'rss MB':>7} {'fds':>5} {'data MB':>8}"
)


def line(r: Row) -> str:
    faults = ", ".join(
        f"{f['victim']} {f['recovery_s']:.1f}"
        if f["recovery_s"] is not None
        else f"{f['victim']} -"
        for f in r.faults
    )
    checks = f"{r.checks - r.checks_failed}/{r.checks}"
    errors = f"{r.expected_errors}/{r.unexpected_errors}"
    return (
        f"{r.index:>4} {r.sent:>6} {r.acked:>6} "
        f"{_ms(r.lag_p50_ms) + '/' + _ms(r.lag_p99_ms):>15} {r.answered:>4}/{r.queries:<3} "
        f"{_ms(r.query_p50_ms) + '/' + _ms(r.query_p99_ms):>13} {checks:>7} {errors:>13} "
        f"{faults or '-':>24} {r.rss_total_mb:>7.0f} {r.fds_total:>5} {r.data_mb:>8.1f}"
    )


def rss_line(r: Row) -> str:
    """Every process's RSS at the end of the interval, one line."""
    parts = [f"{name} {p['rss_mb']:.0f}" for name, p in sorted(r.processes.items())]
    return "     rss MB: " + (", ".join(parts) if parts else "-")


# --- RSS growth ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Growth:
    name: str
    pid: int
    warm_mb: float
    end_mb: float
    bound_mb: float
    held_mb: float = 0.0  # growth of the data it reports holding (shard ranks)

    @property
    def growth_mb(self) -> float:
        return self.end_mb - self.warm_mb - self.held_mb

    @property
    def ok(self) -> bool:
        return self.growth_mb < self.bound_mb


def rss_growth(samples: list[Sample], warmup_s: float) -> list[Growth]:
    """Per process (name and pid): RSS at its warm sample and at its last one."""
    first: dict[tuple[str, int], float] = {}
    warm: dict[tuple[str, int], Proc] = {}
    last: dict[tuple[str, int], Proc] = {}
    for sample in sorted(samples, key=lambda s: s.at):
        for name, proc in sample.processes.items():
            key = (name, proc.pid)
            seen = first.setdefault(key, sample.at)
            if key not in warm and sample.at - seen >= warmup_s:
                warm[key] = proc
            last[key] = proc
    out = []
    for key, at_warm in warm.items():
        bound = max(RSS_GROWTH_FRACTION * at_warm.rss_mb, RSS_GROWTH_FLOOR_MB)
        held = max(0.0, last[key].held_mb - at_warm.held_mb)
        out.append(Growth(key[0], key[1], at_warm.rss_mb, last[key].rss_mb, bound, held))
    return sorted(out, key=lambda g: (g.name, g.pid))


def growth_table(growth: list[Growth]) -> str:
    lines = [
        f"{'process':<20} {'pid':>8} {'warm MB':>8} {'end MB':>8} {'data MB':>8} "
        f"{'growth':>7} {'bound':>6}"
    ]
    for g in growth:
        mark = "" if g.ok else "  OVER"
        lines.append(
            f"{g.name:<20} {g.pid:>8} {g.warm_mb:>8.1f} {g.end_mb:>8.1f} {g.held_mb:>+8.1f} "
            f"{g.growth_mb:>+7.1f} {g.bound_mb:>6.1f}{mark}"
        )
    return "\n".join(lines)


# --- verdict ---------------------------------------------------------------------------------


@dataclass
class Verdict:
    passed: bool
    reasons: list[str]

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 4

    def line(self) -> str:
        word = "PASS" if self.passed else "FAIL"
        return f"verdict: {word} ({'; '.join(self.reasons)})"


def verdict(audit: AuditResult, unexpected: list[ErrorEvent], growth: list[Growth]) -> Verdict:
    reasons = []
    ok = audit.clean
    reasons.append(("audit clean: " if audit.clean else "audit FAILED: ") + audit.line())
    if unexpected:
        ok = False
        kinds = Counter(e.kind for e in unexpected)
        reasons.append(
            f"{len(unexpected)} unexpected errors ("
            + ", ".join(f"{k} {n}" for k, n in kinds.most_common())
            + ")"
        )
    else:
        reasons.append("no unexpected error")
    over = [g for g in growth if not g.ok]
    if over:
        ok = False
        reasons.append(
            "RSS grew past the bound: "
            + ", ".join(
                f"{g.name} (pid {g.pid}) {g.growth_mb:+.1f} MB > {g.bound_mb:.1f}" for g in over
            )
        )
    else:
        reasons.append(
            f"RSS growth within bound ({len(growth)} processes judged, max "
            f"{max((g.growth_mb for g in growth), default=0.0):+.1f} MB)"
        )
    return Verdict(ok, reasons)


# --- files -----------------------------------------------------------------------------------


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_samples(path: Path) -> list[Sample]:
    if not path.exists():
        return []
    return [Sample.from_json(json.loads(x)) for x in path.read_text().splitlines() if x.strip()]


def chart(
    rows: list[Row], samples: list[Sample], faults: list[Fault], started: float, path: Path
) -> Path | None:
    """``chart.png``: throughput, latencies, every process's RSS and the data directory, with
    the faults marked; None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install -e '.[soak]'): no chart")
        return None
    fig, axes = plt.subplots(2, 2, figsize=(14, 9))
    x = [r.end_s / 60 for r in rows]
    ax = axes[0][0]
    ax.plot(x, [r.sent for r in rows], marker="o", label="sent")
    ax.plot(x, [r.acked for r in rows], marker="o", label="acknowledged")
    ax.set_title("documents per interval")
    ax = axes[0][1]
    for label, values in (
        ("ingest lag p50", [r.lag_p50_ms for r in rows]),
        ("ingest lag p99", [r.lag_p99_ms for r in rows]),
        ("query p50", [r.query_p50_ms for r in rows]),
        ("query p99", [r.query_p99_ms for r in rows]),
    ):
        ax.plot(x, [np.nan if v is None else v for v in values], marker="o", label=label)
    ax.set_yscale("log")
    ax.set_title("latency (ms)")
    ax = axes[1][0]
    series: dict[str, tuple[list[float], list[float]]] = {}
    for s in samples:
        for name, proc in s.processes.items():
            xs, ys = series.setdefault(name, ([], []))
            xs.append((s.at - started) / 60)
            ys.append(proc.rss_mb)
    for name, (xs, ys) in sorted(series.items()):
        ax.plot(xs, ys, label=name, linewidth=1)
    ax.set_title("RSS per process (MB)")
    ax = axes[1][1]
    ax.plot([(s.at - started) / 60 for s in samples], [s.data_mb for s in samples], label="data MB")
    ax2 = ax.twinx()
    ax2.plot(
        [(s.at - started) / 60 for s in samples],
        [sum(p.fds for p in s.processes.values()) for s in samples],
        color="gray",
        label="open fds",
    )
    ax.set_title("data directory (MB) and open descriptors")
    for axis in (axes[0][0], axes[0][1], axes[1][0], axes[1][1]):
        for f in faults:
            axis.axvline((f.at - started) / 60, color="red", alpha=0.3, linestyle="--")
        axis.set_xlabel("minutes")
        axis.legend(fontsize=7, loc="upper left")
    fig.suptitle("aaflow-stream soak (red: faults)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
