"""The operator contract, hook by hook, and the loader for ``module:callable`` references.

An operator is built once per actor, before the actor takes work (models load here, never per
batch): ``factory(context, **params)`` where ``factory`` is the object a ``module:callable``
reference names and ``params`` come from the stage description.

A **source** (first stage) has ``batches() -> Iterator[RecordBatch]``. The actor pulls one batch
at a time, and only when a downstream link has credit, so a source is paced by backpressure. It
may block for the time one batch takes to produce. Between batches the actor checks for a stop
request; a source with nothing left simply ends its iterator.

A source that waits for its input (a directory watch, a network endpoint) has
``abatches() -> AsyncIterator[RecordBatch]`` instead: an async generator, awaited on the actor's
loop, which it must not block; a stop request cancels its wait for input. Its time waiting is
not counted as busy. Such a source may also have ``serve()``, a coroutine run beside it from
before Ready until the actor stops (watchers, sockets).

A **stage** (any later stage, sinks included) has ``process(batch) -> Iterable[RecordBatch]``,
called once per arriving batch, in arrival order, on the actor's event loop (it may use the CPU;
it must not wait on other actors), and ``flush() -> Iterable[RecordBatch]``, called once after
end of stream arrived from every upstream replica: return what was held back for batching.
Optional ``idle() -> Iterable[RecordBatch]``: called when no input arrived for the topology's
``flow.flush_ms`` since a batch (unlike ``flush``, any number of times): return what was held
back, so a trickle of input is not stuck in a partial batch.
Output of a sink is ignored. An output item may be a list of batches of one schema (they
travel as one message, not concatenated), or a ``Routed(replica, batch)`` instead of a
plain batch: it then goes to that replica of the next stage (a shuffle), waiting for that
link's credit; a plain batch goes to whichever replica has the most credit.

Optional on both: ``close()``, called once when the actor stops, also after a failure.
An exception from any hook ends the actor with a logged reason and a non-zero exit.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from ..errors import OperatorError


@dataclass(frozen=True)
class OperatorContext:
    """What an operator may know about where it runs."""

    actor: str
    stage: str
    replica: int
    replicas: int
    run_dir: Path
    # Where a sink acknowledges durable rows: one endpoint per replica of the source stage
    # (see ``durability.acks``). Empty when nothing is acknowledged.
    ack_peers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Routed:
    """A batch addressed to one replica of the next stage (by its index)."""

    replica: int
    batch: pa.RecordBatch | Sequence[pa.RecordBatch]  # several: sent as one message


Output = pa.RecordBatch | Sequence[pa.RecordBatch] | Routed


@runtime_checkable
class Source(Protocol):
    def batches(self) -> Iterator[pa.RecordBatch]: ...


@runtime_checkable
class AsyncSource(Protocol):
    def abatches(self) -> AsyncIterator[pa.RecordBatch]: ...


@runtime_checkable
class Stage(Protocol):
    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]: ...

    def flush(self) -> Iterable[pa.RecordBatch]: ...


def resolve(reference: str) -> Any:
    """Import the object a ``module:callable`` reference names."""
    module_name, sep, attr = reference.partition(":")
    if not sep or not module_name or not attr:
        raise OperatorError(
            f"operator reference {reference!r} is not of the form 'module:callable'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OperatorError(
            f"operator {reference!r}: cannot import module {module_name!r}: {exc}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise OperatorError(f"operator {reference!r}: {module_name!r} has no {attr!r}") from exc
    if not callable(obj):
        raise OperatorError(f"operator {reference!r} names a {type(obj).__name__}, not a callable")
    return obj


def build(reference: str, context: OperatorContext, params: dict[str, Any], *, source: bool) -> Any:
    """Build an operator and check it has the hooks its position needs."""
    factory = resolve(reference)
    try:
        inspect.signature(factory).bind(context, **params)
    except TypeError as exc:
        raise OperatorError(
            f"operator {reference!r} does not take parameters {params}: {exc}"
        ) from exc
    except ValueError:
        pass  # no introspectable signature (a builtin): let the call decide
    operator = factory(context, **params)
    ok = isinstance(operator, (Source, AsyncSource)) if source else isinstance(operator, Stage)
    if not ok:
        hooks = "batches() or abatches()" if source else "process(batch) and flush()"
        raise OperatorError(
            f"operator {reference!r} built a {type(operator).__name__} without {hooks}; "
            f"a {'source' if source else 'stage'} needs them"
        )
    return operator
