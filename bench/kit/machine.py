"""What machine a report ran on: CPU model, cores, memory, Python, OS, and the commit measured.
Numbers from different machines are not comparable; every report says where it ran."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import psutil

REPO_DIR = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU's marketing name: /proc/cpuinfo on Linux (``platform.processor()`` is often
    empty there), else whatever ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], capture_output=True, text=True, cwd=REPO_DIR, timeout=10, check=True
    ).stdout.strip()


def commit() -> str | None:
    """The checked-out commit, with ``+dirty`` when the work tree has changes; None outside git."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+dirty" if dirty else head


def describe() -> dict[str, Any]:
    """The machine as a JSON-able dict."""
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "os": platform.platform(terse=True),
        "commit": commit(),
    }
