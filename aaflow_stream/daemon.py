"""``up --detach`` and ``down``: a serving topology as a background process.

``detach`` starts ``aaflow-stream up TOPOLOGY --serve`` in a session of its own, with its
output in ``<run_dir>/up.log`` and its pid in ``<run_dir>/up.pid``, and returns once the
gateway answers (or the process died, with the log's tail as the reason). The caller holds
the data and run directory locks (``ownership.py``) and hands their descriptors to the child,
which holds them from then on: no other ``up`` can slip in between. ``down`` asks it to stop
(SIGTERM: the ordered drain of Ctrl-C), waits, and removes the pid file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from .channels.curve import ClientKeys
from .client import Client
from .errors import DaemonError, GatewayUnavailable

PID_FILE = "up.pid"
LOG_FILE = "up.log"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running_pid(run_dir: Path) -> int | None:
    try:
        pid = int((run_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    return pid if _alive(pid) else None


def _tail(path: Path, lines: int = 8) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def detach(
    topology: Path,
    run_dir: Path,
    endpoint: str,
    log_level: str,
    timeout_s: float,
    *,
    locks: tuple[int, ...] = (),
    curve: ClientKeys | None = None,
) -> int:
    """Start the serving topology in the background; return its pid once it answers.

    ``locks``: the directory locks the caller took, inherited by the child (which adopts
    them with ``--held-lock``); the caller's own copies may close once this returns.
    ``curve``: the keys that reach the gateway when it is off loopback.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / LOG_FILE
    held = [arg for fd in locks for arg in ("--held-lock", str(fd))]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aaflow_stream.cli",
                "--log-level",
                log_level,
                "up",
                str(topology),
                "--serve",
                "--quiet",
                "--run-dir",
                str(run_dir),
                *held,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=locks,
        )
    (run_dir / PID_FILE).write_text(str(proc.pid))
    deadline = time.monotonic() + timeout_s
    with Client(endpoint, timeout_s=1.0, curve=curve) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                (run_dir / PID_FILE).unlink(missing_ok=True)
                raise DaemonError(
                    f"exited with code {proc.returncode}:\n{_tail(log_path)}", proc.returncode
                )
            try:
                client.stats()
                return proc.pid
            except GatewayUnavailable:
                continue
    down(run_dir, timeout_s=30)
    raise DaemonError(f"the gateway did not answer within {timeout_s}s:\n{_tail(log_path)}")


def down(run_dir: Path, timeout_s: float) -> str:
    """Stop the background topology of ``run_dir``; returns the tail of its log."""
    pid = running_pid(run_dir)
    if pid is None:
        (run_dir / PID_FILE).unlink(missing_ok=True)
        raise DaemonError(f"nothing is running for {run_dir}")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        try:  # reap it when it is our child (tests); otherwise init does
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    (run_dir / PID_FILE).unlink(missing_ok=True)
    return _tail(run_dir / LOG_FILE, 12)
