"""Credit-based flow control as pure state machines (no sockets, no clocks).

A receiver grants each sender a window of W batches when the link opens. The sender spends one
credit per batch and never sends without one; the receiver gives credits back, coalesced, as it
finishes batches. So at most W batches of a link are ever queued or in process, whatever the
speed of either side, and a sender with no credit anywhere stops consuming its own input: the
backpressure travels upstream to the source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import CreditViolation


@dataclass
class SenderCredits:
    """One outgoing link, as the sender sees it."""

    credits: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    opened: bool = False

    def open(self, window: int) -> None:
        if window < 1:
            raise CreditViolation(f"initial window must be >= 1, got {window}")
        self.opened = True
        self.credits = window

    def spend(self) -> None:
        if self.credits < 1:
            raise CreditViolation("send without credit")
        self.credits -= 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def give_back(self, batches: int) -> None:
        if batches < 1 or batches > self.in_flight:
            raise CreditViolation(f"{batches} credits returned with {self.in_flight} in flight")
        self.in_flight -= batches
        self.credits += batches


def pick_link(links: Sequence[SenderCredits], start: int = 0) -> int | None:
    """Index of the link with the most credit (ties go to the first from ``start``), or None."""
    best, best_credits = None, 0
    n = len(links)
    for k in range(n):
        i = (start + k) % n
        if links[i].credits > best_credits:
            best, best_credits = i, links[i].credits
    return best


@dataclass
class ReceiverCredits:
    """One incoming sender, as the receiver sees it.

    Returns are coalesced: they go back once ``threshold`` batches are done, or early when the
    sender has run out of credit (``sender_starved``) and the receiver is about to wait for
    more: a consumer may hold finished-but-unreturned batches while it waits, and then only an
    early return lets the sender go on. Returning on every idle moment instead cost one
    control message per batch and ~19% more CPU per batch (bench/transport.py).
    """

    window: int
    threshold: int
    in_flight: int = 0
    pending: int = 0
    overruns: int = 0

    @classmethod
    def for_window(cls, window: int) -> ReceiverCredits:
        return cls(window=window, threshold=max(1, window // 2))

    def received(self) -> None:
        self.in_flight += 1
        if self.in_flight + self.pending > self.window:
            self.overruns += 1

    def finished(self) -> int:
        """Mark one batch done; the credits to return now (0 while coalescing)."""
        self.in_flight = max(0, self.in_flight - 1)
        self.pending += 1
        return self.flush() if self.pending >= self.threshold else 0

    def sender_starved(self) -> bool:
        """The sender holds no credit and some could be returned now."""
        return self.pending > 0 and self.in_flight + self.pending >= self.window

    def flush(self) -> int:
        n, self.pending = self.pending, 0
        return n
