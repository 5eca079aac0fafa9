"""The ingest endpoint: a ROUTER that takes documents from clients and answers once they are
durable.

``IngestDesk`` is the endpoint without its socket (pure, tested without one): each message is
decoded, and each of its documents checked like the file loader checks a document
(``documents.check_document``, ``ts_ms``); rejected ones are reported by index and
doc_id, the accepted ones wait in their request until the source operator takes them
(``take``), at the pace its sends get credit. The reply goes out when the last accepted
document of a request completed (``done``: every shard acknowledged it).

Every message is answered and nothing a client sends ends the actor (``IngestDesk.handle``):
a message of several frames, over ``max_request_bytes`` or not a decodable request gets an
``IngestError`` ``bad_request`` naming what is wrong (counted as ``ingest_malformed_<reason>``);
a rejected document is counted as ``ingest_rejected_<reason>``; any other failure of a request
is answered ``internal`` and logged (``ingest_internal_errors``).

Bounds, so that a flooding client is slowed and never buffered without limit: while
``max_pending`` requests are read and not yet durable the endpoint reads nothing more; ZeroMQ
then holds at most ``max_queued`` messages per client connection (RCVHWM) and the client's
sends block. ZeroMQ drops a frame (with its connection, unanswered) only past MAXMSGSIZE, set
an eighth above ``max_request_bytes`` so that a request somewhat too large is answered; the
client refuses larger requests itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import zmq

from .. import untrusted
from ..channels import curve, sockets
from . import protocol
from .documents import (
    REJECT_REASONS,
    BadDocument,
    Doc,
    DocLimits,
    check_document,
    shown_id,
    ts_ms,
)
from .protocol import IngestError, IngestResult, Rejected

log = logging.getLogger(__name__)

DEFAULT_SOURCE = "ingest"
CLOSE_LINGER_MS = 500
# Malformed-message reasons: the decoder's, and a message that is not exactly one frame.
MALFORMED_REASONS: Final = (*untrusted.REASONS, "frames")
_DOC_OVERHEAD: Final = 256  # msgpack keys and ts of one document, over its strings


@dataclass(eq=False)
class PendingRequest:
    routing_id: bytes
    id: int
    docs: deque[Doc]  # accepted and not yet taken by the source
    accepted: int
    rejected: list[Rejected]
    remaining: int = 0  # accepted documents not yet durable
    taken: int = field(default=0)


def _document(raw: Any, limits: DocLimits, now_ms: int, seen: set[str]) -> Doc:
    """One document of a request, checked; BadDocument says why not."""
    max_bytes = (
        limits.max_doc_bytes + limits.max_doc_id_bytes + limits.max_source_bytes + _DOC_OVERHEAD
    )
    try:
        doc = untrusted.decode(protocol.document_decoder, raw, max_bytes=max_bytes)
    except untrusted.MalformedMessage as exc:
        raise BadDocument.malformed(exc, "document") from exc
    check_document(doc.doc_id, doc.text, limits, doc.source)
    if doc.doc_id in seen:
        raise BadDocument("duplicate", "duplicate doc_id in this request")
    return Doc(doc.doc_id, doc.text, doc.source or DEFAULT_SOURCE, ts_ms(doc.ts, now_ms))


def check(
    request: protocol.IngestRequest,
    limit: DocLimits | int,
    rejects: Counter[str] | None = None,
) -> tuple[list[Doc], list[Rejected]]:
    """The request's valid documents and a rejection for each other one (its reason code
    counted in ``rejects``)."""
    limits = limit if isinstance(limit, DocLimits) else DocLimits(max_doc_bytes=limit)
    accepted: list[Doc] = []
    rejected: list[Rejected] = []
    seen: set[str] = set()
    now_ms = int(time.time() * 1000)
    for index, raw in enumerate(request.documents):
        try:
            doc = _document(raw, limits, now_ms, seen)
        except BadDocument as exc:
            doc_id = shown_id(protocol.doc_id_of(raw), limits)  # None: none fit to show
            rejected.append(Rejected(index, doc_id, str(exc)))
            if rejects is not None:
                rejects[exc.reason] += 1
            continue
        seen.add(doc.doc_id)
        accepted.append(doc)
    return accepted, rejected


class IngestDesk:
    """The endpoint's bookkeeping, without a socket: messages in, replies out."""

    def __init__(self, limits: DocLimits, *, max_request_bytes: int) -> None:
        self._limits = limits
        self._max_request_bytes = max_request_bytes
        self._queued: deque[PendingRequest] = deque()  # with documents not taken yet
        self._open: set[PendingRequest] = set()  # read and not answered
        self.requests = 0
        self.documents = 0
        self.rejects: Counter[str] = Counter(dict.fromkeys(REJECT_REASONS, 0))
        self.malformed: Counter[str] = Counter(dict.fromkeys(MALFORMED_REASONS, 0))
        self.internal_errors = 0

    @property
    def has_work(self) -> bool:
        return bool(self._queued)

    @property
    def pending(self) -> int:
        return len(self._open)

    def handle(self, routing_id: bytes, message: bytes, frames: int = 1) -> bytes | None:
        """A client's message (its first frame, and how many it had) → the reply to send now,
        or None when it was admitted (answered by ``done``). Never raises."""
        try:
            return self._admit(routing_id, message, frames)
        except Exception as exc:  # a bug this input met: answer it and keep serving
            self.internal_errors += 1
            log.warning("ingest: a request failed (%s); answered 'internal'", exc, exc_info=True)
            error = IngestError(
                id=protocol.request_id_of(message),
                code="internal",
                message=f"the endpoint failed on this request ({type(exc).__name__})",
            )
            return protocol.encode(error)

    def _admit(self, routing_id: bytes, message: bytes, frames: int) -> bytes | None:
        if frames != 1:
            return self._refuse(
                message, "frames", f"an ingest request is one frame; this message had {frames}"
            )
        try:
            request = untrusted.decode(
                protocol.request_decoder,
                message,
                max_bytes=self._max_request_bytes,
                what="ingest request",
            )
        except untrusted.MalformedMessage as exc:
            return self._refuse(message, exc.reason, str(exc))
        accepted, rejected = check(request, self._limits, self.rejects)
        self.requests += 1
        if not accepted:
            return protocol.encode(IngestResult(id=request.id, accepted=0, rejected=rejected))
        pending = PendingRequest(routing_id, request.id, deque(accepted), len(accepted), rejected)
        self._queued.append(pending)
        self._open.add(pending)
        return None

    def _refuse(self, message: bytes, reason: str, detail: str) -> bytes:
        self.malformed[reason] += 1
        log.debug("ingest: refused a message (%s)", reason)  # a flood must not flood the log
        if len(detail) > 300:
            detail = detail[:300] + "..."
        error = IngestError(id=protocol.request_id_of(message), code="bad_request", message=detail)
        return protocol.encode(error)

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

    def done(self, request: PendingRequest) -> bytes | None:
        """One of the request's documents is durable; the last one gives the reply."""
        request.remaining -= 1
        if request.remaining or request.taken < request.accepted:
            return None
        self._open.discard(request)
        result = IngestResult(id=request.id, accepted=request.accepted, rejected=request.rejected)
        return protocol.encode(result)

    def abandon(self) -> list[tuple[bytes, bytes]]:
        """(routing id, ``unavailable`` reply) for every unanswered request, now forgotten."""
        replies = []
        for request in self._open:
            error = IngestError(
                id=request.id, code="unavailable", message="the engine stopped; send it again"
            )
            replies.append((request.routing_id, protocol.encode(error)))
        self._open.clear()
        self._queued.clear()
        return replies

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {
            "ingest_requests": self.requests,
            "ingest_documents": self.documents,
            "ingest_rejected": sum(self.rejects.values()),
            "ingest_malformed": sum(self.malformed.values()),
            "ingest_internal_errors": self.internal_errors,
            "ingest_pending": self.pending,
        }
        out.update({f"ingest_rejected_{r}": n for r, n in self.rejects.items()})
        out.update({f"ingest_malformed_{r}": n for r, n in self.malformed.items()})
        return out


