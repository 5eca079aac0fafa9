"""Wire messages other than Arrow payloads: msgspec Structs, msgpack-encoded, strictly decoded.

Four conversations use them:

* data links (PUSH → PULL): frame 0 of every message is a ``DataMessage`` header; the Arrow
  buffers follow (see ``frames``);
* link control (receiver ROUTER ↔ sender DEALER): ``Hello`` opens a link, ``Credit`` grants
  batches, ``EosAck`` confirms that the sender's end of stream arrived;
* delivery acks (shard PUSH → source PULL): ``Ack`` says which documents' rows a shard made
  durable;
* actor control (supervisor ROUTER ↔ actor DEALER): ``Ready``, ``Stats``, ``Done`` and
  ``Failed`` go up; ``Start`` comes down. The supervisor stops actors with SIGTERM, which
  drains them (no message: a stop must reach an actor whose loop is busy or whose socket is
  gone).

No pickle anywhere: a frame that does not decode into one of these is rejected by the caller.
"""

from __future__ import annotations

from typing import Final

import msgspec

# A header larger than this is rejected before decoding: headers carry a few dozen numbers.
MAX_HEADER_BYTES: Final = 64 * 1024


class _Msg(msgspec.Struct, frozen=True, forbid_unknown_fields=True, array_like=True, tag=True):
    pass


# --- data link headers ------------------------------------------------------------------------


class SchemaHeader(_Msg, tag="schema", frozen=True):
    """Announces the schema of the batches that follow; frame 1 is the Arrow IPC schema."""

    sender: str
    fingerprint: str


class BatchHeader(_Msg, tag="batch", frozen=True):
    """One or more RecordBatches of one schema. ``encoding`` says how the frames are laid out.

    ``ipc``: one frame per batch, an encapsulated Arrow IPC record batch message.
    ``buffers``: the Arrow buffers present, each in a frame of its own or, when ``spans`` is set,
    at ``(frame, offset, length)`` of the payload frames (small buffers share one frame);
    ``nodes`` lists (length, null_count, offset) of every array node depth first, batch after
    batch, and ``present`` flags which buffers exist. ``parts`` gives each batch's rows when
    there are several (a shuffle sends the slices it gathered for one destination as one
    message, without concatenating them).
    """

    sender: str
    seq: int
    fingerprint: str
    rows: int
    encoding: str
    nodes: list[tuple[int, int, int]] = []
    present: list[bool] = []
    spans: list[tuple[int, int, int]] = []
    parts: list[int] = []
    sent_at: float = 0.0
    # When the source read the oldest document in the message (the stage timing trace).
    origin_at: float = 0.0


class EosHeader(_Msg, tag="eos", frozen=True):
    """The sender has nothing more for this link."""

    sender: str
    seq: int


DataMessage = SchemaHeader | BatchHeader | EosHeader


# --- link control -----------------------------------------------------------------------------


class Hello(_Msg, tag="hello", frozen=True):
    sender: str


class Credit(_Msg, tag="credit", frozen=True):
    receiver: str
    batches: int


class EosAck(_Msg, tag="eos_ack", frozen=True):
    receiver: str


LinkControl = Hello | Credit | EosAck


# --- delivery acks ----------------------------------------------------------------------------


class Ack(_Msg, tag="ack", frozen=True):
    """Shard ``shard`` made durable ``counts[i]`` chunks of the document at source offset
    ``offsets[i]`` (which has ``totals[i]`` chunks), and the tombstones of the documents at
    ``tombstones``. Arrays travel as little-endian bytes: int64 offsets, int32 counts."""

    sender: str
    shard: int
    offsets: bytes = b""
    counts: bytes = b""
    totals: bytes = b""
    tombstones: bytes = b""
    # Set on a shard's last ack of a stream: everything it received is durable and acked;
    # ``shards`` is how many shards there are, so a source knows when all of them are through.
    final: bool = False
    shards: int = 0


# --- statistics -------------------------------------------------------------------------------


class LinkStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One outgoing link as its sender sees it."""

    peer: str
    credits: int
    in_flight: int
    max_in_flight: int
    batches_sent: int
    rows_sent: int


class InputStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The receiving end of an actor: what arrived and what was thrown away."""

    batches: int = 0
    rows: int = 0
    bytes: int = 0
    rejected: int = 0
    rejected_by_reason: dict[str, int] = {}
    senders: int = 0
    eos_received: int = 0


class OperatorStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One operator of an actor (an actor runs several when stages are chained)."""

    stage: str
    busy_s: float = 0.0
    cpu_s: float = 0.0
    rows_in: int = 0
    rows_out: int = 0
    first_work_at: float = 0.0
    last_work_at: float = 0.0
    extra: dict[str, float] = {}


class ActorStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    actor: str
    stage: str
    replica: int
    busy_s: float = 0.0
    cpu_s: float = 0.0  # CPU since Ready, every thread of the process (ZeroMQ I/O included)
    operator_cpu_s: float = 0.0  # the part of it spent inside the operator
    batches_out: int = 0
    rows_out: int = 0
    blocked_s: float = 0.0
    first_work_at: float = 0.0
    last_work_at: float = 0.0
    input: InputStats = InputStats()
    outputs: list[LinkStats] = []
    extra: dict[str, float] = {}
    operators: list[OperatorStats] = []


# --- actor control ----------------------------------------------------------------------------


class Ready(_Msg, tag="ready", frozen=True):
    actor: str
    pid: int


class Stats(_Msg, tag="stats", frozen=True):
    stats: ActorStats


class Done(_Msg, tag="done", frozen=True):
    stats: ActorStats


class Failed(_Msg, tag="failed", frozen=True):
    actor: str
    reason: str


class Start(_Msg, tag="start", frozen=True):
    pass


ActorUp = Ready | Stats | Done | Failed
ActorDown = Start

_encoder = msgspec.msgpack.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


data_decoder: Final = msgspec.msgpack.Decoder(DataMessage)
link_control_decoder: Final = msgspec.msgpack.Decoder(LinkControl)
actor_up_decoder: Final = msgspec.msgpack.Decoder(ActorUp)
actor_down_decoder: Final = msgspec.msgpack.Decoder(ActorDown)
ack_decoder: Final = msgspec.msgpack.Decoder(Ack)
