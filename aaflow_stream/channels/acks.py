"""A source's acknowledgement inbox: a bound PULL socket that shards push ``Ack`` messages to.

Each decoded ack goes to the source operator's ``acknowledge``; anything that does not decode
is dropped, counted and logged, like garbage on a data link. At the end of a finite stream
``settle`` waits (bounded) for the operator's unacknowledged documents to reach zero and then
lets the operator record the outcome (``end_feed``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import zmq
import zmq.asyncio

from .. import untrusted
from ..protocol import MAX_HEADER_BYTES, ack_decoder
from . import sockets

log = logging.getLogger(__name__)

# Acks are small (a few KB); the bound only stops a flood from growing without limit.
MAX_ACK_BYTES = 64 * MAX_HEADER_BYTES
SETTLE_POLL_S = 0.02


class AckInbox(sockets.Port):
    """A source's inbox of acks; as an async context (``sockets.Port``) it closes as its scope
    ends."""

    def __init__(self, ctx: zmq.asyncio.Context, name: str, endpoint: str, run: Any) -> None:
        self.name = name
        self._operator = run.operator
        self._socket = sockets.link_control_socket(ctx, zmq.PULL, bind=endpoint)
        self.received = 0
        self.rejected = 0
        self._arrived = asyncio.Event()
        self._finished: set[int] = set()  # shards whose stream ended (final acks)
        self._shards = 0

    async def serve(self) -> None:
        acknowledge = getattr(self._operator, "acknowledge", None)
        while True:
            message = await self._socket.recv()
            try:
                ack = untrusted.decode(ack_decoder, message, max_bytes=MAX_ACK_BYTES, what="ack")
                if ack.final:
                    self._finished.add(ack.shard)
                    self._shards = ack.shards
                elif acknowledge is not None:
                    acknowledge(ack)
            except (untrusted.MalformedMessage, ValueError) as exc:
                self._reject(str(exc))
                continue
            self.received += 1
            self._arrived.set()

    def _reject(self, detail: str) -> None:
        self.rejected += 1
        if self.rejected <= 10 or self.rejected % 1000 == 0:
            log.warning(
                "%s: dropped an ack message: %s [%d so far]", self.name, detail, self.rejected
            )

    async def settle(self, wait_s: float, stop: asyncio.Event) -> None:
        """Wait up to ``wait_s`` for every emitted document to be acknowledged, then end."""
        unacknowledged = getattr(self._operator, "unacknowledged", lambda: 0)
        deadline = time.monotonic() + wait_s
        while unacknowledged() and not stop.is_set() and not self.shards_finished:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), min(remaining, SETTLE_POLL_S * 25))
        end_feed = getattr(self._operator, "end_feed", None)
        if end_feed is not None:
            end_feed()

    @property
    def shards_finished(self) -> bool:
        """Every shard ended its stream: no acknowledgement is coming any more."""
        return self._shards > 0 and len(self._finished) >= self._shards

    def close(self, linger_ms: int = 0) -> None:
        sockets.close(self._socket, 0)  # a PULL sends nothing: no linger needed
