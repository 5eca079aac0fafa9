"""Is a silent actor hung? A pure judgement from how long it was silent and what ``/proc``
says about its main thread (the thread of its event loop, which sends the stats).

Every actor sends ``Stats`` every ``stats_interval_s``. One that sent nothing for the
heartbeat timeout is judged by its main thread:

* stopped (SIGSTOP, a debugger): hung;
* running or in disk wait, or it used CPU since the previous look: *busy* — an operator call
  that holds the event loop (an embedding batch on a CPU, a shard's final snapshot) — given
  up to ``BUSY_FACTOR`` times the timeout before it counts as hung too;
* otherwise (asleep and using no CPU: a deadlock, a wait that never ends): hung.

    silent <= timeout ............................ alive
    stopped ...................................... hung
    silent > BUSY_FACTOR x timeout ................ hung
    running, disk wait, or CPU used since last ... busy
    else ......................................... hung
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Final

from ..procs import ThreadSample

# A busy actor (its event loop held by an operator call) may stay silent this many heartbeat
# timeouts before it counts as hung: a CPU embedding batch of 256 chunks takes ~6 s here.
BUSY_FACTOR: Final = 12
# Main-thread states of a thread that does work (running, or waiting for its disk).
WORKING_STATES: Final = frozenset("RD")


class Verdict(Enum):
    ALIVE = "alive"
    BUSY = "busy"
    HUNG = "hung"


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str = ""


def heartbeat_timeout(stats_interval_s: float, configured_s: float | None = None) -> float:
    """The silence after which an actor is suspect: ``configured_s``, else 5 stats intervals
    and at least 5 s (the one place for this default)."""
    if configured_s is not None:
        return configured_s
    return max(5.0 * stats_interval_s, 5.0)


def judge(
    silent_s: float,
    timeout_s: float,
    before: ThreadSample | None,
    now: ThreadSample | None,
) -> Judgement:
    """``before``: the previous look at the main thread (None on the first look), ``now``
    this one (None: the process is gone, which the exit checks handle, not this)."""
    if silent_s <= timeout_s or now is None:
        return Judgement(Verdict.ALIVE)
    if now.stopped:
        return Judgement(Verdict.HUNG, f"no message for {silent_s:.1f}s: the process is stopped")
    limit = BUSY_FACTOR * timeout_s
    if silent_s > limit:
        return Judgement(
            Verdict.HUNG, f"no message for {silent_s:.1f}s (busy for longer than {limit:.0f}s)"
        )
    used_cpu = before is not None and now.cpu_ticks > before.cpu_ticks
    if now.state in WORKING_STATES or used_cpu:
        return Judgement(Verdict.BUSY)
    if before is None:  # asleep right now: one more look before judging
        return Judgement(Verdict.BUSY)
    return Judgement(
        Verdict.HUNG, f"no message for {silent_s:.1f}s: its event loop is blocked (no CPU used)"
    )
