"""``answer``: retrieve -> reason -> generate for a batch of related questions, then promote.

One request carries 1 to ``MAX_QUESTIONS`` questions (the non-cached complex query of the
AAFLOW paper: a question and its sub-questions). Those the semantic cache knows by their text
are answered without embedding; the others are embedded and looked up in the cache together
with those of every answer that asks in the same turn of the gateway's loop (``_Embedding``:
one embedder call and one cache pass per key for all of them, where ~64 answers start at once
when a round's replies go out), and the ones the cache does not answer join the gateway's
micro-batches
(``Gateway.search_questions``): one round for all of them, shared with the queries and other
answers waiting at the same time, not one round each. Each question's hits become its
bounded context (``query.reason``), the generator answers from it (in a worker thread if it
blocks, as a model endpoint does), and with a session each new answer's evidence is
remembered (kind ``intermediate``) in one memory exchange.

Caching: an answer is cached under (mode, filter, k, budget, session, weights) unless its
request promotes into the session's memory: promotion changes that memory, which is what the
answer read, so a cached copy would be stale at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

from ..embedders.base import TextEmbedder
from ..errors import RoundFailed
from ..shard.memory import MemoryCounts
from ..spec import AnswerSpec
from .cache import SemanticCache
from .generate import Generated, Generator
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
Vectors = npt.NDArray[np.float32]


@dataclass
class _Asked:
    questions: list[str]
    key: Hashable | None  # look them up in the cache under it (None: do not)
    done: asyncio.Future[tuple[Vectors, list[Answer | None]]]


class _Embedding:
    """Embeds the questions of every answer that asks in the same turn of the event loop in
    one embedder call and looks them up in one cache pass per key: an answer awaits its part.
    A failure fails every answer of the call (as a query batch's does)."""

    def __init__(self, embedder: TextEmbedder, cache: SemanticCache) -> None:
        self._embedder = embedder
        self._cache = cache
        self._asked: list[_Asked] = []

    async def embed(
        self, questions: list[str], key: Hashable | None
    ) -> tuple[Vectors, list[Answer | None]]:
        """The vectors of ``questions`` and, with ``key``, their cached answers (None: not
        cached)."""
        loop = asyncio.get_running_loop()
        asked = _Asked(questions, key, loop.create_future())
        self._asked.append(asked)
        if len(self._asked) == 1:
            loop.call_soon(self._flush)  # after the answers already running in this turn
        return await asked.done

    def _flush(self) -> None:
        asked, self._asked = self._asked, []
        try:
            results = self._embed_all(asked)
        except Exception as exc:  # a callback's exception would reach no answer: each gets it
            for a in asked:
                if not a.done.done():
                    a.done.set_exception(exc)
            return
        for a, result in zip(asked, results, strict=True):
            if not a.done.done():  # its answer may have been cancelled
                a.done.set_result(result)

    def _embed_all(self, asked: list[_Asked]) -> list[tuple[Vectors, list[Answer | None]]]:
        vectors = self._embedder.embed([q for a in asked for q in a.questions])
        bounds = np.cumsum([0, *(len(a.questions) for a in asked)]).tolist()
        found: list[list[Answer | None]] = [[None] * len(a.questions) for a in asked]
        by_key: dict[Hashable, list[int]] = {}
        for i, a in enumerate(asked):
            if a.key is not None:
                by_key.setdefault(a.key, []).append(i)
        for key, members in by_key.items():
            rows = np.concatenate([np.arange(bounds[i], bounds[i + 1]) for i in members])
            texts = [q for i in members for q in asked[i].questions]
            hits = iter(self._cache.lookup_many(key, vectors[rows], texts))
            for i in members:
                found[i] = [next(hits) for _ in asked[i].questions]
        return [(vectors[bounds[i] : bounds[i + 1]], found[i]) for i in range(len(asked))]


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
        self._embedding = _Embedding(embedder, cache)
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
        promote = bool(request.promote and request.session and self._memory is not None)
        key = self._key(request, k, budget)
        answers: list[Answer | None] = [
            None if promote else self._cache.lookup_text(key, q) for q in questions
        ]
        t_cache = time.perf_counter()
        unknown = [i for i, a in enumerate(answers) if a is None]
        vectors = None
        if unknown:  # embedded and looked up with the other answers asking now
            texts = [questions[i] for i in unknown]
            vectors, cached = await self._embedding.embed(texts, None if promote else key)
            for i, found in zip(unknown, cached, strict=True):
                answers[i] = found
        t_embed = time.perf_counter()
        vector_of = dict(zip(unknown, range(len(unknown)), strict=True))  # question -> row
        misses = [i for i, a in enumerate(answers) if a is None]
        began = self._cache.begin()
        contexts: dict[int, Context] = {}
        t_retrieve = t_reason = t_embed
        if misses:
            assert vectors is not None
            rows = [vector_of[i] for i in misses]
            matrix = np.ascontiguousarray(vectors[rows], dtype=np.float32)
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
        if misses and self._generator.blocks:
            generated = await asyncio.to_thread(self._generate, misses, contexts, questions)
        else:
            generated = self._generate(misses, contexts, questions)
        t_generate = time.perf_counter()
        for i in misses:
            context, made = contexts[i], generated[i]
            answer = Answer(questions[i], made.text, made.citations, context.chars)
            answers[i] = answer
            if not promote:
                assert vectors is not None
                session = (request.session or "") if request.mode in ("memory", "both") else None
                knowledge = request.mode != "memory"
                self._cache.store(
                    key,
                    vectors[vector_of[i]],
                    answer,
                    knowledge=knowledge,
                    session=session,
                    began=began,
                    text=questions[i],
                )
        if promote and misses:
            await self._promote(request, [contexts[i] for i in misses])
        t_memory = time.perf_counter()
        timings = AnswerTimings(
            embed_ms=(t_embed - t_cache) * 1e3,  # with the vector lookups: one pass
            cache_ms=(t_cache - t0) * 1e3,  # by text
            retrieve_ms=(t_retrieve - t_embed) * 1e3 if misses else 0.0,
            reason_ms=(t_reason - t_retrieve) * 1e3 if misses else 0.0,
            generate_ms=(t_generate - t_reason) * 1e3,
            memory_ms=(t_memory - t_generate) * 1e3,
            total_ms=(t_memory - t0) * 1e3,
        )
        final = [
            a if i in contexts else _as_cached(a) for i, a in enumerate(answers) if a is not None
        ]
        return AnswerReply(id=request.id, answers=final, timings=timings)

    def _generate(
        self, misses: list[int], contexts: dict[int, Context], questions: Sequence[str]
    ) -> dict[int, Generated]:
        """Every new answer (in one trip to a worker thread, not one per question, when the
        generator blocks)."""
        return {i: self._generator.generate(questions[i], contexts[i]) for i in misses}

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
