"""The exceptions aaflow-stream raises: every one is defined here, under one tree.

    AaflowError
    ├── SpecError              a topology or actor description is invalid (names the path)
    │   └── SoakSetupError     a topology cannot be soaked (no ingest endpoint, a failed start)
    ├── FrameError             bytes that arrived on a socket are not a valid message
    │   ├── HeaderError        the header frame does not decode (or is too large)
    │   ├── PayloadError       the Arrow payload does not match the link's schema
    │   └── MalformedMessage   bytes from a peer do not decode (``reason``: why; untrusted.py)
    ├── BadDocument            a document that cannot be ingested (``reason``: its code)
    ├── LinkError              a data link cannot be used
    │   ├── LinkClosed         the local end was closed
    │   ├── LinkTimeout        a peer did not answer within a deadline
    │   └── CreditViolation    a peer broke the credit protocol (flow.py)
    ├── OperatorError          a user operator could not be loaded or configured
    │   └── EmbedderError      an embedder cannot be built (package or model missing, wrong dim)
    ├── StorageError           a shard's files cannot be written or are damaged (names the file)
    │   ├── BadBatch           a batch offered to a shard does not fit it (also a ValueError)
    │   └── ChunkNotStored     a chunk id the shard does not hold (also a KeyError)
    ├── WakeupError            a genuine shard wake-up the member cannot follow (out of step)
    ├── RoundFailed            a collective round over the shards failed: the gateway stops
    ├── GenerationFailed       the answer's generator (a model endpoint) failed: that request
    ├── RetryLater             an operator cannot take an input yet (a full disk); offer it again
    ├── ActorFailed            an actor process ended abnormally (exit code, last error)
    │   ├── BadOperator        an operator could not be built at the first start-up
    │   └── StartTimeout       not every actor was Ready within the start timeout
    ├── DirectoryBusy          another ``up`` owns the data or run directory
    ├── DocumentBusy           the soak's ledger: a document already has an operation in flight
    ├── DaemonError            the background topology could not be started or stopped
    ├── StatusUnavailable      nothing runs in that run directory (or its status is unreadable)
    ├── GatewayUnavailable     a client got no answer within its timeout (nothing was served)
    └── RequestError           the engine answered a client's request with an error (``code``)
        ├── QueryError         ... a query, delete or stats request
        │   └── InvalidRequest the client refused to send it (unencodable; also a ValueError)
        └── IngestFailed       ... an ingest request

Foreign exceptions (zmq, pyarrow, msgspec) are translated at the boundary that met them,
with ``raise ... from`` so the cause stays visible. The modules that raise these re-export
them (``from aaflow_stream.client import QueryError`` keeps working). The foreign exceptions
the package raises on purpose are the built-in ones for a caller's own mistake (``ValueError``
for a bad argument, ``TypeError``), never for a condition of the engine.

This module imports nothing from the package: it is the bottom layer.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# Why untrusted bytes did not decode (``MalformedMessage.reason``).
DecodeReason = Literal["too_large", "invalid_utf8", "too_deep", "invalid", "undecodable"]
DECODE_REASONS: Final[tuple[DecodeReason, ...]] = get_args(DecodeReason)

# Why a document was refused (``BadDocument.reason``): a decode reason, or one of these.
RejectReason = Literal[
    "too_large",
    "invalid_utf8",
    "too_deep",
    "invalid",
    "undecodable",
    "empty_doc_id",
    "doc_id_too_long",
    "source_too_long",
    "not_unicode",
    "empty",
    "binary",
    "bad_ts",
    "duplicate",
    "unreadable",
]
_SHOWN: Final = 300  # characters of a reason kept (msgspec errors may quote a hostile key)


class AaflowError(Exception):
    """Base of every error this package raises on purpose."""


class SpecError(AaflowError):
    """A topology or actor description is invalid."""


class SoakSetupError(SpecError):
    """The topology cannot be soaked (no ingest endpoint, a failed start)."""


class FrameError(AaflowError):
    """A received message is malformed; the receiver drops it and keeps serving."""


class HeaderError(FrameError):
    """The header frame is missing, too large, or not a valid header."""


class PayloadError(FrameError):
    """The payload frames do not form a batch of the link's schema."""


class MalformedMessage(FrameError):
    """Bytes from a peer that are not a valid message; ``reason`` is one of ``DECODE_REASONS``."""

    def __init__(self, reason: DecodeReason, message: str) -> None:
        self.reason: DecodeReason = reason
        super().__init__(message)