class IngestEndpoint:
    def __init__(
        self,
        endpoint: str,
        *,
        wake: Callable[[], None],
        limits: DocLimits,
        max_pending: int = 32,
        max_queued: int = 4,
        max_request_bytes: int = 32 * 2**20,
        ctx: zmq.Context[Any] | None = None,
        keys_dir: str | None = None,
    ) -> None:
        """``ctx``: the actor's ZeroMQ context; None: one of its own (``ContextHolder``).
        ``keys_dir``: where the CURVE keys are, for an endpoint off loopback
        (``channels.curve``)."""
        self.endpoint = endpoint
        self._wake_source = wake
        self._max_pending = max_pending
        self.desk = IngestDesk(limits, max_request_bytes=max_request_bytes)
        self._zmq = sockets.ContextHolder(ctx)
        self.guard: curve.Guard | None = None
        try:
            self.guard = curve.guard_for(self._zmq.ctx, endpoint, keys_dir)
            self._sock = sockets.ingest_router(
                self._zmq.ctx,
                endpoint,
                max_queued=max_queued,
                # Past this ZeroMQ drops the connection unanswered; up to it the desk answers.
                max_frame_bytes=max_request_bytes + max(2**16, max_request_bytes // 8),
                guard=self.guard,
            )
        except zmq.ZMQError as exc:
            self._release()
            raise OSError(f"ingest endpoint {endpoint}: cannot bind: {exc}") from exc
        except BaseException:
            self._release()
            raise
        self._room = asyncio.Event()
        self._replies: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue(maxsize=4 * max_pending)

    @property
    def has_work(self) -> bool:
        return self.desk.has_work

    @property
    def pending(self) -> int:
        return self.desk.pending

    async def serve(self) -> None:
        """Read requests while fewer than ``max_pending`` are unanswered; send replies."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._send_replies())
            while True:
                while self.desk.pending >= self._max_pending:
                    self._room.clear()
                    await self._room.wait()
                routing_id, message, frames = await self._receive()
                reply = self.desk.handle(routing_id, message, frames)
                if reply is None:
                    self._wake_source()
                else:
                    await self._sock.send_multipart([routing_id, reply])

    async def _receive(self) -> tuple[bytes, bytes, int]:
        """A client's message: its routing id, first frame and number of frames. ZeroMQ
        delivers a message whole, so its other frames are here already: read one at a time
        and dropped, never held together."""
        routing_id = await self._sock.recv()
        first, frames = b"", 0
        while self._sock.socket.getsockopt(zmq.RCVMORE):
            frame = await self._sock.recv()
            if frames == 0:
                first = frame
            frames += 1
        return routing_id, first, frames

    def take(self, limit: int) -> list[tuple[Doc, PendingRequest]]:
        return self.desk.take(limit)

    def done(self, request: PendingRequest) -> None:
        """One of the request's documents is durable; the last one answers the client."""
        reply = self.desk.done(request)
        if reply is None:
            return
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
        out = self.desk.metrics()
        if self.guard is not None:
            out["curve_refused"] = self.guard.refused
        return out

    def close(self) -> None:
        """Tell every unanswered client to retry, then close (idempotent)."""
        if self._sock.closed:
            return
        for routing_id, reply in self.desk.abandon():
            try:
                self._sock.socket.send_multipart([routing_id, reply], zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # the client times out instead
        self._sock.close(linger=CLOSE_LINGER_MS)
        self._release()

    def _release(self) -> None:
        if self.guard is not None:
            self.guard.close()  # its ZAP socket is in our context: before the release
            self.guard = None
        self._zmq.release()
