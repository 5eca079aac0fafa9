"""Client ↔ gateway messages: msgspec Structs, msgpack on a DEALER/ROUTER pair, strictly decoded.

A client sends one request frame; the gateway answers one reply frame carrying the request's
``id``. A request that does not decode gets an ``ErrorReply`` (with ``id`` when it could be
read), never silence: the gateway goes on serving everyone else.

Bounds (checked by the decoder where a type can say them, by ``query.admission`` otherwise;
a request outside them gets ``ErrorReply(code="bad_request")``):

* a request is one frame of at most ``MAX_REQUEST_BYTES``; frames over ``MAX_FRAME_BYTES``
  are refused by ZeroMQ itself (``MAXMSGSIZE``): the connection is dropped unanswered;
* ``k`` in [1, ``MAX_K``]; a text of 1 to ``MAX_TEXT_CHARS`` characters, or a vector of the
  shards' dimension with finite values;
* a filter's ``sources``: 1 to ``MAX_FILTER_SOURCES`` names of at most
  ``MAX_SOURCE_CHARS`` characters each (``None``: every source); its times: milliseconds
  since the epoch within int64 (``MIN_TS_MS``..``MAX_TS_MS``), both ends inclusive, and
  ``ts_from_ms`` not after ``ts_to_ms`` (an inverted range is refused, not an empty answer);
* a delete: 1 to ``MAX_DELETE_IDS`` doc ids of 1 to ``MAX_DOC_ID_BYTES`` bytes (UTF-8);
* memory: a session of 1 to ``MAX_SESSION_CHARS`` characters; a remember of 1 to
  ``MAX_REMEMBER_ENTRIES`` entries, each a text of 1 to ``MAX_TEXT_CHARS`` characters (or a
  vector of the shards' dimension beside it), a finite weight >= 0, a source of at most
  ``MAX_SOURCE_CHARS``; a forget of 1 to ``MAX_FORGET_SESSIONS`` sessions.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

# The filter and the round's bounds belong to the shard, which applies them; they are
# re-exported here under the names a client has always used (``query.protocol.QueryFilter``).
from ..shard.filters import MAX_FILTER_SOURCES as MAX_FILTER_SOURCES
from ..shard.filters import MAX_SOURCE_CHARS as MAX_SOURCE_CHARS
from ..shard.filters import MAX_TS_MS as MAX_TS_MS
from ..shard.filters import MIN_TS_MS as MIN_TS_MS
from ..shard.filters import QueryFilter as QueryFilter
from ..shard.limits import MAX_DELETE_IDS as MAX_DELETE_IDS
from ..shard.limits import MAX_FORGET_SESSIONS as MAX_FORGET_SESSIONS
from ..shard.limits import MAX_K as MAX_K
from ..shard.limits import MAX_REMEMBER_ENTRIES as MAX_REMEMBER_ENTRIES
from ..shard.limits import MAX_ROUND_BYTES, MAX_ROUND_QUERIES
from ..shard.limits import MAX_SESSION_CHARS as MAX_SESSION_CHARS
from ..spec import MemoryWeights as MemoryWeights

MAX_TEXT_CHARS: Final = 100_000
MAX_REQUEST_BYTES: Final = MAX_ROUND_BYTES
# The hard cap per frame, set as the gateway ROUTER's MAXMSGSIZE: requests between
# MAX_REQUEST_BYTES and this get a bad_request reply; larger frames never reach the gateway.
MAX_FRAME_BYTES: Final = MAX_REQUEST_BYTES + 1024 * 1024
MAX_DOC_ID_BYTES: Final = 1024
# Queries waiting for a round at the gateway; so also the most queries one round can carry.
MAX_PENDING_QUERIES: Final = MAX_ROUND_QUERIES
MAX_QUESTIONS: Final = 64  # questions one answer request carries
MAX_BUDGET_CHARS: Final = 1_000_000  # context per question


class _Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


# Where a query looks: the chunks (plain FAISS scores), the session's memory, or both under
# one weighted score (``MemoryWeights``; docs/memory.md); or the chunks by vector and by BM25
# keywords, fused by reciprocal rank (``hybrid``: text queries, shards with keywords).
Mode = Literal["knowledge", "memory", "both", "hybrid"]
MemoryKind = Literal["summary", "intermediate", "state"]


class QueryRequest(_Msg, tag="query", frozen=True):
    id: int
    text: str | None = None
    vector: list[float] | None = None
    k: int = 10
    mode: Mode = "knowledge"
    session: str | None = None  # whose memory a memory or both query sees
    filter: QueryFilter | None = None  # applies to the knowledge path
    weights: MemoryWeights | None = None  # None: the topology's ``memory.weights``


class MemoryEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One thing to remember. ``ephemeral``: kept in memory only (lost on restart), never
    merged with lasting entries, never promoted. ``ts`` (seconds) None: the gateway's now."""

    text: str
    kind: MemoryKind = "summary"
    source: str = "user"
    weight: float = 1.0
    ephemeral: bool = False
    ts: float | None = None
    vector: list[float] | None = None


