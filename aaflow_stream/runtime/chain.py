"""The operators one actor runs, in order, and the accounting of each.

The first operator is the actor's own stage; the others are stages *chained* onto it (as Flink
chains operators): their batches go from one operator to the next inside the process, with no
socket, no copy and no extra process. Each operator keeps its own busy time, CPU time, rows
and first/last work times, so the run summary still shows every stage on its own.

Between chained operators a multi-batch output is fed on batch by batch; a ``Routed`` output
(a shuffle) is only meaningful from the last operator, which is the one with downstream links.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ..errors import OperatorError
from ..operators.base import Output, Routed
from ..protocol import OperatorStats


def _rows(item: Output) -> int:
    batch = item.batch if isinstance(item, Routed) else item
    if isinstance(batch, pa.RecordBatch):
        return batch.num_rows
    return sum(b.num_rows for b in batch)


@dataclass
class OperatorRun:
    stage: str
    operator: Any
    busy_s: float = 0.0
    cpu_s: float = 0.0
    rows_in: int = 0
    rows_out: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)
    # Called after every hook with (stage, started, finished, rows in, rows out): the trace.
    trace: Callable[[str, float, float, int, int], None] | None = None

    def call(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        """Run one hook, charging its time (a generator's too) to this operator."""
        started, cpu_started = time.perf_counter(), time.thread_time()
        wall = time.time() if self.trace is not None or not self.first_at else 0.0
        if not self.first_at:
            self.first_at = wall
        result = fn(*args)
        # None: a source's end, or a hook with nothing to return
        items = [result] if isinstance(result, pa.RecordBatch) else list(result or ())
        self.busy_s += time.perf_counter() - started
        self.cpu_s += time.thread_time() - cpu_started
        self.last_at = time.time()
        rows_out = sum(_rows(item) for item in items)
        self.rows_out += rows_out
        if self.trace is not None:
            rows_in = args[0].num_rows if args and isinstance(args[0], pa.RecordBatch) else 0
            self.trace(self.stage, wall, self.last_at, rows_in, rows_out)
        return items

    def record(self, items: list[Any]) -> list[Any]:
        """Count what an async source produced (its waiting for input is not work)."""
        now = time.time()
        self.first_at = self.first_at or now
        self.last_at = now
        self.rows_out += sum(_rows(item) for item in items)
        return items

    def stats(self) -> OperatorStats:
        metrics = getattr(self.operator, "metrics", None)
        return OperatorStats(
            stage=self.stage,
            busy_s=self.busy_s,
            cpu_s=self.cpu_s,
            rows_in=self.rows_in,
            rows_out=self.rows_out,
            first_work_at=self.first_at,
            last_work_at=self.last_at,
            extra=dict(metrics()) if metrics is not None else {},
        )


class Chain:
    def __init__(self, runs: list[OperatorRun], *, source: bool) -> None:
        if not runs:
            raise ValueError("a chain needs at least one operator")
        self.runs = runs
        self._is_source = source
        self._source: Iterator[pa.RecordBatch] | None = None
        self._async_source: AsyncIterator[pa.RecordBatch] | None = None
        # Operators that may hold rows back between batches: they have ``idle()``.
        self._idlers = [i for i, run in enumerate(runs) if hasattr(run.operator, "idle")]
        self.holding = False  # a batch went in since the last idle() or flush()

    def next_from_source(self) -> list[Output] | None:
        """The next outputs of a source chain, or None once the source is exhausted."""
        head = self.runs[0]
        if self._source is None:
            self._source = iter(head.operator.batches())
        items = head.call(next, self._source, None)
        return self._through(1, items) if items else None

    @property
    def async_source(self) -> bool:
        """The source awaits its input (``abatches()``, e.g. a directory watch)."""
        return self._is_source and hasattr(self.runs[0].operator, "abatches")

    async def anext_from_source(self) -> list[Output] | None:
        """The next outputs of an async source chain, or None once the source is exhausted."""
        head = self.runs[0]
        if self._async_source is None:
            self._async_source = aiter(head.operator.abatches())
        try:
            batch = await anext(self._async_source)
        except StopAsyncIteration:
            return None
        return self._through(1, head.record([batch]))

    def process(self, batch: pa.RecordBatch) -> list[Output]:
        head = self.runs[0]
        out = head.call(head.operator.process, batch)  # RetryLater: nothing happened yet
        head.rows_in += batch.num_rows
        self.holding = bool(self._idlers)
        return self._through(1, out)

    def idle(self) -> list[Output]:
        """Input stopped for a while: what the operators with ``idle()`` held back, fed
        through the rest of the chain (in order, as in ``flush``)."""
        self.holding = False
        out: list[Output] = []
        for index in self._idlers:
            run = self.runs[index]
            out += self._through(index + 1, run.call(run.operator.idle))
        return out

    def flush(self) -> list[Output]:
        """Flush every operator in order, feeding what each releases through the rest."""
        self.holding = False
        out: list[Output] = []
        for index, run in enumerate(self.runs):
            if index == 0 and self._is_source:
                continue  # a source has nothing held back
            out += self._through(index + 1, run.call(run.operator.flush))
        return out

    def _through(self, start: int, items: list[Output]) -> list[Output]:
        for run in self.runs[start:]:
            nxt: list[Output] = []
            for batch in self._batches(items, run.stage):
                run.rows_in += batch.num_rows
                nxt += run.call(run.operator.process, batch)
            items = nxt
        return items

    @staticmethod
    def _batches(items: Iterable[Output], stage: str) -> Iterator[pa.RecordBatch]:
        for item in items:
            if isinstance(item, Routed):
                raise OperatorError(
                    f"an operator chained before {stage!r} routed a batch; only the last "
                    "operator of a chain may route (it owns the downstream links)"
                )
            if isinstance(item, pa.RecordBatch):
                yield item
            else:
                yield from item

    def stats(self) -> list[OperatorStats]:
        return [run.stats() for run in self.runs]

    def close(self) -> list[BaseException]:
        errors: list[BaseException] = []
        for run in self.runs:
            close = getattr(run.operator, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:
                    errors.append(exc)
        return errors
