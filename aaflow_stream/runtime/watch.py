"""Finding the failures of a running graph: what the supervisor polls on every pump.

Detection only; the supervisor reacts (logs, events, status, kills, restarts). A failure is:

* a launch that exited non-zero (an actor, or an MPI job: then the rank that reported a
  failure is the culprit, else the one seen gone first);
* an MPI rank whose own process ended without its Done, whether its mpiexec still runs
  (which may never notice: stopped, or waiting for a proxy) or ended with 0 (``gforker``
  reports a rank killed by a signal so). A Done sent just before the exit gets
  ``MPIEXEC_GRACE_S`` to arrive, and an mpiexec that ends within it reports its exit code;
* an actor silent for the heartbeat timeout whose event loop is stopped or blocked
  (``liveness.judge``): *hung*.

The per-actor bookkeeping this needs (``gone_at``, ``probe``, a launch's ``ended_at``) lives
on ``ActorProcess`` and ``Launch`` and is updated here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..procs import alive, main_thread
from .launches import MPIEXEC_GRACE_S, ActorProcess, Launch
from .liveness import Verdict, judge

# A silent actor's main thread is looked at no more often than this.
PROBE_EVERY_S: Final = 0.5

Group = tuple[Launch, list[ActorProcess]]


@dataclass(frozen=True)
class Finding:
    """A failure: its culprit, the exit code when one is known, why (added to the
    culprit's last error), and whether the culprit is alive but hung."""

    actor: ActorProcess
    code: int | None
    why: str = ""
    hung: bool = False


def find(groups: list[Group], heartbeat_s: float, now: float, final: bool) -> Finding | None:
    """The first failure among ``groups`` (each launch with its actors), or None.
    ``final``: every process ended and its last messages were read: no grace is left."""
    for launch, members in groups:
        code = launch.exit_code()
        if code is not None and launch.ended_at is None:
            launch.ended_at = now
        if code is not None and code != 0:
            return Finding(culprit(members), code)
        if launch.mpi:
            found = _rank_ended(launch, members, now, final)
            if found is not None:
                return found
    for _launch, members in groups:
        for actor in members:
            found = _silent(actor, heartbeat_s, now)
            if found is not None:
                return found
    return None


def awaiting_done(groups: list[Group], now: float) -> bool:
    """An MPI job ended with 0 while some rank's Done may still be on its way."""
    return any(
        launch.ended_at is not None
        and now - launch.ended_at <= MPIEXEC_GRACE_S
        and not all(a.done for a in members)
        for launch, members in groups
        if launch.mpi and launch.exit_code() == 0
    )


def culprit(members: list[ActorProcess]) -> ActorProcess:
    """The rank that reported a failure, else the one seen gone first, else one that ended
    without its Done; not the peers its end took along."""
    reported = [a for a in members if a.failure]
    gone = sorted((a for a in members if a.gone_at is not None), key=lambda a: a.gone_at or 0)
    undone = [a for a in members if not a.done]
    return (reported or gone or undone or members)[0]


def _rank_ended(
    launch: Launch, members: list[ActorProcess], now: float, final: bool
) -> Finding | None:
    if launch.ended_at is not None:  # the job ended with 0
        undone = [a for a in members if not a.done]
        since = min([launch.ended_at, *(a.gone_at for a in undone if a.gone_at is not None)])
        if undone and (final or now - since > MPIEXEC_GRACE_S):
            return Finding(culprit(members), None, "ended without its Done")
        return None
    for a in members:
        if a.pid is None or a.done or not a.is_rank:
            continue
        if alive(a.pid):
            a.gone_at = None
            continue
        if a.gone_at is None:
            a.gone_at = now
        if final or now - a.gone_at > MPIEXEC_GRACE_S:
            return Finding(a, None, f"rank process {a.pid} ended while its mpiexec job still runs")
    return None


def _silent(actor: ActorProcess, heartbeat_s: float, now: float) -> Finding | None:
    if not actor.ready or actor.done or actor.hung or actor.pid is None:
        return None
    silent = now - actor.heard_at
    if silent <= heartbeat_s:
        actor.probe = None
        return None
    if now - actor.probed_at < PROBE_EVERY_S:
        return None
    sample = main_thread(actor.pid)
    judgement = judge(silent, heartbeat_s, actor.probe, sample)
    actor.probe, actor.probed_at = sample, now
    if judgement.verdict is Verdict.HUNG:
        return Finding(actor, None, judgement.reason, hung=True)
    return None
