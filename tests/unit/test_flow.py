from __future__ import annotations

import random

import pytest

from aaflow_stream.flow import CreditViolation, ReceiverCredits, SenderCredits, pick_link


def test_a_sender_cannot_send_beyond_its_window() -> None:
    link = SenderCredits()
    link.open(3)
    for _ in range(3):
        link.spend()
    with pytest.raises(CreditViolation):
        link.spend()
    assert link.in_flight == 3 and link.max_in_flight == 3


def test_returned_credits_cannot_exceed_what_is_in_flight() -> None:
    link = SenderCredits()
    link.open(2)
    link.spend()
    with pytest.raises(CreditViolation):
        link.give_back(2)


def test_the_link_with_most_credit_is_picked_and_none_when_all_are_empty() -> None:
    links = [SenderCredits(credits=1), SenderCredits(credits=3), SenderCredits(credits=3)]
    assert pick_link(links) == 1
    assert pick_link(links, start=2) == 2
    assert pick_link([SenderCredits(), SenderCredits()]) is None


def test_receiver_coalesces_returns_until_the_threshold() -> None:
    rx = ReceiverCredits(window=8, threshold=2)
    for _ in range(3):
        rx.received()
    assert rx.finished() == 0
    assert rx.finished() == 2
    assert rx.finished() == 0
    assert rx.flush() == 1


def test_a_starved_sender_gets_its_pending_credit_back_early() -> None:
    rx = ReceiverCredits(window=4, threshold=2)
    for _ in range(4):
        rx.received()
    assert not rx.sender_starved()  # nothing finished yet: nothing to give back
    assert rx.finished() == 0  # one pending, below the threshold
    assert rx.sender_starved()  # 3 held + 1 pending = the whole window
    assert rx.flush() == 1 and not rx.sender_starved()


@pytest.mark.parametrize("window", [1, 2, 3, 8, 17])
def test_credit_exchange_never_deadlocks_and_never_exceeds_the_window(window: int) -> None:
    """Simulate random interleavings of send, receive and process: progress always possible."""
    rng = random.Random(window)
    tx, rx = SenderCredits(), ReceiverCredits.for_window(window)
    tx.open(window)
    queued = processing = delivered = 0
    total = 500
    while delivered < total:
        moves = []
        if tx.credits and delivered + queued + processing < total:
            moves.append("send")
        if queued:
            moves.append("receive")
        if processing:
            moves.append("finish")
        if not moves:  # the receiver waits for more while holding finished batches
            assert rx.sender_starved(), "deadlock: no credit anywhere and nothing to do"
            tx.give_back(rx.flush())
            continue
        move = rng.choice(moves)
        if move == "send":
            tx.spend()
            queued += 1
        elif move == "receive":
            queued -= 1
            processing += 1
            rx.received()
        else:
            processing -= 1
            delivered += 1
            returned = rx.finished()
            if returned:
                tx.give_back(returned)
        assert tx.in_flight <= window
        assert rx.overruns == 0
