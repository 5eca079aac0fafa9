"""The hung/busy judgement of a silent actor, and the samples it is made from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aaflow_stream.observe.status import StatusBoard
from aaflow_stream.plan import ChainedOperator, GraphSpec, StageSpec
from aaflow_stream.procs import ThreadSample, main_thread
from aaflow_stream.runtime.liveness import BUSY_FACTOR, Verdict, heartbeat_timeout, judge

TIMEOUT = 5.0
SLEEPING = ThreadSample("S", 100)


def test_the_heartbeat_timeout_defaults_to_five_intervals_and_at_least_five_seconds() -> None:
    assert heartbeat_timeout(0.5) == 5.0
    assert heartbeat_timeout(2.0) == 10.0
    assert heartbeat_timeout(0.5, 1.5) == 1.5


def test_an_actor_heard_from_within_the_timeout_is_alive_whatever_its_state() -> None:
    assert judge(4.9, TIMEOUT, None, ThreadSample("T", 0)).verdict is Verdict.ALIVE


def test_a_silent_stopped_actor_is_hung_at_the_first_look() -> None:
    judged = judge(5.1, TIMEOUT, None, ThreadSample("T", 7))
    assert judged.verdict is Verdict.HUNG and "stopped" in judged.reason


@pytest.mark.parametrize("state", ["R", "D"])
def test_a_silent_actor_whose_loop_thread_works_is_busy_not_hung(state: str) -> None:
    assert judge(30.0, TIMEOUT, SLEEPING, ThreadSample(state, 100)).verdict is Verdict.BUSY


def test_a_silent_actor_that_used_cpu_since_the_last_look_is_busy() -> None:
    assert judge(9.0, TIMEOUT, SLEEPING, ThreadSample("S", 150)).verdict is Verdict.BUSY


def test_a_silent_sleeping_actor_gets_a_second_look_then_is_hung_if_it_used_no_cpu() -> None:
    assert judge(5.2, TIMEOUT, None, SLEEPING).verdict is Verdict.BUSY
    judged = judge(5.7, TIMEOUT, SLEEPING, SLEEPING)
    assert judged.verdict is Verdict.HUNG and "blocked" in judged.reason


def test_even_a_busy_actor_is_hung_past_the_busy_limit() -> None:
    judged = judge(BUSY_FACTOR * TIMEOUT + 1, TIMEOUT, SLEEPING, ThreadSample("R", 999))
    assert judged.verdict is Verdict.HUNG and "busy" in judged.reason


def test_a_gone_process_is_left_to_the_exit_checks() -> None:
    assert judge(60.0, TIMEOUT, SLEEPING, None).verdict is Verdict.ALIVE


def test_the_main_thread_sample_of_this_process_says_it_runs() -> None:
    sample = main_thread(os.getpid())
    assert sample is not None and sample.state == "R" and not sample.stopped
    assert sample.cpu_ticks >= 0


def test_a_hung_actor_without_stats_still_shows_in_the_status_with_its_state(
    tmp_path: Path,
) -> None:
    graph = GraphSpec(
        stages=[StageSpec("load", "m:L", chain=[ChainedOperator("transform", "m:T")])]
    )
    board = StatusBoard(graph, tmp_path)
    board.actor_state("load.0", "running", 42)
    board.actor_state("load.0", "hung")
    rows = board.write().stages
    assert [(r.stage, r.actor, r.state, r.pid) for r in rows] == [
        ("load", "load.0", "hung", 42),
        ("transform", "load.0", "hung", 42),
    ]
