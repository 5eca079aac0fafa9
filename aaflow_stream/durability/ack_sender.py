"""A shard's side of end-to-end acks: hold each applied batch until the log is synced past it,
then tell its source replicas which documents' rows are durable.

One PUSH socket per source replica. Sends never block the shard: a source that is gone or
not reading lets the queue fill to its high-water mark, after which acks are dropped and
counted. A dropped ack is safe: the source just does not advance its checkpoint over those
documents, and sends them again after a restart (upserts are idempotent).
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import zmq

from ..channels import sockets
from ..protocol import Ack, encode
from .acks import PendingAcks

log = logging.getLogger(__name__)

ACK_HWM = 100_000
# Acks queued at a clean stop get this long to reach their source.
CLOSE_LINGER_MS = 2000


class AckSender:
    """One PUSH per source replica, made in ``ctx``: the actor's (or its operator's own), never
    terminated here; its termination waits for the acks still lingering."""

    def __init__(
        self, ctx: zmq.Context[Any], peers: tuple[str, ...], sender: str, shard: int
    ) -> None:
        self._pending = PendingAcks(sender, shard)
        self._sockets: list[zmq.Socket[Any]] = []
        try:
            for peer in peers:
                self._sockets.append(
                    sockets.ack_push(ctx, peer, hwm=ACK_HWM, linger_ms=CLOSE_LINGER_MS)
                )
        except BaseException:
            self.close()
            raise
        self.sent = 0
        self.dropped = 0

    @property
    def waiting(self) -> int:
        """Applied batches whose acks wait for the log to be synced."""
        return len(self._pending)

    def applied(self, lsn: int, batch: pa.RecordBatch) -> None:
        if self._sockets:
            self._pending.add(lsn, batch)

    def durable(self, lsn: int) -> None:
        """Everything up to ``lsn`` is synced: send what it covers."""
        for replica, ack in self._pending.take(lsn):
            if not 0 <= replica < len(self._sockets):
                log.warning(
                    "rows name source replica %d; there are %d", replica, len(self._sockets)
                )
                continue
            try:
                self._sockets[replica].send(encode(ack), zmq.NOBLOCK)
                self.sent += 1
            except zmq.Again:
                self.dropped += 1
                if self.dropped <= 10 or self.dropped % 1000 == 0:
                    log.warning(
                        "source replica %d is not taking acks: dropped %d", replica, self.dropped
                    )

    def finish(self, shards: int) -> None:
        """End of stream, everything synced and acked: tell every source this shard is through
        (so a source does not wait for documents whose rows lost their delivery columns)."""
        if self._pending:
            log.warning(
                "end of stream with %d batches not synced: no final ack", len(self._pending)
            )
            return
        final = encode(
            Ack(sender=self._pending.sender, shard=self._pending.shard, final=True, shards=shards)
        )
        for sock in self._sockets:
            try:
                sock.send(final, zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1

    def close(self) -> None:
        """Idempotent. Queued acks keep ``CLOSE_LINGER_MS`` to leave."""
        for sock in self._sockets:
            sock.close()
