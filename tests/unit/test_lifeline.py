"""The lifeline ends a process once the process it watches is gone: at once when the actor
is not running yet, after the grace period when an orderly stop did not end it."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from aaflow_stream.runtime.lifeline import Lifeline

# The watcher: a lifeline on the pid given, then a sleep that nothing but the lifeline ends.
WATCHER = """
import sys, time
from pathlib import Path
from aaflow_stream.runtime.lifeline import Lifeline

pid, mode, out = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
lifeline = Lifeline(pid, exit_code=7).start()
if mode == "running":
    lifeline.running(lambda: out.write_text("stop asked"), grace_s=0.5)
out.with_suffix(".ready").touch()
time.sleep(3600)
"""


def _watch_a_process_that_dies(tmp_path: Path, mode: str) -> tuple[int, float]:
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    out = tmp_path / "stop.txt"
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, str(watched.pid), mode, str(out)])
    try:
        deadline = time.monotonic() + 30
        while not out.with_suffix(".ready").exists():
            assert time.monotonic() < deadline and watcher.poll() is None
            time.sleep(0.02)
        watched.kill()
        watched.wait()  # reaped: gone, not a zombie
        killed = time.monotonic()
        code = watcher.wait(timeout=10)
        return code, time.monotonic() - killed
    finally:
        for proc in (watched, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_process_not_running_yet_ends_as_soon_as_the_watched_one_is_gone(
    tmp_path: Path,
) -> None:
    code, took_s = _watch_a_process_that_dies(tmp_path, "starting")
    assert code == 7
    assert took_s < 2.0
    assert not (tmp_path / "stop.txt").exists()


def test_a_running_process_is_asked_to_stop_and_ended_after_the_grace(tmp_path: Path) -> None:
    code, took_s = _watch_a_process_that_dies(tmp_path, "running")
    assert code == 7
    assert (tmp_path / "stop.txt").read_text() == "stop asked"
    assert 0.5 <= took_s < 3.0


def test_a_process_that_is_gone_already_is_noticed_at_once() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ended: list[int] = []
    Lifeline(dead.pid, exit_code=3, exit=ended.append).start()
    deadline = time.monotonic() + 5
    while not ended:
        if time.monotonic() > deadline:
            pytest.fail("the lifeline did not notice a process that had exited")
        time.sleep(0.01)
    assert ended == [3]
