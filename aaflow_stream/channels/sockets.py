"""Every socket of the package, built here with the options its link needs; the process's
one ZeroMQ context (``ContextHolder``); the linger a port closes with (``Port``).

Why each option: docs/architecture.md, "Pitfalls met while building" (the ZeroMQ entry).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final, Self, TypeVar

import zmq
import zmq.asyncio

from .curve import ClientKeys, Guard
from .loopsocket import LoopSocket

S = TypeVar("S", bound=zmq.Socket[Any])

# Slack above the credit window for the messages that travel without credit: a schema
# announcement and the end-of-stream marker. A high-water mark below the window would cap it.
HWM_SLACK = 8
# ZeroMQ disconnects a peer that sends a frame larger than a socket's MAXMSGSIZE before any
# of it is buffered: a bound on what a forged or broken peer can make a receiver allocate.
# Data frames carry whole Arrow buffers (a 2048-row batch of 384-dim vectors is ~4 MB).
MAX_DATA_FRAME_BYTES = 256 * 2**20
# Credits, hellos, end-of-stream acks and delivery acks (the largest: ~12 bytes a document).
MAX_LINK_CONTROL_BYTES = 4 * 2**20
# Ready, Stats, Done, Failed, Start, Stop: a few KB.
MAX_CONTROL_BYTES = 1 * 2**20
# Replies, credits and acks queued at a clean stop get this long to leave; after a failure the
# process should end promptly.
CLEAN_LINGER_MS: Final = 2000
FAILED_LINGER_MS: Final = 500


class ContextHolder:
    """The ZeroMQ context a part makes its sockets in: the actor's when it is given (one per
    process; its owner terminates it), else one of the part's own, for a part used outside
    an actor (tests, benchmarks), which ``release`` terminates. ``term`` on a shadow would
    terminate the context it shadows: a borrowed one is never terminated here."""

    def __init__(self, given: zmq.Context[Any] | None) -> None:
        self.ctx: zmq.Context[Any] = given if given is not None else zmq.Context()
        self._owned = given is None

    def release(self) -> None:
        """Terminate the context if it is ours (idempotent); its sockets must be closed."""
        if self._owned and not self.ctx.closed:
            self.ctx.term()


class Port:
    """An actor's port as an async context: closed as its scope ends, with the clean linger,
    or the short one when an exception ends the scope (a cancellation is not a failure)."""

    def close(self, linger_ms: int = 0) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(FAILED_LINGER_MS if isinstance(ev, Exception) else CLEAN_LINGER_MS)


def _plain(ctx: zmq.Context[Any], kind: int) -> zmq.Socket[Any]:
    """A plain (not asyncio) socket of the same ZeroMQ context (a plain or an asyncio one)."""
    return zmq.Context.shadow(ctx.underlying).socket(kind)


def data_socket(
    ctx: zmq.asyncio.Context,
    kind: int,
    window: int,
    *,
    bind: str | None = None,
    connect: str | None = None,
) -> LoopSocket:
    sock = _plain(ctx, kind)
    hwm = window + HWM_SLACK
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_DATA_FRAME_BYTES)
    # Default linger (-1) makes context termination hang on a message for an absent peer.
    sock.setsockopt(zmq.LINGER, 0)
    _attach(sock, bind, connect)
    return LoopSocket(sock)


def _attach(sock: zmq.Socket[Any], bind: str | None, connect: str | None) -> None:
    """Bind or connect; a socket that cannot is closed, so that it holds up no context's
    termination."""
    try:
        if bind:
            sock.bind(bind)
        if connect:
            sock.connect(connect)
    except BaseException:
        sock.close(linger=0)
        raise


def link_control_socket(
    ctx: zmq.asyncio.Context,
    kind: int,
    *,
    identity: str | None = None,
    bind: str | None = None,
    connect: str | None = None,
) -> LoopSocket:
    """The control half of a link (credits, acks): on the hot path too, so a LoopSocket."""
    sock = _plain(ctx, kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_LINK_CONTROL_BYTES)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity.encode())
    _attach(sock, bind, connect)
    return LoopSocket(sock)


def control_socket(
    ctx: zmq.asyncio.Context,
    kind: int,
    *,
    identity: str | None = None,
    bind: str | None = None,
    connect: str | None = None,
) -> zmq.asyncio.Socket:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity.encode())
    _attach(sock, bind, connect)
    return sock


# --- the operators' sockets: each caller passes the bounds it owns --------------------------


def gateway_router(
    ctx: zmq.Context[Any], endpoint: str, *, max_frame_bytes: int, guard: Guard | None = None
) -> LoopSocket:
    """The query gateway's ROUTER, bound where clients connect (a CURVE server with a
    ``guard``: ``channels.curve``)."""
    sock = _plain(ctx, zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    # ZeroMQ drops the connection of a peer sending a larger frame, before it is buffered.
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    if guard is not None:
        guard.secure(sock)
    _attach(sock, endpoint, None)
    return LoopSocket(sock)


def ingest_router(
    ctx: zmq.Context[Any],
    endpoint: str,
    *,
    max_queued: int,
    max_frame_bytes: int,
    guard: Guard | None = None,
) -> LoopSocket:
    """The ingest endpoint's ROUTER: at most ``max_queued`` messages held per client."""
    sock = _plain(ctx, zmq.ROUTER)
    sock.setsockopt(zmq.RCVHWM, max_queued)
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
    sock.setsockopt(zmq.LINGER, 0)
    if guard is not None:
        guard.secure(sock)
    _attach(sock, endpoint, None)
    return LoopSocket(sock)


def wakeup_pull(ctx: zmq.Context[Any], endpoint: str, *, max_bytes: int, hwm: int) -> LoopSocket:
    """A shard member's wake-up PULL, bound on its private ipc path."""
    sock = _plain(ctx, zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    sock.setsockopt(zmq.RCVHWM, hwm)
    _attach(sock, endpoint, None)
    return LoopSocket(sock)


def wakeup_push(ctx: zmq.Context[Any], endpoint: str, *, hwm: int) -> zmq.Socket[Any]:
    """The shard root's PUSH to one member (sends never block: NOBLOCK past ``hwm``)."""
    sock = _plain(ctx, zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, hwm)
    _attach(sock, None, endpoint)
    return sock


def ack_push(ctx: zmq.Context[Any], endpoint: str, *, hwm: int, linger_ms: int) -> zmq.Socket[Any]:
    """A shard's PUSH of delivery acks to one source replica; ``linger_ms`` lets the last acks
    reach it after a clean stop."""
    sock = _plain(ctx, zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    _attach(sock, None, endpoint)
    return sock


def client_dealer(ctx: zmq.Context[S], endpoint: str | None, curve: ClientKeys | None = None) -> S:
    """A client's DEALER, of a plain or an asyncio context, that never lingers on close (a
    CURVE client of the server with ``curve``)."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(sock)
    if endpoint is not None:
        _attach(sock, None, endpoint)
    return sock


def close(sock: zmq.asyncio.Socket | LoopSocket, linger_ms: int) -> None:
    """Close with a chosen linger: > 0 lets queued credits and acks leave on a clean stop."""
    if not sock.closed:
        sock.close(linger=linger_ms)
