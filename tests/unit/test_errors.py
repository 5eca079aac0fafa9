"""One error home: every exception the package defines lives in ``errors.py`` under
``AaflowError``; both clients make the same errors of the same replies (their sans-IO core,
driven here without sockets); the asyncio client's reader fails every waiting call; a failed
delete round is answered before the gateway stops.

The same clients against a real ZeroMQ ROUTER: ``tests/integration/test_client_errors.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil
from typing import Any

import msgspec
import pytest

import aaflow_stream
from aaflow_stream import client as client_module
from aaflow_stream import errors
from aaflow_stream.client import (
    AsyncClient,
    Exchange,
    GatewayUnavailable,
    IngestFailed,
    LinkClosed,
    QueryError,
    RequestError,
    _IngestRound,
    read_ingest_reply,
    read_reply,
)
from aaflow_stream.ingest import protocol as ingest_protocol
from aaflow_stream.query import protocol as q
from aaflow_stream.query.gateway import Gateway, RoundFailed

from .test_gateway_requests import TIMEOUT_S, FakeRouter, Rounds, _gateway

# Exceptions defined outside errors.py on purpose, each with why. None so far.
FOREIGN: dict[str, str] = {}

# Where each moved class was defined: the old import keeps working.
OLD_HOMES = {
    "aaflow_stream.untrusted": ["MalformedMessage"],
    "aaflow_stream.shard.wakeup": ["WakeupError"],
    "aaflow_stream.ownership": ["DirectoryBusy"],
    "aaflow_stream.runtime.failures": ["BadOperator", "StartTimeout"],
    "aaflow_stream.daemon": ["DaemonError"],
    "aaflow_stream.client": ["QueryError", "GatewayUnavailable", "InvalidRequest"],
    "aaflow_stream.query.gateway": ["RoundFailed"],
    "aaflow_stream.ingest.documents": ["BadDocument"],
    "aaflow_stream.observe.status": ["StatusUnavailable"],
    "aaflow_stream.flow": ["CreditViolation"],
}


def _package_exceptions() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(aaflow_stream.__path__, "aaflow_stream."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("aaflow_stream"):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_exception_of_the_package_is_defined_in_errors_under_aaflow_error() -> None:
    exceptions = _package_exceptions()
    assert len(exceptions) > 20  # the walk found the package's modules
    misplaced = [
        f"{e.__module__}.{e.__qualname__}"
        for e in exceptions
        if e.__module__ != "aaflow_stream.errors" and e.__qualname__ not in FOREIGN
    ]
    assert misplaced == []
    outside = [e.__qualname__ for e in exceptions if not issubclass(e, errors.AaflowError)]
    assert outside == []


def test_the_tree_in_the_docstring_names_every_class_of_errors() -> None:
    assert errors.__doc__ is not None
    drawn = set(errors.__doc__.split())
    defined = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    }
    assert defined <= drawn, defined - drawn


def test_errors_imports_nothing_of_the_package() -> None:
    source = inspect.getsource(errors)
    assert "from ." not in source and "import aaflow_stream" not in source


@pytest.mark.parametrize("module", sorted(OLD_HOMES))
def test_a_moved_exception_is_still_importable_from_its_old_module(module: str) -> None:
    imported = importlib.import_module(module)
    for name in OLD_HOMES[module]:
        assert getattr(imported, name) is getattr(errors, name)


def test_store_errors_are_typed_and_keep_their_builtin_kinds() -> None:
    assert issubclass(errors.BadBatch, errors.StorageError)
    assert issubclass(errors.BadBatch, ValueError)
    assert issubclass(errors.ChunkNotStored, errors.StorageError)
    assert issubclass(errors.ChunkNotStored, KeyError)
    assert str(errors.ChunkNotStored("chunk id 3 is not stored")) == "chunk id 3 is not stored"


def test_an_ingest_failure_is_its_own_request_error_not_a_query_error() -> None:
    assert issubclass(IngestFailed, RequestError) and not issubclass(IngestFailed, QueryError)
    assert issubclass(QueryError, RequestError)


# --- the sans-IO core -------------------------------------------------------------------------


def _raw(obj: object) -> bytes:
    return msgspec.msgpack.encode(obj)


# A reply frame, for request 7 → the exception (type, code) it means, or None for a reply.
BAD_REPLIES: dict[str, tuple[bytes, type[Exception], str]] = {
    "error reply": (
        q.encode(q.ErrorReply(id=7, code="bad_request", message="k too large")),
        QueryError,
        "bad_request",
    ),
    "unavailable": (
        q.encode(q.ErrorReply(id=7, code="unavailable", message="busy")),
        QueryError,
        "unavailable",
    ),
    "error reply without id": (
        q.encode(q.ErrorReply(id=None, code="bad_request", message="undecodable")),
        QueryError,
        "bad_request",
    ),
    "undecodable bytes": (b"\xc1\xff", QueryError, "internal"),
    "invalid utf-8": (
        b"\x84\xa2id\x07\xa4kind\xa5error\xa4code\xa8internal\xa7message\xa2\xff\xfe",
        QueryError,
        "internal",
    ),
    "wrong shape with an id": (_raw({"kind": "hits", "id": 7, "hits": 3}), QueryError, "internal"),
    "unknown kind": (_raw({"kind": "bogus", "id": 7}), QueryError, "internal"),
}


@pytest.mark.parametrize("case", sorted(BAD_REPLIES))
def test_a_bad_reply_settles_the_waiting_request_with_its_error(case: str) -> None:
    raw, kind, code = BAD_REPLIES[case]
    exchange = Exchange()
    exchange.sent(7)
    ((request_id, outcome),) = exchange.receive(raw)
    assert request_id == 7
    assert type(outcome) is kind and outcome.code == code  # type: ignore[union-attr]
    assert exchange.waiting == 0


def test_undecodable_bytes_keep_the_decoders_cause() -> None:
    _, outcome = read_reply(b"\xc1")
    assert isinstance(outcome, QueryError)
    assert isinstance(outcome.__cause__, errors.MalformedMessage)


def test_a_reply_to_another_request_is_a_late_answer_and_dropped() -> None:
    exchange = Exchange()
    exchange.sent(7)
    late = q.encode(q.ErrorReply(id=3, code="internal", message="old"))
    assert exchange.receive(late) == []
    assert exchange.receive(q.encode(q.DeleteReply(id=4, removed=1))) == []
    assert exchange.waiting == 1
    ((request_id, reply),) = exchange.receive(q.encode(q.DeleteReply(id=7, removed=2)))
    assert (request_id, reply) == (7, q.DeleteReply(id=7, removed=2))


def test_a_reply_that_names_no_request_fails_every_waiting_one() -> None:
    exchange = Exchange()
    for request_id in (1, 2, 3):
        exchange.sent(request_id)
    ended = exchange.receive(b"\xc1")
    assert [request_id for request_id, _ in ended] == [1, 2, 3]
    assert all(isinstance(outcome, QueryError) for _, outcome in ended)
    assert exchange.waiting == 0


def test_an_ingest_error_reply_raises_ingest_failed_with_its_code() -> None:
    work = _IngestRound([{"doc_id": "a", "text": "x"}], iter(range(1, 9)), 4096)
    sent = work.next_to_send()
    assert sent is not None
    error = ingest_protocol.encode(ingest_protocol.IngestError(sent[0], "internal", "disk"))
    with pytest.raises(IngestFailed) as caught:
        work.receive(error)
    assert caught.value.code == "internal"
    with pytest.raises(IngestFailed, match="internal") as bad:
        read_ingest_reply(b"\xc1")
    assert isinstance(bad.value.__cause__, errors.MalformedMessage)


def test_an_unavailable_ingest_reply_is_retried_not_raised() -> None:
    work = _IngestRound([{"doc_id": "a", "text": "x"}], iter(range(1, 9)), 4096)
    sent = work.next_to_send()
    assert sent is not None
    busy = ingest_protocol.encode(ingest_protocol.IngestError(sent[0], "unavailable", "full"))
    assert work.receive(busy) is True
    assert not work.done and work.next_to_send() is not None


# --- the asyncio client's reader --------------------------------------------------------------


class FakeDealer:
    """Stands in for the AsyncClient's DEALER: records sends; ``recv`` fails or hangs."""

    def __init__(self, fail: BaseException | None) -> None:
        self._fail = fail
        self.sent: list[bytes] = []
        self.receiving = asyncio.Event()
        self.closed = False

    async def send(self, message: bytes) -> None:
        self.sent.append(message)

    async def recv(self) -> bytes:
        self.receiving.set()
        if self._fail is not None:
            raise self._fail
        await asyncio.Event().wait()  # never answers
        raise AssertionError("unreachable")

    def close(self, linger: int = 0) -> None:
        self.closed = True