class BadDocument(AaflowError):
    """A document that cannot be ingested; the message is the dead-letter reason, ``reason``
    its code (counted by the ingest endpoint)."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        self.reason: RejectReason = reason
        super().__init__(message if len(message) <= _SHOWN else message[:_SHOWN] + "...")

    @classmethod
    def malformed(cls, exc: MalformedMessage, what: str) -> BadDocument:
        """``exc`` of a document that does not decode, said with the decoder's own words."""
        cause = exc.__cause__
        if cause is None or exc.reason == "too_deep":
            detail = str(exc)
        else:
            detail = str(cause) or type(cause).__name__
        return cls(exc.reason, f"not a valid {what} ({exc.reason}): {detail}")


class LinkError(AaflowError):
    """A data or control link cannot be used."""


class LinkClosed(LinkError):
    """The local end of the link was closed."""


class LinkTimeout(LinkError):
    """A peer did not answer within the deadline."""


class CreditViolation(LinkError):
    """A peer broke the credit protocol (returned more than it had, or sent without credit)."""


class OperatorError(AaflowError):
    """A user operator reference could not be imported or built."""


class EmbedderError(OperatorError):
    """An embedder cannot be built: its package or model is missing, or its dim is wrong."""


class StorageError(AaflowError):
    """A shard's files cannot be written, or what is on disk is damaged; names the file."""


class BadBatch(StorageError, ValueError):
    """A batch offered to a shard does not fit it (a missing or mistyped column, nulls in a
    key, a tombstone batch given to ``upsert``); nothing of it was written."""


class ChunkNotStored(StorageError, KeyError):
    """A chunk id the shard does not hold."""

    def __str__(self) -> str:  # a KeyError would show its message quoted
        return str(self.args[0]) if self.args else ""


class WakeupError(AaflowError):
    """A genuine wake-up that the member cannot follow: the ranks are out of step."""


class RoundFailed(AaflowError):
    """A round over the shards (search, count or delete) failed: the gateway stops."""


class GenerationFailed(AaflowError):
    """The generator of an answer failed (its endpoint is down, slow or answered garbage):
    that request gets an error reply; the gateway goes on."""


class RetryLater(AaflowError):
    """An operator cannot take this input yet (its disk is full) and did nothing with it.

    Raised by the head operator of a chain from ``process``: the actor waits ``after_s``
    without blocking its event loop (stats, acks and log syncs go on; the supervisor sees a
    live actor) and offers the same input again. Its senders meanwhile run out of credit, so
    the wait is backpressure all the way to the sources.
    """

    def __init__(self, reason: str, after_s: float) -> None:
        self.after_s = after_s
        super().__init__(reason)


class ActorFailed(AaflowError):
    """An actor process ended abnormally."""

    def __init__(self, actor: str, exit_code: int | None, last_error: str) -> None:
        self.actor = actor
        self.exit_code = exit_code
        self.last_error = last_error
        super().__init__(f"actor {actor!r} failed (exit code {exit_code}): {last_error}")


class BadOperator(ActorFailed):
    """An operator could not be built during the first start-up; nothing is restarted."""


class StartTimeout(ActorFailed):
    """Some actor did not report Ready within the start timeout."""


class DirectoryBusy(AaflowError):
    """Another ``aaflow-stream up`` owns the directory (its pid is in the message)."""


class DocumentBusy(AaflowError):
    """The soak's ledger: the document has an operation in flight already."""


class DaemonError(AaflowError):
    """The background topology could not be started or stopped; ``exit_code`` is the
    detached process's own, when it ended."""

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class StatusUnavailable(AaflowError):
    """Nothing runs in that run directory (or its status cannot be read)."""


class GatewayUnavailable(AaflowError):
    """No reply within the timeout: the gateway is down, not started yet, or overloaded."""


class RequestError(AaflowError):
    """The engine answered a client's request with an error; ``code`` says which."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        super().__init__(f"{code}: {message}")


class QueryError(RequestError):
    """The query gateway answered a query, delete or stats request with an error."""


class InvalidRequest(QueryError, ValueError):
    """The client refused to send a request: its values cannot be encoded (query text with a
    lone surrogate, a number msgpack cannot hold). Nothing was sent."""

    def __init__(self, message: str) -> None:
        super().__init__("bad_request", message)


class IngestFailed(RequestError):
    """The ingest endpoint answered a request with an error other than ``unavailable``
    (which the client retries), or its answer did not decode."""
