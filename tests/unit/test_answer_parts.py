"""The answer path's pure parts: reason (context assembly), the semantic cache, generators."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.errors import GenerationFailed
from aaflow_stream.query.answering import AnswerPath
from aaflow_stream.query.cache import SemanticCache
from aaflow_stream.query.generate import ExtractiveGenerator, OpenAIChatGenerator
from aaflow_stream.query.protocol import AnswerReply, AnswerRequest, Hit
from aaflow_stream.query.reason import assemble
from aaflow_stream.spec import AnswerSpec, CacheSpec, OpenAIChatSpec


def hit(chunk: int, score: float, text: str, path: str = "knowledge") -> Hit:
    memory = path == "memory"
    return Hit(
        chunk_id=0 if memory else chunk,
        doc_id="" if memory else f"d{chunk}",
        seq=0,
        score=score,
        text=text,
        source="s",
        shard=chunk % 4,
        path=path,  # type: ignore[arg-type]
        memory_id=chunk if memory else None,
    )


HITS = [
    hit(3, 0.9, "The vault opens at dawn. Guards change at noon."),
    hit(1, 0.9, "Credit flow control bounds every queue in the engine."),
    hit(7, 0.8, "the vault opens at dawn, guards change at noon"),  # a near-duplicate of 3
    hit(5, 0.7, "x" * 500),
    hit(9, 0.6, "Short fact.", path="memory"),
]


def test_reason_orders_dedups_and_packs_deterministically_whatever_the_input_order() -> None:
    context = assemble(HITS, budget_chars=200)
    assert [p.citation.chunk_id for p in context.pieces] == [1, 3, 0]  # 9 is memory: chunk 0
    assert [p.citation.path for p in context.pieces] == ["knowledge", "knowledge", "memory"]
    assert context.dropped_duplicates == 1 and context.dropped_budget == 1  # 7; the 500-char 5
    assert context.chars <= 200
    shuffled = [HITS[i] for i in (4, 2, 0, 3, 1)]
    assert assemble(shuffled, budget_chars=200) == context
    assert context.render().startswith("[1] Credit flow control")


def test_a_first_piece_larger_than_the_budget_is_cut_at_a_word() -> None:
    context = assemble([hit(1, 1.0, "alpha beta gamma delta")], budget_chars=12)
    assert [p.text for p in context.pieces] == ["alpha beta"]


def test_the_extractive_generator_takes_the_best_sentences_in_context_order() -> None:
    context = assemble(HITS, budget_chars=200)
    answer = ExtractiveGenerator(sentences=1).generate("when does the vault open", context)
    assert answer.text == "The vault opens at dawn."
    assert [c.chunk_id for c in answer.citations] == [3]
    again = ExtractiveGenerator(sentences=1).generate("when does the vault open", context)
    assert again == answer


class _Chat(BaseHTTPRequestHandler):
    replies: ClassVar[list[bytes]] = []
    seen: ClassVar[list[dict[str, object]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Chat.seen.append(
            {"path": self.path, "body": json.loads(body), "auth": self.headers.get("Authorization")}
        )
        reply = _Chat.replies.pop(0)
        self.send_response(200 if reply != b"500" else 500)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def chat_server() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_the_openai_adapter_speaks_the_chat_protocol_and_parses_citations(
    chat_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_CHAT_KEY", "sekrit")
    _Chat.seen.clear()
    _Chat.replies[:] = [
        json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": "At dawn [2]."}}]}
        ).encode(),
        b"not json",
        b"500",
    ]
    spec = OpenAIChatSpec(url=chat_server, model="tiny", api_key_env="TEST_CHAT_KEY", timeout_s=5)
    generator = OpenAIChatGenerator(spec)
    context = assemble(HITS, budget_chars=200)
    answer = generator.generate("when does the vault open", context)
    assert answer.text == "At dawn [2]."
    assert [c.chunk_id for c in answer.citations] == [3]  # piece 2 of the context
    request = _Chat.seen[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sekrit"
    body = request["body"]
    assert isinstance(body, dict) and body["model"] == "tiny"
    assert "[2] The vault opens at dawn." in body["messages"][1]["content"]
    with pytest.raises(GenerationFailed, match="no answer"):
        generator.generate("q", context)
    with pytest.raises(GenerationFailed, match="failed"):
        generator.generate("q", context)


def unit(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(16).astype(np.float32)
    return v / np.linalg.norm(v)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_cache_hits_near_queries_of_the_same_key_and_misses_others() -> None:
    cache = SemanticCache(CacheSpec(enabled=True, threshold=0.95))
    v = unit(1)
    assert cache.lookup("k", v) is None
    assert cache.store("k", v, "result", knowledge=True, session=None, began=cache.begin())
    near = v + 0.01 * unit(2)
    assert cache.lookup("k", near) == "result"
    assert cache.lookup("other key", v) is None
    assert cache.lookup("k", unit(3)) is None
    assert (cache.stats.hits, cache.stats.misses) == (1, 3)


def test_the_cache_expires_by_ttl_and_evicts_the_least_recently_used() -> None:
    clock = Clock()
    cache = SemanticCache(CacheSpec(enabled=True, capacity=2, ttl_s=10), clock)
    a, b, c = unit(1), unit(2), unit(3)
    for name, v in (("a", a), ("b", b)):
        cache.store("k", v, name, knowledge=True, session=None, began=cache.begin())
    assert cache.lookup("k", a) == "a"  # a is now the most recent
    cache.store("k", c, "c", knowledge=True, session=None, began=cache.begin())
    assert cache.lookup("k", b) is None and cache.stats.evictions == 1
    clock.now = 11
    assert cache.lookup("k", a) is None and cache.stats.expired == 1


def test_the_cache_drops_what_changed_knowledge_or_memory_touched_and_refuses_late_results() -> (
    None
):
    cache = SemanticCache(CacheSpec(enabled=True))
    v, w, x = unit(1), unit(2), unit(3)
    cache.store("k", v, "knowledge", knowledge=True, session=None, began=cache.begin())
    cache.store("k", w, "memory of s", knowledge=False, session="s", began=cache.begin())
    cache.store("k", x, "both, s", knowledge=True, session="s", began=cache.begin())
    assert cache.invalidate_knowledge() == 2  # any document added, changed or deleted
    assert cache.lookup("k", v) is None and cache.lookup("k", x) is None
    assert cache.lookup("k", w) == "memory of s"
    assert cache.invalidate_session("s") == 1
    assert cache.lookup("k", w) is None
    # A round that began before a change of what it read is not cached.
    began = cache.begin()
    cache.invalidate_knowledge()
    assert not cache.store("k", v, "stale", knowledge=True, session=None, began=began)
    assert cache.store("k", w, "fresh", knowledge=False, session="t", began=began)
    began = cache.begin()
    cache.invalidate_session(None)  # the shared entries: every memory reader
    assert not cache.store("k", w, "stale", knowledge=False, session="t", began=began)
    assert cache.stats.refused == 2


def test_a_text_that_found_an_entry_finds_it_again_without_a_vector_until_it_goes() -> None:
    clock = Clock()
    cache = SemanticCache(CacheSpec(enabled=True, threshold=0.95, ttl_s=10), clock)
    v = unit(1)
    assert cache.lookup_text("k", "stored") is None  # nothing yet, and no verdict counted
    cache.store("k", v, "result", knowledge=True, session=None, began=cache.begin(), text="stored")
    assert cache.lookup_text("k", "stored") == "result"
    assert cache.lookup_text("other key", "stored") is None
    assert cache.lookup_text("k", "near") is None  # unknown text: the vector decides
    assert cache.lookup("k", v + 0.01 * unit(2), "near") == "result"
    assert cache.lookup_text("k", "near") == "result"  # found by that text from now on
    assert (cache.stats.hits, cache.stats.misses) == (3, 0)
    cache.invalidate_knowledge()
    assert cache.lookup_text("k", "stored") is None and cache.lookup_text("k", "near") is None
    cache.store("k", v, "again", knowledge=False, session="s", began=cache.begin(), text="t")
    clock.now = 11
    assert cache.lookup_text("k", "t") is None and cache.stats.expired == 1
    assert len(cache) == 0


def test_a_batch_looked_up_at_once_is_answered_as_one_by_one() -> None:
    entries = [unit(i) for i in range(20)]
    queries = np.stack(
        [entries[3] + 0.01 * unit(50), unit(60), entries[7], entries[3], -entries[4]]
    ).astype(np.float32)

    def filled() -> SemanticCache:
        cache = SemanticCache(CacheSpec(enabled=True, threshold=0.95))
        for i, v in enumerate(entries):
            cache.store("k", v, f"e{i}", knowledge=True, session=None, began=cache.begin())
        return cache

    one_by_one, batched = filled(), filled()
    want = [one_by_one.lookup("k", q) for q in queries]
    assert batched.lookup_many("k", queries) == want == ["e3", None, "e7", "e3", None]
    assert batched.stats == one_by_one.stats
    assert batched.lookup_many("missing", queries) == [None] * len(queries)


def test_a_batch_sees_an_entry_an_earlier_query_of_it_dropped_as_gone() -> None:
    old, new = unit(1), unit(1) + 0.05 * unit(2)

    def filled() -> SemanticCache:
        clock = Clock()
        cache = SemanticCache(CacheSpec(enabled=True, threshold=0.95, ttl_s=10), clock)
        cache.store("k", old, "old", knowledge=True, session=None, began=cache.begin())
        clock.now = 5
        cache.store("k", new, "new", knowledge=True, session=None, began=cache.begin())
        clock.now = 12  # "old" has expired, "new" has not
        return cache

    one_by_one, batched = filled(), filled()
    queries = np.stack([old, old]).astype(np.float32)
    want = [one_by_one.lookup("k", q) for q in queries]
    assert batched.lookup_many("k", queries) == want == [None, "new"]
    assert batched.stats == one_by_one.stats


def test_answers_asking_in_one_turn_share_one_embedding_and_a_repeat_needs_none() -> None:
    embedded: list[int] = []

    class Counting:
        dim = 16

        def embed(self, texts: Sequence[str]) -> np.ndarray:
            embedded.append(len(texts))
            return HashEmbedder(16).embed(texts)

    async def search(matrix: np.ndarray, texts: Sequence[str | None], *_: object) -> list[pa.Table]:
        return [
            pa.table(
                {
                    "chunk_id": pa.array([i], pa.uint64()),
                    "doc_id": [f"d{i}"],
                    "seq": pa.array([0], pa.int32()),
                    "score": pa.array([1.0], pa.float32()),
                    "text": [f"Evidence for {text}."],
                    "source": ["s"],
                    "shard": pa.array([0], pa.int32()),
                }
            )
            for i, text in enumerate(texts)
        ]

    path = AnswerPath(
        embedder=Counting(),
        search=search,
        memory=None,
        spec=AnswerSpec(),
        cache=SemanticCache(CacheSpec(enabled=True)),
        generator=ExtractiveGenerator(),
        on_memory_change=lambda *_: None,
    )

    async def ask() -> list[AnswerReply]:
        requests = [
            AnswerRequest(id=i, questions=[f"alpha {i}", f"beta {i}"], promote=False)
            for i in range(5)
        ]
        return await asyncio.wait_for(asyncio.gather(*(path.answer(r) for r in requests)), 10)

    first = asyncio.run(ask())
    assert embedded == [10]  # one call for the five answers' ten questions
    assert [a.text for a in first[3].answers] == ["Evidence for alpha 3.", "Evidence for beta 3."]
    again = asyncio.run(ask())
    assert embedded == [10]  # every question found by its text
    assert all(a.cached for reply in again for a in reply.answers)


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.99])
def test_the_bounded_lookup_finds_what_comparing_every_entry_finds(threshold: float) -> None:
    """A lookup reads every entry's first dimensions and the rest only where the bound says
    it may reach the threshold: it hits the most similar entry exactly when a full product
    says that one reaches it."""
    rng = np.random.default_rng(4)
    dim = 256  # a head of 32 dimensions, a rest of 224
    entries = rng.standard_normal((600, dim)).astype(np.float32)
    cache = SemanticCache(CacheSpec(enabled=True, capacity=1000, threshold=threshold))
    for i, v in enumerate(entries):
        cache.store("k", v, i, knowledge=True, session=None, began=cache.begin())
    picks = rng.integers(0, len(entries), 300)
    noise = rng.choice([0.0, 0.02, 0.1, 0.5, 2.0], (300, 1))
    queries = (entries[picks] + noise * rng.standard_normal((300, dim))).astype(np.float32)
    units = entries / np.linalg.norm(entries, axis=1, keepdims=True)
    sims = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ units.T
    best, top = sims.argmax(axis=1), sims.max(axis=1)
    decided = np.flatnonzero(np.abs(top - threshold) > 1e-4)  # not decided by rounding
    want = [int(best[q]) if top[q] >= threshold else None for q in decided]
    got = cache.lookup_many("k", queries)
    assert [got[q] for q in decided] == want
    assert 0 < sum(g is not None for g in got) < len(got)
