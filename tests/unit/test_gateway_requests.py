"""The gateway's request handling, in process: a fake ROUTER, fake rounds, hostile input.

Every message gets exactly one typed reply, and nothing a client sends ends the gateway.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pytest

from aaflow_stream import untrusted
from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.query import protocol as q
from aaflow_stream.query.admission import REJECTION_REASONS, Rejection, admit
from aaflow_stream.query.gateway import Gateway, RoundFailed
from aaflow_stream.shard.memory import MemoryCounts

from ..support.hostile import deep, hostile_messages

DIM = 8
TIMEOUT_S = 10.0
HIT_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.int64()),
        ("doc_id", pa.string()),
        ("seq", pa.int32()),
        ("score", pa.float32()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("shard", pa.int32()),
    ]
)


class FakeRouter:
    """Hands out queued messages (routing id first) and records what is sent back."""

    def __init__(self) -> None:
        self._incoming: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self.sent: list[list[bytes]] = []
        self._replied = asyncio.Event()
        self._want = 0

    def deliver(self, frames: list[bytes]) -> None:
        self._incoming.put_nowait(frames)

    async def recv_multipart(self) -> list[bytes]:
        return await self._incoming.get()

    async def send_multipart(self, parts: list[bytes]) -> None:
        self.sent.append(parts)
        if len(self.sent) >= self._want:
            self._replied.set()

    async def replies(self, count: int) -> list[q.Reply]:
        """Wait until ``count`` replies were sent in all; all of them, decoded."""
        self._want = count
        if len(self.sent) < count:
            self._replied.clear()
            await asyncio.wait_for(self._replied.wait(), TIMEOUT_S)
        return [q.reply_decoder.decode(parts[-1]) for parts in self.sent]


class Rounds:
    """Fake rounds: empty hits for every query; each can be told to fail."""

    def __init__(self) -> None:
        self.fail_search = False
        self.fail_count = False
        self.searched = 0
        self.remembered = 0

    async def search(
        self,
        matrix: npt.NDArray[np.float32],
        k: int,
        where: q.QueryFilter | None,
        dual: object = None,
    ) -> list[pa.Table]:
        if self.fail_search:
            raise RuntimeError("a rank is gone")
        self.searched += len(matrix)
        return [HIT_SCHEMA.empty_table() for _ in range(len(matrix))]

    async def count(self) -> int:
        if self.fail_count:
            raise RuntimeError("a rank is gone")
        return 42

    async def delete(self, doc_ids: list[str]) -> int:
        return len(doc_ids)

    async def remember(self, entries: pa.Table) -> MemoryCounts:
        self.remembered += entries.num_rows
        return MemoryCounts(added=entries.num_rows)

    async def forget(self, sessions: list[str]) -> int:
        return len(sessions)

    async def census(self) -> npt.NDArray[np.int64]:
        if self.fail_count:
            raise RuntimeError("a rank is gone")
        return np.array([[42, 1], [0, 2]], dtype=np.int64)


class BrokenEmbedder:
    dim = DIM

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise ValueError("the embedder broke")


def _gateway(router: FakeRouter, rounds: Rounds, embedder: object = None) -> Gateway:
    return Gateway(
        router,
        embedder=embedder or HashEmbedder(DIM),  # type: ignore[arg-type]
        max_batch=16,
        max_wait_s=0.0,
        run_round=rounds.search,
        shards=4,
        vectors=rounds.count,
        delete=rounds.delete,
        memory=rounds,
    )


def _serving(
    body: Callable[[FakeRouter, Gateway, Rounds], Awaitable[None]],
    *,
    embedder: object = None,
    rounds: Rounds | None = None,
) -> Gateway:
    """Run ``body`` while the gateway serves; fail if the gateway ended on its own."""
    rounds = rounds or Rounds()

    async def main() -> Gateway:
        router = FakeRouter()
        gateway = _gateway(router, rounds, embedder)
        serving = asyncio.create_task(gateway.serve())
        try:
            await asyncio.wait_for(body(router, gateway, rounds), TIMEOUT_S)
            assert not serving.done(), f"the gateway ended: {serving.exception()!r}"
        finally:
            serving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await serving
        return gateway

    return asyncio.run(main())


def _valid_requests() -> list[bytes]:
    return [
        q.encode(q.QueryRequest(id=1, text="the shards and the credit", k=3)),
        q.encode(q.QueryRequest(id=2, vector=[0.5] * DIM, k=2)),
        q.encode(
            q.QueryRequest(
                id=3,
                text="x",
                filter=q.QueryFilter(sources=["a"], ts_from_ms=0, ts_to_ms=9),
            )
        ),
        q.encode(q.StatsRequest(id=4)),
        q.encode(q.DeleteRequest(id=5, doc_ids=["a", "b"])),
        q.encode(q.QueryRequest(id=6, text="y", mode="both", session="s")),
        q.encode(
            q.RememberRequest(
                id=7,
                session="s",
                entries=[q.MemoryEntry(text="a fact"), q.MemoryEntry(text="v", vector=[0.5] * DIM)],
            )
        ),
        q.encode(q.ForgetRequest(id=8, sessions=["s", "t"])),
        q.encode(q.AnswerRequest(id=9, questions=["why", "how"], session="s", mode="both")),
    ]


def test_a_seeded_fuzz_of_thousands_of_hostile_messages_gets_one_typed_reply_each() -> None:
    rng = random.Random(15)
    messages = list(hostile_messages(seed=15, count=6000, valid=_valid_requests()))
    frames = []
    for i, message in enumerate(messages):
        extra = [rng.randbytes(8) for _ in range(2)] if i % 10 == 9 else []
        frames.append([f"client-{i % 7}".encode(), message, *extra])

    async def body(router: FakeRouter, gateway: Gateway, rounds: Rounds) -> None:
        for message in frames:
            router.deliver(message)
        replies = await router.replies(len(frames))
        assert len(replies) == len(frames)
        codes = {r.code for r in replies if isinstance(r, q.ErrorReply)}
        assert codes <= {"bad_request"}, codes  # never "internal": nothing unforeseen
        rejected = gateway.stats.rejected
        assert sum(rejected.values()) == sum(isinstance(r, q.ErrorReply) for r in replies)
        assert rejected["multipart"] == len(frames) // 10
        assert rejected["invalid_utf8"] > 0 and rejected["too_deep"] > 0
        queries = sum(isinstance(r, q.QueryReply) for r in replies)
        assert queries <= rounds.searched + gateway.cache.stats.hits  # each searched or cached
        assert queries + _others(replies) + sum(rejected.values()) == len(frames)

    _serving(body)


def _others(replies: list[q.Reply]) -> int:
    kinds = q.StatsReply | q.DeleteReply | q.RememberReply | q.ForgetReply | q.AnswerReply
    return sum(isinstance(r, kinds) for r in replies)


@pytest.mark.parametrize(
    ("body", "reason", "request_id"),
    [
        # These two killed the gateway: its peek at the id raised UnicodeDecodeError and
        # RecursionError, which nothing caught.
        (b"\xa1\xff", "invalid", None),
        (deep(5000), "invalid", None),
        (b"\x82\xa2id" + deep(5000) + b"\xa4kind\xa5query", "too_deep", None),
        (b"\x83\xa4kind\xa5query\xa2id\x01\xa4text\xa2\xff\xfe", "invalid_utf8", 1),
        (b"\x83\xa4kind\xa5query\xa2id\x02\xa1x" + deep(5000, 0x81), "invalid", None),
        (b"", "undecodable", None),
        (b"\xc1", "undecodable", None),
        (b"\x93\x01\x02\x03", "invalid", None),
        (b"x" * (q.MAX_REQUEST_BYTES + 1), "too_large", None),
    ],
)
def test_a_message_that_broke_the_decoder_gets_a_bad_request_with_its_reason(
    body: bytes, reason: str, request_id: int | None
) -> None:
    rejection = admit([body], DIM)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.code) == (reason, "bad_request")
    assert rejection.request_id == request_id

    async def serve(router: FakeRouter, gateway: Gateway, rounds: Rounds) -> None:
        router.deliver([b"client", body])
        (reply,) = await router.replies(1)
        assert isinstance(reply, q.ErrorReply) and reply.code == "bad_request"
        assert gateway.stats.rejected[rejection.reason] == 1

    _serving(serve)


def _query(**fields: object) -> bytes:
    return msgspec.msgpack.encode({"kind": "query", "id": 9, "text": "x", **fields})


@pytest.mark.parametrize(
    ("body", "reason", "message"),
    [
        (_query(filter={"ts_from_ms": 2**64 - 1}), "invalid", "$.filter.ts_from_ms"),
        (_query(filter={"ts_to_ms": 2**63}), "invalid", "$.filter.ts_to_ms"),
        (_query(filter={"sources": []}), "invalid", "$.filter.sources"),
        (_query(filter={"sources": ["s"] * 1025}), "invalid", "$.filter.sources"),
        (_query(filter={"sources": ["s" * 4097]}), "invalid", "$.filter.sources[0]"),
        (_query(filter={"ts_from_ms": 10, "ts_to_ms": 9}), "bad_filter", "is after"),
        (_query(k=2**64 - 1), "bad_query", "k must be"),
        (_query(k=0), "bad_query", "k must be"),
        (_query(text=None, vector=[float("nan")] * DIM), "bad_query", "non-finite"),
        (_query(text=None, vector=[1.0] * (DIM + 1)), "bad_query", "dimension"),
        (_query(text="   "), "bad_query", "empty"),
    ],
)
def test_a_query_out_of_bounds_gets_a_bad_request_that_says_why(
    body: bytes, reason: str, message: str
) -> None:
    rejection = admit([body], DIM)
    assert isinstance(rejection, Rejection)
    assert (rejection.reason, rejection.request_id) == (reason, 9)
    assert message in rejection.message


def test_filters_at_the_edges_of_their_ranges_are_accepted() -> None:
    sources = ["s" * q.MAX_SOURCE_CHARS] + ["t"] * (q.MAX_FILTER_SOURCES - 1)
    where = {"ts_from_ms": -(2**63), "ts_to_ms": 2**63 - 1, "sources": sources}
    assert isinstance(admit([_query(filter=where)], DIM), q.QueryRequest)
    assert isinstance(admit([_query(filter={"ts_from_ms": 5, "ts_to_ms": 5})], DIM), q.QueryRequest)


@pytest.mark.parametrize(
    ("doc_ids", "ok"),
    [
        (["a"], True),
        (["é" * 512], True),  # 1024 bytes
        (["é" * 513], False),  # 1026 bytes
        (["x" * 1025], False),
        ([""], False),
        ([], False),
        (["a"] * (q.MAX_DELETE_IDS + 1), False),
    ],
)
def test_a_delete_takes_1_to_100000_doc_ids_of_1_to_1024_bytes(
    doc_ids: list[str], ok: bool
) -> None:
    admitted = admit([q.encode(q.DeleteRequest(id=3, doc_ids=doc_ids))], DIM)
    if ok:
        assert isinstance(admitted, q.DeleteRequest)
    else:
        assert isinstance(admitted, Rejection) and admitted.reason == "bad_delete"
        assert "non-empty doc ids" in admitted.message


def test_several_frames_or_an_oversized_frame_get_a_bad_request_each() -> None:
    async def body(router: FakeRouter, gateway: Gateway, rounds: Rounds) -> None:
        router.deliver([b"c", b"\x80", b"more"])
        router.deliver([b"c", _query(text="y" * (q.MAX_REQUEST_BYTES + 10))])
        router.deliver([b"c"])  # no request frame at all
        replies = await router.replies(3)
        assert all(isinstance(r, q.ErrorReply) and r.code == "bad_request" for r in replies)
        assert gateway.stats.rejected["multipart"] == 2
        assert gateway.stats.rejected["too_large"] == 1

    _serving(body)


def test_an_unforeseen_failure_is_answered_as_internal_and_the_gateway_goes_on() -> None:
    async def body(router: FakeRouter, gateway: Gateway, rounds: Rounds) -> None:
        router.deliver([b"c", q.encode(q.QueryRequest(id=7, text="hello"))])
        router.deliver([b"c", q.encode(q.QueryRequest(id=8, vector=[0.1] * DIM))])
        replies = await router.replies(2)
        assert {(r.id, r.code) for r in replies if isinstance(r, q.ErrorReply)} == {
            (7, "internal"),
            (8, "internal"),
        }
        assert "the embedder broke" in replies[0].message  # type: ignore[union-attr]
        router.deliver([b"c", q.encode(q.StatsRequest(id=9))])
        (*_, stats) = await router.replies(3)
        assert isinstance(stats, q.StatsReply) and stats.vectors == 42
        assert gateway.stats.rejected["internal"] == 2
        assert stats.rejected == {"internal": 2}

    _serving(body, embedder=BrokenEmbedder())


@pytest.mark.parametrize("which", ["search", "count"])
def test_a_failed_round_answers_its_request_then_ends_the_gateway(which: str) -> None:
    rounds = Rounds()
    rounds.fail_search = which == "search"
    rounds.fail_count = which == "count"

    async def main() -> list[q.Reply]:
        router = FakeRouter()
        gateway = _gateway(router, rounds)
        request = q.QueryRequest(id=5, text="x") if which == "search" else q.StatsRequest(id=5)
        router.deliver([b"c", q.encode(request)])
        with pytest.raises(ExceptionGroup) as caught:
            await asyncio.wait_for(gateway.serve(), TIMEOUT_S)
        assert caught.group_contains(RoundFailed)
        return await router.replies(1)

    (reply,) = asyncio.run(main())
    assert isinstance(reply, q.ErrorReply) and (reply.id, reply.code) == (5, "internal")


def test_every_rejection_reason_is_counted_from_zero() -> None:
    router = FakeRouter()
    gateway = _gateway(router, Rounds())
    assert gateway.stats.rejected == dict.fromkeys(REJECTION_REASONS, 0)
    assert set(untrusted.REASONS) <= set(REJECTION_REASONS)


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (q.RememberRequest(id=1, session="s", entries=[]), "1 to 4096 entries"),
        (q.RememberRequest(id=1, session="", entries=[q.MemoryEntry(text="x")]), "session"),
        (q.RememberRequest(id=1, session="s", entries=[q.MemoryEntry(text="  ")]), "blank"),
        (
            q.RememberRequest(id=1, session="s", entries=[q.MemoryEntry(text="x", weight=-1)]),
            "weight",
        ),
        (
            q.RememberRequest(
                id=1, session="s", entries=[q.MemoryEntry(text="x", vector=[0.1] * (DIM + 1))]
            ),
            "dimension",
        ),
        (q.ForgetRequest(id=1, sessions=[]), "1 to 1000 sessions"),
        (q.QueryRequest(id=1, text="x", mode="memory", session="s" * 300), "session"),
        (
            q.QueryRequest(
                id=1, text="x", mode="both", weights=q.MemoryWeights(recency=float("inf"))
            ),
            "non-finite",
        ),
    ],
)
def test_memory_requests_out_of_bounds_are_refused_with_the_reason(
    request_: q.Request, words: str
) -> None:
    refused = admit([q.encode(request_)], DIM)
    assert isinstance(refused, Rejection) and refused.reason == "bad_memory", refused
    assert words in refused.message


def test_a_gateway_without_memory_refuses_memory_requests_as_unsupported() -> None:
    async def main() -> list[q.Reply]:
        router, rounds = FakeRouter(), Rounds()
        gateway = Gateway(
            router,
            embedder=HashEmbedder(DIM),  # type: ignore[arg-type]
            max_batch=4,
            max_wait_s=0.0,
            run_round=rounds.search,
            shards=1,
            vectors=rounds.count,
        )
        await gateway.handle([b"c", q.encode(q.ForgetRequest(id=1, sessions=["s"]))])
        await gateway.handle([b"c", q.encode(q.QueryRequest(id=2, text="x", mode="memory"))])
        return await router.replies(2)

    replies = asyncio.run(main())
    assert [(r.id, r.code) for r in replies if isinstance(r, q.ErrorReply)] == [
        (1, "unavailable"),
        (2, "unavailable"),
    ]
