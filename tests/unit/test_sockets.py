"""channels/sockets.py: the builders' options, the context a part borrows or owns, and the
linger a port closes with as its scope ends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zmq
import zmq.asyncio

from aaflow_stream.channels import sockets
from aaflow_stream.channels.inport import InPort


class _Recorder(sockets.Port):
    def __init__(self) -> None:
        self.lingers: list[int] = []

    def close(self, linger_ms: int = 0) -> None:
        self.lingers.append(linger_ms)


def test_a_port_closes_with_the_clean_linger_unless_an_exception_ends_its_scope() -> None:
    async def main() -> list[int]:
        port = _Recorder()
        async with port:
            pass
        with pytest.raises(ValueError):
            async with port:
                raise ValueError("boom")
        with pytest.raises(asyncio.CancelledError):
            async with port:
                raise asyncio.CancelledError  # a cancellation is not a failure
        return port.lingers

    assert asyncio.run(main()) == [
        sockets.CLEAN_LINGER_MS,
        sockets.FAILED_LINGER_MS,
        sockets.CLEAN_LINGER_MS,
    ]


def test_an_in_port_entered_as_a_context_is_closed_as_it_ends(tmp_path: Path) -> None:
    async def main() -> None:
        ctx = zmq.asyncio.Context()
        try:
            async with InPort(
                ctx,
                "in",
                data_endpoint=f"ipc://{tmp_path}/d",
                control_endpoint=f"ipc://{tmp_path}/c",
                window=2,
                expected_senders=["a"],
            ) as port:
                assert not port._data.closed
            assert port._data.closed and port._control.closed
        finally:
            ctx.term()  # would hang on a socket left open

    asyncio.run(asyncio.wait_for(main(), 10))


def test_a_borrowed_context_is_left_to_its_owner_an_own_one_is_terminated() -> None:
    given = zmq.asyncio.Context()
    borrowed = sockets.ContextHolder(given)
    assert borrowed.ctx is given
    borrowed.release()
    assert not given.closed
    given.term()
    own = sockets.ContextHolder(None)
    own.release()
    own.release()  # idempotent
    assert own.ctx.closed


def test_the_builders_set_the_options_of_their_link(tmp_path: Path) -> None:
    ctx = zmq.Context()
    built = [
        (
            sockets.gateway_router(ctx, f"ipc://{tmp_path}/g", max_frame_bytes=1000).socket,
            {zmq.LINGER: 0, zmq.MAXMSGSIZE: 1000},
        ),
        (
            sockets.ingest_router(
                ctx, f"ipc://{tmp_path}/i", max_queued=4, max_frame_bytes=2000
            ).socket,
            {zmq.LINGER: 0, zmq.MAXMSGSIZE: 2000, zmq.RCVHWM: 4},
        ),
        (
            sockets.wakeup_pull(ctx, f"ipc://{tmp_path}/w", max_bytes=300, hwm=64).socket,
            {zmq.LINGER: 0, zmq.MAXMSGSIZE: 300, zmq.RCVHWM: 64},
        ),
        (
            sockets.wakeup_push(ctx, f"ipc://{tmp_path}/w", hwm=64),
            {zmq.LINGER: 0, zmq.SNDHWM: 64},
        ),
        (
            sockets.ack_push(ctx, f"ipc://{tmp_path}/a", hwm=100, linger_ms=2000),
            {zmq.LINGER: 2000, zmq.SNDHWM: 100},
        ),
        (sockets.client_dealer(ctx, f"ipc://{tmp_path}/q"), {zmq.LINGER: 0}),
    ]
    try:
        for sock, options in built:
            assert {opt: sock.getsockopt(opt) for opt in options} == options
    finally:
        for sock, _ in built:
            sock.close(linger=0)
        ctx.term()


def test_a_socket_that_cannot_bind_is_closed() -> None:
    ctx = zmq.Context()
    with pytest.raises(zmq.ZMQError):
        sockets.gateway_router(ctx, "tcp://256.0.0.1:1", max_frame_bytes=10)
    ctx.term()  # would hang on the socket, were it left open
