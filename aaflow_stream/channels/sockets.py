"""Socket construction with the options every link needs.

Why each option: docs/architecture.md, "Pitfalls met while building" (the ZeroMQ entry).
"""

from __future__ import annotations

from typing import Any

import zmq
import zmq.asyncio

from .loopsocket import LoopSocket

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


def _plain(ctx: zmq.asyncio.Context, kind: int) -> zmq.Socket[Any]:
    """A plain (not asyncio) socket of the same ZeroMQ context."""
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
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)


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
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock


def close(sock: zmq.asyncio.Socket | LoopSocket, linger_ms: int) -> None:
    """Close with a chosen linger: > 0 lets queued credits and acks leave on a clean stop."""
    if not sock.closed:
        sock.close(linger=linger_ms)
