"""A running topology's status: built by the supervisor from the stats it already receives.

The supervisor feeds every actor's ``ActorStats`` to a ``StatusBoard``; every
``STATUS_EVERY_S`` the board builds a ``RunStatus`` (rates from the previous sample of each
actor) and writes it atomically to ``<run_dir>/status.json``. ``aaflow-stream status`` reads
that file (no socket to the supervisor, so a wedged supervisor cannot hang the tool; a file
older than a few seconds or a dead supervisor pid says nothing runs). The Prometheus endpoint
(``observe.metrics``) serves the same snapshot.

A graph restart starts every actor's counters from zero again; rates treat a counter that went
down as restarted. An actor the supervisor knows of but has no stats from yet (starting, or
hung before its first report) gets rows of zeros with its state, so every actor shows.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from .. import report
from ..errors import StatusUnavailable
from ..plan import GraphSpec
from ..procs import alive
from ..protocol import ActorStats
from ..report import operators_of

STATUS_FILE: Final = "status.json"
STATUS_EVERY_S: Final = 1.0
# status.json is rewritten every STATUS_EVERY_S while the supervisor lives.
STALE_AFTER_S: Final = 10.0


class StageStatus(msgspec.Struct, frozen=True):
    """One stage replica. Chained stages get a row each inside the same actor; the actor's
    link figures (in flight, credits, backpressure) go on its last stage, its input's
    rejected frames on its first, as in the run summary."""

    stage: str
    replica: int
    actor: str
    state: str  # starting | running | done | stopped | crashed | hung
    pid: int | None
    rows_in: int
    rows_out: int
    rows_in_per_s: float
    rows_out_per_s: float
    busy_s: float
    busy_pct: float
    backpressured_s: float
    backpressured_pct: float
    in_flight: int
    credits: int
    rejected: int
    dead_letters: int
    metrics: dict[str, float] = {}


class ShardStatus(msgspec.Struct, frozen=True):
    shard: int
    actor: str
    vectors: int
    bytes: int  # index codes, ids and chunk metadata held in memory
    wal_bytes: int  # log written since the last snapshot
    upserted: int
    upserted_per_s: float
    lsn: int
    durable_lsn: int
    memory_entries: int = 0  # memory entries this rank owns
    memory_exchanges: int = 0  # memory exchanges it took part in
    memory_compactions: int = 0  # entries merged into a near-duplicate
    memory_evictions: int = 0  # entries removed by a session's bound


class QueryStatus(msgspec.Struct, frozen=True):
    queries: int
    queries_per_s: float
    p50_ms: float
    p99_ms: float


class RunStatus(msgspec.Struct, frozen=True):
    run_dir: str
    supervisor_pid: int
    state: str  # starting | running | restarting | stopping | stopped | failed
    started_at: float
    updated_at: float
    restarts: int
    last_restart: str
    documents: int
    chunks: int
    vectors: int
    dead_letters: int
    stages: list[StageStatus]
    shards: list[ShardStatus]
    query: QueryStatus | None = None
    metrics_url: str | None = None


@dataclass
class _Sample:
    at: float  # monotonic arrival time of the stats
    stats: ActorStats


def _rate(now: float, before: float, dt: float) -> float:
    return max(0.0, now - before) / dt if dt > 0 else 0.0


class StatusBoard:
    """Latest stats per actor → ``RunStatus`` snapshots with rates. Not thread-safe: the
    supervisor's loop feeds it; readers on other threads only take ``latest`` (immutable)."""

    def __init__(self, graph: GraphSpec, run_dir: Path, *, pid: int | None = None) -> None:
        self._run_dir = run_dir
        self._pid = pid or os.getpid()
        self._order = [n for s in graph.stages for n in (s.name, *(c.stage for c in s.chain))]
        self._chains = {s.name: [c.stage for c in s.chain] for s in graph.stages}
        self._shard_stages = {s.name for s in graph.stages if s.launcher == "mpi"}
        self._started_at = time.time()
        self._samples: dict[str, _Sample] = {}
        self._previous: dict[str, _Sample] = {}
        self._states: dict[str, tuple[str, int | None]] = {}
        self._state = "starting"
        self._restarts: list[str] = []
        self._written_at = 0.0
        self.metrics_url: str | None = None
        self.latest: RunStatus | None = None

    # --- feeding -------------------------------------------------------------------------------

    def on_stats(self, stats: ActorStats) -> None:
        self._samples[stats.actor] = _Sample(time.monotonic(), stats)

    def actor_state(self, actor: str, state: str, pid: int | None = None) -> None:
        known = self._states.get(actor)
        self._states[actor] = (state, pid if pid is not None else (known[1] if known else None))

    def run_state(self, state: str) -> None:
        self._state = state

    def restarted(self, reason: str) -> None:
        """A graph restart: counters start over, so earlier samples no longer apply."""
        self._restarts.append(reason)
        self._samples.clear()
        self._previous.clear()

    # --- snapshots -----------------------------------------------------------------------------

    def due(self) -> bool:
        return time.monotonic() - self._written_at >= STATUS_EVERY_S

    def write(self) -> RunStatus:
        """Build a snapshot, write ``status.json`` atomically, remember it as ``latest``."""
        status = self.snapshot()
        path = self._run_dir / STATUS_FILE
        tmp = path.with_name(f".{STATUS_FILE}.{self._pid}.tmp")
        tmp.write_bytes(msgspec.json.encode(status))
        os.replace(tmp, path)
        self._written_at = time.monotonic()
        return status

    def snapshot(self) -> RunStatus:
        stages: list[StageStatus] = []
        shards: list[ShardStatus] = []
        query: QueryStatus | None = None
        for name in sorted(set(self._samples) | set(self._states), key=self._sort_key):
            sample = self._samples.get(name)
            if sample is None:
                stages += self._placeholder_rows(name)
                continue
            before = self._previous.get(name)
            stages += self._stage_rows(sample, before)
            if sample.stats.stage in self._shard_stages:
                shard = self._shard_row(sample, before)
                shards.append(shard)
                query = self._query(sample, before) or query
        for name in self._samples:
            self._previous[name] = self._samples[name]
        totals = report.summarize([s.stats for s in self._samples.values()], self._order)
        status = RunStatus(
            run_dir=str(self._run_dir),
            supervisor_pid=self._pid,
            state=self._state,
            started_at=self._started_at,
            updated_at=time.time(),
            restarts=len(self._restarts),
            last_restart=self._restarts[-1] if self._restarts else "",
            documents=totals.documents,
            chunks=totals.chunks,
            vectors=totals.vectors,
            dead_letters=totals.dead_letters,
            stages=stages,
            shards=shards,
            query=query,
            metrics_url=self.metrics_url,
        )
        self.latest = status
        return status

    def _sort_key(self, actor: str) -> tuple[int, int]:
        stage, replica = _stage_replica(actor)
        order = self._order.index(stage) if stage in self._order else len(self._order)
        return order, replica

    def _placeholder_rows(self, actor: str) -> list[StageStatus]:
        """Rows of zeros for an actor without stats yet, one per stage it runs."""
        stage, replica = _stage_replica(actor)
        state, pid = self._states[actor]
        return [
            StageStatus(
                stage=name,
                replica=replica,
                actor=actor,
                state=state,
                pid=pid,
                rows_in=0,
                rows_out=0,
                rows_in_per_s=0.0,
                rows_out_per_s=0.0,
                busy_s=0.0,
                busy_pct=0.0,
                backpressured_s=0.0,
                backpressured_pct=0.0,
                in_flight=0,
                credits=0,
                rejected=0,
                dead_letters=0,
            )
            for name in (stage, *self._chains.get(stage, []))
        ]

    def _stage_rows(self, sample: _Sample, before: _Sample | None) -> list[StageStatus]:
        stats = sample.stats
        dt = sample.at - before.at if before is not None else 0.0
        ops, old_ops = operators_of(stats), operators_of(before.stats) if before is not None else []
        state, pid = self._states.get(stats.actor, ("running", None))
        rows = []
        for index, op in enumerate(ops):
            old = old_ops[index] if index < len(old_ops) else op
            last, first = index == len(ops) - 1, index == 0
            blocked = stats.blocked_s if last else 0.0
            old_blocked = before.stats.blocked_s if last and before is not None else blocked
            rows.append(
                StageStatus(
                    stage=op.stage,
                    replica=stats.replica,
                    actor=stats.actor,
                    state=state,
                    pid=pid,
                    rows_in=op.rows_in,
                    rows_out=op.rows_out,
                    rows_in_per_s=_rate(op.rows_in, old.rows_in, dt),
                    rows_out_per_s=_rate(op.rows_out, old.rows_out, dt),
                    busy_s=op.busy_s,
                    busy_pct=100.0 * _rate(op.busy_s, old.busy_s, dt),
                    backpressured_s=blocked,
                    backpressured_pct=100.0 * _rate(blocked, old_blocked, dt),
                    in_flight=sum(link.in_flight for link in stats.outputs) if last else 0,
                    credits=sum(link.credits for link in stats.outputs) if last else 0,
                    rejected=stats.input.rejected if first else 0,
                    dead_letters=int(op.extra.get("dead_letters", 0)),
                    metrics=dict(op.extra),
                )
            )
        return rows

    @staticmethod
    def _shard_row(sample: _Sample, before: _Sample | None) -> ShardStatus:
        extra = sample.stats.operators[0].extra if sample.stats.operators else sample.stats.extra
        old = (
            (before.stats.operators[0].extra if before.stats.operators else before.stats.extra)
            if before is not None
            else extra
        )
        dt = sample.at - before.at if before is not None else 0.0
        return ShardStatus(
            shard=sample.stats.replica,
            actor=sample.stats.actor,
            vectors=int(extra.get("vectors", 0)),
            bytes=int(extra.get("bytes", 0)),
            wal_bytes=int(extra.get("wal_bytes", 0)),
            upserted=int(extra.get("upserted", 0)),
            upserted_per_s=_rate(extra.get("upserted", 0), old.get("upserted", 0), dt),
            lsn=int(extra.get("lsn", 0)),
            durable_lsn=int(extra.get("durable_lsn", 0)),
            memory_entries=int(extra.get("memory_entries", 0)),
            memory_exchanges=int(extra.get("memory_exchanges", 0)),
            memory_compactions=int(extra.get("memory_compactions", 0)),
            memory_evictions=int(extra.get("memory_evictions", 0)),
        )

    @staticmethod
    def _query(sample: _Sample, before: _Sample | None) -> QueryStatus | None:
        extra = sample.stats.operators[0].extra if sample.stats.operators else sample.stats.extra
        if "queries" not in extra:
            return None
        old = before.stats.operators[0].extra if before and before.stats.operators else extra
        dt = sample.at - before.at if before is not None else 0.0
        return QueryStatus(
            queries=int(extra["queries"]),
            queries_per_s=_rate(extra["queries"], old.get("queries", 0), dt),
            p50_ms=float(extra.get("query_p50_ms", 0.0)),
            p99_ms=float(extra.get("query_p99_ms", 0.0)),
        )


