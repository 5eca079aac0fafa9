"""Query clients for a running topology's gateway: ``Client`` (blocking), ``AsyncClient``.

Both also ingest (``ingest(docs)``) through the topology's ingest endpoint (``ingest_endpoint``):
the call returns once every accepted document is durable on the shards, with the rejected ones
by doc_id. Documents are split into requests of at most ``INGEST_BATCH_DOCS`` documents (and
about ``INGEST_BATCH_BYTES``), a few in flight at once; an ``unavailable`` answer is retried
with backoff until the timeout. A document that cannot be sent (a lone surrogate, a value
msgpack cannot hold, larger than a request may be: ``max_request_bytes``) is rejected here,
like the endpoint rejects one, and the others go on.

Only the wire protocol and sockets live here, never the runtime: any program on the host can
use them. Errors (all from ``errors.py``, re-exported here):

- ``GatewayUnavailable``: nothing answered within the timeout (the gateway or the ingest
  endpoint is down or not started), or the asyncio client's reply reader failed;
- ``RequestError``, with ``code``: the engine answered with an error, or with bytes that do
  not decode (``internal``). ``QueryError`` for the gateway (``InvalidRequest``, also a
  ``ValueError``: the client refused to send a request whose values cannot be encoded, such
  as query text with a lone surrogate); ``IngestFailed`` for the ingest endpoint;
- ``LinkClosed``: the ``AsyncClient`` was closed while the call waited.

Both clients share one sans-IO core (no sockets): ``encode_request``, ``read_reply`` (a reply
frame → the request id it names and the reply or the ``QueryError`` it means), ``Exchange``
(which waiting request a reply answers) and ``_IngestRound`` (an ingest call's bookkeeping).
So the same bytes give the same result, or the same exception, whichever client reads them.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Final

import msgspec
import zmq
import zmq.asyncio

from . import untrusted
from .channels import sockets
from .channels.curve import ClientKeys
from .errors import (
    AaflowError,
    GatewayUnavailable,
    IngestFailed,
    InvalidRequest,
    LinkClosed,
    MalformedMessage,
    QueryError,
    RequestError,
)
from .ingest import protocol as ingest_protocol
from .ingest.protocol import Document, IngestError, IngestResult, Rejected
from .query.protocol import (
    AnswerReply,
    AnswerRequest,
    DeleteReply,
    DeleteRequest,
    ErrorReply,
    ForgetReply,
    ForgetRequest,
    Hit,
    MemoryEntry,
    MemoryKind,
    MemoryWeights,
    Mode,
    QueryFilter,
    QueryReply,
    QueryRequest,
    RememberReply,
    RememberRequest,
    Reply,
    StatsReply,
    StatsRequest,
    encode,
    reply_decoder,
)
from .spec import IngestSpec

__all__ = [
    "AsyncClient",
    "Client",
    "Exchange",
    "GatewayUnavailable",
    "IngestFailed",
    "InvalidRequest",
    "LinkClosed",
    "MemoryEntry",
    "MemoryWeights",
    "QueryError",
    "RequestError",
    "encode_request",
    "read_reply",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 10.0
INGEST_TIMEOUT_S = 60.0
INGEST_BATCH_DOCS = 256
INGEST_BATCH_BYTES = 4 * 2**20
INGEST_IN_FLIGHT = 4
# The endpoint's limit (``ingest.max_request_mb``); a larger request it would not take.
DEFAULT_MAX_REQUEST_BYTES: Final = int(IngestSpec().max_request_mb * 2**20)
_REQUEST_OVERHEAD: Final = 64  # an IngestRequest's own bytes around its documents
_RETRY_FIRST_S, _RETRY_MAX_S = 0.05, 1.0
# What encoding a caller's values can raise: a lone surrogate (UnicodeEncodeError, a
# ValueError), an int past 64 bits, an object msgpack has no type for, nesting too deep.
_UNENCODABLE: Final = (ValueError, OverflowError, TypeError, RecursionError)


# The sans-IO core: what both clients send, and what they make of what comes back.


def encode_request(request: Any) -> bytes:
    """A request's bytes; ``InvalidRequest`` (nothing sent) when its values cannot be encoded."""
    try:
        return encode(request)
    except _UNENCODABLE as exc:
        raise InvalidRequest(f"cannot encode the {type(request).__name__}: {exc}") from exc


_encode = encode_request


