"""The receiving end of an actor: one bound PULL data socket and one bound ROUTER control socket.

Every upstream replica connects to both. A sender says ``Hello`` on control and is granted the
window; its batches arrive on the data socket, are rebuilt over the received frames (no copy)
and handed out; ``finished`` gives credit back, coalesced. End of stream is reported only once
every expected sender has sent its EOS (trio's fan-in rule).

Anything malformed on the data socket (random bytes, truncated or oversized frames, an unknown
sender or schema, a payload that does not fit the schema) is dropped, counted and logged; the
port keeps serving good traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import zmq
import zmq.asyncio

from .. import frames, untrusted
from ..errors import FrameError, HeaderError, PayloadError
from ..flow import ReceiverCredits
from ..protocol import (
    MAX_HEADER_BYTES,
    BatchHeader,
    Credit,
    EosAck,
    EosHeader,
    Hello,
    InputStats,
    SchemaHeader,
    data_decoder,
    encode,
    link_control_decoder,
)
from . import sockets

log = logging.getLogger(__name__)

# Log the first few rejected frames in full, then one in this many, so garbage cannot flood logs.
_LOG_EVERY = 1000


@dataclass(frozen=True)
class Received:
    """A batch and where it came from. Call ``InPort.finished(item)`` when done with it.

    A consumer may keep some items unfinished while it waits for the next one (its credit is
    returned early then), but never a whole window of them: the sender would have no credit
    left to send what the consumer waits for.
    """

    batches: list[pa.RecordBatch]
    sender: str
    seq: int
    sent_at: float
    frames: list[Any]
    origin_at: float = 0.0  # when the source read the oldest document in it (trace)

    @property
    def batch(self) -> pa.RecordBatch:
        """The message's batch, when it carries exactly one."""
        if len(self.batches) != 1:
            raise ValueError(f"the message carries {len(self.batches)} batches")
        return self.batches[0]

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches)


@dataclass
class _Sender:
    routing_id: bytes
    credits: ReceiverCredits
    eos: bool = False


@dataclass
class _Counters:
    batches: int = 0
    rows: int = 0
    bytes: int = 0
    rejected: int = 0
    eos_received: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


