"""Operators only the tests use: a crashing stage and a stage slow on chosen replicas."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pyarrow as pa

from aaflow_stream.operators.base import OperatorContext


class Crash:
    """Forwards ``after`` batches, then raises."""

    def __init__(self, context: OperatorContext, *, after: int, message: str) -> None:
        self._left = after
        self._message = message

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        if self._left == 0:
            raise RuntimeError(self._message)
        self._left -= 1
        return (batch,)

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()


class DelayByReplica:
    """Forwards every batch after ``delays_ms[replica]`` milliseconds."""

    def __init__(self, context: OperatorContext, *, delays_ms: list[float]) -> None:
        self._delay_s = delays_ms[context.replica] / 1000.0

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        time.sleep(self._delay_s)
        return (batch,)

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()


class DropDeliveryColumns:
    """A custom stage that rebuilds batches without the delivery columns (src_*), as a
    careless user operator might: its documents can never be acknowledged."""

    def __init__(self, context: OperatorContext) -> None:
        pass

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        keep = [n for n in batch.schema.names if not n.startswith("src_")]
        return (batch.select(keep),)

    def flush(self) -> Iterable[pa.RecordBatch]:
        return ()
