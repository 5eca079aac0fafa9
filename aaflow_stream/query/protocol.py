"""Client ↔ gateway messages: msgspec Structs, msgpack on a DEALER/ROUTER pair, strictly decoded.

A client sends one request frame; the gateway answers one reply frame carrying the request's
``id``. A request that does not decode gets an ``ErrorReply`` (with ``id`` when it could be
read), never silence: the gateway goes on serving everyone else.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec

MAX_K: Final = 1000
MAX_TEXT_CHARS: Final = 100_000
MAX_REQUEST_BYTES: Final = 4 * 1024 * 1024


class _Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class QueryFilter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Only chunks from these sources and/or with ``ts`` in [ts_from_ms, ts_to_ms]."""

    sources: list[str] | None = None
    ts_from_ms: int | None = None
    ts_to_ms: int | None = None


class QueryRequest(_Msg, tag="query", frozen=True):
    id: int
    text: str | None = None
    vector: list[float] | None = None
    k: int = 10
    mode: Literal["knowledge"] = "knowledge"
    session: str | None = None
    filter: QueryFilter | None = None


class StatsRequest(_Msg, tag="stats", frozen=True):
    id: int


MAX_DELETE_IDS: Final = 100_000


class DeleteRequest(_Msg, tag="delete", frozen=True):
    """Remove every chunk of these documents from every shard; the reply comes once every
    shard has logged (durably) and applied the removal."""

    id: int
    doc_ids: list[str]


Request = QueryRequest | StatsRequest | DeleteRequest


class Hit(msgspec.Struct, frozen=True):
    chunk_id: int
    doc_id: str
    seq: int
    score: float
    text: str
    source: str
    shard: int


class Timings(msgspec.Struct, frozen=True):
    embed_ms: float
    retrieve_ms: float
    total_ms: float
    batch: int  # queries answered by the same collective round


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


class DeleteReply(_Msg, tag="deleted", frozen=True):
    id: int
    removed: int  # chunks removed over every shard


ErrorCode = Literal["bad_request", "unavailable", "internal"]


class ErrorReply(_Msg, tag="error", frozen=True):
    id: int | None
    code: ErrorCode
    message: str


Reply = QueryReply | StatsReply | DeleteReply | ErrorReply

_encoder = msgspec.msgpack.Encoder()
request_decoder: Final = msgspec.msgpack.Decoder(Request)
filter_decoder: Final = msgspec.msgpack.Decoder(QueryFilter | None)
reply_decoder: Final = msgspec.msgpack.Decoder(Reply)


def encode(msg: msgspec.Struct | None) -> bytes:
    return _encoder.encode(msg)
