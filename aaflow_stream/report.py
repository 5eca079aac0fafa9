"""Actor statistics → the per-stage table and progress line that ``up`` prints. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .protocol import ActorStats


@dataclass(frozen=True)
class StageSummary:
    stage: str
    replicas: int
    busy_s: float  # time inside the operator, summed over replicas
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

    @property
    def chunks_per_s(self) -> float:
        return self.vectors / self.total_s if self.total_s > 0 else 0.0

    def stage(self, name: str) -> StageSummary | None:
        return next((s for s in self.stages if s.stage == name), None)


def _sum_metrics(members: list[ActorStats]) -> dict[str, float]:
    total: dict[str, float] = {}
    for m in members:
        for key, value in m.extra.items():
            if not key.endswith("_at"):
                total[key] = total.get(key, 0.0) + value
    return total


def summarize(stats: Iterable[ActorStats], order: Sequence[str]) -> RunSummary:
    by_stage: dict[str, list[ActorStats]] = {name: [] for name in order}
    for s in stats:
        by_stage.setdefault(s.stage, []).append(s)
    stages = []
    for name, members in by_stage.items():
        started = [m.first_work_at for m in members if m.first_work_at]
        stages.append(
            StageSummary(
                stage=name,
                replicas=len(members),
                busy_s=sum(m.busy_s for m in members),
                blocked_s=sum(m.blocked_s for m in members),
                first_at=min(started, default=0.0),
                last_at=max((m.last_work_at for m in members), default=0.0),
                rows_in=sum(m.input.rows for m in members),
                rows_out=sum(m.rows_out for m in members),
                rejected=sum(m.input.rejected for m in members),
                extra=_sum_metrics(members),
            )
        )
    first, last = by_stage[order[0]], by_stage[order[-1]]
    shard_applied = [m.extra.get("last_applied_at", m.last_work_at) for m in last]
    start = min((m.first_work_at for m in first if m.first_work_at), default=0.0)
    end = max(shard_applied, default=0.0)
    return RunSummary(
        stages=stages,
        documents=int(sum(m.extra.get("documents", 0) for m in first)),
        chunks=stages[1].rows_out if len(stages) > 1 else 0,
        vectors=sum(m.input.rows for m in last),
        dead_letters=int(sum(m.extra.get("dead_letters", 0) for m in first)),
        total_s=max(0.0, end - start) if start and end else 0.0,
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


def table(summary: RunSummary, startup_s: float) -> str:
    lines = [
        f"{'stage':<12}{'replicas':>9}{'busy s':>10}{'span s':>10}{'backpressured s':>17}"
        f"{'rows in':>11}{'rows out':>11}",
    ]
    for s in summary.stages:
        lines.append(
            f"{s.stage:<12}{s.replicas:>9}{s.busy_s:>10.3f}{s.span_s:>10.3f}{s.blocked_s:>17.3f}"
            f"{s.rows_in:>11}{s.rows_out:>11}"
        )
    busy = sum(s.busy_s for s in summary.stages)
    lines += [
        "",
        f"documents {summary.documents}  chunks {summary.chunks}  vectors {summary.vectors}  "
        f"dead letters {summary.dead_letters}",
        f"total {summary.total_s:.3f}s (first document read → last vector applied; "
        f"sum of stage busy {busy:.3f}s: the difference is overlap)  "
        f"{summary.chunks_per_s:,.0f} chunks/s  start-up {startup_s:.2f}s",
    ]
    return "\n".join(lines)
