"""The query gateway on shard rank 0: clients' requests in, micro-batched, one round per batch.

Requests arrive on a ROUTER. Valid queries are gathered until ``max_batch`` are waiting or the
oldest has waited ``max_wait_s``, embedded together with the topology's embedder, and answered
by one collective round over every shard (``round.search_round``). A bad request (undecodable,
unknown fields, k out of range, an empty or gigantic text, a vector of the wrong dimension)
gets a typed error reply at once; the others are not disturbed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from ..channels.loopsocket import LoopSocket
from ..embedders.base import TextEmbedder
from .protocol import (
    MAX_DELETE_IDS,
    MAX_K,
    MAX_REQUEST_BYTES,
    MAX_TEXT_CHARS,
    DeleteReply,
    DeleteRequest,
    ErrorCode,
    ErrorReply,
    Hit,
    QueryFilter,
    QueryReply,
    QueryRequest,
    StatsReply,
    StatsRequest,
    Timings,
    encode,
    request_decoder,
)

log = logging.getLogger(__name__)

RunRound = Callable[[npt.NDArray[np.float32], int, QueryFilter | None], Awaitable[list[pa.Table]]]
# Queued queries beyond this are refused as "unavailable" instead of piling up.
MAX_PENDING = 4096
LATENCY_WINDOW = 10_000


class BadRequest(Exception):
    pass


@dataclass
class _Pending:
    client: bytes
    request: QueryRequest
    arrived: float


@dataclass
class GatewayStats:
    queries: int = 0
    rounds: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def record(self, ms: float) -> None:
        self.queries += 1
        self.latencies_ms.append(ms)
        if len(self.latencies_ms) > LATENCY_WINDOW:
            del self.latencies_ms[: LATENCY_WINDOW // 2]

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latencies_ms, p)) if self.latencies_ms else 0.0


class Gateway:
    def __init__(
        self,
        sock: LoopSocket,
        *,
        embedder: TextEmbedder,
        max_batch: int,
        max_wait_s: float,
        run_round: RunRound,
        shards: int,
        vectors: Callable[[], Awaitable[int]],
        delete: Callable[[list[str]], Awaitable[int]] | None = None,
    ) -> None:
        self._sock = sock
        # The topology's embedder, built by the same factory as the embed stage's.
        self._embedder = embedder
        self._dim = embedder.dim
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._run_round = run_round
        self._shards = shards
        self._vectors = vectors
        self._delete = delete
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()
        self.stats = GatewayStats()

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive())
            tg.create_task(self._answer())

    async def _reply(self, client: bytes, reply: msgspec.Struct) -> None:
        await self._sock.send_multipart([client, encode(reply)])

    async def _error(
        self, client: bytes, request_id: int | None, code: ErrorCode, message: str
    ) -> None:
        await self._reply(client, ErrorReply(id=request_id, code=code, message=message))

    async def _receive(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            client, body = frames[0], frames[-1]
            if len(frames) != 2 or len(body) > MAX_REQUEST_BYTES:
                await self._error(
                    client,
                    None,
                    "bad_request",
                    f"expected one request frame of at most {MAX_REQUEST_BYTES} "
                    f"bytes, got {len(frames) - 1} frame(s)",
                )
                continue
            try:
                request = request_decoder.decode(body)
            except msgspec.DecodeError as exc:
                await self._error(client, _peek_id(body), "bad_request", str(exc))
                continue
            if isinstance(request, DeleteRequest):
                await self._handle_delete(client, request)
                continue
            if isinstance(request, StatsRequest):
                await self._reply(client, await self._stats(request.id))
                continue
            try:
                self._validate(request)
            except BadRequest as exc:
                await self._error(client, request.id, "bad_request", str(exc))
                continue
            if len(self._pending) >= MAX_PENDING:
                await self._error(client, request.id, "unavailable", "too many queries waiting")
                continue
            self._pending.append(_Pending(client, request, time.perf_counter()))
            self._arrived.set()

    async def _handle_delete(self, client: bytes, request: DeleteRequest) -> None:
        ids = request.doc_ids
        if not ids or len(ids) > MAX_DELETE_IDS or not all(ids):
            await self._error(
                client,
                request.id,
                "bad_request",
                f"give between 1 and {MAX_DELETE_IDS} non-empty doc ids, got {len(ids)}",
            )
            return
        if self._delete is None:
            await self._error(client, request.id, "unavailable", "this gateway takes no deletes")
            return
        removed = await self._delete(list(dict.fromkeys(ids)))
        await self._reply(client, DeleteReply(id=request.id, removed=removed))

    def _validate(self, request: QueryRequest) -> None:
        if not 1 <= request.k <= MAX_K:
            raise BadRequest(f"k must be between 1 and {MAX_K}, got {request.k}")
        if (request.text is None) == (request.vector is None):
            raise BadRequest("give exactly one of text or vector")
        if request.text is not None:
            if not request.text.strip():
                raise BadRequest("the query text is empty")
            if len(request.text) > MAX_TEXT_CHARS:
                raise BadRequest(
                    f"the query text has {len(request.text)} characters, more than {MAX_TEXT_CHARS}"
                )
        if request.vector is not None:
            if len(request.vector) != self._dim:
                raise BadRequest(
                    f"the vector has dimension {len(request.vector)}, "
                    f"the shards hold dimension {self._dim}"
                )
            if not all(math.isfinite(v) for v in request.vector):
                raise BadRequest("the vector has non-finite values")

    async def _stats(self, request_id: int) -> StatsReply:
        s = self.stats
        return StatsReply(
            id=request_id,
            shards=self._shards,
            vectors=await self._vectors(),
            queries=s.queries,
            rounds=s.rounds,
            p50_ms=s.percentile(50),
            p99_ms=s.percentile(99),
        )

    async def _next_batch(self) -> list[_Pending]:
        while not self._pending:
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._pending[0].arrived + self._max_wait_s
        while len(self._pending) < self._max_batch:
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        batch, self._pending = (self._pending[: self._max_batch], self._pending[self._max_batch :])
        return batch

    async def _answer(self) -> None:
        while True:
            batch = await self._next_batch()
            # One round per distinct filter: every rank applies one filter to a whole round.
            groups: dict[bytes, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(encode(p.request.filter), []).append(p)
            for group in groups.values():
                await self._answer_group(group)

    async def _answer_group(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        matrix = self._embed(batch)
        embedded = time.perf_counter()
        k = max(p.request.k for p in batch)
        try:
            tables = await self._run_round(matrix, k, batch[0].request.filter)
        except Exception as exc:  # a failed round answers its queries, then ends the actor
            for p in batch:
                await self._error(p.client, p.request.id, "internal", f"search failed: {exc}")
            raise
        done = time.perf_counter()
        self.stats.rounds += 1
        for p, table in zip(batch, tables, strict=True):
            timings = Timings(
                embed_ms=(embedded - started) * 1e3,
                retrieve_ms=(done - embedded) * 1e3,
                total_ms=(done - p.arrived) * 1e3,
                batch=len(batch),
            )
            hits = _hits(table.slice(0, p.request.k))
            await self._reply(p.client, QueryReply(id=p.request.id, hits=hits, timings=timings))
            self.stats.record(timings.total_ms)

    def _embed(self, batch: list[_Pending]) -> npt.NDArray[np.float32]:
        matrix = np.empty((len(batch), self._dim), dtype=np.float32)
        texts = [(i, p.request.text) for i, p in enumerate(batch) if p.request.text is not None]
        if texts:
            matrix[[i for i, _ in texts]] = self._embedder.embed([t for _, t in texts])
        for i, p in enumerate(batch):
            if p.request.vector is not None:
                matrix[i] = p.request.vector
        return matrix


def _hits(table: pa.Table) -> list[Hit]:
    columns = {
        name: table.column(name).to_pylist()
        for name in ("chunk_id", "doc_id", "seq", "score", "text", "source", "shard")
    }
    return [Hit(*row) for row in zip(*columns.values(), strict=True)]


def _peek_id(body: bytes) -> int | None:
    """The request id of an otherwise invalid request, so the client can match the error."""
    try:
        value = msgspec.msgpack.decode(body)
    except msgspec.DecodeError:
        return None
    request_id = value.get("id") if isinstance(value, dict) else None
    return request_id if isinstance(request_id, int) else None