class RememberRequest(_Msg, tag="remember", frozen=True):
    """Write entries into a session's memory (``session`` None: shared with every session);
    near-duplicates merge, the session's bound holds; the reply comes once they are durable
    on their owning rank. One request is one memory exchange over the shard job."""

    id: int
    session: str | None
    entries: list[MemoryEntry]


class ForgetRequest(_Msg, tag="forget", frozen=True):
    """Remove every memory entry of these sessions from every rank, durably."""

    id: int
    sessions: list[str]


class StatsRequest(_Msg, tag="stats", frozen=True):
    id: int


class DeleteRequest(_Msg, tag="delete", frozen=True):
    """Remove every chunk of these documents from every shard; the reply comes once every
    shard has logged (durably) and applied the removal."""

    id: int
    doc_ids: list[str]  # bounds: query.admission


class AnswerRequest(_Msg, tag="answer", frozen=True):
    """Retrieve -> reason -> generate for one or more related questions (one round for all
    that the cache does not answer), then, with a session, promote each answer's context
    into its memory. ``k``, ``budget`` (characters of context per question) None: the
    topology's ``answer`` section."""

    id: int
    questions: list[str]
    session: str | None = None
    mode: Mode = "knowledge"
    k: int | None = None
    budget: int | None = None
    filter: QueryFilter | None = None
    weights: MemoryWeights | None = None
    promote: bool = True


Request = (
    QueryRequest | StatsRequest | DeleteRequest | RememberRequest | ForgetRequest | AnswerRequest
)


class Hit(msgspec.Struct, frozen=True):
    chunk_id: int  # 0 for a memory entry
    doc_id: str  # "" for a memory entry
    seq: int
    score: float
    text: str
    source: str
    shard: int
    # A dual-path query's hits (mode memory or both) also say where they come from and how
    # their score was made: score = weights.sim * sim + kind_score + recency_score.
    path: Literal["knowledge", "memory"] = "knowledge"
    memory_id: int | None = None
    kind: str | None = None
    session: str | None = None
    ephemeral: bool = False
    sim: float | None = None
    kind_score: float | None = None
    recency_score: float | None = None
    # A hybrid query's hits: score is the fused one; the parts it was fused from.
    bm25: float | None = None
    vector_rank: int | None = None  # 1-based rank in the global vector list; None: not in it
    keyword_rank: int | None = None


class Timings(msgspec.Struct, frozen=True):
    embed_ms: float
    retrieve_ms: float
    total_ms: float
    batch: int  # queries answered by the same collective round (0: from the cache)
    cached: bool = False  # answered by the semantic cache, no round


class Citation(msgspec.Struct, frozen=True):
    """Where a piece of an answer's evidence comes from."""

    path: str  # knowledge | memory
    chunk_id: int  # 0 for memory
    doc_id: str  # "" for memory
    source: str
    memory_id: int | None = None
    score: float = 0.0


class Answer(msgspec.Struct, frozen=True):
    question: str
    text: str
    citations: list[Citation]
    context_chars: int  # of the evidence the generator read
    cached: bool = False


class AnswerTimings(msgspec.Struct, frozen=True):
    """Per step, for the whole request (every question): embed the questions, look them up in
    the cache, retrieve (one round for the misses), reason, generate, promote into memory."""

    embed_ms: float
    cache_ms: float
    retrieve_ms: float
    reason_ms: float
    generate_ms: float
    memory_ms: float
    total_ms: float


class AnswerReply(_Msg, tag="answered", frozen=True):
    id: int
    answers: list[Answer]
    timings: AnswerTimings


class QueryReply(_Msg, tag="hits", frozen=True):
    id: int
    hits: list[Hit]
    timings: Timings


class StatsReply(_Msg, tag="stats_reply", frozen=True):
    id: int
    shards: int
    vectors: int
    queries: int
    rounds: int
    p50_ms: float
    p99_ms: float
    # Requests answered with an error since start, by reason (query.admission).
    rejected: dict[str, int] = {}
    memory_entries: list[int] = []  # per rank
    memory_exchanges: int = 0
    memory_compactions: int = 0  # entries merged into a near-duplicate since start
    memory_evictions: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_entries: int = 0
    answers: int = 0


class DeleteReply(_Msg, tag="deleted", frozen=True):
    id: int
    removed: int  # chunks removed over every shard


class RememberReply(_Msg, tag="remembered", frozen=True):
    id: int
    added: int
    merged: int  # entries folded into a near-duplicate already held
    evicted: int  # entries the session's bound removed
    # The id each entry was sent under, in order; one merged into a near-duplicate lives on
    # as that entry (its id is not this one).
    memory_ids: list[int]


class ForgetReply(_Msg, tag="forgotten", frozen=True):
    id: int
    removed: int


ErrorCode = Literal["bad_request", "unavailable", "internal"]


class ErrorReply(_Msg, tag="error", frozen=True):
    id: int | None
    code: ErrorCode
    message: str


Reply = (
    QueryReply | StatsReply | DeleteReply | RememberReply | ForgetReply | AnswerReply | ErrorReply
)

_encoder = msgspec.msgpack.Encoder()
request_decoder: Final = msgspec.msgpack.Decoder(Request)
reply_decoder: Final = msgspec.msgpack.Decoder(Reply)


def encode(msg: msgspec.Struct | None) -> bytes:
    return _encoder.encode(msg)