def read_reply(raw: bytes) -> tuple[int | None, Reply | QueryError]:
    """One reply frame from the gateway: the request id it names (None when it names none),
    and the reply, or the ``QueryError`` it means (an ``ErrorReply``; bytes that do not decode
    are ``internal``). Never raises: the caller decides whose error it is."""
    try:
        reply = untrusted.decode(reply_decoder, raw, what="reply")
    except MalformedMessage as exc:
        error = QueryError("internal", str(exc))
        error.__cause__ = exc
        return untrusted.peek_id(raw), error
    if isinstance(reply, ErrorReply):
        return reply.id, QueryError(reply.code, reply.message)
    return reply.id, reply


def settle(outcome: Reply | QueryError) -> Reply:
    """The reply, or its error raised."""
    if isinstance(outcome, QueryError):
        raise outcome
    return outcome


class Exchange:
    """The requests of one client that await a reply, and which of them a reply answers.

    A reply goes to the waiting request it names; one that names another request is a late
    answer to a call given up on, and is dropped. One that names no request at all (bytes that
    do not decode and carry no id, an ``ErrorReply`` without one) cannot be told whose it is:
    it fails every waiting request, rather than leave them to time out.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, None] = {}  # ordered: the order of sending

    def sent(self, request_id: int) -> None:
        self._waiting[request_id] = None

    def forget(self, request_id: int) -> None:
        self._waiting.pop(request_id, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def receive(self, raw: bytes) -> list[tuple[int, Reply | QueryError]]:
        """What a reply frame settles: (request id, reply or error) for each request it ends."""
        found, outcome = read_reply(raw)
        if found is not None:
            if found not in self._waiting:
                return []
            del self._waiting[found]
            return [(found, outcome)]
        if isinstance(outcome, QueryError):
            ended = list(self._waiting)
            self._waiting.clear()
            return [(request_id, outcome) for request_id in ended]
        return []


def _request(
    text: str | list[float],
    k: int,
    request_id: int,
    where: QueryFilter | None = None,
    memory: MemoryQuery | None = None,
) -> QueryRequest:
    mode, session, weights = memory or ("knowledge", None, None)
    if isinstance(text, str):
        vector, query_text = None, text
    else:
        vector, query_text = [float(v) for v in text], None
    return QueryRequest(
        id=request_id,
        text=query_text,
        vector=vector,
        k=k,
        filter=where,
        mode=mode,
        session=session,
        weights=weights,
    )


# A query's memory part: (mode, session, weights).
MemoryQuery = tuple[Mode, str | None, MemoryWeights | None]
MemoryInput = str | MemoryEntry | Mapping[str, Any]


def _remember_request(
    request_id: int, session: str | None, entries: Iterable[MemoryInput], kind: MemoryKind
) -> RememberRequest:
    """Entries given as texts (of ``kind``), ``MemoryEntry``s or their fields as mappings."""
    out = []
    for entry in entries:
        if isinstance(entry, str):
            out.append(MemoryEntry(text=entry, kind=kind))
        elif isinstance(entry, MemoryEntry):
            out.append(entry)
        else:
            try:
                out.append(msgspec.convert(dict(entry), MemoryEntry))
            except msgspec.ValidationError as exc:
                raise InvalidRequest(f"not a memory entry: {exc}") from exc
    return RememberRequest(id=request_id, session=session, entries=out)


def _answer_request(
    request_id: int,
    questions: str | list[str],
    session: str | None,
    mode: Mode,
    k: int | None,
    budget: int | None,
    where: QueryFilter | None,
    weights: MemoryWeights | None,
    promote: bool,
) -> AnswerRequest:
    return AnswerRequest(
        id=request_id,
        questions=[questions] if isinstance(questions, str) else list(questions),
        session=session,
        mode=mode,
        k=k,
        budget=budget,
        filter=where,
        weights=weights,
        promote=promote,
    )


def _promoted(hits_or_texts: Iterable[Hit | str], kind: MemoryKind) -> list[MemoryEntry]:
    """What a promotion remembers: each text, or each hit's text with where it came from
    (``chunk:<id>`` of a document, ``memory:<id>``); ephemeral hits are never promoted."""
    out = []
    for item in hits_or_texts:
        if isinstance(item, str):
            out.append(MemoryEntry(text=item, kind=kind, source="promoted"))
        elif not item.ephemeral:
            where = (
                f"chunk:{item.chunk_id}" if item.path == "knowledge" else f"memory:{item.memory_id}"
            )
            out.append(MemoryEntry(text=item.text, kind=kind, source=where))
    if not out:
        raise InvalidRequest("nothing to promote: no texts, or only ephemeral hits")
    return out


IngestDoc = Document | Mapping[str, Any]
_Part = tuple[list[int], list[bytes]]  # the documents' indices in the call, and their bytes


def _shown_id(doc: object) -> str | None:
    """The doc_id of a document the client rejects, printable even when it is not valid
    Unicode (a lone surrogate is shown as ``\\ud800``)."""
    if isinstance(doc, Document):
        found: object = doc.doc_id
    else:
        found = doc.get("doc_id") if isinstance(doc, Mapping) else None
    return found.encode("utf-8", "backslashreplace").decode() if isinstance(found, str) else None


def _encode_document(doc: IngestDoc, max_request_bytes: int) -> bytes | str:
    """The document's bytes, or why it cannot be sent."""
    try:
        raw = ingest_protocol.encode(doc if isinstance(doc, Document) else dict(doc))
    except UnicodeEncodeError as exc:
        return f"not valid Unicode (a lone surrogate at {exc.start}): cannot be sent"
    except _UNENCODABLE as exc:
        return f"cannot be encoded: {exc}"
    if len(raw) + _REQUEST_OVERHEAD > max_request_bytes:
        return f"document of {len(raw)} bytes does not fit a request of {max_request_bytes} bytes"
    return raw