def _stage_replica(actor: str) -> tuple[str, int]:
    """``plan.actor_name``'s inverse: ``"embed.1"`` → ``("embed", 1)``."""
    stage, _, replica = actor.rpartition(".")
    return (stage, int(replica)) if replica.isdigit() else (actor, 0)


# --- reading (the status command) -------------------------------------------------------------


def read_status(run_dir: Path) -> RunStatus:
    """The live status of the topology running in ``run_dir``; StatusUnavailable when nothing
    runs there (no status file, a finished run, a dead supervisor or a stale file)."""
    path = run_dir / STATUS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StatusUnavailable(
            f"nothing is running in {run_dir}: no {STATUS_FILE} (start a topology with "
            "`aaflow-stream up TOPOLOGY --detach`, or give --run-dir)"
        ) from None
    except OSError as exc:
        raise StatusUnavailable(f"cannot read {path}: {exc.strerror}") from exc
    try:
        status = msgspec.json.decode(raw, type=RunStatus)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise StatusUnavailable(f"{path} is not a status file: {exc}") from exc
    ended = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.updated_at))
    if status.state in ("stopped", "failed"):
        raise StatusUnavailable(
            f"nothing is running in {run_dir}: the last run {status.state} at {ended}"
        )
    if not alive(status.supervisor_pid):
        raise StatusUnavailable(
            f"nothing is running in {run_dir}: its supervisor (pid {status.supervisor_pid}) "
            f"is gone; last status at {ended}"
        )
    if time.time() - status.updated_at > STALE_AFTER_S:
        raise StatusUnavailable(
            f"the supervisor of {run_dir} (pid {status.supervisor_pid}) has not updated its "
            f"status since {ended}"
        )
    return status
