"""Operators only the liveness and start-up tests use: one that cannot be built, one that
fails differently in each launch of its graph (across restarts), one that never starts."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from aaflow_stream.errors import OperatorError
from aaflow_stream.operators.base import OperatorContext


class CannotBeBuilt:
    """A stage whose constructor finds its configuration unusable: a deterministic failure
    (the actor exits 2, EXIT_BAD_OPERATOR)."""

    def __init__(self, context: OperatorContext, *, message: str) -> None:
        raise OperatorError(message)

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        return (batch,)  # pragma: no cover - never built

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()  # pragma: no cover - never built


class FailsByLaunch:
    """The n-th construction (counted in the file ``counter``, so across graph restarts)
    follows ``plan[n]``: ``crash_at_init`` raises in the constructor (a plain exception: a
    crash, exit 1), ``crash_after`` forwards ``after`` batches and then raises, ``ok``
    forwards everything. Past the plan's end: ``ok``."""

    def __init__(
        self, context: OperatorContext, *, counter: str, plan: list[str], after: int = 10
    ) -> None:
        path = Path(counter)
        launch = int(path.read_text()) if path.exists() else 0
        path.write_text(str(launch + 1))
        self._mode = plan[launch] if launch < len(plan) else "ok"
        if self._mode == "crash_at_init":
            raise RuntimeError(f"launch {launch} fails while starting")
        self._left = after
        self._launch = launch

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        if self._mode == "crash_after":
            if self._left == 0:
                raise RuntimeError(f"launch {self._launch} fails while running")
            self._left -= 1
        return (batch,)

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()


class NeverStarts:
    """A stage whose constructor never returns (a rank stuck in its serving setup, say a
    collective waiting for a peer that never comes): its actor never reports Ready."""

    def __init__(self, context: OperatorContext, *, marker: str) -> None:
        Path(marker, f"{os.getpid()}.pid").touch()  # the test learns the pid from here
        while True:
            time.sleep(3600)

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        return (batch,)  # pragma: no cover - never built

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()  # pragma: no cover - never built
