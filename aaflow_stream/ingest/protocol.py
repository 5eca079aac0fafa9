"""The ingest endpoint's messages: msgspec Structs, msgpack on a DEALER/ROUTER pair.

A client sends ``IngestRequest(id, documents)``; each document is decoded and checked on its
own, so one bad document is reported by its doc_id (``Rejected``) while the others go on. The
reply, ``IngestResult``, comes once every accepted document is durable on the shards; or an
``IngestError`` for the whole request (``bad_request``: not one ingest request of at most the
endpoint's size and ``MAX_DOCUMENTS``, the message says what is wrong; ``unavailable``: the
engine is stopping, try again; ``internal``: the endpoint failed on this request, a bug).

Every message that arrives is answered: a message of several frames, over the size limit or
not decodable gets an ``IngestError`` addressed to the ``id`` it carries (0 when none).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from .. import untrusted

# Documents in one request; bounded before any is decoded (the client sends 256 at most).
MAX_DOCUMENTS: Final = 10_000


class Document(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One document: ``ts`` in unix seconds, finite, in [0, 253402300799] (the end of year
    9999; default: when it arrives). Sizes are bounded by the topology's ``limits``."""

    doc_id: str
    text: str
    source: str | None = None
    ts: float | None = None


class IngestRequest(msgspec.Struct, tag="ingest", forbid_unknown_fields=True):
    id: int
    # Raw: each document decodes on its own, so one bad document does not sink the request.
    documents: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_DOCUMENTS)]


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
    code: str  # bad_request | unavailable | internal
    message: str


IngestReply = IngestResult | IngestError

_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(IngestRequest)
reply_decoder = msgspec.msgpack.Decoder(IngestReply)
document_decoder = msgspec.msgpack.Decoder(Document)


class _DocId(msgspec.Struct):
    doc_id: Any = None


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


def request_id_of(message: bytes | memoryview) -> int:
    """The id of a message that is not a valid request, to address the error reply (0 if
    even that cannot be read). Never raises."""
    return untrusted.peek_id(message) or 0


def doc_id_of(raw: bytes | memoryview) -> object:
    """The doc_id field of a document that failed to decode (anything, or None): the caller
    decides whether it is fit to show. Never raises."""
    try:
        return untrusted.decode(_doc_id_decoder, raw).doc_id
    except untrusted.MalformedMessage:
        return None
