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
"""

from __future__ import annotations

import asyncio
from typing import Any

import zmq


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
        self._sock.getsockopt(zmq.EVENTS)  # consume the notification
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
        while not int(self._sock.getsockopt(zmq.EVENTS)) & event:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter

    async def recv_multipart(self, copy: bool = True) -> list[Any]:
        while True:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                await self._wait(zmq.POLLIN)
                continue
            if self._waiters:
                self._wake()
            return frames

    async def recv(self) -> bytes:
        while True:
            try:
                data = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                await self._wait(zmq.POLLIN)
                continue
            if self._waiters:
                self._wake()
            return data

    async def send_multipart(self, parts: list[Any], copy: bool = True) -> None:
        while True:
            try:
                self._sock.send_multipart(parts, zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                await self._wait(zmq.POLLOUT)
                continue
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
