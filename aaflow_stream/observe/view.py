"""``aaflow-stream status``: the status snapshot as a terminal table or JSON, once or live."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

import msgspec

from .status import STATUS_EVERY_S, RunStatus, read_status

_CLEAR = "\x1b[H\x1b[2J"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def render(status: RunStatus) -> str:
    age = time.time() - status.started_at
    lines = [
        f"{status.run_dir}  {status.state}  up {age:.0f}s  supervisor pid {status.supervisor_pid}"
        f"  restarts {status.restarts}"
        + (f"  metrics {status.metrics_url}" if status.metrics_url else ""),
        f"documents {status.documents}  chunks {status.chunks}  vectors {status.vectors}  "
        f"dead letters {status.dead_letters}",
        "",
        f"{'stage':<12}{'rep':>4} {'state':<9}{'rows in':>10}{'rows out':>10}{'in/s':>9}"
        f"{'out/s':>9}{'busy%':>7}{'bp%':>6}{'flight':>7}{'credit':>7}{'rejected':>9}",
    ]
    for s in status.stages:
        lines.append(
            f"{s.stage:<12}{s.replica:>4} {s.state:<9}{s.rows_in:>10}{s.rows_out:>10}"
            f"{s.rows_in_per_s:>9.0f}{s.rows_out_per_s:>9.0f}{s.busy_pct:>7.0f}"
            f"{s.backpressured_pct:>6.0f}{s.in_flight:>7}{s.credits:>7}{s.rejected:>9}"
        )
    if status.shards:
        lines += [
            "",
            f"{'shard':<8}{'vectors':>10}{'bytes':>12}{'log':>12}{'vec/s':>9}{'lsn':>8}"
            f"{'memory':>8}{'exch':>6}{'merged':>8}",
        ]
        for shard in status.shards:
            lines.append(
                f"{shard.shard:<8}{shard.vectors:>10}{_bytes(shard.bytes):>12}"
                f"{_bytes(shard.wal_bytes):>12}{shard.upserted_per_s:>9.0f}{shard.lsn:>8}"
                f"{shard.memory_entries:>8}{shard.memory_exchanges:>6}"
                f"{shard.memory_compactions:>8}"
            )
    if status.query is not None:
        q = status.query
        lines += [
            "",
            f"queries {q.queries}  {q.queries_per_s:.1f}/s  p50 {q.p50_ms:.2f} ms  "
            f"p99 {q.p99_ms:.2f} ms",
        ]
    hung = sorted({(s.actor, s.pid) for s in status.stages if s.state == "hung"}, key=str)
    if hung:
        listed = ", ".join(f"{actor} (pid {pid})" for actor, pid in hung)
        lines += ["", f"hung (no message within the heartbeat timeout; killed): {listed}"]
    if status.last_restart:
        lines += ["", f"last restart after: {status.last_restart}"]
    return "\n".join(lines)


def show(run_dir: Path, *, as_json: bool, watch: bool, out: TextIO = sys.stdout) -> None:
    """Print the status once, or every ``STATUS_EVERY_S`` until interrupted (``watch``).
    StatusUnavailable when nothing runs in ``run_dir`` (also when a watched run ends)."""
    tty = out.isatty()
    while True:
        status = read_status(run_dir)
        if as_json:
            out.write(msgspec.json.encode(status).decode() + "\n")
        else:
            out.write((_CLEAR if watch and tty else "") + render(status) + "\n")
            if watch and not tty:
                out.write("\n")
        out.flush()
        if not watch:
            return
        time.sleep(STATUS_EVERY_S)
