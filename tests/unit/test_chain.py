from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator

import pyarrow as pa
import pytest

from aaflow_stream.errors import OperatorError, RetryLater
from aaflow_stream.operators.base import Routed
from aaflow_stream.runtime.chain import Chain, OperatorRun


def _batch(*values: int) -> pa.RecordBatch:
    return pa.record_batch({"n": pa.array(list(values), pa.int64())})


class Source:
    def batches(self) -> Iterator[pa.RecordBatch]:
        yield _batch(1, 2)
        yield _batch(3)


class Pairs:
    """Holds rows back until it has two, like a micro-batching stage."""

    def __init__(self) -> None:
        self.held: list[int] = []

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        self.held += batch.column("n").to_pylist()
        out = []
        while len(self.held) >= 2:
            out.append(_batch(*self.held[:2]))
            self.held = self.held[2:]
        return out

    def flush(self) -> Iterable[pa.RecordBatch]:
        out, self.held = ([_batch(*self.held)] if self.held else []), []
        return out


class Double:
    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        return [_batch(*(2 * v for v in batch.column("n").to_pylist()))]

    def flush(self) -> Iterable[pa.RecordBatch]:
        return [_batch(100)]


class RouteAll:
    def process(self, batch: pa.RecordBatch) -> Iterable[Routed]:
        return [Routed(0, batch)]

    def flush(self) -> Iterable[Routed]:
        return []


def _values(outputs: list[object]) -> list[int]:
    return [v for b in outputs for v in b.column("n").to_pylist()]  # type: ignore[attr-defined]


def test_a_source_chain_feeds_each_batch_through_every_operator_then_flushes_in_order() -> None:
    chain = Chain(
        [
            OperatorRun("load", Source()),
            OperatorRun("pairs", Pairs()),
            OperatorRun("double", Double()),
        ],
        source=True,
    )
    out: list[object] = []
    while (items := chain.next_from_source()) is not None:
        out += items
    assert _values(out) == [2, 4]
    # pairs releases its held row 3 first, doubled; then double's own flush.
    assert _values(chain.flush()) == [6, 100]
    stats = {s.stage: s for s in chain.stats()}
    assert stats["load"].rows_out == 3
    assert stats["pairs"].rows_in == 3 and stats["pairs"].rows_out == 3
    assert stats["double"].rows_in == 3 and stats["double"].rows_out == 4


def test_only_the_last_operator_of_a_chain_may_route() -> None:
    chain = Chain([OperatorRun("a", RouteAll()), OperatorRun("b", Double())], source=False)
    with pytest.raises(OperatorError, match="only the last operator"):
        chain.process(_batch(1))


def test_a_stage_chain_counts_rows_in_and_out_per_operator() -> None:
    chain = Chain([OperatorRun("pairs", Pairs()), OperatorRun("route", RouteAll())], source=False)
    out = chain.process(_batch(1, 2, 3))
    assert [type(o) for o in out] == [Routed]
    stats = {s.stage: s for s in chain.stats()}
    assert stats["pairs"].rows_in == 3 and stats["pairs"].rows_out == 2
    assert stats["route"].rows_in == 2 and stats["route"].rows_out == 2


class FullUntil:
    """Refuses its first ``refusals`` inputs with RetryLater (a full disk), then doubles."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        if self.refusals:
            self.refusals -= 1
            raise RetryLater("disk full", 0.0)
        return Double().process(batch)


def test_an_input_refused_with_retry_later_is_counted_once_when_it_finally_goes_through() -> None:
    from aaflow_stream.runtime.actor import _process_when_ready

    chain = Chain([OperatorRun("shard", FullUntil(refusals=3))], source=False)
    out = asyncio.run(asyncio.wait_for(_process_when_ready(chain, _batch(1, 2)), 5))
    assert [b.column("n").to_pylist() for b in out] == [[2, 4]]
    assert chain.stats()[0].rows_in == 2