def _with_fake(client: AsyncClient, fake: FakeDealer) -> None:
    client._sock.close(linger=0)
    client._sock = fake


def test_the_readers_failure_reaches_every_waiting_query() -> None:
    async def main() -> list[BaseException]:
        client = AsyncClient(None, timeout_s=TIMEOUT_S)
        _with_fake(client, FakeDealer(OSError("the socket broke")))
        try:
            results = await asyncio.wait_for(
                asyncio.gather(client.query("a"), client.query("b"), return_exceptions=True),
                TIMEOUT_S,
            )
        finally:
            await client.aclose()
        return [r for r in results if isinstance(r, BaseException)]

    failures = asyncio.run(main())
    assert len(failures) == 2
    for failure in failures:
        assert isinstance(failure, GatewayUnavailable)
        assert "the socket broke" in str(failure)
        assert isinstance(failure.__cause__, OSError)


def test_closing_cancels_and_awaits_the_reader_and_fails_the_waiting_call() -> None:
    async def main() -> tuple[BaseException | None, Any]:
        client = AsyncClient(None, timeout_s=TIMEOUT_S)
        fake = FakeDealer(None)
        _with_fake(client, fake)
        waiting = asyncio.create_task(client.query("a"))
        await asyncio.wait_for(fake.receiving.wait(), TIMEOUT_S)
        reader = client._reader
        await asyncio.wait_for(client.aclose(), TIMEOUT_S)
        await client.aclose()  # idempotent
        await asyncio.wait([waiting], timeout=TIMEOUT_S)
        return waiting.exception(), reader

    failure, reader = asyncio.run(main())
    assert isinstance(failure, LinkClosed)
    assert reader is not None and reader.cancelled()