class InPort(sockets.Port):
    """Fan-in from every replica of the previous stage, under credit flow control. As an async
    context (``sockets.Port``) it closes as its scope ends."""

    def __init__(
        self,
        ctx: zmq.asyncio.Context,
        name: str,
        *,
        data_endpoint: str,
        control_endpoint: str,
        window: int,
        expected_senders: Collection[str],
        expected_schema: pa.Schema | None = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.name = name
        self._window = window
        self._expected_senders = frozenset(expected_senders)
        self._expected_schema = expected_schema
        self._data = sockets.data_socket(ctx, zmq.PULL, window, bind=data_endpoint)
        self._control = sockets.link_control_socket(ctx, zmq.ROUTER, bind=control_endpoint)
        self._senders: dict[str, _Sender] = {}
        self._schemas: dict[str, pa.Schema] = {}
        self._counters = _Counters()
        self._closed = False

    # --- control ------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Answer Hello with the initial window. Runs in the owner's task group until cancelled."""
        while True:
            routing_id, raw = await self._recv_control()
            try:
                msg = untrusted.decode(
                    link_control_decoder, raw, max_bytes=MAX_HEADER_BYTES, what="control message"
                )
            except untrusted.MalformedMessage as exc:
                self._reject(f"control_{exc.reason}", str(exc))
                continue
            if not isinstance(msg, Hello):
                log.warning("%s: unexpected control message %s", self.name, type(msg).__name__)
                continue
            if msg.sender not in self._expected_senders:
                log.warning("%s: hello from unexpected sender %r ignored", self.name, msg.sender)
                continue
            # A hello from a known sender is a reconnect: it starts over with a fresh window.
            self._senders[msg.sender] = _Sender(
                routing_id, ReceiverCredits.for_window(self._window)
            )
            await self._control.send_multipart(
                [routing_id, encode(Credit(receiver=self.name, batches=self._window))]
            )

    async def _recv_control(self) -> tuple[bytes, bytes]:
        while True:
            parts = await self._control.recv_multipart()
            if len(parts) == 2:
                return parts[0], parts[1]
            self._reject("control_frames", f"control message with {len(parts)} frames")

    async def _give_credit(self, sender: _Sender, batches: int) -> None:
        if batches:
            msg = encode(Credit(receiver=self.name, batches=batches))
            await self._control.send_multipart([sender.routing_id, msg])

    async def finished(self, item: Received) -> None:
        """The batch is done: its credit goes back (coalesced)."""
        sender = self._senders.get(item.sender)
        if sender is not None:
            await self._give_credit(sender, sender.credits.finished())

    async def _unblock_starved_senders(self) -> None:
        for sender in self._senders.values():
            if sender.credits.sender_starved():
                await self._give_credit(sender, sender.credits.flush())

    async def _flush_credits(self) -> None:
        for sender in self._senders.values():
            await self._give_credit(sender, sender.credits.flush())

    # --- data ---------------------------------------------------------------------------------

    def _reject(self, reason: str, detail: str) -> None:
        c = self._counters
        c.rejected += 1
        c.reasons[reason] = c.reasons.get(reason, 0) + 1
        if c.rejected <= 10 or c.rejected % _LOG_EVERY == 0:
            log.warning(
                "%s: dropped a data message (%s): %s [%d dropped so far]",
                self.name,
                reason,
                detail,
                c.rejected,
            )

    def _all_ended(self) -> bool:
        ended = sum(1 for s in self._senders.values() if s.eos)
        return ended >= len(self._expected_senders)

    async def __aiter__(self) -> AsyncIterator[Received]:
        """Batches until every expected sender has ended its stream."""
        async for item in self.items():
            if item is not None:
                yield item

    async def items(
        self, idle_s: Callable[[], float | None] = lambda: None
    ) -> AsyncIterator[Received | None]:
        """Like iterating the port, but yields None when nothing arrived for ``idle_s()``
        seconds (None: wait as long as it takes), so a consumer can release what it holds.
        A receive cut by the timeout loses nothing: it only waits for the socket's FD."""
        while not self._all_ended():
            await self._unblock_starved_senders()
            wait_s = idle_s()
            if wait_s is None:
                message = await self._data.recv_multipart(copy=False)
            else:
                try:
                    async with asyncio.timeout(wait_s):
                        message = await self._data.recv_multipart(copy=False)
                except TimeoutError:
                    yield None
                    continue
            try:
                item = await self._accept(message)
            except FrameError as exc:
                self._reject(type(exc).__name__, str(exc))
                continue
            if item is not None:
                yield item
        await self._flush_credits()

    async def _accept(self, message: list[Any]) -> Received | None:
        head = message[0]
        try:
            header = untrusted.decode(
                data_decoder, head.buffer, max_bytes=MAX_HEADER_BYTES, what="header"
            )
        except untrusted.MalformedMessage as exc:
            raise HeaderError(str(exc)) from exc
        match header:
            case SchemaHeader():
                self._accept_schema(header, message)
                return None
            case EosHeader():
                await self._accept_eos(header)
                return None
            case BatchHeader():
                return self._accept_batch(header, message)
        raise HeaderError(f"unhandled header {header!r}")  # pragma: no cover

    def _known_sender(self, name: str) -> _Sender:
        sender = self._senders.get(name)
        if sender is None:
            raise HeaderError(f"sender {name!r} never said hello on the control link")
        return sender

    def _accept_schema(self, header: SchemaHeader, message: list[Any]) -> None:
        self._known_sender(header.sender)
        if len(message) != 2:
            raise PayloadError(f"schema message needs 2 frames, got {len(message)}")
        schema = frames.read_schema(message[1])
        if frames.schema_fingerprint(schema) != header.fingerprint:
            raise PayloadError("schema fingerprint does not match the schema frame")
        if self._expected_schema is not None and not schema.equals(self._expected_schema):
            raise PayloadError(
                f"schema from {header.sender!r} is {schema}, this input expects "
                f"{self._expected_schema}"
            )
        self._schemas[header.fingerprint] = schema

    async def _accept_eos(self, header: EosHeader) -> None:
        sender = self._known_sender(header.sender)
        if not sender.eos:
            sender.eos = True
            self._counters.eos_received += 1
        await self._control.send_multipart([sender.routing_id, encode(EosAck(receiver=self.name))])

    def _accept_batch(self, header: BatchHeader, message: list[Any]) -> Received:
        sender = self._known_sender(header.sender)
        schema = self._schemas.get(header.fingerprint)
        if schema is None:
            raise HeaderError(f"batch announces unknown schema {header.fingerprint!r}")
        payload = message[1:]
        batches = frames.decode_batches(header, payload, schema)
        sender.credits.received()
        c = self._counters
        c.batches += 1
        c.rows += header.rows
        c.bytes += sum(len(f) for f in payload)
        return Received(
            batches, header.sender, header.seq, header.sent_at, message, header.origin_at
        )

    # --- state --------------------------------------------------------------------------------

    def stats(self) -> InputStats:
        c = self._counters
        return InputStats(
            batches=c.batches,
            rows=c.rows,
            bytes=c.bytes,
            rejected=c.rejected,
            rejected_by_reason=dict(c.reasons),
            senders=len(self._senders),
            eos_received=c.eos_received,
        )

    @property
    def overruns(self) -> int:
        """Batches that arrived beyond a sender's window (a sender ignoring credits)."""
        return sum(s.credits.overruns for s in self._senders.values())

    def close(self, linger_ms: int = 0) -> None:
        """Idempotent; cancel ``serve`` first. A positive linger lets the last acks leave."""
        if self._closed:
            return
        self._closed = True
        sockets.close(self._data, 0)
        sockets.close(self._control, linger_ms)
