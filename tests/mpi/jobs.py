"""Run a test job script under a real ``mpiexec`` and read the JSON report it writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from aaflow_stream.runtime.supervisor import mpiexec_path

from ..conftest import REPO_DIR


def run_job(ranks: int, script: str, report: Path, *args: str) -> Any:
    """``mpiexec -n ranks python tests/mpi/<script> *args``; the job's report, decoded."""
    proc = subprocess.run(
        [
            mpiexec_path(),
            "-n",
            str(ranks),
            sys.executable,
            str(REPO_DIR / "tests" / "mpi" / script),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_DIR)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(report.read_text())
