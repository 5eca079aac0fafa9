"""A plain ZeroMQ socket awaited through the event loop, for the links' hot path.

pyzmq's asyncio layer creates futures, registers poll events and evaluates enum flags on every
call. A link needs none of that: try the operation without blocking, and only when it would
block wait until the socket's notification FD fires. Measured with bench/transport.py, this
removed most of the ~180 µs per message that zmq.asyncio added over plain pyzmq.

ZeroMQ's FD is a notification, not readiness: it fires when the socket's state may have
changed, and reading ``EVENTS`` consumes the notification. So a waiter always re-checks
``EVENTS`` before it sleeps, and the FD callback reads ``EVENTS`` so the loop does not spin.
Any send or receive may consume a notification too: when one task sends on a socket another
task waits to read from (the gateway's ROUTER, a link's control socket), the reader would
never hear of a message that arrived meanwhile. So every completed operation wakes the
waiters to re-check (as pyzmq's asyncio layer does).

The hot calls go to pyzmq's Cython socket with plain int flags and read a frame's ``more``
flag instead of asking the socket for ``RCVMORE``: pyzmq's Python layer checks every frame's
type, looks the option up as an enum and builds enum flag objects. On T1 that took the
main-thread CPU per message from ~100 to ~93 µs on the sender and ~173 to ~163 µs on the
receiver (bench/transport.py, 8 alternating runs); throughput did not measurably move.
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
# The Cython socket's own methods, past pyzmq's Python ``send`` (routing ids, groups).
_send = zmq.backend.Socket.send


class LoopSocket:
    def __init__(self, sock: zmq.Socket[Any]) -> None:
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def closed(self) -> bool:
        return bool(self._sock.closed)

    @property
    def socket(self) -> zmq.Socket[Any]:
        return self._sock

    def _on_fd(self) -> None:
        if self._sock.closed:
            return
        self._sock.get(_EVENTS)  # consume the notification
        self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, event: int) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._sock.FD, self._on_fd)
        # EVENTS is an int option; pyzmq types ``get`` as int | bytes.
        while not self._sock.get(_EVENTS) & event:  # type: ignore[operator]
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter

    async def recv_multipart(self, copy: bool = True) -> list[Any]:
        if not copy:
            return await self.recv_frames()
        while True:
            try:
                frames = self._sock.recv_multipart(_NOBLOCK)
            except zmq.Again:
                await self._wait(_POLLIN)
                continue
            if self._waiters:
                self._wake()
            return frames

    async def recv_frames(self) -> list[zmq.Frame]:
        """One multipart message as ``zmq.Frame`` objects over ZeroMQ's memory (no copy)."""
        recv = self._sock.recv
        while True:
            try:
                frame = recv(_NOBLOCK, False)
            except zmq.Again:
                await self._wait(_POLLIN)
                continue
            # The parts of a message arrive together: once the first is here, so are the rest.
            frames = [frame]
            while frame.more:
                frame = recv(_NOBLOCK, False)
                frames.append(frame)
            if self._waiters:
                self._wake()
            return frames

    async def recv(self) -> bytes:
        while True:
            try:
                data = self._sock.recv(_NOBLOCK)
            except zmq.Again:
                await self._wait(_POLLIN)
                continue
            if self._waiters:
                self._wake()
            return data

    async def send_multipart(self, parts: list[Any], copy: bool = True) -> None:
        """Send ``parts`` as one message. ZeroMQ takes a multipart message whole or not at
        all: only its first part can find the queue full."""
        sock, last = self._sock, len(parts) - 1
        while True:
            try:
                _send(sock, parts[0], _NOBLOCK_MORE if last else _NOBLOCK, copy)
            except zmq.Again:
                await self._wait(_POLLOUT)
                continue
            for i in range(1, last):
                _send(sock, parts[i], _NOBLOCK_MORE, copy)
            if last:
                _send(sock, parts[last], _NOBLOCK, copy)
            if self._waiters:
                self._wake()
            return

    async def send(self, data: bytes) -> None:
        await self.send_multipart([data])

    def close(self, linger: int | None = None) -> None:
        if self._sock.closed:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._sock.FD)
        for waiter in self._waiters:
            waiter.cancel()
        self._sock.close(linger=linger)
