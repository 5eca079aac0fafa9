"""Running the engine as a user does, from this interpreter (``python -m aaflow_stream.cli``):
``up --json --quiet`` to its end, measured (``run_up``), or ``up --detach`` … ``down`` around a
block that talks to the serving topology (``Served``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .cli import progress
from .procs import ChildrenCpu, RssSampler, descendants, kill_leftovers

DOWN_TIMEOUT_S = 120.0


def command(*args: str) -> list[str]:
    """``aaflow-stream ARGS`` with this interpreter (no console script needed)."""
    return [sys.executable, "-m", "aaflow_stream.cli", *args]


def last_json(stdout: str) -> dict[str, Any] | None:
    """The summary ``up --json`` prints as its last stdout line, if it did."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                return None
            return parsed if isinstance(parsed, dict) else None
    return None


@dataclass(frozen=True)
class UpRun:
    """One ``up --json --quiet`` to its end, and what its process tree cost."""

    code: int | None  # None: killed at the timeout
    summary: dict[str, Any] | None
    stderr: str
    wall_s: float  # the whole command, start-up and teardown included
    cpu_s: float  # user + system of the command and every process it reaped
    peak_rss_mb: float  # of the command and all its descendants (the mpiexec ranks too)

    @property
    def failure(self) -> str | None:
        """Why the run has no result, or None."""
        if self.code is None:
            return "timed out"
        if self.code != 0 or self.summary is None:
            tail = " | ".join(self.stderr.strip().splitlines()[-5:])
            return f"exit {self.code}: {tail}"
        return None


def run_up(topology: Path, timeout_s: float) -> UpRun:
    """``up TOPOLOGY --json --quiet`` to its end, its process tree's RSS sampled every 50 ms."""
    t0 = time.perf_counter()
    code: int | None
    with ChildrenCpu() as cpu:
        proc = subprocess.Popen(
            command("up", str(topology), "--json", "--quiet"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        with RssSampler(interval_s=0.05, rescan=4, root=proc.pid) as rss:
            try:
                stdout, stderr = proc.communicate(timeout=timeout_s)
                code = proc.returncode
            except subprocess.TimeoutExpired:
                proc.kill()
                stdout, stderr = proc.communicate()
                code = None
    wall_s = time.perf_counter() - t0
    return UpRun(code, last_json(stdout), stderr, wall_s, cpu.seconds, rss.peak_mb)


class Served:
    """A topology served with ``up --detach`` for the duration of a ``with`` block (or until
    ``stop``): ``down`` on the way out, then SIGKILL for any process of its tree still alive
    (noted on stderr: a clean ``down`` leaves none)."""

    def __init__(self, topology: Path, run_dir: Path, *, timeout_s: float = 600.0) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.timeout_s = timeout_s
        self.pid: int | None = None  # the detached supervisor's
        self._tree: set[int] = set()
        self._up = False

    def __enter__(self) -> Served:
        self._up = True  # a failed start may have left processes: stop() looks for them
        try:
            started = subprocess.run(
                command("up", str(self.topology), "--detach"),
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
            )
            if started.returncode != 0:
                raise RuntimeError(
                    f"aaflow-stream up --detach exited {started.returncode}:\n"
                    f"{started.stderr}{started.stdout}"
                )
            self.pid = int((self.run_dir / "up.pid").read_text())
            self.track()
        except BaseException:
            self.stop()
            raise
        return self

    def track(self) -> None:
        """Remember the processes the topology runs now (the ranks start after ``up``)."""
        if self.pid is not None:
            self._tree |= {self.pid, *descendants(self.pid)}

    def stop(self) -> None:
        """``down``, then kill what is left; idempotent."""
        if not self._up:
            return
        self._up = False
        self.track()
        down = subprocess.run(
            command("down", str(self.topology)),
            capture_output=True,
            text=True,
            timeout=DOWN_TIMEOUT_S,
        )
        if down.returncode != 0:
            progress(f"odd: aaflow-stream down exited {down.returncode}: {down.stderr.strip()}")
        if killed := kill_leftovers(sorted(self._tree)):
            progress(f"odd: killed leftover processes {killed}")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
