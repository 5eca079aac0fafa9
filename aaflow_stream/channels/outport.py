"""The sending end of an actor: one PUSH data socket and one DEALER control socket per link.

Each downstream replica gets its own link (a PUSH with several peers would round-robin regardless
of credit and hold a fast replica to the slow one's pace). ``send`` spends a credit on the link
that holds the most, and waits when no link has any: that wait is the backpressure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import zmq
import zmq.asyncio

from .. import frames, untrusted
from ..errors import LinkClosed, LinkTimeout
from ..flow import CreditViolation, SenderCredits, pick_link
from ..protocol import (
    MAX_HEADER_BYTES,
    Credit,
    EosAck,
    Hello,
    LinkStats,
    encode,
    link_control_decoder,
)
from . import sockets
from .loopsocket import LoopSocket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSpec:
    data_endpoint: str
    control_endpoint: str
    peer: str


@dataclass
class _Link:
    spec: LinkSpec
    data: LoopSocket
    control: LoopSocket
    credits: SenderCredits = field(default_factory=SenderCredits)
    fingerprint: str | None = None
    peer_name: str = ""
    batches_sent: int = 0
    rows_sent: int = 0
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    eos_acked: asyncio.Event = field(default_factory=asyncio.Event)


class OutPort(sockets.Port):
    """Credit-controlled fan-out to the replicas of the next stage. As an async context
    (``sockets.Port``) it closes as its scope ends."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        sender: str,
        links: list[LinkSpec],
        *,
        window: int,
        encoding: str = "auto",
    ) -> None:
        if not links:
            raise ValueError("an OutPort needs at least one link")
        self._sender = sender
        self._encoding = encoding
        self._links = [
            _Link(
                spec=spec,
                data=sockets.data_socket(ctx, zmq.PUSH, window, connect=spec.data_endpoint),
                control=sockets.link_control_socket(
                    ctx, zmq.DEALER, identity=sender, connect=spec.control_endpoint
                ),
            )
            for spec in links
        ]
        self._credit_arrived = asyncio.Event()
        self._next = 0
        self._seq = 0
        self._schema: pa.Schema | None = None
        self._schema_fp = ""
        self._schema_encoding = frames.BUFFERS
        self._blocked_s = 0.0
        self.rejected = 0  # control messages that did not decode
        self._closed = False

    async def open(self) -> None:
        """Say hello on every link; each receiver answers with its initial window."""
        for link in self._links:
            await link.control.send(encode(Hello(sender=self._sender)))

    async def wait_open(self, timeout_s: float) -> None:
        """Until every receiver granted its initial window (``serve`` must be running): an
        actor that says Ready before would send its first batches to whichever link opened
        first, not to the one with most credit."""
        for link in self._links:
            await self._await_ack(link, link.opened, timeout_s, "initial credit")

    @property
    def blocked_s(self) -> float:
        """Seconds ``send`` spent waiting because no link had credit."""
        return self._blocked_s

    async def serve(self) -> None:
        """Apply credits and acks as they arrive. Runs in the owner's task group until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for link in self._links:
                tg.create_task(self._serve_link(link))

    async def _serve_link(self, link: _Link) -> None:
        # One plain recv loop per link: a zmq.asyncio Poller re-registers its sockets on every
        # poll, which cost ~12% more CPU per batch (bench/transport.py).
        while True:
            raw = await link.control.recv()
            try:
                msg = untrusted.decode(
                    link_control_decoder, raw, max_bytes=MAX_HEADER_BYTES, what="control message"
                )
            except untrusted.MalformedMessage as exc:
                self.rejected += 1
                log.warning(
                    "%s: control message from %s dropped: %s", self._sender, link.spec.peer, exc
                )
                continue
            match msg:
                case Credit(receiver=receiver, batches=n):
                    self._on_credit(link, receiver, n)
                case EosAck():
                    link.eos_acked.set()
                case Hello():
                    log.warning("%s: unexpected Hello from %s", self._sender, link.spec.peer)

    def _on_credit(self, link: _Link, receiver: str, n: int) -> None:
        try:
            if not link.credits.opened:
                link.peer_name = receiver
                link.credits.open(n)
                link.opened.set()
            else:
                link.credits.give_back(n)
        except CreditViolation as exc:
            log.warning("%s: credit protocol violation by %s: %s", self._sender, receiver, exc)
            return
        self._credit_arrived.set()

    @property
    def links(self) -> int:
        return len(self._links)

    async def _acquire(self, target: int | None) -> _Link:
        while True:
            if target is not None:
                index: int | None = target if self._links[target].credits.credits else None
            else:
                index = pick_link([link.credits for link in self._links], self._next)
            if index is not None:
                self._next = (index + 1) % len(self._links)
                return self._links[index]
            if self._closed:
                raise LinkClosed(f"{self._sender}: out port closed")
            self._credit_arrived.clear()
            started = time.perf_counter()
            await self._credit_arrived.wait()
            self._blocked_s += time.perf_counter() - started

    def _check_schema(self, schema: pa.Schema) -> None:
        if self._schema is schema:
            return
        if self._schema is None or not self._schema.equals(schema, check_metadata=True):
            self._schema_fp = frames.schema_fingerprint(schema)
            self._schema_encoding = (
                frames.best_encoding(schema) if self._encoding == "auto" else self._encoding
            )
        self._schema = schema

    async def send(
        self,
        batch: pa.RecordBatch | Sequence[pa.RecordBatch],
        link_index: int | None = None,
        *,
        origin_at: float = 0.0,
    ) -> None:
        """Send one message on link ``link_index``, or else on the link with the most credit.

        A message is one batch, or several batches of one schema sent together without being
        concatenated. Waits while the chosen link (or every link) has no credit.
        """
        parts = [batch] if isinstance(batch, pa.RecordBatch) else list(batch)
        schema = parts[0].schema
        if any(p.schema is not schema and not p.schema.equals(schema) for p in parts[1:]):
            raise ValueError("the batches of one message must share one schema")
        if self._closed:
            raise LinkClosed(f"{self._sender}: out port closed")
        if link_index is not None and not 0 <= link_index < len(self._links):
            raise ValueError(f"link {link_index} does not exist ({len(self._links)} links)")
        self._check_schema(schema)
        link = await self._acquire(link_index)
        if link.fingerprint != self._schema_fp:
            await link.data.send_multipart(frames.schema_message(schema, self._sender))
            link.fingerprint = self._schema_fp
        link.credits.spend()
        self._seq += 1
        msg = frames.batch_message(
            parts, self._sender, self._seq, self._schema_fp, self._schema_encoding, origin_at
        )
        await link.data.send_multipart(msg, copy=False)
        link.batches_sent += 1
        link.rows_sent += sum(p.num_rows for p in parts)

    async def send_eos(self, timeout_s: float) -> None:
        """End the stream on every link and wait until each receiver confirms it."""
        self._seq += 1
        for link in self._links:
            # The receiver drops data from a sender it has not registered: EOS must wait for
            # the link to open even when no batch was ever sent on it.
            await self._await_ack(link, link.opened, timeout_s, "link open")
            await asyncio.wait_for(
                link.data.send_multipart(frames.eos_message(self._sender, self._seq)), timeout_s
            )
        for link in self._links:
            await self._await_ack(link, link.eos_acked, timeout_s, "end-of-stream ack")

    async def _await_ack(
        self, link: _Link, event: asyncio.Event, timeout_s: float, what: str
    ) -> None:
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError as exc:
            raise LinkTimeout(
                f"{self._sender}: no {what} from {link.spec.peer} in {timeout_s}s"
            ) from exc

    def stats(self) -> list[LinkStats]:
        return [
            LinkStats(
                peer=link.spec.peer,
                credits=link.credits.credits,
                in_flight=link.credits.in_flight,
                max_in_flight=link.credits.max_in_flight,
                batches_sent=link.batches_sent,
                rows_sent=link.rows_sent,
            )
            for link in self._links
        ]

    def close(self, linger_ms: int = 0) -> None:
        """Idempotent; cancel ``serve`` first. A waiting ``send`` raises LinkClosed."""
        if self._closed:
            return
        self._closed = True
        self._credit_arrived.set()
        for link in self._links:
            sockets.close(link.data, linger_ms)
            sockets.close(link.control, linger_ms)
