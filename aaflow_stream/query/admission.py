"""What the gateway lets in: the frames of one received message → a valid request, or a
``Rejection`` saying why not (with the request's id when it could be read).

Pure: no sockets, no state. ``admit`` decodes at the one boundary (``untrusted.decode``, so
invalid UTF-8, deep nesting and wrong shapes are rejections, not exceptions) and then checks
what a type cannot say (the bounds are listed in ``query.protocol``). Each rejection carries a
``reason`` from ``REJECTION_REASONS``, the key the gateway counts it under.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .. import untrusted
from .protocol import (
    MAX_DELETE_IDS,
    MAX_DOC_ID_BYTES,
    MAX_K,
    MAX_REQUEST_BYTES,
    MAX_TEXT_CHARS,
    DeleteRequest,
    ErrorCode,
    ErrorReply,
    QueryFilter,
    QueryRequest,
    Request,
    request_decoder,
)

RejectReason = Literal[
    "multipart",  # not exactly one request frame
    "too_large",
    "invalid_utf8",
    "too_deep",
    "invalid",  # decodes, but not as a request (unknown field, wrong type, out of range)
    "undecodable",
    "bad_query",  # k, text or vector out of bounds
    "bad_filter",
    "bad_delete",
    "busy",  # too many queries waiting (code "unavailable")
    "unsupported",  # a delete to a gateway that takes none (code "unavailable")
    "internal",  # the gateway failed on it (code "internal"): a bug, logged
]
REJECTION_REASONS: Final[tuple[RejectReason, ...]] = (
    "multipart",
    "too_large",
    "invalid_utf8",
    "too_deep",
    "invalid",
    "undecodable",
    "bad_query",
    "bad_filter",
    "bad_delete",
    "busy",
    "unsupported",
    "internal",
)
# An error message echoes parts of the request at most this long.
MAX_MESSAGE_CHARS: Final = 500


@dataclass(frozen=True, slots=True)
class Rejection:
    request_id: int | None
    reason: RejectReason
    message: str
    code: ErrorCode = "bad_request"

    def reply(self) -> ErrorReply:
        message = self.message
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        return ErrorReply(id=self.request_id, code=self.code, message=message)


def admit(frames: Sequence[bytes], dim: int) -> Request | Rejection:
    """The request in ``frames`` (the message after the ROUTER's routing id), checked for a
    gateway whose shards hold vectors of dimension ``dim``."""
    if len(frames) != 1:
        return Rejection(
            None,
            "multipart",
            f"expected one request frame of at most {MAX_REQUEST_BYTES} bytes, "
            f"got {len(frames)} frames",
        )
    body = frames[0]
    try:
        request = untrusted.decode(
            request_decoder, body, max_bytes=MAX_REQUEST_BYTES, what="request"
        )
    except untrusted.MalformedMessage as exc:
        return Rejection(untrusted.peek_id(body), exc.reason, str(exc))
    if isinstance(request, QueryRequest):
        return _check_query(request, dim)
    if isinstance(request, DeleteRequest):
        return _check_delete(request)
    return request


def _check_query(request: QueryRequest, dim: int) -> QueryRequest | Rejection:
    problem = _query_problem(request, dim)
    if problem is not None:
        return Rejection(request.id, "bad_query", problem)
    if request.filter is not None:
        problem = filter_problem(request.filter)
        if problem is not None:
            return Rejection(request.id, "bad_filter", problem)
    return request


def _query_problem(request: QueryRequest, dim: int) -> str | None:
    if not 1 <= request.k <= MAX_K:
        return f"k must be between 1 and {MAX_K}, got {request.k}"
    if (request.text is None) == (request.vector is None):
        return "give exactly one of text or vector"
    if request.text is not None:
        if len(request.text) > MAX_TEXT_CHARS:
            return f"the query text has {len(request.text)} characters, more than {MAX_TEXT_CHARS}"
        if not request.text.strip():
            return "the query text is empty"
    if request.vector is not None:
        if len(request.vector) != dim:
            return (
                f"the vector has dimension {len(request.vector)}, the shards hold dimension {dim}"
            )
        if not all(math.isfinite(v) for v in request.vector):
            return "the vector has non-finite values"
    return None


def filter_problem(where: QueryFilter) -> str | None:
    """What the decoder cannot check in a filter (its ranges it did check)."""
    if (
        where.ts_from_ms is not None
        and where.ts_to_ms is not None
        and where.ts_from_ms > where.ts_to_ms
    ):
        return (
            f"the filter's ts_from_ms ({where.ts_from_ms}) is after its ts_to_ms ({where.ts_to_ms})"
        )
    return None


def _check_delete(request: DeleteRequest) -> DeleteRequest | Rejection:
    ids = request.doc_ids
    if (
        not ids
        or len(ids) > MAX_DELETE_IDS
        or not all(0 < len(i.encode()) <= MAX_DOC_ID_BYTES for i in ids)
    ):
        return Rejection(
            request.id,
            "bad_delete",
            f"give between 1 and {MAX_DELETE_IDS} non-empty doc ids of at most "
            f"{MAX_DOC_ID_BYTES} bytes each, got {len(ids)}",
        )
    return request
