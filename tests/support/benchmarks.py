"""Run a benchmark the way a user does, ``python -m bench.<name> ARGS --json`` from the
repository root, and read its result: the tests import nothing from ``bench/``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from ..conftest import REPO_DIR


@dataclass(frozen=True)
class BenchRun:
    code: int
    stdout: str
    stderr: str

    @property
    def result(self) -> dict[str, Any]:
        """The JSON object ``--json`` prints as the last line of stdout."""
        lines = self.stdout.strip().splitlines()
        try:
            parsed = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise AssertionError(
                f"no JSON object last on stdout (exit {self.code}):\n"
                f"{self.stdout[-2000:]}\n{self.stderr[-4000:]}"
            )
        return parsed


def run_bench(
    name: str, *args: str, timeout_s: float, env: dict[str, str] | None = None
) -> BenchRun:
    """``python -m bench.<name> ARGS --json``; ``env`` is added to this process's environment."""
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{name}", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_DIR,
        env={**os.environ, **(env or {})},
    )
    return BenchRun(done.returncode, done.stdout, done.stderr)
