"""An actor's line to its supervisor: a DEALER whose routing id is the actor's name."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import zmq
import zmq.asyncio

from ..channels import sockets
from ..protocol import ActorUp, Start, actor_down_decoder, encode
from ..untrusted import MalformedMessage, decode

log = logging.getLogger(__name__)


class SupervisorLink:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str | None, actor: str) -> None:
        self._actor = actor
        self.malformed: Counter[str] = Counter()  # dropped messages, by reason
        self._sock = (
            sockets.control_socket(ctx, zmq.DEALER, identity=actor, connect=endpoint)
            if endpoint
            else None
        )

    async def send(self, msg: ActorUp) -> bool:
        """Send without ever blocking: with the supervisor gone a DEALER has no peer and a
        blocking send would hang the actor's shutdown. Returns whether it was queued."""
        if self._sock is None:
            return False
        try:
            await self._sock.send(encode(msg), flags=zmq.NOBLOCK)
        except zmq.Again:
            log.debug("supervisor unreachable: %s dropped", type(msg).__name__)
            return False
        return True

    async def serve(self, on_start: Callable[[], None]) -> None:
        """Act on Start until cancelled."""
        if self._sock is None:
            return
        while True:
            raw = await self._sock.recv()
            try:
                msg = decode(
                    actor_down_decoder,
                    raw,
                    max_bytes=sockets.MAX_CONTROL_BYTES,
                    what="message from the supervisor",
                )
            except MalformedMessage as exc:  # any decoding failure, never the actor's end
                self.malformed[exc.reason] += 1
                log.warning("%s: dropped", exc)
                continue
            if isinstance(msg, Start):
                on_start()

    def close(self, linger_ms: int) -> None:
        if self._sock is not None:
            sockets.close(self._sock, linger_ms)