def _ingest_parts(
    docs: Iterable[IngestDoc], max_request_bytes: int
) -> tuple[list[_Part], list[Rejected]]:
    """The requests to send, and the documents rejected before sending."""
    parts: list[_Part] = []
    rejected: list[Rejected] = []
    budget = min(INGEST_BATCH_BYTES, max_request_bytes - _REQUEST_OVERHEAD)
    indices: list[int] = []
    current: list[bytes] = []
    size = 0
    for index, doc in enumerate(docs):
        raw = _encode_document(doc, max_request_bytes)
        if isinstance(raw, str):
            rejected.append(Rejected(index, _shown_id(doc), raw))
            continue
        if current and (len(current) >= INGEST_BATCH_DOCS or size + len(raw) > budget):
            parts.append((indices, current))
            indices, current, size = [], [], 0
        indices.append(index)
        current.append(raw)
        size += len(raw)
    if current:
        parts.append((indices, current))
    return parts, rejected


class _IngestRound:
    """The bookkeeping of one ``ingest`` call: what is unsent, in flight, answered."""

    def __init__(self, docs: Iterable[IngestDoc], ids: Any, max_request_bytes: int) -> None:
        parts, self.rejected = _ingest_parts(docs, max_request_bytes)
        self.unsent = [(next(ids), *part) for part in parts]
        self.unsent.reverse()  # pop() from the end keeps the order
        self.in_flight: dict[int, _Part] = {}
        self.accepted = 0
        self.retry_s = _RETRY_FIRST_S

    def next_to_send(self) -> tuple[int, bytes] | None:
        if not self.unsent or len(self.in_flight) >= INGEST_IN_FLIGHT:
            return None
        request_id, indices, raw = self.unsent.pop()
        self.in_flight[request_id] = (indices, raw)
        return request_id, ingest_protocol.encode_raw_request(request_id, raw)

    @property
    def done(self) -> bool:
        return not self.unsent and not self.in_flight

    def answer(self, reply: ingest_protocol.IngestReply) -> bool:
        """Apply a reply; True when the engine asked to try that request again later."""
        sent = self.in_flight.pop(reply.id, None)
        if sent is None:
            return False  # a late answer to an earlier call
        indices, raw = sent
        if isinstance(reply, IngestError):
            if reply.code == "unavailable":
                self.unsent.append((reply.id, indices, raw))
                return True
            raise IngestFailed(reply.code, reply.message)
        self.retry_s = _RETRY_FIRST_S
        self.accepted += reply.accepted
        for r in reply.rejected:  # the index in the request → the index in the call
            index = indices[r.index] if 0 <= r.index < len(indices) else r.index
            self.rejected.append(Rejected(index, r.doc_id, r.reason))
        return False

    def receive(self, raw: bytes) -> bool:
        """``answer`` for a reply frame; ``IngestFailed`` (internal) when it does not decode."""
        return self.answer(read_ingest_reply(raw))

    def backoff(self) -> float:
        wait, self.retry_s = self.retry_s, min(self.retry_s * 2, _RETRY_MAX_S)
        return wait

    def result(self) -> IngestResult:
        rejected = sorted(self.rejected, key=lambda r: r.index)
        return IngestResult(id=0, accepted=self.accepted, rejected=rejected)


