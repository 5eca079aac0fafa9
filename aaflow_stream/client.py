"""Query clients for a running topology's gateway: ``Client`` (blocking), ``AsyncClient``.

Only the wire protocol and sockets live here, never the runtime: any program on the host can
use them. Errors: ``GatewayUnavailable`` (nothing answered within the timeout: the gateway is
down or not started), ``QueryError`` (the gateway answered with an error, ``code`` says which).
"""

from __future__ import annotations

import itertools
import time
from types import TracebackType
from typing import Any

import msgspec
import zmq
import zmq.asyncio

from .errors import AaflowError
from .query.protocol import (
    DeleteReply,
    DeleteRequest,
    ErrorReply,
    Hit,
    QueryFilter,
    QueryReply,
    QueryRequest,
    Reply,
    StatsReply,
    StatsRequest,
    encode,
    reply_decoder,
)

DEFAULT_TIMEOUT_S = 10.0


class QueryError(AaflowError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class GatewayUnavailable(AaflowError):
    """No reply within the timeout: the gateway is down, not started yet, or overloaded."""


def _request(
    text: str | list[float], k: int, request_id: int, where: QueryFilter | None = None
) -> QueryRequest:
    if isinstance(text, str):
        return QueryRequest(id=request_id, text=text, k=k, filter=where)
    return QueryRequest(id=request_id, vector=[float(v) for v in text], k=k, filter=where)


def _check(reply: Reply) -> Reply:
    if isinstance(reply, ErrorReply):
        raise QueryError(reply.code, reply.message)
    return reply


class Client:
    """Blocking client. One request in flight at a time; use several clients for concurrency."""

    def __init__(self, endpoint: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, request: Any) -> Reply:
        self._sock.send(encode(request))
        deadline = time.monotonic() + self._timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000)):
                # The unanswered request may still arrive later: a fresh socket drops it.
                self._reconnect()
                raise GatewayUnavailable(f"no reply from {self.endpoint} in {self._timeout_s}s")
            try:
                reply = reply_decoder.decode(self._sock.recv())
            except msgspec.DecodeError as exc:
                raise QueryError("internal", f"undecodable reply: {exc}") from exc
            if getattr(reply, "id", None) == request.id:
                return _check(reply)

    def _reconnect(self) -> None:
        self._sock.close(linger=0)
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(self.endpoint)

    def query(
        self, text: str | list[float], k: int = 10, where: QueryFilter | None = None
    ) -> list[Hit]:
        """The top-k hits; ``where`` keeps only chunks of some sources or a time range."""
        return self.query_reply(text, k, where).hits

    def query_reply(
        self, text: str | list[float], k: int = 10, where: QueryFilter | None = None
    ) -> QueryReply:
        reply = self._call(_request(text, k, next(self._ids), where))
        assert isinstance(reply, QueryReply)
        return reply

    def query_many(self, texts: list[str], k: int = 10) -> list[list[Hit]]:
        """Send all, then collect: the gateway answers them in shared collective rounds."""
        ids = [next(self._ids) for _ in texts]
        for request_id, text in zip(ids, texts, strict=True):
            self._sock.send(encode(_request(text, k, request_id)))
        replies: dict[int, list[Hit]] = {}
        deadline = time.monotonic() + self._timeout_s
        while len(replies) < len(ids):
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000)):
                self._reconnect()
                raise GatewayUnavailable(f"{len(ids) - len(replies)} queries unanswered")
            reply = _check(reply_decoder.decode(self._sock.recv()))
            if isinstance(reply, QueryReply) and reply.id in ids:
                replies[reply.id] = reply.hits
        return [replies[i] for i in ids]

    def delete(self, doc_ids: list[str]) -> int:
        """Remove these documents everywhere; returns once the removal is durable on every
        shard, with the number of chunks removed."""
        reply = self._call(DeleteRequest(id=next(self._ids), doc_ids=list(doc_ids)))
        assert isinstance(reply, DeleteReply)
        return reply.removed

    def stats(self) -> StatsReply:
        reply = self._call(StatsRequest(id=next(self._ids)))
        assert isinstance(reply, StatsReply)
        return reply

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._ctx.term()


class AsyncClient:
    """asyncio client; many queries may be in flight at once from one client."""

    def __init__(self, endpoint: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.endpoint = endpoint
        self._timeout_s = timeout_s
        self._ctx = zmq.asyncio.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._ids = itertools.count(1)
        self._waiting: dict[int, Any] = {}
        self._reader: Any = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _read(self) -> None:
        while self._waiting:
            reply = reply_decoder.decode(await self._sock.recv())
            future = self._waiting.pop(getattr(reply, "id", -1), None)
            if future is not None and not future.done():
                future.set_result(reply)

    async def _call(self, request: Any) -> Reply:
        import asyncio

        future = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = future
        await self._sock.send(encode(request))
        if self._reader is None or self._reader.done():
            self._reader = asyncio.ensure_future(self._read())
        try:
            return _check(await asyncio.wait_for(future, self._timeout_s))
        except TimeoutError as exc:
            raise GatewayUnavailable(
                f"no reply from {self.endpoint} in {self._timeout_s}s"
            ) from exc
        finally:
            self._waiting.pop(request.id, None)

    async def query(
        self, text: str | list[float], k: int = 10, where: QueryFilter | None = None
    ) -> list[Hit]:
        reply = await self._call(_request(text, k, next(self._ids), where))
        assert isinstance(reply, QueryReply)
        return reply.hits

    async def query_many(self, texts: list[str], k: int = 10) -> list[list[Hit]]:
        import asyncio

        return list(await asyncio.gather(*(self.query(t, k) for t in texts)))

    async def delete(self, doc_ids: list[str]) -> int:
        """See ``Client.delete``."""
        reply = await self._call(DeleteRequest(id=next(self._ids), doc_ids=list(doc_ids)))
        assert isinstance(reply, DeleteReply)
        return reply.removed

    async def stats(self) -> StatsReply:
        reply = await self._call(StatsRequest(id=next(self._ids)))
        assert isinstance(reply, StatsReply)
        return reply

    async def aclose(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._ctx.term()
