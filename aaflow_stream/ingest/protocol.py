"""The ingest endpoint's messages: msgspec Structs, msgpack on a DEALER/ROUTER pair.

A client sends ``IngestRequest(id, documents)``; each document is decoded and checked on its
own, so one bad document is reported by its doc_id (``Rejected``) while the others go on. The
reply, ``IngestResult``, comes once every accepted document is durable on the shards; or an
``IngestError`` for the whole request (``bad_request``: not an ingest request at all;
``unavailable``: the engine is stopping, try again).
"""

from __future__ import annotations

from typing import Any

import msgspec


class Document(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One document: ``ts`` in unix seconds (default: when it arrives)."""

    doc_id: str
    text: str
    source: str | None = None
    ts: float | None = None


class IngestRequest(msgspec.Struct, tag="ingest", forbid_unknown_fields=True):
    id: int
    # Raw: each document decodes on its own, so one bad document does not sink the request.
    documents: list[msgspec.Raw]


class Rejected(msgspec.Struct, frozen=True):
    """A document that was not ingested: its position in the request, its doc_id when it
    had one, and why."""

    index: int
    doc_id: str | None
    reason: str


class IngestResult(msgspec.Struct, tag="ingest_result"):
    id: int
    accepted: int
    rejected: list[Rejected] = []


class IngestError(msgspec.Struct, tag="ingest_error"):
    id: int
    code: str  # bad_request | unavailable
    message: str


IngestReply = IngestResult | IngestError

_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(IngestRequest)
reply_decoder = msgspec.msgpack.Decoder(IngestReply)
document_decoder = msgspec.msgpack.Decoder(Document)


class _AnyId(msgspec.Struct):
    id: int = 0


class _DocId(msgspec.Struct):
    doc_id: str | None = None


_id_decoder = msgspec.msgpack.Decoder(_AnyId)
_doc_id_decoder = msgspec.msgpack.Decoder(_DocId)


def encode(message: Any) -> bytes:
    return _encoder.encode(message)


def encode_request(request_id: int, documents: list[Any]) -> bytes:
    """An ``IngestRequest``; the documents (Structs or dicts) are checked by the server."""
    return encode_raw_request(request_id, [_encoder.encode(d) for d in documents])


def encode_raw_request(request_id: int, documents: list[bytes]) -> bytes:
    """An ``IngestRequest`` of documents already encoded one by one."""
    raw = [msgspec.Raw(d) for d in documents]
    return _encoder.encode(IngestRequest(id=request_id, documents=raw))


def request_id_of(message: bytes) -> int:
    """The id of a message that is not a valid request, to address the error reply (0 if
    even that cannot be read)."""
    try:
        return _id_decoder.decode(message).id
    except msgspec.DecodeError:
        return 0


def doc_id_of(raw: bytes) -> str | None:
    """The doc_id of a document that failed to decode, when it has a readable one."""
    try:
        return _doc_id_decoder.decode(raw).doc_id
    except msgspec.DecodeError:
        return None