def read_ingest_reply(raw: bytes) -> ingest_protocol.IngestReply:
    """One reply frame from the ingest endpoint; ``IngestFailed`` (internal) when it does not
    decode."""
    try:
        return untrusted.decode(ingest_protocol.reply_decoder, raw, what="ingest reply")
    except MalformedMessage as exc:
        raise IngestFailed("internal", str(exc)) from exc


class Client:
    """Blocking client. One request in flight at a time; use several clients for concurrency.

    ``endpoint``: the query gateway (None: ingest only); ``ingest_endpoint``: the topology's
    ingest endpoint, for ``ingest``; ``max_request_bytes``: its ``ingest.max_request_mb``;
    ``curve``: the keys for endpoints off loopback (``ClientKeys.load``, docs/deployment.md).
    """

    def __init__(
        self,
        endpoint: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ingest_endpoint: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        curve: ClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.ingest_endpoint = ingest_endpoint
        self._timeout_s = timeout_s
        self._max_request_bytes = max_request_bytes
        self._curve = curve
        self._ctx = zmq.Context()
        self._sock = sockets.client_dealer(self._ctx, endpoint, self._curve)
        self._ingest_sock: zmq.Socket[Any] | None = None
        self._ids = itertools.count(1)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, request: Any) -> Reply:
        message = encode_request(request)
        exchange = Exchange()
        exchange.sent(request.id)
        self._sock.send(message)
        deadline = time.monotonic() + self._timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000)):
                # The unanswered request may still arrive later: a fresh socket drops it.
                self._reconnect()
                raise GatewayUnavailable(f"no reply from {self.endpoint} in {self._timeout_s}s")
            for _, outcome in exchange.receive(self._sock.recv()):
                return settle(outcome)

    def _reconnect(self) -> None:
        self._sock.close(linger=0)
        self._sock = sockets.client_dealer(self._ctx, self.endpoint, self._curve)

    def query(
        self,
        text: str | list[float],
        k: int = 10,
        where: QueryFilter | None = None,
        *,
        mode: Mode = "knowledge",
        session: str | None = None,
        weights: MemoryWeights | None = None,
    ) -> list[Hit]:
        """The top-k hits; ``where`` keeps only chunks of some sources or a time range.
        ``mode``: ``knowledge`` (chunks, FAISS scores), ``memory`` (``session``'s memory and
        the shared entries) or ``both``, ranked by the weighted score (``weights`` or the
        topology's ``memory.weights``)."""
        return self.query_reply(text, k, where, mode=mode, session=session, weights=weights).hits

    def query_reply(
        self,
        text: str | list[float],
        k: int = 10,
        where: QueryFilter | None = None,
        *,
        mode: Mode = "knowledge",
        session: str | None = None,
        weights: MemoryWeights | None = None,
    ) -> QueryReply:
        memory = (mode, session, weights)
        reply = self._call(_request(text, k, next(self._ids), where, memory))
        assert isinstance(reply, QueryReply)
        return reply

    def remember(
        self, session: str | None, entries: Iterable[MemoryInput], *, kind: MemoryKind = "summary"
    ) -> RememberReply:
        """Write entries into ``session``'s memory (None: shared by every session); returns
        once they are durable on their owning rank. Texts become entries of ``kind``."""
        reply = self._call(_remember_request(next(self._ids), session, entries, kind))
        assert isinstance(reply, RememberReply)
        return reply

    def promote(
        self, session: str, hits_or_texts: Iterable[Hit | str], *, kind: MemoryKind = "summary"
    ) -> RememberReply:
        """Turn retrieved hits (or produced texts) into ``session``'s memory, in one exchange."""
        return self.remember(session, _promoted(hits_or_texts, kind))

    def answer(
        self,
        questions: str | list[str],
        *,
        session: str | None = None,
        mode: Mode = "knowledge",
        k: int | None = None,
        budget: int | None = None,
        where: QueryFilter | None = None,
        weights: MemoryWeights | None = None,
        promote: bool = True,
    ) -> AnswerReply:
        """Retrieve -> reason -> generate for a question, or several related ones (one round
        for all); with a session, each answer's evidence is then remembered in it. The reply
        holds one ``Answer`` per question (text, citations) and per-step milliseconds."""
        request = _answer_request(
            next(self._ids), questions, session, mode, k, budget, where, weights, promote
        )
        reply = self._call(request)
        assert isinstance(reply, AnswerReply)
        return reply

    def forget(self, sessions: str | list[str]) -> int:
        """Remove every memory entry of these sessions from every rank, durably; how many."""
        names = [sessions] if isinstance(sessions, str) else list(sessions)
        reply = self._call(ForgetRequest(id=next(self._ids), sessions=names))
        assert isinstance(reply, ForgetReply)
        return reply.removed

    def query_many(self, texts: list[str], k: int = 10) -> list[list[Hit]]:
        """Send all, then collect: the gateway answers them in shared collective rounds."""
        ids = [next(self._ids) for _ in texts]
        requests = [encode_request(_request(t, k, i)) for i, t in zip(ids, texts, strict=True)]
        exchange = Exchange()
        for request_id, request in zip(
            ids, requests, strict=True
        ):  # none is sent unless all can be
            exchange.sent(request_id)
            self._sock.send(request)
        replies: dict[int, list[Hit]] = {}
        deadline = time.monotonic() + self._timeout_s
        while exchange.waiting:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(int(left * 1000)):
                self._reconnect()
                raise GatewayUnavailable(f"{exchange.waiting} queries unanswered")
            for request_id, outcome in exchange.receive(self._sock.recv()):
                reply = settle(outcome)
                assert isinstance(reply, QueryReply)
                replies[request_id] = reply.hits
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

    def ingest(
        self, docs: Iterable[IngestDoc], *, timeout_s: float = INGEST_TIMEOUT_S
    ) -> IngestResult:
        """Ingest documents (``Document`` or ``{doc_id, text, source?, ts?}``); returns once
        every accepted one is durable, with the rejected ones (index, doc_id, reason).
        ``GatewayUnavailable`` when the endpoint made no progress for ``timeout_s``."""
        sock = self._ingest_socket()
        work = _IngestRound(docs, self._ids, self._max_request_bytes)
        deadline = time.monotonic() + timeout_s
        while not work.done:
            while (sending := work.next_to_send()) is not None:
                sock.send(sending[1])
            left = deadline - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000)):
                self._ingest_sock = None
                sock.close(linger=0)
                raise GatewayUnavailable(
                    f"no answer from the ingest endpoint {self.ingest_endpoint} in {timeout_s}s"
                )
            if work.receive(sock.recv()):
                time.sleep(work.backoff())
            else:
                deadline = time.monotonic() + timeout_s
        return work.result()

    def _ingest_socket(self) -> zmq.Socket[Any]:
        if self.ingest_endpoint is None:
            raise ValueError("this client has no ingest_endpoint (the topology's ingest.endpoint)")
        if self._ingest_sock is None:
            self._ingest_sock = sockets.client_dealer(self._ctx, self.ingest_endpoint, self._curve)
        return self._ingest_sock

    def close(self) -> None:
        for sock in (self._sock, self._ingest_sock):
            if sock is not None and not sock.closed:
                sock.close(linger=0)
        self._ctx.term()


