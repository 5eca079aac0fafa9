"""The operator contract, hook by hook, and the loader for ``module:callable`` references.

An operator is built once per actor, before the actor takes work (models load here, never per
batch): ``factory(context, **params)`` where ``factory`` is the object a ``module:callable``
reference names and ``params`` come from the stage description. A built-in operator instead
declares its parameters as a ``Params`` Struct (``operators/params.py``) and is built as
``factory(context, params)``: the description's parameters are converted into it once, here,
and a wrong or unknown one is an OperatorError naming the field.

Each hook below is also a Protocol in this module, with when it is called and whether it may
block the loop; ``build`` refuses an operator with a hook the runtime could not call as it
does (``HOOKS``: how many arguments each gets).

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
from collections.abc import AsyncIterator, Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol, TypeAlias, TypeVar, runtime_checkable

import msgspec
import pyarrow as pa
import zmq.asyncio

from ..errors import OperatorError
from ..protocol import Ack

P = TypeVar("P", bound=msgspec.Struct)


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
    # The actor's ZeroMQ context (one per process, terminated by the actor): an operator makes
    # its sockets in it (``channels.sockets``). None outside an actor: a part then makes and
    # terminates its own (``channels.sockets.ContextHolder``).
    zmq_context: zmq.asyncio.Context | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Routed:
    """A batch addressed to one replica of the next stage (by its index)."""

    replica: int
    batch: pa.RecordBatch | Sequence[pa.RecordBatch]  # several: sent as one message


Output: TypeAlias = pa.RecordBatch | Sequence[pa.RecordBatch] | Routed


# --- the hooks, one Protocol each -------------------------------------------------------------
# The runtime finds the optional ones with ``getattr`` (runtime/chain.py, runtime/actor.py,
# channels/acks.py); ``build`` checks that each hook an operator has can be called as below.


@runtime_checkable
class Source(Protocol):
    def batches(self) -> Iterator[pa.RecordBatch]:
        """A source's batches, pulled one at a time when a downstream link has credit, on the
        actor's event loop. May block for the time one batch takes to produce."""
        ...


@runtime_checkable
class AsyncSource(Protocol):
    def abatches(self) -> AsyncIterator[pa.RecordBatch]:
        """A source that waits for its input: an async generator awaited on the actor's loop.
        Must not block the loop; a stop request cancels its wait."""
        ...


@runtime_checkable
class Stage(Protocol):
    def process(self, batch: pa.RecordBatch) -> Iterable[Output]:
        """Called once per arriving batch, in arrival order, on the actor's event loop. May
        use the CPU; must not wait on other actors. ``RetryLater``: nothing happened, the
        same batch comes again."""
        ...

    def flush(self) -> Iterable[Output]:
        """Called once after end of stream arrived from every upstream replica, on the loop
        (may use the CPU): what was held back for batching."""
        ...


@runtime_checkable
class Serves(Protocol):
    def serve(self) -> Awaitable[None]:
        """A coroutine run beside the actor's work on its loop, from before Ready until the
        actor stops (then cancelled): watchers, sockets, query serving. Must not block."""
        ...


@runtime_checkable
class HasMetrics(Protocol):
    def metrics(self) -> Mapping[str, float]:
        """Numbers added to the actor's stats report (every stats interval), on the loop.
        Must be quick: it blocks the loop."""
        ...


@runtime_checkable
class Idles(Protocol):
    def idle(self) -> Iterable[Output]:
        """Called on the loop when no input arrived for the flow's ``flush_ms`` since a batch
        (any number of times): what was held back, so a trickle is not stuck. May use the
        CPU, like ``process``."""
        ...


@runtime_checkable
class Acknowledged(Protocol):
    """A source that learns which of its rows the shards made durable (``acks_to``)."""

    def acknowledge(self, ack: Ack) -> None:
        """Called on the loop for each acknowledgement that arrives (not the final ones).
        Must be quick: it blocks the loop. A ValueError drops the message as malformed."""
        ...

    def unacknowledged(self) -> int:
        """How many emitted rows are not acknowledged yet; polled on the loop after the
        source ended, until 0 or the wait ends. Must be quick."""
        ...

    def end_feed(self) -> None:
        """Called once on the loop when the wait for acknowledgements is over (all came or
        time ran out), before end of stream goes downstream. May do brief I/O (a save)."""
        ...


@runtime_checkable
class Closes(Protocol):
    def close(self) -> None:
        """Called once when the actor stops, also after a failure, on the loop (after the
        other hooks ended). May block briefly (closing files and sockets)."""
        ...


# Each hook an operator may have → how many positional arguments the runtime passes it.
HOOKS: Final[dict[str, int]] = {
    "batches": 0,
    "abatches": 0,
    "process": 1,
    "flush": 0,
    "idle": 0,
    "serve": 0,
    "metrics": 0,
    "acknowledge": 1,
    "unacknowledged": 0,
    "end_feed": 0,
    "close": 0,
}


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


def typed_params(reference: str, params: dict[str, Any], kind: type[P]) -> P:
    """``params`` (from the stage description) as the operator's Params Struct."""
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as exc:
        raise OperatorError(f"operator {reference!r}: invalid parameters: {exc}") from exc


def check_hooks(reference: str, operator: Any) -> None:
    """Refuse an operator with a hook the runtime could not call (see ``HOOKS``)."""
    for hook, arity in HOOKS.items():
        method = getattr(operator, hook, None)
        if method is None:
            continue
        if not callable(method):
            raise OperatorError(
                f"operator {reference!r}: its {hook!r} is a {type(method).__name__}, "
                f"not a method taking {arity} argument(s)"
            )
        try:
            signature = inspect.signature(method)
        except (TypeError, ValueError):
            continue  # no introspectable signature (a builtin): let the call decide
        try:
            signature.bind(*([None] * arity))
        except TypeError as exc:
            raise OperatorError(
                f"operator {reference!r}: hook {hook!r} is {hook}{signature}, which the "
                f"runtime cannot call with {arity} argument(s) ({exc}); see operators/base.py"
            ) from exc


def build(reference: str, context: OperatorContext, params: dict[str, Any], *, source: bool) -> Any:
    """Build an operator and check it has the hooks its position needs.

    A built-in operator declares its parameters as a ``Params`` Struct (``operators.params``):
    ``params`` is converted into it, once, here. Any other is called with them as keywords.
    """
    factory = resolve(reference)
    kind = getattr(factory, "Params", None)
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        operator = factory(context, typed_params(reference, params, kind))
    else:
        try:
            inspect.signature(factory).bind(context, **params)
        except TypeError as exc:
            raise OperatorError(
                f"operator {reference!r} does not take parameters {params}: {exc}"
            ) from exc
        except ValueError:
            pass  # no introspectable signature (a builtin): let the call decide
        operator = factory(context, **params)
    check_hooks(reference, operator)
    ok = isinstance(operator, (Source, AsyncSource)) if source else isinstance(operator, Stage)
    if not ok:
        hooks = "batches() or abatches()" if source else "process(batch) and flush()"
        raise OperatorError(
            f"operator {reference!r} built a {type(operator).__name__} without {hooks}; "
            f"a {'source' if source else 'stage'} needs them"
        )
    return operator
