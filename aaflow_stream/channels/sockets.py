"""Socket construction with the options every link needs (DESIGN.md section 9 pitfalls)."""

from __future__ import annotations

import zmq
import zmq.asyncio

# Slack above the credit window for the messages that travel without credit: a schema
# announcement and the end-of-stream marker. A high-water mark below the window would cap it.
HWM_SLACK = 8


def data_socket(
    ctx: zmq.asyncio.Context,
    kind: int,
    window: int,
    *,
    bind: str | None = None,
    connect: str | None = None,
) -> zmq.asyncio.Socket:
    sock = ctx.socket(kind)
    hwm = window + HWM_SLACK
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    # Default linger (-1) makes context termination hang on a message for an absent peer.
    sock.setsockopt(zmq.LINGER, 0)
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock


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
    if identity is not None:
        sock.setsockopt(zmq.ROUTING_ID, identity.encode())
    if bind:
        sock.bind(bind)
    if connect:
        sock.connect(connect)
    return sock


def close(sock: zmq.asyncio.Socket, linger_ms: int) -> None:
    """Close with a chosen linger: > 0 lets queued credits and acks leave on a clean stop."""
    if not sock.closed:
        sock.close(linger=linger_ms)