class AsyncClient:
    """asyncio client; many queries may be in flight at once from one client.

    One reader task, started by the first call and owned by the client, reads every reply and
    settles the waiting call it answers. Should it fail, its error (``GatewayUnavailable``
    from a foreign one) reaches every waiting call; ``aclose`` cancels and awaits it, and the
    calls still waiting then get ``LinkClosed``.
    """

    def __init__(
        self,
        endpoint: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        ingest_endpoint: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        curve: ClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.ingest_endpoint = ingest_endpoint
        self._timeout_s = timeout_s
        self._max_request_bytes = max_request_bytes
        self._curve = curve
        self._ctx = zmq.asyncio.Context()
        self._sock = sockets.client_dealer(self._ctx, endpoint, self._curve)
        self._ids = itertools.count(1)
        self._exchange = Exchange()
        self._waiting: dict[int, asyncio.Future[Reply]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _read(self) -> None:
        """Settle waiting calls from the replies, while any waits; a failure fails them all."""
        try:
            while self._waiting:
                raw = await self._sock.recv()
                for request_id, outcome in self._exchange.receive(raw):
                    future = self._waiting.pop(request_id, None)
                    if future is None or future.done():
                        continue
                    if isinstance(outcome, QueryError):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except Exception as exc:  # the reader's failure is every waiting caller's
            if isinstance(exc, AaflowError):
                error: AaflowError = exc
            else:
                error = GatewayUnavailable(f"reading replies from {self.endpoint} failed: {exc!r}")
                error.__cause__ = exc
            if not self._waiting:
                log.warning("the reply reader failed with no call waiting: %s", error)
            self._fail_waiting(error)

    def _fail_waiting(self, error: AaflowError) -> None:
        waiting, self._waiting = self._waiting, {}
        for request_id, future in waiting.items():
            self._exchange.forget(request_id)
            if not future.done():
                future.set_exception(error)

    async def _call(self, request: Any) -> Reply:
        if self._closed:
            raise LinkClosed("this client is closed")
        message = encode_request(request)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = future
        self._exchange.sent(request.id)
        try:
            await self._sock.send(message)
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="aaflow-client-reader")
            return await asyncio.wait_for(future, self._timeout_s)
        except TimeoutError as exc:
            raise GatewayUnavailable(
                f"no reply from {self.endpoint} in {self._timeout_s}s"
            ) from exc
        finally:
            self._waiting.pop(request.id, None)
            self._exchange.forget(request.id)

    async def query(
        self,
        text: str | list[float],
        k: int = 10,
        where: QueryFilter | None = None,
        *,
        mode: Mode = "knowledge",
        session: str | None = None,
        weights: MemoryWeights | None = None,
    ) -> list[Hit]:
        """See ``Client.query``."""
        memory = (mode, session, weights)
        reply = await self._call(_request(text, k, next(self._ids), where, memory))
        assert isinstance(reply, QueryReply)
        return reply.hits

    async def remember(
        self, session: str | None, entries: Iterable[MemoryInput], *, kind: MemoryKind = "summary"
    ) -> RememberReply:
        """See ``Client.remember``."""
        reply = await self._call(_remember_request(next(self._ids), session, entries, kind))
        assert isinstance(reply, RememberReply)
        return reply

    async def promote(
        self, session: str, hits_or_texts: Iterable[Hit | str], *, kind: MemoryKind = "summary"
    ) -> RememberReply:
        """See ``Client.promote``."""
        return await self.remember(session, _promoted(hits_or_texts, kind))

    async def answer(
        self,
        questions: str | list[str],
        *,
        session: str | None = None,
        mode: Mode = "knowledge",
        k: int | None = None,
        budget: int | None = None,
        where: QueryFilter | None = None,
        weights: MemoryWeights | None = None,
        promote: bool = True,
    ) -> AnswerReply:
        """See ``Client.answer``."""
        request = _answer_request(
            next(self._ids), questions, session, mode, k, budget, where, weights, promote
        )
        reply = await self._call(request)
        assert isinstance(reply, AnswerReply)
        return reply

    async def forget(self, sessions: str | list[str]) -> int:
        """See ``Client.forget``."""
        names = [sessions] if isinstance(sessions, str) else list(sessions)
        reply = await self._call(ForgetRequest(id=next(self._ids), sessions=names))
        assert isinstance(reply, ForgetReply)
        return reply.removed

    async def query_many(self, texts: list[str], k: int = 10) -> list[list[Hit]]:
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

    async def ingest(
        self, docs: Iterable[IngestDoc], *, timeout_s: float = INGEST_TIMEOUT_S
    ) -> IngestResult:
        """See ``Client.ingest``. Each call uses a socket of its own, so calls may overlap."""
        if self.ingest_endpoint is None:
            raise ValueError("this client has no ingest_endpoint (the topology's ingest.endpoint)")
        sock = sockets.client_dealer(self._ctx, self.ingest_endpoint, self._curve)
        try:
            work = _IngestRound(docs, self._ids, self._max_request_bytes)
            while not work.done:
                while (sending := work.next_to_send()) is not None:
                    await sock.send(sending[1])
                try:
                    raw = await asyncio.wait_for(sock.recv(), timeout_s)
                except TimeoutError as exc:
                    raise GatewayUnavailable(
                        f"no answer from the ingest endpoint {self.ingest_endpoint} in {timeout_s}s"
                    ) from exc
                if work.receive(raw):
                    await asyncio.sleep(work.backoff())
            return work.result()
        finally:
            sock.close(linger=0)

    async def aclose(self) -> None:
        """Cancel and await the reply reader, fail the calls still waiting, close the socket.
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.wait([reader])  # our own cancellation still propagates
        self._fail_waiting(LinkClosed("the client was closed while the call waited"))
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._ctx.term()
