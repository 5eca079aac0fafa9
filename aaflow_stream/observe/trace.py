"""Stage timing trace: one row per batch per stage, and the summary the paper's tables report.

Every data message carries ``sent_at`` (when its sender sent it) and ``origin_at`` (when the
source read the oldest document it holds; a stage that gathers batches passes on the oldest
origin among the inputs since its last send). With tracing on (``up --trace FILE.parquet``),
each actor records one row per operator call (chained stages included, as their own stage):

    actor, stage, replica, seq (the call's number for that stage in that actor),
    rows_in, rows_out, upstream (sender of the message that triggered the call; "" for a
    source read or a flush), upstream_seq, origin_at, sent_at, received_at, started_at,
    finished_at (epoch seconds), blocked_s (waiting for credit to send the call's outputs;
    charged to the chain's last stage)

An actor buffers at most ``FLUSH_ROWS`` rows, then appends them to its own Arrow IPC stream
file ``<run_dir>/trace/<actor>.<pid>.arrow`` (one per process, so a restarted actor adds a
file); ``collect`` merges them into one Parquet file after the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa

log = logging.getLogger(__name__)

FLUSH_ROWS: Final = 1024

TRACE_SCHEMA: Final = pa.schema(
    [
        ("actor", pa.string()),
        ("stage", pa.string()),
        ("replica", pa.int32()),
        ("seq", pa.int64()),
        ("rows_in", pa.int64()),
        ("rows_out", pa.int64()),
        ("upstream", pa.string()),
        ("upstream_seq", pa.int64()),
        ("origin_at", pa.float64()),
        ("sent_at", pa.float64()),
        ("received_at", pa.float64()),
        ("started_at", pa.float64()),
        ("finished_at", pa.float64()),
        ("blocked_s", pa.float64()),
    ]
)


@dataclass
class Arrival:
    """The input message the current operator calls work on (empty for a read or a flush)."""

    upstream: str = ""
    upstream_seq: int = -1
    origin_at: float = 0.0
    sent_at: float = 0.0
    received_at: float = 0.0


NO_INPUT: Final = Arrival()


class TraceRecorder:
    """One actor's trace rows: buffered (at most ``FLUSH_ROWS``), appended to its IPC file."""

    def __init__(self, directory: Path, actor: str, replica: int) -> None:
        self._path = directory / f"{actor}.{os.getpid()}.arrow"
        self._actor = actor
        self._replica = replica
        self._arrival = NO_INPUT
        self._seqs: dict[str, int] = {}
        self._rows: list[tuple[Any, ...]] = []
        self._unsent = 0  # rows of the current input whose outputs are not sent yet
        self._writer: pa.ipc.RecordBatchStreamWriter | None = None
        self._closed = False

    def arrived(self, arrival: Arrival) -> None:
        self._arrival = arrival

    def call(
        self, stage: str, started: float, finished: float, rows_in: int, rows_out: int
    ) -> None:
        """An operator call ended (``OperatorRun.trace``). Calls that saw and made no rows
        (a source's end, an empty flush) are left out."""
        if not rows_in and not rows_out:
            return
        seq = self._seqs.get(stage, 0)
        self._seqs[stage] = seq + 1
        a = self._arrival
        self._rows.append(
            (
                self._actor, stage, self._replica, seq, rows_in, rows_out, a.upstream,
                a.upstream_seq, a.origin_at, a.sent_at, a.received_at, started, finished, 0.0,
            )
        )  # fmt: skip
        self._unsent += 1

    def sent(self, blocked_s: float, last_stage: str) -> None:
        """The outputs of the calls since the last ``sent`` left; charge the credit wait to the
        last row of the chain's last stage among them."""
        if blocked_s > 0:
            for index in range(len(self._rows) - 1, len(self._rows) - 1 - self._unsent, -1):
                if self._rows[index][1] == last_stage:
                    self._rows[index] = (*self._rows[index][:-1], blocked_s)
                    break
        self._unsent = 0
        self._arrival = NO_INPUT
        if len(self._rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self, *, everything: bool = False) -> None:
        """Write the buffered rows, except those whose outputs are still being sent (their
        credit wait is not known yet) unless ``everything``."""
        keep = 0 if everything else self._unsent
        ready, self._rows = (
            self._rows[: len(self._rows) - keep],
            self._rows[len(self._rows) - keep :],
        )
        if not ready or self._closed:
            return
        columns = list(zip(*ready, strict=True))
        batch = pa.RecordBatch.from_arrays(
            [pa.array(c, type=f.type) for c, f in zip(columns, TRACE_SCHEMA, strict=True)],
            schema=TRACE_SCHEMA,
        )
        if self._writer is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pa.ipc.new_stream(str(self._path), TRACE_SCHEMA)
        self._writer.write_batch(batch)

    def close(self) -> None:
        """Idempotent: write what is buffered and end the stream."""
        if self._closed:
            return
        self.flush(everything=True)
        self._closed = True
        if self._writer is not None:
            self._writer.close()


