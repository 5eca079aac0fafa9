"""The shard ranks' wake-up protocol: what a member accepts, drops, or cannot follow."""

from __future__ import annotations

import threading
import time

import msgspec
import pytest

from aaflow_stream.mpi.watchdog import Watchdog
from aaflow_stream.shard.filters import QueryFilter
from aaflow_stream.shard.wakeup import (
    DROP_REASONS,
    TOKEN_BYTES,
    CountWake,
    DeleteWake,
    DualQuery,
    ForgetWake,
    RememberWake,
    SearchWake,
    WakeupError,
    WakeupGate,
    WakeupIssuer,
    new_token,
)
from aaflow_stream.spec import MemoryWeights

from ..support.hostile import hostile_messages

DIM = 8
WAIT_S = 10.0


def _pair() -> tuple[WakeupIssuer, WakeupGate]:
    token = new_token()
    return WakeupIssuer(token), WakeupGate(token, DIM, rank=1)


def test_wake_ups_from_the_root_are_accepted_in_sequence_with_their_parameters() -> None:
    issuer, gate = _pair()
    where = QueryFilter(sources=["a"], ts_from_ms=0, ts_to_ms=5)
    search = gate.admit([issuer.search(3, 7, DIM, where)])
    count = gate.admit([issuer.count()])
    delete = gate.admit([issuer.delete(["d1", "d2"])])
    assert isinstance(search, SearchWake)
    assert (search.seq, search.nq, search.k, search.dim, search.filter) == (1, 3, 7, DIM, where)
    assert isinstance(count, CountWake) and count.seq == 2
    assert isinstance(delete, DeleteWake) and (delete.seq, delete.doc_ids) == (3, ["d1", "d2"])
    assert gate.stats.accepted == 3 and gate.stats.dropped_total == 0


def test_a_seeded_fuzz_of_hostile_wake_ups_is_dropped_and_never_starts_a_round() -> None:
    issuer, gate = _pair()
    other = WakeupIssuer(new_token())  # well-formed, but not the job's token
    valid = [other.search(2, 3, DIM, None), other.count(), other.delete(["x"])]
    for message in hostile_messages(seed=7, count=4000, valid=valid):
        assert gate.admit([message]) is None
    assert gate.admit([b"\x80", b"second frame"]) is None
    assert gate.stats.accepted == 0
    assert gate.stats.dropped_total == 4001
    assert gate.stats.dropped["multipart"] == 1
    assert gate.stats.dropped["forged"] > 0
    assert gate.admit([issuer.count()]) is not None  # the genuine stream is still in step


def test_a_wake_up_without_the_jobs_token_is_dropped_as_forged() -> None:
    _, gate = _pair()
    forged = WakeupIssuer(b"\x00" * TOKEN_BYTES)
    assert gate.admit([forged.delete(["a-document"])]) is None
    assert gate.stats.dropped["forged"] == 1


def test_a_wake_up_seen_before_is_dropped_as_stale() -> None:
    issuer, gate = _pair()
    first = issuer.count()
    assert gate.admit([first]) is not None
    assert gate.admit([first]) is None
    assert gate.stats.dropped["stale"] == 1


def test_a_genuine_wake_up_past_the_next_one_means_the_ranks_are_out_of_step() -> None:
    issuer, gate = _pair()
    issuer.count()  # lost on the way
    with pytest.raises(WakeupError, match="out of step"):
        gate.admit([issuer.count()])


def test_memory_wake_ups_carry_their_parameters_and_a_misfit_cannot_be_followed() -> None:
    token = new_token()
    issuer, gate = WakeupIssuer(token), WakeupGate(token, DIM, rank=1, size=3)
    dual = DualQuery(mode="both", sessions=["a", ""], weights=MemoryWeights(), now=5.0)
    search = gate.admit([issuer.search(2, 3, DIM, None, dual)])
    remember = gate.admit([issuer.remember([10, 0, 7])])
    forget = gate.admit([issuer.forget(["a"])])
    assert isinstance(search, SearchWake) and search.dual == dual
    assert isinstance(remember, RememberWake) and remember.sizes == [10, 0, 7]
    assert isinstance(forget, ForgetWake) and forget.sessions == ["a"]
    with pytest.raises(WakeupError, match="3 ranks, the job has"):
        WakeupGate(token, DIM, rank=1, size=4).admit([WakeupIssuer(token).remember([1, 2, 3])])
    with pytest.raises(WakeupError, match="2 sessions for 3 queries"):
        WakeupGate(token, DIM, rank=1).admit([WakeupIssuer(token).search(3, 1, DIM, None, dual)])


def test_a_genuine_search_of_another_dimension_cannot_be_followed() -> None:
    issuer, gate = _pair()
    with pytest.raises(WakeupError, match="dimension"):
        gate.admit([issuer.search(1, 1, DIM + 1, None)])


@pytest.mark.parametrize(
    "fields",
    [
        {"nq": 0},
        {"nq": 10**6},
        {"k": 0},
        {"k": 2**64 - 1},
        {"filter": {"ts_from_ms": 2**64 - 1}},
        {"filter": {"sources": []}},
        {"seq": 0},
        {"token": b"short"},
        {"extra": 1},
    ],
)
def test_a_search_wake_up_out_of_bounds_is_dropped_as_invalid(fields: dict[str, object]) -> None:
    issuer, gate = _pair()
    body = {
        "kind": "search",
        "seq": 1,
        "token": issuer._token,
        "nq": 1,
        "k": 1,
        "dim": DIM,
        "filter": None,
        **fields,
    }
    assert gate.admit([msgspec.msgpack.encode(body)]) is None
    assert gate.stats.dropped["invalid"] == 1
    assert set(gate.stats.dropped) == set(DROP_REASONS)


def _recording_watchdog() -> tuple[Watchdog, list[str], threading.Event]:
    """A started watchdog that records what it reports and sets the event when it does."""
    reported: list[str] = []
    fired = threading.Event()

    def overdue(what: str) -> None:
        reported.append(what)
        fired.set()

    watchdog = Watchdog(overdue, check_s=0.01)
    watchdog.start()
    return watchdog, reported, fired


def test_the_watchdog_reports_a_call_that_runs_past_its_deadline() -> None:
    watchdog, reported, fired = _recording_watchdog()
    try:
        with watchdog.watch(0.02, "a quick round"):
            pass
        with watchdog.watch(None, "an unwatched call"):
            pass
        with watchdog.watch(0.05, "a stuck round"):
            assert fired.wait(WAIT_S)
    finally:
        watchdog.close()
    assert reported == ["a stuck round did not complete within 0.05s"]


def test_a_hurried_call_is_reported_at_its_shorter_deadline() -> None:
    watchdog, reported, fired = _recording_watchdog()
    try:
        watchdog.hurry(0.01)  # nothing watched: nothing to hurry
        with watchdog.watch(60.0, "a round a stopped peer never joins"):
            started = time.monotonic()
            watchdog.hurry(0.05)
            watchdog.hurry(10.0)  # never later than it already is
            assert fired.wait(WAIT_S)
            took = time.monotonic() - started
    finally:
        watchdog.close()
    assert reported == [
        "a round a stopped peer never joins did not complete within 60.0s "
        "(hurried: this rank is stopping)"
    ]
    assert took < 5.0
