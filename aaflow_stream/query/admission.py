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
    MAX_BUDGET_CHARS,
    MAX_DELETE_IDS,
    MAX_DOC_ID_BYTES,
    MAX_FORGET_SESSIONS,
    MAX_K,
    MAX_QUESTIONS,
    MAX_REMEMBER_ENTRIES,
    MAX_REQUEST_BYTES,
    MAX_SESSION_CHARS,
    MAX_SOURCE_CHARS,
    MAX_TEXT_CHARS,
    AnswerRequest,
    DeleteRequest,
    ErrorCode,
    ErrorReply,
    ForgetRequest,
    MemoryWeights,
    QueryFilter,
    QueryRequest,
    RememberRequest,
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
    "bad_memory",  # a remember, forget or memory query out of bounds
    "bad_answer",  # an answer request out of bounds
    "busy",  # too many queries waiting (code "unavailable")
    "unsupported",  # a request this gateway does not serve (code "unavailable")
    "internal",  # the gateway failed on it (code "internal"): a bug, logged
    "generation",  # the answer's generator failed (code "unavailable")
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
    "bad_memory",
    "bad_answer",
    "busy",
    "unsupported",
    "internal",
    "generation",
)
# Vectors are searched as float32: a larger finite float64 would become infinite.
FLOAT32_MAX: Final = 3.4028234663852886e38
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
    if isinstance(request, AnswerRequest):
        return _check_answer(request)
    if isinstance(request, RememberRequest | ForgetRequest):
        problem = _memory_problem(request, dim)
        return request if problem is None else Rejection(request.id, "bad_memory", problem)
    return request


def _check_query(request: QueryRequest, dim: int) -> QueryRequest | Rejection:
    problem = _query_problem(request, dim)
    if problem is not None:
        return Rejection(request.id, "bad_query", problem)
    problem = _dual_problem(request)
    if problem is not None:
        return Rejection(request.id, "bad_memory", problem)
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
    if request.mode == "hybrid" and request.text is None:
        return "a hybrid query needs a text (its keywords)"
    if request.text is not None:
        if len(request.text) > MAX_TEXT_CHARS:
            return f"the query text has {len(request.text)} characters, more than {MAX_TEXT_CHARS}"
        if not request.text.strip():
            return "the query text is empty"
    if request.vector is not None:
        return _vector_problem(request.vector, dim, "the vector")
    return None


def _check_answer(request: AnswerRequest) -> AnswerRequest | Rejection:
    problem = _answer_problem(request)
    if problem is not None:
        return Rejection(request.id, "bad_answer", problem)
    if request.filter is not None and (problem := filter_problem(request.filter)) is not None:
        return Rejection(request.id, "bad_filter", problem)
    return request


def _answer_problem(request: AnswerRequest) -> str | None:
    if not 0 < len(request.questions) <= MAX_QUESTIONS:
        return f"give 1 to {MAX_QUESTIONS} questions, got {len(request.questions)}"
    for i, question in enumerate(request.questions):
        if not 0 < len(question) <= MAX_TEXT_CHARS or not question.strip():
            return f"question {i}: a text of 1 to {MAX_TEXT_CHARS} characters, not blank"
    if request.k is not None and not 1 <= request.k <= MAX_K:
        return f"k must be between 1 and {MAX_K}, got {request.k}"
    if request.budget is not None and not 1 <= request.budget <= MAX_BUDGET_CHARS:
        return f"budget must be between 1 and {MAX_BUDGET_CHARS} characters, got {request.budget}"
    return _weights_problem(request.session, request.weights)


def _session_problem(session: str | None) -> str | None:
    if session is not None and not 0 < len(session) <= MAX_SESSION_CHARS:
        return f"a session is 1 to {MAX_SESSION_CHARS} characters, got {len(session)}"
    return None


def _vector_problem(vector: list[float], dim: int, what: str) -> str | None:
    if len(vector) != dim:
        return f"{what} has dimension {len(vector)}, the shards hold dimension {dim}"
    if not all(math.isfinite(v) and abs(v) <= FLOAT32_MAX for v in vector):
        return f"{what} has non-finite values (or values beyond float32)"
    return None


def _dual_problem(request: QueryRequest) -> str | None:
    if request.mode == "knowledge":
        return None
    return _weights_problem(request.session, request.weights)


def _weights_problem(session: str | None, weights: MemoryWeights | None) -> str | None:
    problem = _session_problem(session)
    if problem is not None or weights is None:
        return problem
    w = weights
    numbers = [w.sim, w.recency, w.half_life_s, *w.kind.values()]
    if not all(math.isfinite(v) for v in numbers):
        return "the weights have non-finite values"
    return None


def _memory_problem(request: RememberRequest | ForgetRequest, dim: int) -> str | None:
    if isinstance(request, ForgetRequest):
        if not 0 < len(request.sessions) <= MAX_FORGET_SESSIONS:
            return f"give 1 to {MAX_FORGET_SESSIONS} sessions, got {len(request.sessions)}"
        for session in request.sessions:
            if (problem := _session_problem(session)) is not None:
                return problem
        return None
    if (problem := _session_problem(request.session)) is not None:
        return problem
    if not 0 < len(request.entries) <= MAX_REMEMBER_ENTRIES:
        return f"give 1 to {MAX_REMEMBER_ENTRIES} entries, got {len(request.entries)}"
    for i, entry in enumerate(request.entries):
        if not 0 < len(entry.text) <= MAX_TEXT_CHARS or not entry.text.strip():
            return f"entry {i}: a text of 1 to {MAX_TEXT_CHARS} characters, not blank"
        if len(entry.source) > MAX_SOURCE_CHARS:
            return f"entry {i}: a source of at most {MAX_SOURCE_CHARS} characters"
        if not (math.isfinite(entry.weight) and entry.weight >= 0):
            return f"entry {i}: the weight must be finite and >= 0, got {entry.weight}"
        if entry.ts is not None and not math.isfinite(entry.ts):
            return f"entry {i}: ts must be finite seconds since the epoch"
        if entry.vector is not None:
            if (problem := _vector_problem(entry.vector, dim, f"entry {i}'s vector")) is not None:
                return problem
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
