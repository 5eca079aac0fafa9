"""The query gateway on shard rank 0: clients' requests in, micro-batched, one round per batch.

Requests arrive on a ROUTER. Valid queries are gathered until ``max_batch`` are waiting or the
oldest has waited ``max_wait_s``, embedded together with the topology's embedder, and answered
by one collective round over every shard (``round.search_round``).

Every message gets exactly one reply, whatever it holds. What ``admission.admit`` refuses
(undecodable, several frames, too large, out of bounds) gets ``ErrorReply(bad_request)`` at
once; the others are not disturbed. No exception that input can cause escapes a handler: one
the gateway did not foresee becomes ``ErrorReply(internal)``, logged, and the gateway goes on.
Rejections are counted by reason (``GatewayStats.rejected``).

Memory (when the shard job gives it, ``memory``): a ``remember`` is embedded here and sent
as one exchange to the entries' owning ranks; ``forget`` is one round; a query in mode
``memory`` or ``both`` runs one dual-path round (``shard.scoring``) with each query's
session, the request's weights (or the topology's) and the gateway's clock.

The semantic cache (``query.cache``) answers a query near a cached one of the same key with
no round: on arrival, before any batch, when the query is a vector or a text the cache was
found by before (``lookup_text``: no embedding); else once its batch is embedded (one pass
over the cached entries per key for the batch). Deletes, new and updated documents
(``documents_changed``: the shard operator calls it for every tombstone its rank applies,
and the transform sends one per document to every shard) and memory changes invalidate
it. ``answer`` requests (``query.answering``) run as tasks of their own, at most
``answer.max_concurrent`` at once (eight times as many may wait), so a slow generator never
holds up the queries behind it.

Only a failed round ends the gateway (``RoundFailed``): its queries get ``internal`` first,
then the error propagates, because the shard ranks can no longer be trusted to be in step.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa

from .. import untrusted
from ..embedders.base import TextEmbedder
from ..errors import GenerationFailed, RoundFailed
from ..shard.memory import MemoryCounts
from ..spec import AnswerSpec, CacheSpec, MemorySpec
from . import generate
from .admission import REJECTION_REASONS, Rejection, RejectReason, admit
from .answering import AnswerPath
from .cache import SemanticCache
from .hits import hits_of, layout_of
from .memory_rows import memory_table
from .protocol import (
    MAX_PENDING_QUERIES,
    AnswerRequest,
    DeleteReply,
    DeleteRequest,
    ForgetReply,
    ForgetRequest,
    Hit,
    MemoryWeights,
    Mode,
    QueryFilter,
    QueryReply,
    QueryRequest,
    RememberReply,
    RememberRequest,
    StatsReply,
    Timings,
    encode,
)
from .rounds import HybridRounds, MemoryRounds, Retriever, RunRound

log = logging.getLogger(__name__)

T = TypeVar("T")
# Queued queries beyond this are refused as "unavailable" instead of piling up.
MAX_PENDING = MAX_PENDING_QUERIES
LATENCY_WINDOW = 10_000
# Answers beyond ``answer.max_concurrent`` wait for a slot, up to this many per slot; more are
# refused as busy (a bound, not a queue that grows with the load).
ANSWERS_WAITING_PER_SLOT = 8


class RequestSocket(Protocol):
    """What the gateway needs of its ROUTER (``LoopSocket``; a fake in unit tests)."""

    async def recv_multipart(self) -> list[bytes]: ...

    async def send_multipart(self, parts: list[bytes]) -> None: ...


@dataclass
class _Pending:
    client: bytes
    request: QueryRequest
    arrived: float
    # An answer's question (``search_questions``): embedded already, its round's table goes to
    # ``result`` instead of a reply, and the answer path does its own caching.
    vector: npt.NDArray[np.float32] | None = None
    result: asyncio.Future[pa.Table] | None = None
    looked_up: bool = False  # the cache missed it on arrival (a vector query)


def _no_rejections() -> dict[RejectReason, int]:
    return dict.fromkeys(REJECTION_REASONS, 0)


@dataclass
class GatewayStats:
    queries: int = 0
    rounds: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    # Requests answered with an error, by reason (query.admission.REJECTION_REASONS).
    rejected: dict[RejectReason, int] = field(default_factory=_no_rejections)
    memory_exchanges: int = 0
    memory: MemoryCounts = field(default_factory=MemoryCounts)
    answers: int = 0

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
        sock: RequestSocket,
        *,
        embedder: TextEmbedder,
        max_batch: int,
        max_wait_s: float,
        run_round: RunRound,
        shards: int,
        vectors: Callable[[], Awaitable[int]],
        delete: Callable[[list[str]], Awaitable[int]] | None = None,
        memory: MemoryRounds | None = None,
        memory_spec: MemorySpec | None = None,
        answer_spec: AnswerSpec | None = None,
        cache_spec: CacheSpec | None = None,
        hybrid: HybridRounds | None = None,
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
        self._memory = memory
        self._memory_spec = memory_spec or MemorySpec()
        self._answer_spec = answer_spec or AnswerSpec()
        self.cache = SemanticCache(cache_spec or CacheSpec())
        self._retriever = Retriever(
            run_round, hybrid, self._memory_spec, self._count_round, memory=memory is not None
        )
        self._answers = AnswerPath(
            embedder=embedder,
            search=self.search_questions,
            memory=memory,
            spec=self._answer_spec,
            cache=self.cache,
            generator=generate.build(self._answer_spec.generator),
            on_memory_change=self._memory_changed,
        )
        self._answering: set[asyncio.Task[None]] = set()
        self._answer_slots = asyncio.Semaphore(self._answer_spec.max_concurrent)
        self._pending: list[_Pending] = []
        self._arrived = asyncio.Event()
        self.stats = GatewayStats()

    async def serve(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            tg.create_task(self._receive())
            tg.create_task(self._answer())

    def _count_round(self) -> None:
        self.stats.rounds += 1

    def documents_changed(self) -> None:
        """Documents were added, updated or deleted: cached results that read knowledge go."""
        self.cache.invalidate_knowledge()

    def _memory_changed(self, session: str | None, counts: MemoryCounts) -> None:
        self.stats.memory_exchanges += 1
        self.stats.memory.add(counts)
        self.cache.invalidate_session(session)

    async def _reply(self, client: bytes, reply: msgspec.Struct) -> None:
        await self._sock.send_multipart([client, encode(reply)])

    async def _reject(self, client: bytes, rejection: Rejection) -> None:
        self.stats.rejected[rejection.reason] += 1
        log.debug("request refused (%s): %s", rejection.reason, rejection.message)
        await self._reply(client, rejection.reply())

    async def _receive(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            await self.handle(frames)

    async def handle(self, frames: list[bytes]) -> None:
        """One message from the ROUTER (routing id, then the request's frames): it gets one
        reply (a query's comes once its round is done). Raises only ``RoundFailed``."""
        if not frames:
            return
        client = frames[0]
        try:
            admitted = admit(frames[1:], self._dim)
            if isinstance(admitted, Rejection):
                await self._reject(client, admitted)
            elif isinstance(admitted, QueryRequest):
                await self._enqueue(client, admitted)
            elif isinstance(admitted, DeleteRequest):
                await self._handle_delete(client, admitted)
            elif isinstance(admitted, RememberRequest | ForgetRequest):
                await self._handle_memory(client, admitted)
            elif isinstance(admitted, AnswerRequest):
                await self._start_answer(client, admitted)
            else:
                await self._reply(client, await self._stats(client, admitted.id))
        except RoundFailed:
            raise
        except Exception as exc:  # input must never end the gateway: a bug, answered
            log.exception("the gateway failed on a request")
            request_id = untrusted.peek_id(frames[-1])
            await self._reject(client, _internal(request_id, exc))

    async def _enqueue(self, client: bytes, request: QueryRequest) -> None:
        if not self._retriever.serves(request.mode):
            await self._reject(client, _unsupported(request.id, request.mode))
            return
        arrived = time.perf_counter()
        looked_up = False
        if self.cache.enabled:
            key = _cache_key(request)
            if request.text is not None:
                hits = self.cache.lookup_text(key, request.text)
            else:
                assert request.vector is not None
                hits = self.cache.lookup(key, np.asarray(request.vector, dtype=np.float32))
                looked_up = True
            if hits is not None:
                await self._reply_cached(client, request.id, hits, arrived, 0.0)
                return
        if len(self._pending) >= MAX_PENDING:
            busy = Rejection(request.id, "busy", "too many queries waiting", "unavailable")
            await self._reject(client, busy)
            return
        self._pending.append(_Pending(client, request, arrived, looked_up=looked_up))
        self._arrived.set()

    async def _reply_cached(
        self, client: bytes, request_id: int, hits: list[Hit], arrived: float, embed_ms: float
    ) -> None:
        total_ms = (time.perf_counter() - arrived) * 1e3
        timings = Timings(
            embed_ms=embed_ms, retrieve_ms=0.0, total_ms=total_ms, batch=0, cached=True
        )
        await self._reply(client, QueryReply(id=request_id, hits=hits, timings=timings))
        self.stats.record(total_ms)

    async def _round(self, client: bytes, request_id: int, call: Awaitable[T]) -> T:
        """A count or delete round for one request: a failure answers it, then ends us."""
        try:
            return await call
        except Exception as exc:
            await self._reject(client, _internal(request_id, exc, "the round failed"))
            raise RoundFailed(f"a round over the shards failed: {exc!r}") from exc

    async def _handle_delete(self, client: bytes, request: DeleteRequest) -> None:
        if self._delete is None:
            refused = Rejection(
                request.id, "unsupported", "this gateway takes no deletes", "unavailable"
            )
            await self._reject(client, refused)
            return
        ids = list(dict.fromkeys(request.doc_ids))
        self.cache.invalidate_knowledge()  # and results of rounds begun before are not kept
        removed = await self._round(client, request.id, self._delete(ids))
        await self._reply(client, DeleteReply(id=request.id, removed=removed))

    async def _handle_memory(self, client: bytes, request: RememberRequest | ForgetRequest) -> None:
        if self._memory is None:
            await self._reject(client, _no_memory(request.id))
            return
        if isinstance(request, ForgetRequest):
            sessions = list(dict.fromkeys(request.sessions))
            for session in sessions:
                self.cache.invalidate_session(session)
            removed = await self._round(client, request.id, self._memory.forget(sessions))
            await self._reply(client, ForgetReply(id=request.id, removed=removed))
            return
        try:
            entries = memory_table(request.session, request.entries, self._embedder)
        except Exception as exc:  # no round started: answer it and go on
            log.exception("embedding %d memory entries failed", len(request.entries))
            await self._reject(client, _internal(request.id, exc, "embedding failed"))
            return
        counts = await self._round(client, request.id, self._memory.remember(entries))
        self._memory_changed(request.session, counts)
        reply = RememberReply(
            id=request.id,
            added=counts.added,
            merged=counts.merged,
            evicted=counts.evicted,
            memory_ids=entries.column("memory_id").to_pylist(),
        )
        await self._reply(client, reply)

    async def _stats(self, client: bytes, request_id: int) -> StatsReply:
        s = self.stats
        memory_entries: list[int] = []
        if self._memory is not None:
            census = await self._round(client, request_id, self._memory.census())
            vectors, memory_entries = int(census[:, 0].sum()), census[:, 1].tolist()
        else:
            vectors = await self._round(client, request_id, self._vectors())
        return StatsReply(
            id=request_id,
            shards=self._shards,
            vectors=vectors,
            queries=s.queries,
            rounds=s.rounds,
            p50_ms=s.percentile(50),
            p99_ms=s.percentile(99),
            rejected={reason: n for reason, n in s.rejected.items() if n},
            memory_entries=memory_entries,
            memory_exchanges=s.memory_exchanges,
            memory_compactions=s.memory.merged,
            memory_evictions=s.memory.evicted,
            cache_hits=self.cache.stats.hits,
            cache_misses=self.cache.stats.misses,
            cache_entries=len(self.cache),
            answers=s.answers,
        )

    async def _start_answer(self, client: bytes, request: AnswerRequest) -> None:
        if not self._retriever.serves(request.mode):
            await self._reject(client, _unsupported(request.id, request.mode))
            return
        held = (1 + ANSWERS_WAITING_PER_SLOT) * self._answer_spec.max_concurrent
        if len(self._answering) >= held:  # running and waiting
            busy = Rejection(request.id, "busy", "too many answers waiting", "unavailable")
            await self._reject(client, busy)
            return
        task = self._tasks.create_task(self._run_answer(client, request))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _run_answer(self, client: bytes, request: AnswerRequest) -> None:
        """One answer request to its reply; only a failed round escapes (and ends us)."""
        try:
            async with self._answer_slots:  # at most answer.max_concurrent run at once
                reply = await self._answers.answer(request)
        except GenerationFailed as exc:
            failed = Rejection(request.id, "generation", str(exc), "unavailable")
            await self._reject(client, failed)
            return
        except RoundFailed as exc:
            await self._reject(client, _internal(request.id, exc, "the round failed"))
            raise
        except Exception as exc:  # input must never end the gateway: a bug, answered
            log.exception("answer %d failed", request.id)
            await self._reject(client, _internal(request.id, exc))
            return
        self.stats.answers += 1
        await self._reply(client, reply)

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
            # One round per distinct filter, mode and weights: every rank applies them to a
            # whole round (sessions may differ query by query).
            groups: dict[tuple[bytes, str, bytes], list[_Pending]] = {}
            for p in batch:
                r = p.request
                groups.setdefault((encode(r.filter), r.mode, encode(r.weights)), []).append(p)
            for group in groups.values():
                await self._answer_group(group)

    async def _answer_group(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            matrix = self._embed(batch)
        except Exception as exc:  # no round started: answer these and go on
            log.exception("embedding %d queries failed", len(batch))
            for p in batch:
                await self._reject(p.client, _internal(p.request.id, exc, "embedding failed"))
            return
        embedded = time.perf_counter()
        keys = [_cache_key(p.request) for p in batch]
        cached = self._lookup(batch, keys, matrix)
        misses = []
        for i, p in enumerate(batch):
            hits = cached[i]
            if hits is None:
                misses.append(i)
                continue
            embed_ms = (embedded - started) * 1e3
            await self._reply_cached(p.client, p.request.id, hits, p.arrived, embed_ms)
        if not misses:
            return
        if len(misses) < len(batch):
            batch, keys = [batch[i] for i in misses], [keys[i] for i in misses]
            matrix = matrix[misses]
        began = self.cache.begin()
        k = max(p.request.k for p in batch)
        first = batch[0].request
        texts = [p.request.text for p in batch]
        sessions = [p.request.session for p in batch]
        layout = layout_of(first.mode)
        try:
            tables = await self._retriever.retrieve(
                matrix, texts, k, first.filter, first.mode, sessions, first.weights
            )
        except Exception as exc:  # a failed round answers its queries, then ends the actor
            for p in batch:
                if p.result is not None:
                    p.result.set_exception(RoundFailed(f"the search round failed: {exc!r}"))
                    continue
                await self._reject(p.client, _internal(p.request.id, exc, "search failed"))
            raise RoundFailed(f"a search round failed: {exc!r}") from exc
        done = time.perf_counter()
        for j, (p, table) in enumerate(zip(batch, tables, strict=True)):
            if p.result is not None:
                if not p.result.done():  # its answer may have been cancelled
                    p.result.set_result(table)
                continue
            timings = Timings(
                embed_ms=(embedded - started) * 1e3,
                retrieve_ms=(done - embedded) * 1e3,
                total_ms=(done - p.arrived) * 1e3,
                batch=len(batch),
            )
            try:
                top = table.slice(0, p.request.k)
                hits = hits_of(top, layout)
            except Exception as exc:
                log.exception("the hits of query %d could not be built", p.request.id)
                await self._reject(p.client, _internal(p.request.id, exc))
                continue
            await self._reply(p.client, QueryReply(id=p.request.id, hits=hits, timings=timings))
            self.stats.record(timings.total_ms)
            session = (p.request.session or "") if layout == "dual" else None
            knowledge = p.request.mode != "memory"
            self.cache.store(
                keys[j],
                matrix[j],
                hits,
                knowledge=knowledge,
                session=session,
                began=began,
                text=p.request.text,
            )

    def _lookup(
        self, batch: list[_Pending], keys: list[tuple[object, ...]], matrix: npt.NDArray[np.float32]
    ) -> list[list[Hit] | None]:
        """The cached hits of each query of the batch (None: to search), looked up per key in
        one pass. Not those of answers (their path caches answers) nor those the cache missed
        on arrival."""
        found: list[list[Hit] | None] = [None] * len(batch)
        if not self.cache.enabled:
            return found
        by_key: dict[tuple[object, ...], list[int]] = {}
        for i, p in enumerate(batch):
            if p.result is None and not p.looked_up:
                by_key.setdefault(keys[i], []).append(i)
        for key, rows in by_key.items():
            texts = [batch[i].request.text for i in rows]
            for i, hits in zip(rows, self.cache.lookup_many(key, matrix[rows], texts), strict=True):
                found[i] = hits
        return found

    async def search_questions(
        self,
        matrix: npt.NDArray[np.float32],
        texts: Sequence[str | None],
        k: int,
        where: QueryFilter | None,
        mode: Mode,
        sessions: Sequence[str | None],
        weights: MemoryWeights | None,
    ) -> list[pa.Table]:
        """An answer's questions, already embedded, through the same micro-batches as the
        queries: concurrent answers (and queries) share rounds instead of taking one each."""
        loop = asyncio.get_running_loop()
        now = time.perf_counter()
        futures: list[asyncio.Future[pa.Table]] = []
        for vector, text, session in zip(matrix, texts, sessions, strict=True):
            request = QueryRequest(
                id=0, text=text, k=k, mode=mode, session=session, filter=where, weights=weights
            )
            future: asyncio.Future[pa.Table] = loop.create_future()
            self._pending.append(_Pending(b"", request, now, vector, future))
            futures.append(future)
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    def _embed(self, batch: list[_Pending]) -> npt.NDArray[np.float32]:
        matrix = np.empty((len(batch), self._dim), dtype=np.float32)
        for i, p in enumerate(batch):
            if p.vector is not None:
                matrix[i] = p.vector
        texts = [
            (i, p.request.text)
            for i, p in enumerate(batch)
            if p.request.text is not None and p.vector is None
        ]
        if texts:
            matrix[[i for i, _ in texts]] = self._embedder.embed([t for _, t in texts])
        for i, p in enumerate(batch):
            if p.request.vector is not None:
                matrix[i] = p.request.vector
        return matrix


def _cache_key(request: QueryRequest) -> tuple[object, ...]:
    """What a cached result depends on besides the query's vector."""
    session = request.session if request.mode != "knowledge" else None
    return (
        "query",
        request.mode,
        encode(request.filter),
        request.k,
        session,
        encode(request.weights),
    )


def _no_memory(request_id: int) -> Rejection:
    return Rejection(request_id, "unsupported", "this gateway serves no memory", "unavailable")


def _unsupported(request_id: int, mode: str) -> Rejection:
    why = "keeps no keyword index (shards.keywords)" if mode == "hybrid" else "serves no memory"
    return Rejection(request_id, "unsupported", f"mode {mode}: this topology {why}", "unavailable")


def _internal(request_id: int | None, exc: BaseException, what: str = "") -> Rejection:
    detail = f"{type(exc).__name__}: {exc}"
    message = f"{what}: {detail}" if what else f"the gateway failed on this request ({detail})"
    return Rejection(request_id, "internal", message, "internal")
