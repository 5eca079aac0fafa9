"""Both clients against a real ZeroMQ ROUTER in this process, answering with scripted replies:
the same bad reply gives the same exception (type, code, message) from ``Client`` and from
``AsyncClient``, for queries and for ingest.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq

from aaflow_stream import untrusted
from aaflow_stream.client import AsyncClient, Client
from aaflow_stream.ingest import protocol as ingest_protocol
from aaflow_stream.query import protocol as q

TIMEOUT_S = 10.0
SHORT_S = 0.5  # the clients' own timeout, where no answer is the case under test

Script = Callable[[int], list[bytes]]  # the request id → the reply frames sent back


class ScriptedRouter:
    """A ROUTER on its own thread: each request is answered with ``script(request id)``."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.script: Script = lambda request_id: []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(50):
                continue
            client, raw = self._sock.recv_multipart()
            request_id = untrusted.peek_id(raw)
            assert request_id is not None
            for reply in self.script(request_id):
                self._sock.send_multipart([client, reply])

    def close(self) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        assert not self._thread.is_alive()
        self._sock.close(linger=0)
        self._ctx.term()


@pytest.fixture
def gateway(run_dir: Path) -> Iterator[ScriptedRouter]:
    router = ScriptedRouter(f"ipc://{run_dir}/g.sock")
    yield router
    router.close()


def _outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", call())
    except Exception as exc:
        return (type(exc).__name__, getattr(exc, "code", None), str(exc))


async def _async_outcome(call: Callable[[], Any]) -> tuple[Any, ...]:
    try:
        return ("ok", await asyncio.wait_for(call(), TIMEOUT_S))
    except Exception as exc:
        return (type(exc).__name__, getattr(exc, "code", None), str(exc))


def _both(
    router: ScriptedRouter,
    make_script: Callable[[], Script],
    sync_call: Callable[[Client], Any],
    async_call: Callable[..., Any],
) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """The outcome of the same call by each client, each against a fresh script."""
    router.script = make_script()
    with Client(router.endpoint, timeout_s=SHORT_S, ingest_endpoint=router.endpoint) as client:
        from_sync = _outcome(lambda: sync_call(client))

    router.script = make_script()

    async def main() -> tuple[Any, ...]:
        async with AsyncClient(
            router.endpoint, timeout_s=SHORT_S, ingest_endpoint=router.endpoint
        ) as client:
            return await _async_outcome(lambda: async_call(client))

    return from_sync, asyncio.run(main())


def _deleted(request_id: int) -> bytes:
    return q.encode(q.DeleteReply(id=request_id, removed=3))


QUERY_SCRIPTS: dict[str, tuple[Script, tuple[Any, ...]]] = {
    "an error reply": (
        lambda i: [q.encode(q.ErrorReply(id=i, code="bad_request", message="no"))],
        ("QueryError", "bad_request", "bad_request: no"),
    ),
    "an error reply naming no request": (
        lambda i: [q.encode(q.ErrorReply(id=None, code="internal", message="lost"))],
        ("QueryError", "internal", "internal: lost"),
    ),
    "undecodable bytes": (lambda i: [b"\xc1"], ("QueryError", "internal", None)),
    "a wrong shape with the id": (
        lambda i: [msgspec.msgpack.encode({"kind": "deleted", "id": i, "removed": "x"})],
        ("QueryError", "internal", None),
    ),
    "a late answer, then the answer": (
        lambda i: [q.encode(q.ErrorReply(id=i + 100, code="internal", message="old")), _deleted(i)],
        ("ok", 3),
    ),
    "no answer": (lambda i: [], ("GatewayUnavailable", None, None)),
    "only an answer to another request": (lambda i: [_deleted(i + 100)], ("GatewayUnavailable",)),
}


@pytest.mark.parametrize("case", sorted(QUERY_SCRIPTS))
def test_both_clients_turn_the_same_gateway_reply_into_the_same_result(
    gateway: ScriptedRouter, case: str
) -> None:
    script, expected = QUERY_SCRIPTS[case]
    from_sync, from_async = _both(
        gateway, lambda: script, lambda c: c.delete(["a"]), lambda c: c.delete(["a"])
    )
    assert from_sync == from_async
    assert all(e is None or e == got for e, got in zip(expected, from_sync, strict=False))


def _ingest_error(code: str) -> Script:
    return lambda i: [ingest_protocol.encode(ingest_protocol.IngestError(i, code, "the disk"))]


def _retried_once() -> Script:
    seen: set[int] = set()

    def script(request_id: int) -> list[bytes]:
        if request_id not in seen:  # the first try is refused as unavailable
            seen.add(request_id)
            return _ingest_error("unavailable")(request_id)
        return [ingest_protocol.encode(ingest_protocol.IngestResult(id=request_id, accepted=1))]

    return script


INGEST_SCRIPTS: dict[str, tuple[Callable[[], Script], tuple[Any, ...]]] = {
    "an ingest error": (lambda: _ingest_error("internal"), ("IngestFailed", "internal")),
    "a bad request": (lambda: _ingest_error("bad_request"), ("IngestFailed", "bad_request")),
    "undecodable bytes": (lambda: lambda i: [b"\xc1"], ("IngestFailed", "internal")),
    "unavailable, then accepted": (_retried_once, ("ok",)),
    "no answer": (lambda: lambda i: [], ("GatewayUnavailable", None)),
}


@pytest.mark.parametrize("case", sorted(INGEST_SCRIPTS))
def test_both_clients_turn_the_same_ingest_reply_into_the_same_result(
    gateway: ScriptedRouter, case: str
) -> None:
    make_script, expected = INGEST_SCRIPTS[case]
    docs = [{"doc_id": "a", "text": "x"}]
    from_sync, from_async = _both(
        gateway,
        make_script,
        lambda c: c.ingest(docs, timeout_s=SHORT_S).accepted,
        lambda c: _accepted(c.ingest(docs, timeout_s=SHORT_S)),
    )
    assert from_sync == from_async
    assert from_sync[: len(expected)] == expected


async def _accepted(call: Any) -> int:
    return int((await call).accepted)