# --- after the run ------------------------------------------------------------------------------


def _read(path: Path) -> list[pa.RecordBatch]:
    """Every complete batch of one actor's file (a killed actor may have cut its last one)."""
    batches: list[pa.RecordBatch] = []
    try:
        with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
            for batch in reader:
                batches.append(batch)
    except (pa.ArrowInvalid, OSError) as exc:
        log.warning("%s: trace cut short (%s); keeping %d batches", path, exc, len(batches))
    return batches


def collect(trace_dir: Path, out: Path) -> pa.Table:
    """Merge every actor's trace file into one Parquet file at ``out``, ordered by start."""
    import pyarrow.parquet as pq

    batches = [b for path in sorted(trace_dir.glob("*.arrow")) for b in _read(path)]
    table = pa.Table.from_batches(batches, schema=TRACE_SCHEMA)
    table = table.sort_by([("started_at", "ascending"), ("actor", "ascending")])
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return table


@dataclass(frozen=True)
class StageTiming:
    stage: str
    batches: int
    rows_in: int
    rows_out: int
    busy_s: float  # sum of call durations over replicas
    active_s: float  # wall time during which at least one replica was in a call
    blocked_s: float


@dataclass(frozen=True)
class TraceSummary:
    stages: list[StageTiming]
    total_s: float  # first call started → last call finished

    @property
    def sum_s(self) -> float:
        return sum(s.active_s for s in self.stages)

    @property
    def overlap_s(self) -> float:
        """How much shorter the run was than its stages one after another."""
        return max(0.0, self.sum_s - self.total_s)

    def as_json(self) -> dict[str, Any]:
        return {
            "stages": {
                s.stage: {
                    "seconds": s.active_s,
                    "busy_s": s.busy_s,
                    "blocked_s": s.blocked_s,
                    "batches": s.batches,
                    "rows_in": s.rows_in,
                    "rows_out": s.rows_out,
                }
                for s in self.stages
            },
            "sum_s": self.sum_s,
            "total_s": self.total_s,
            "overlap_s": self.overlap_s,
        }


def _union(spans: Sequence[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for lo, hi in sorted(spans):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def summarize(table: pa.Table, order: Sequence[str]) -> TraceSummary:
    """Per stage (in ``order``, then any other) busy and active seconds, and the overlap."""
    data = table.to_pydict()
    by_stage: dict[str, list[int]] = {name: [] for name in order}
    for index, stage in enumerate(data["stage"]):
        by_stage.setdefault(stage, []).append(index)
    started, finished = data["started_at"], data["finished_at"]
    stages = [
        StageTiming(
            stage=name,
            batches=len(rows),
            rows_in=sum(data["rows_in"][i] for i in rows),
            rows_out=sum(data["rows_out"][i] for i in rows),
            busy_s=sum(finished[i] - started[i] for i in rows),
            active_s=_union([(started[i], finished[i]) for i in rows]),
            blocked_s=sum(data["blocked_s"][i] for i in rows),
        )
        for name, rows in by_stage.items()
        if rows
    ]
    total = max(finished) - min(started) if started else 0.0
    return TraceSummary(stages, total)


def table_text(summary: TraceSummary) -> str:
    """The paper-style table: seconds per stage, their sum, the run's total and the overlap."""
    lines = [f"{'stage':<12}{'seconds':>10}{'busy s':>10}{'blocked s':>11}{'batches':>9}"]
    for s in summary.stages:
        lines.append(
            f"{s.stage:<12}{s.active_s:>10.3f}{s.busy_s:>10.3f}{s.blocked_s:>11.3f}{s.batches:>9}"
        )
    lines.append(
        f"sum of stages {summary.sum_s:.3f}s, total {summary.total_s:.3f}s, "
        f"overlap {summary.overlap_s:.3f}s"
    )
    return "\n".join(lines)
