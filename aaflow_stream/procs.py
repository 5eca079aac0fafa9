"""Process liveness, read from signals and ``/proc``: for the supervisor, the actors, the shard
job and the tools that look at a run. Pure stdlib, so every layer may use it."""

from __future__ import annotations

import os
from dataclasses import dataclass

# /proc state letters of a process that cannot run until someone sends SIGCONT.
STOPPED_STATES = frozenset("Tt")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:  # no /proc (not Linux): trust the signal check
        return True


@dataclass(frozen=True)
class ThreadSample:
    """What ``/proc`` says about a process's main thread (an actor's event loop) right now."""

    state: str  # R running, S sleeping, D disk wait, T/t stopped, Z zombie, ...
    cpu_ticks: int  # user + system CPU of that thread, in clock ticks

    @property
    def stopped(self) -> bool:
        return self.state in STOPPED_STATES


def main_thread(pid: int) -> ThreadSample | None:
    """A sample of ``pid``'s main thread; None when it is gone or ``/proc`` cannot tell."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        # After the command name: state (field 3 of proc(5)), ..., utime (14), stime (15).
        return ThreadSample(fields[0], int(fields[11]) + int(fields[12]))
    except (OSError, IndexError, ValueError):
        return None
