"""Wake-ups: how shard rank 0 (the root) tells the other ranks to enter a collective round.

Between rounds the members' MPI threads stay out of MPI (no busy-polling): each member waits
on a ZeroMQ PULL socket for the root's wake-up, then runs the round it names, with the same
parameters as the root. A wake-up is one frame: a msgpack-encoded Struct of the tagged union
``Wakeup`` — ``search`` (queries, k, dimension, filter, and for a dual-path round the
memory part: mode, each query's session, the weights, the round's time), ``count``,
``delete`` (doc ids), ``remember`` (how many bytes of new memory each rank gets in the
exchange), ``forget`` (sessions) —
each with the job's ``token`` and the round's sequence number ``seq`` (1, 2, 3, ...).

Trust. A round is a sequence of collectives that every rank must enter in the same order; a
member that enters one the root did not start (or misses one) waits forever, and so do the
rest. So a member enters a round only on a wake-up that is, at once, well-formed (decoded at
the one boundary, ``untrusted.decode``), genuine (the 16 random bytes the root broadcast over
MPI at start, never seen by anything outside the job) and the next in sequence. The socket
itself is a unix socket in a directory only the owner can enter (``shard.wakeup_links``).
``WakeupGate.admit`` decides for each message:

* accept: the round to run;
* drop (counted by reason, logged): malformed, wrong token, or a sequence number already
  seen. Nothing was started by the root for it, so the member stays in step by ignoring it;
* ``WakeupError``: a genuine wake-up that does not fit (a sequence number past the next one:
  a round was missed; a dimension that is not this shard's). The ranks are out of step and
  nothing but ending the job brings them back: the caller lets the error end the actor.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Final, Literal

import msgspec

from .. import untrusted
from ..errors import WakeupError
from ..spec import MemoryWeights
from .filters import QueryFilter
from .limits import (
    MAX_DELETE_IDS,
    MAX_FORGET_SESSIONS,
    MAX_K,
    MAX_ROUND_BYTES,
    MAX_ROUND_QUERIES,
    MAX_SESSION_CHARS,
)

log = logging.getLogger(__name__)

TOKEN_BYTES: Final = 16
MAX_DIM: Final = 65536
# A delete wake-up carries the doc ids of one request, which was at most MAX_ROUND_BYTES.
MAX_WAKEUP_BYTES: Final = MAX_ROUND_BYTES + 64 * 1024

# Why a message was dropped: a decoding failure (untrusted.REASONS), or one of these.
DROP_REASONS: Final[tuple[str, ...]] = (*untrusted.REASONS, "multipart", "forged", "stale")

Seq = Annotated[int, msgspec.Meta(ge=1)]
Token = Annotated[bytes, msgspec.Meta(min_length=TOKEN_BYTES, max_length=TOKEN_BYTES)]


class _Wake(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    seq: Seq
    token: Token


Session = Annotated[str, msgspec.Meta(max_length=MAX_SESSION_CHARS)]


class DualQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The memory part of a search round: every rank scores both paths alike
    (``shard.scoring``), at the same time ``now`` (seconds), so recency agrees."""

    mode: Literal["memory", "both"]
    sessions: Annotated[list[Session], msgspec.Meta(max_length=MAX_ROUND_QUERIES)]  # "": none
    weights: MemoryWeights
    now: float


class HybridQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The keyword part of a hybrid round (``shard.hybrid``): the root broadcasts the query
    texts (``text_bytes`` of msgpack), every rank takes its top ``depth`` by vector and by
    BM25 under statistics summed over the ranks, and the root fuses the two global lists by
    reciprocal rank (``rrf_k``)."""

    text_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_ROUND_BYTES)]
    depth: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)]
    rrf_k: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 60


class SearchWake(_Wake, tag="search", frozen=True):
    nq: Annotated[int, msgspec.Meta(ge=1, le=MAX_ROUND_QUERIES)]
    k: Annotated[int, msgspec.Meta(ge=1, le=MAX_K)]
    dim: Annotated[int, msgspec.Meta(ge=1, le=MAX_DIM)]
    filter: QueryFilter | None
    dual: DualQuery | None = None
    hybrid: HybridQuery | None = None


class CountWake(_Wake, tag="count", frozen=True):
    pass


class DeleteWake(_Wake, tag="delete", frozen=True):
    doc_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_DELETE_IDS)]


class RememberWake(_Wake, tag="remember", frozen=True):
    """A memory exchange: rank r receives ``sizes[r]`` bytes (an Arrow stream of its new
    entries) by ``Scatterv`` from the root."""

    sizes: Annotated[
        list[Annotated[int, msgspec.Meta(ge=0, le=MAX_ROUND_BYTES)]],
        msgspec.Meta(min_length=1, max_length=MAX_DIM),
    ]


class ForgetWake(_Wake, tag="forget", frozen=True):
    sessions: Annotated[list[Session], msgspec.Meta(min_length=1, max_length=MAX_FORGET_SESSIONS)]


Wakeup = SearchWake | CountWake | DeleteWake | RememberWake | ForgetWake

_encoder = msgspec.msgpack.Encoder()
wakeup_decoder: Final = msgspec.msgpack.Decoder(Wakeup)


def new_token() -> bytes:
    return secrets.token_bytes(TOKEN_BYTES)


class WakeupIssuer:
    """The root's side: numbers its wake-ups and signs them with the job's token."""

    def __init__(self, token: bytes) -> None:
        self._token = token
        self.seq = 0  # of the last wake-up issued

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    def search(
        self,
        nq: int,
        k: int,
        dim: int,
        where: QueryFilter | None,
        dual: DualQuery | None = None,
        hybrid: HybridQuery | None = None,
    ) -> bytes:
        wake = SearchWake(
            seq=self._next(),
            token=self._token,
            nq=nq,
            k=k,
            dim=dim,
            filter=where,
            dual=dual,
            hybrid=hybrid,
        )
        return _encoder.encode(wake)

    def remember(self, sizes: list[int]) -> bytes:
        return _encoder.encode(RememberWake(seq=self._next(), token=self._token, sizes=sizes))

    def forget(self, sessions: list[str]) -> bytes:
        return _encoder.encode(ForgetWake(seq=self._next(), token=self._token, sessions=sessions))

    def count(self) -> bytes:
        return _encoder.encode(CountWake(seq=self._next(), token=self._token))

    def delete(self, doc_ids: list[str]) -> bytes:
        return _encoder.encode(DeleteWake(seq=self._next(), token=self._token, doc_ids=doc_ids))


@dataclass
class WakeupStats:
    accepted: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class WakeupGate:
    """A member's side: which received messages start a round (see the module docstring)."""

    def __init__(self, token: bytes, dim: int, rank: int, size: int = 1) -> None:
        self._token = token
        self._dim = dim
        self._rank = rank
        self._size = size
        self._next = 1
        self.stats = WakeupStats()

    def admit(self, frames: list[bytes]) -> Wakeup | None:
        """The wake-up in one received message (its frames), or None when it is dropped.
        Raises ``WakeupError`` when the wake-up stream cannot be followed any more."""
        if len(frames) != 1:
            self._drop("multipart", f"a message of {len(frames)} frames")
            return None
        try:
            wake = untrusted.decode(
                wakeup_decoder, frames[0], max_bytes=MAX_WAKEUP_BYTES, what="wake-up"
            )
        except untrusted.MalformedMessage as exc:
            self._drop(exc.reason, str(exc))
            return None
        if not hmac.compare_digest(wake.token, self._token):
            self._drop("forged", f"a {type(wake).__name__} without the job's token")
            return None
        if wake.seq < self._next:
            self._drop("stale", f"wake-up {wake.seq} again (next is {self._next})")
            return None
        if wake.seq > self._next:
            raise WakeupError(
                f"rank {self._rank}: wake-up {wake.seq} arrived while {self._next} was due: "
                "rounds were missed, the ranks are out of step"
            )
        if isinstance(wake, SearchWake) and wake.dim != self._dim:
            raise WakeupError(
                f"rank {self._rank}: search round {wake.seq} is of dimension {wake.dim}, "
                f"this shard holds {self._dim}"
            )
        misfit = self._misfit(wake)
        if misfit is not None:
            raise WakeupError(f"rank {self._rank}: round {wake.seq} {misfit}")
        self._next += 1
        self.stats.accepted += 1
        return wake

    def _misfit(self, wake: Wakeup) -> str | None:
        """Why a genuine, in-sequence wake-up cannot be run by this rank, if it cannot."""
        if isinstance(wake, SearchWake) and wake.dual and len(wake.dual.sessions) != wake.nq:
            return f"names {len(wake.dual.sessions)} sessions for {wake.nq} queries"
        if isinstance(wake, SearchWake) and wake.dual and wake.hybrid:
            return "is both a dual-path and a hybrid round"
        if isinstance(wake, RememberWake) and len(wake.sizes) != self._size:
            return f"sends memory to {len(wake.sizes)} ranks, the job has {self._size}"
        return None

    def _drop(self, reason: str, detail: str) -> None:
        self.stats.dropped[reason] += 1
        total = self.stats.dropped_total
        # Logged, but not flooded: the 1st, 10th, 100th, ... drop.
        if _power_of_ten(total):
            log.warning(
                "rank %d: wake-up dropped (%s): %s; %d dropped so far, no round entered",
                self._rank,
                reason,
                detail,
                total,
            )


def _power_of_ten(n: int) -> bool:
    while n >= 10 and n % 10 == 0:
        n //= 10
    return n == 1
