"""``answer``: retrieve -> reason -> generate for a batch of related questions, then promote.

One request carries 1 to ``MAX_QUESTIONS`` questions (the non-cached complex query of the
AAFLOW paper: a question and its sub-questions). They are embedded in one call, looked up in
the semantic cache, and the ones it does not answer join the gateway's micro-batches
(``Gateway.search_questions``): one round for all of them, shared with the queries and other
answers waiting at the same time, not one round each. Each
question's hits become its bounded context (``query.reason``), the generator answers from it
(in a worker thread: a model endpoint may block), and with a session each new answer's
evidence is remembered (kind ``intermediate``) in one memory exchange.

Caching: an answer is cached under (mode, filter, k, budget, session, weights) unless its
request promotes into the session's memory: promotion changes that memory, which is what the
answer read, so a cached copy would be stale at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from typing import Final

import numpy as np

from ..embedders.base import TextEmbedder
from ..errors import RoundFailed
from ..shard.memory import MemoryCounts
from ..spec import AnswerSpec
from .cache import SemanticCache
from .generate import Generator
from .hits import hits_of, layout_of
from .memory_rows import memory_table
from .protocol import (
    Answer,
    AnswerReply,
    AnswerRequest,
    AnswerTimings,
    Citation,
    MemoryEntry,
    encode,
)
from .reason import Context, assemble
from .rounds import MemoryRounds, Search

PROMOTED_KIND: Final = "intermediate"


class AnswerPath:
    def __init__(
        self,
        *,
        embedder: TextEmbedder,
        search: Search,
        memory: MemoryRounds | None,
        spec: AnswerSpec,
        cache: SemanticCache,
        generator: Generator,
        on_memory_change: Callable[[str | None, MemoryCounts], None],
    ) -> None:
        self._embedder = embedder
        self._search = search
        self._memory = memory
        self._spec = spec
        self._cache = cache
        self._generator = generator
        self._on_memory_change = on_memory_change

    def _key(self, request: AnswerRequest, k: int, budget: int) -> Hashable:
        filters, weights = encode(request.filter), encode(request.weights)
        return ("answer", request.mode, filters, k, budget, request.session, weights)

    async def answer(self, request: AnswerRequest) -> AnswerReply:
        """Raises ``GenerationFailed`` when the generator fails, ``RoundFailed``-worthy
        exceptions from the round as they come (the gateway decides)."""
        t0 = time.perf_counter()
        k = request.k or self._spec.k
        budget = request.budget or self._spec.budget_chars
        questions = request.questions
        vectors = self._embedder.embed(list(questions))
        t_embed = time.perf_counter()
        promote = bool(request.promote and request.session and self._memory is not None)
        key = self._key(request, k, budget)
        answers: list[Answer | None] = [
            None if promote else self._cache.lookup(key, v) for v in vectors
        ]
        misses = [i for i, a in enumerate(answers) if a is None]
        t_cache = time.perf_counter()
        began = self._cache.begin()
        contexts: dict[int, Context] = {}
        t_retrieve = t_reason = t_cache
        if misses:
            matrix = np.ascontiguousarray(vectors[misses], dtype=np.float32)
            texts = [questions[i] for i in misses]
            sessions = [request.session] * len(misses)
            try:
                tables = await self._search(
                    matrix, texts, k, request.filter, request.mode, sessions, request.weights
                )
            except Exception as exc:
                raise RoundFailed(f"an answer's search round failed: {exc!r}") from exc
            t_retrieve = time.perf_counter()
            layout = layout_of(request.mode)
            for i, table in zip(misses, tables, strict=True):
                hits = hits_of(table.slice(0, k), layout)
                contexts[i] = assemble(hits, budget, self._spec.dedup)
            t_reason = time.perf_counter()
        generated = {
            i: await asyncio.to_thread(self._generator.generate, questions[i], contexts[i])
            for i in misses
        }
        t_generate = time.perf_counter()
        for i in misses:
            context, made = contexts[i], generated[i]
            answer = Answer(questions[i], made.text, made.citations, context.chars)
            answers[i] = answer
            if not promote:
                session = (request.session or "") if request.mode in ("memory", "both") else None
                knowledge = request.mode != "memory"
                self._cache.store(
                    key, vectors[i], answer, knowledge=knowledge, session=session, began=began
                )
        if promote and misses:
            await self._promote(request, [contexts[i] for i in misses])
        t_memory = time.perf_counter()
        timings = AnswerTimings(
            embed_ms=(t_embed - t0) * 1e3,
            cache_ms=(t_cache - t_embed) * 1e3,
            retrieve_ms=(t_retrieve - t_cache) * 1e3 if misses else 0.0,
            reason_ms=(t_reason - t_retrieve) * 1e3 if misses else 0.0,
            generate_ms=(t_generate - t_reason) * 1e3,
            memory_ms=(t_memory - t_generate) * 1e3,
            total_ms=(t_memory - t0) * 1e3,
        )
        final = [
            a if i in contexts else _as_cached(a) for i, a in enumerate(answers) if a is not None
        ]
        return AnswerReply(id=request.id, answers=final, timings=timings)

    async def _promote(self, request: AnswerRequest, contexts: list[Context]) -> None:
        """Each new answer's evidence into the session's memory, in one exchange."""
        assert self._memory is not None
        entries = [
            MemoryEntry(text=piece.text, kind=PROMOTED_KIND, source=_source(piece.citation))
            for context in contexts
            for piece in context.pieces
            if piece.citation.path == "knowledge"  # memory is in memory already
        ]
        if not entries:
            return
        rows = memory_table(request.session, entries, self._embedder)
        try:
            counts = await self._memory.remember(rows)
        except Exception as exc:
            raise RoundFailed(f"an answer's promotion round failed: {exc!r}") from exc
        self._on_memory_change(request.session, counts)


def _source(citation: Citation) -> str:
    return f"chunk:{citation.chunk_id}"


def _as_cached(answer: Answer) -> Answer:
    return Answer(answer.question, answer.text, answer.citations, answer.context_chars, True)
