"""The exceptions aaflow-stream raises.

    AaflowError
    ├── SpecError            a topology or actor description is invalid (names the path)
    ├── FrameError           bytes that arrived on a socket are not a valid message
    │   ├── HeaderError      the header frame does not decode (or is too large)
    │   └── PayloadError     the Arrow payload does not match the link's schema
    ├── LinkError            a data link cannot be used
    │   ├── LinkClosed       the local end was closed
    │   └── LinkTimeout      a peer did not answer within a deadline
    ├── OperatorError        a user operator could not be loaded or configured
    │   └── EmbedderError    an embedder cannot be built (package or model missing, wrong dim)
    ├── StorageError         a shard's files cannot be written or are damaged (names the file)
    ├── RetryLater           an operator cannot take an input yet (a full disk); offer it again
    └── ActorFailed          an actor process ended abnormally (exit code, last error)

Foreign exceptions (zmq, pyarrow, msgspec) are translated at the boundary that met them,
with ``raise ... from`` so the cause stays visible.
"""

from __future__ import annotations


class AaflowError(Exception):
    """Base of every error this package raises on purpose."""


class SpecError(AaflowError):
    """A topology or actor description is invalid."""


class FrameError(AaflowError):
    """A received message is malformed; the receiver drops it and keeps serving."""


class HeaderError(FrameError):
    """The header frame is missing, too large, or not a valid header."""


class PayloadError(FrameError):
    """The payload frames do not form a batch of the link's schema."""


class LinkError(AaflowError):
    """A data or control link cannot be used."""


class LinkClosed(LinkError):
    """The local end of the link was closed."""


class LinkTimeout(LinkError):
    """A peer did not answer within the deadline."""


class OperatorError(AaflowError):
    """A user operator reference could not be imported or built."""


class EmbedderError(OperatorError):
    """An embedder cannot be built: its package or model is missing, or its dim is wrong."""


class StorageError(AaflowError):
    """A shard's files cannot be written, or what is on disk is damaged; names the file."""


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
