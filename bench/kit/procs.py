"""Measuring and cleaning up process trees: peak RSS of a tree, CPU of reaped children, and
SIGKILL for whatever a run started and left behind."""

from __future__ import annotations

import itertools
import os
import resource
import signal
import threading
from collections.abc import Sequence

import psutil


class RssSampler:
    """Peak RSS of a process (`root`, default this one) and all its descendants, sampled
    in a thread.

    Listing descendants scans /proc (~1 ms, holding the GIL), so the list is refreshed
    every `rescan` samples and only the cheap RSS reads happen every `interval_s`.
    """

    def __init__(self, interval_s: float = 0.05, rescan: int = 10, root: int | None = None) -> None:
        self.interval_s = interval_s
        self.rescan = rescan
        self.root = root
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        me = psutil.Process(self.root)
        procs: list[psutil.Process] = []
        for tick in itertools.count():
            if tick % self.rescan == 0:
                try:
                    procs = [me, *me.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass  # the root exited: keep reading what is left of its tree
            total = 0
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass  # exited since the last scan
            self.peak_bytes = max(self.peak_bytes, total)
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


class ChildrenCpu:
    """CPU seconds (user + system) of the children reaped while the block runs."""

    seconds = 0.0

    @staticmethod
    def _now() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> ChildrenCpu:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = self._now() - self._start


def descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def kill_leftovers(pids: Sequence[int]) -> list[int]:
    """SIGKILL whichever of `pids` (processes this run started) are still alive."""
    killed = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except (psutil.Error, ProcessLookupError):
            continue
    return killed
