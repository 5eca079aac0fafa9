"""The ingest endpoint: a ROUTER that takes documents from clients and answers once they are
durable.

Each request is decoded, and each of its documents checked like the file loader checks a
document (``operators.load.check_document``); rejected ones are reported by index and doc_id,
the accepted ones wait in their request until the source operator takes them (``take``), at
the pace its sends get credit. The reply goes out when the last accepted document of a request
completed (``done``: every shard acknowledged it).

Bounds, so that a flooding client is slowed and never buffered without limit: while
``max_pending`` requests are read and not yet durable the endpoint reads nothing more; ZeroMQ
then holds at most ``max_queued`` messages per client connection (RCVHWM) and the client's
sends block; a message over ``max_request_bytes`` is dropped by ZeroMQ (MAXMSGSIZE).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import zmq

from ..channels.loopsocket import LoopSocket
from ..operators.load import BadDocument, Doc, check_document
from . import protocol
from .protocol import IngestError, IngestResult, Rejected

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "ingest"
CLOSE_LINGER_MS = 500


@dataclass(eq=False)
class PendingRequest:
    routing_id: bytes
    id: int
    docs: deque[Doc]  # accepted and not yet taken by the source
    accepted: int
    rejected: list[Rejected]
    remaining: int = 0  # accepted documents not yet durable
    taken: int = field(default=0)


def check(request: protocol.IngestRequest, limit: int) -> tuple[list[Doc], list[Rejected]]:
    """The request's valid documents and a rejection for each other one."""
    accepted: list[Doc] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    now_ms = int(time.time() * 1000)
    for index, raw in enumerate(request.documents):
        try:
            doc = protocol.document_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            doc_id = protocol.doc_id_of(raw)
            rejected.append(Rejected(index, doc_id, f"not a valid document: {exc}"))
            continue
        try:
            check_document(doc.doc_id, doc.text, limit)
            if doc.doc_id in seen:
                raise BadDocument("duplicate doc_id in this request")
        except BadDocument as exc:
            rejected.append(Rejected(index, doc.doc_id or None, str(exc)))
            continue
        seen.add(doc.doc_id)
        ts_ms = int(doc.ts * 1000) if doc.ts is not None else now_ms
        accepted.append(Doc(doc.doc_id, doc.text, doc.source or DEFAULT_SOURCE, ts_ms))
    return accepted, rejected


class IngestEndpoint:
    def __init__(
        self,
        endpoint: str,
        *,
        wake: Callable[[], None],
        max_doc_bytes: int,
        max_pending: int = 32,
        max_queued: int = 4,
        max_request_bytes: int = 32 * 2**20,
    ) -> None:
        self.endpoint = endpoint
        self._wake_source = wake
        self._limit = max_doc_bytes
        self._max_pending = max_pending
        self._ctx: zmq.Context[Any] = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.RCVHWM, max_queued)
        sock.setsockopt(zmq.MAXMSGSIZE, max_request_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close()
            self._ctx.term()
            raise OSError(f"ingest endpoint {endpoint}: cannot bind: {exc}") from exc
        self._sock = LoopSocket(sock)
        self._queued: deque[PendingRequest] = deque()  # with documents not taken yet
        self._pending = 0  # read and not answered
        self._room = asyncio.Event()
        self._replies: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(maxsize=4 * max_pending)
        self._open: set[PendingRequest] = set()
        self.requests = 0
        self.documents = 0
        self.rejected = 0

    @property
    def has_work(self) -> bool:
        return bool(self._queued)

    @property
    def pending(self) -> int:
        return self._pending

    async def serve(self) -> None:
        """Read requests while fewer than ``max_pending`` are unanswered; send replies."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._send_replies())
            while True:
                while self._pending >= self._max_pending:
                    self._room.clear()
                    await self._room.wait()
                frames = await self._sock.recv_multipart()
                if len(frames) != 2:
                    log.warning("ingest: dropped a message of %d frames", len(frames))
                    continue
                await self._handle(frames[0], frames[1])

    async def _handle(self, routing_id: bytes, message: bytes) -> None:
        try:
            request = protocol.request_decoder.decode(message)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = IngestError(
                id=protocol.request_id_of(message),
                code="bad_request",
                message=f"not an ingest request: {exc}",
            )
            await self._sock.send_multipart([routing_id, protocol.encode(error)])
            return
        self.requests += 1
        accepted, rejected = check(request, self._limit)
        self.rejected += len(rejected)
        if not accepted:
            result = IngestResult(id=request.id, accepted=0, rejected=rejected)
            await self._sock.send_multipart([routing_id, protocol.encode(result)])
            return
        pending = PendingRequest(routing_id, request.id, deque(accepted), len(accepted), rejected)
        self._queued.append(pending)
        self._open.add(pending)
        self._pending += 1
        self._wake_source()

    def take(self, limit: int) -> list[tuple[Doc, PendingRequest]]:
        """Up to ``limit`` accepted documents, oldest request first."""
        out: list[tuple[Doc, PendingRequest]] = []
        while self._queued and len(out) < limit:
            request = self._queued[0]
            while request.docs and len(out) < limit:
                out.append((request.docs.popleft(), request))
                request.remaining += 1
                request.taken += 1
            if not request.docs:
                self._queued.popleft()
        self.documents += len(out)
        return out

    def done(self, request: PendingRequest) -> None:
        """One of the request's documents is durable; the last one answers the client."""
        request.remaining -= 1
        if request.remaining or request.taken < request.accepted:
            return
        result = IngestResult(id=request.id, accepted=request.accepted, rejected=request.rejected)
        self._answer(request, protocol.encode(result))

    def _answer(self, request: PendingRequest, reply: bytes) -> None:
        self._open.discard(request)
        self._pending -= 1
        self._room.set()
        try:
            self._replies.put_nowait((request.routing_id, reply))
        except asyncio.QueueFull:  # replies never block for long (ROUTER drops, not waits)
            log.warning("ingest: reply queue full; request %d unanswered", request.id)

    async def _send_replies(self) -> None:
        while True:
            routing_id, reply = await self._replies.get()
            await self._sock.send_multipart([routing_id, reply])

    def metrics(self) -> dict[str, float]:
        return {
            "ingest_requests": self.requests,
            "ingest_documents": self.documents,
            "ingest_rejected": self.rejected,
            "ingest_pending": self._pending,
        }

    def close(self) -> None:
        """Tell every unanswered client to retry, then close (idempotent)."""
        if self._sock.closed:
            return
        for request in list(self._open):
            error = IngestError(
                id=request.id, code="unavailable", message="the engine stopped; send it again"
            )
            try:
                self._sock.socket.send_multipart(
                    [request.routing_id, protocol.encode(error)], zmq.NOBLOCK
                )
            except zmq.ZMQError:
                pass  # the client times out instead
        self._open.clear()
        self._sock.close(linger=CLOSE_LINGER_MS)
        self._ctx.term()