def test_a_closed_async_client_refuses_calls() -> None:
    async def main() -> None:
        client = AsyncClient(None)
        await client.aclose()
        with pytest.raises(LinkClosed):
            await client.stats()

    asyncio.run(main())


def test_the_client_module_raises_only_errors_from_errors() -> None:
    for name in ("QueryError", "GatewayUnavailable", "InvalidRequest", "IngestFailed"):
        assert getattr(client_module, name) is getattr(errors, name)


# --- the gateway ------------------------------------------------------------------------------


class FailingDelete(Rounds):
    async def delete(self, doc_ids: list[str]) -> int:
        raise RuntimeError("a rank is gone")


def test_a_failed_delete_round_answers_its_request_then_ends_the_gateway() -> None:
    async def main() -> list[q.Reply]:
        router = FakeRouter()
        gateway: Gateway = _gateway(router, FailingDelete())
        router.deliver([b"c", q.encode(q.DeleteRequest(id=5, doc_ids=["a"]))])
        with pytest.raises(ExceptionGroup) as caught:
            await asyncio.wait_for(gateway.serve(), TIMEOUT_S)
        assert caught.group_contains(RoundFailed)
        return await router.replies(1)

    (reply,) = asyncio.run(main())
    assert isinstance(reply, q.ErrorReply) and (reply.id, reply.code) == (5, "internal")
    assert "a rank is gone" in reply.message
