"""Actor statistics → the per-stage table and progress line that ``up`` prints. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from .protocol import ActorStats, OperatorStats


@dataclass(frozen=True)
class StageSummary:
    stage: str
    replicas: int
    busy_s: float  # time inside the operator, summed over replicas
    cpu_s: float  # CPU time inside the operator, summed over replicas
    blocked_s: float  # time waiting for downstream credit, summed over replicas
    first_at: float
    last_at: float
    rows_in: int
    rows_out: int
    rejected: int
    extra: dict[str, float]  # operator metrics summed over replicas (timestamps left out)

    @property
    def span_s(self) -> float:
        """Wall time from the stage's first to its last operator call, over all replicas."""
        return max(0.0, self.last_at - self.first_at) if self.first_at else 0.0


@dataclass(frozen=True)
class RunSummary:
    stages: list[StageSummary]
    documents: int
    chunks: int
    vectors: int
    dead_letters: int
    total_s: float  # first document read → last vector applied
    last_applied_at: float = 0.0  # wall clock of the last vector applied (0: none)

    @property
    def chunks_per_s(self) -> float:
        return self.vectors / self.total_s if self.total_s > 0 else 0.0

    def stage(self, name: str) -> StageSummary | None:
        return next((s for s in self.stages if s.stage == name), None)


def _sum_metrics(members: list[OperatorStats]) -> dict[str, float]:
    total: dict[str, float] = {}
    for m in members:
        for key, value in m.extra.items():
            if not key.endswith("_at"):
                total[key] = total.get(key, 0.0) + value
    return total


@dataclass(frozen=True)
class _Share:
    """One operator of one actor, with the actor-level figures that belong to it."""

    op: OperatorStats
    blocked_s: float  # the actor's wait for credit: charged to its last operator
    rejected: int  # frames its input dropped: charged to its first operator


def operators_of(actor: ActorStats) -> list[OperatorStats]:
    """The actor's operators (several when stages are chained); one from its totals when it
    reported none."""
    return actor.operators or [
        OperatorStats(
            stage=actor.stage,
            busy_s=actor.busy_s,
            rows_in=actor.input.rows,
            rows_out=actor.rows_out,
            first_work_at=actor.first_work_at,
            last_work_at=actor.last_work_at,
            extra=actor.extra,
        )
    ]


def _shares(stats: Iterable[ActorStats]) -> Iterator[_Share]:
    for actor in stats:
        ops = operators_of(actor)
        for index, op in enumerate(ops):
            yield _Share(
                op,
                actor.blocked_s if index == len(ops) - 1 else 0.0,
                actor.input.rejected if index == 0 else 0,
            )


def summarize(stats: Iterable[ActorStats], order: Sequence[str]) -> RunSummary:
    by_stage: dict[str, list[_Share]] = {name: [] for name in order}
    for share in _shares(stats):
        by_stage.setdefault(share.op.stage, []).append(share)
    stages = []
    for name, members in by_stage.items():
        ops = [m.op for m in members]
        stages.append(
            StageSummary(
                stage=name,
                replicas=len(members),
                busy_s=sum(o.busy_s for o in ops),
                cpu_s=sum(o.cpu_s for o in ops),
                blocked_s=sum(m.blocked_s for m in members),
                first_at=min((o.first_work_at for o in ops if o.first_work_at), default=0.0),
                last_at=max((o.last_work_at for o in ops), default=0.0),
                rows_in=sum(o.rows_in for o in ops),
                rows_out=sum(o.rows_out for o in ops),
                rejected=sum(m.rejected for m in members),
                extra=_sum_metrics(ops),
            )
        )
    first = [m.op for m in by_stage[order[0]]]
    last = [m.op for m in by_stage[order[-1]]]
    start = min((o.first_work_at for o in first if o.first_work_at), default=0.0)
    end = max((o.extra.get("last_applied_at", o.last_work_at) for o in last), default=0.0)
    return RunSummary(
        stages=stages,
        documents=int(sum(o.extra.get("documents", 0) for o in first)),
        chunks=stages[1].rows_out if len(stages) > 1 else 0,
        # Chunk rows the shards applied (their input also carries tombstone rows).
        vectors=sum(int(o.extra.get("upserted", o.rows_in)) for o in last),
        dead_letters=int(sum(o.extra.get("dead_letters", 0) for o in first)),
        total_s=max(0.0, end - start) if start and end else 0.0,
        last_applied_at=end,
    )


def progress_line(summary: RunSummary, elapsed_s: float) -> str:
    rate = summary.vectors / elapsed_s if elapsed_s > 0 else 0.0
    stages = "  ".join(
        f"{s.stage} busy {s.busy_s:.1f}s bp {s.blocked_s:.1f}s" for s in summary.stages
    )
    return (
        f"[{elapsed_s:6.1f}s] docs {summary.documents}  chunks {summary.chunks}  "
        f"vectors {summary.vectors}  {rate:,.0f} chunks/s  | {stages}"
    )


def table(summary: RunSummary, startup_s: float, shutdown_s: float = 0.0) -> str:
    lines = [
        f"{'stage':<12}{'replicas':>9}{'busy s':>10}{'cpu s':>9}{'span s':>10}"
        f"{'backpressured s':>17}{'rows in':>11}{'rows out':>11}",
    ]
    for s in summary.stages:
        lines.append(
            f"{s.stage:<12}{s.replicas:>9}{s.busy_s:>10.3f}{s.cpu_s:>9.3f}{s.span_s:>10.3f}"
            f"{s.blocked_s:>17.3f}"
            f"{s.rows_in:>11}{s.rows_out:>11}"
        )
    busy = sum(s.busy_s for s in summary.stages)
    lines += [
        "",
        f"documents {summary.documents}  chunks {summary.chunks}  vectors {summary.vectors}  "
        f"dead letters {summary.dead_letters}",
        f"total {summary.total_s:.3f}s (first document read → last vector applied; "
        f"sum of stage busy {busy:.3f}s: the difference is overlap)  "
        f"{summary.chunks_per_s:,.0f} chunks/s  start-up {startup_s:.2f}s  "
        f"shutdown {shutdown_s:.2f}s (last vector applied → every process gone)",
    ]
    return "\n".join(lines)
