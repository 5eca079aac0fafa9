"""One W1 baseline run with its worker count, embed batch and shard count chosen: a point of the
scaling sweep in ``bench/report.py``, run in a fresh interpreter as ``bench.baselines`` runs its
own (so that imports and RSS do not leak from one run into the next).

    python -m bench.kit.w1_sweep mp_pool --corpus DIR --workers 4 --batch 64 --shards 4 \\
        --result OUT.json

The baselines take the shard count and the embed batch as arguments, and their worker count
from ``bench.baselines.WORKERS`` (W1's 2), which they read when a run starts: the child sets it
before the run. This is the one kit module that reaches up into ``bench/``: it runs baselines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from ..w1_stages import BaselineResult
from .procs import ChildrenCpu

REPO_DIR = Path(__file__).resolve().parents[2]
POINT_TIMEOUT_S = 900.0
# The baselines that have a worker count (sequential runs in one process; the floors are fixed
# at the engine's layout).
SYSTEMS = ("asyncio", "mp_pool", "dask", "ray", "llamaindex")


def run_point(
    system: str, corpus: Path, *, workers: int, batch: int, shards: int
) -> BaselineResult:
    """One run of baseline ``system`` in a fresh interpreter; a failed run comes back with
    ``skipped`` saying why, as from ``bench.baselines.run_isolated``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            "-m",
            "bench.kit.w1_sweep",
            system,
            f"--corpus={corpus.resolve()}",
            f"--workers={workers}",
            f"--batch={batch}",
            f"--shards={shards}",
            f"--result={out}",
        ]
        with ChildrenCpu() as cpu:
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, cwd=REPO_DIR, timeout=POINT_TIMEOUT_S
                )
            except subprocess.TimeoutExpired:
                return BaselineResult(system, skipped=f"failed: timed out ({POINT_TIMEOUT_S:g} s)")
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            return BaselineResult(system, skipped="failed: " + " | ".join(tail))
        return BaselineResult(**{**json.loads(out.read_text()), "cpu_s": cpu.seconds})


def main(argv: list[str] | None = None) -> int:
    """The fresh interpreter of ``run_point``: one run, its result as JSON into --result."""
    # Imported here, by its module name: pool workers unpickle what it defines by that name.
    from bench import baselines

    parser = argparse.ArgumentParser(description="one W1 sweep point (for bench.report)")
    parser.add_argument("system", choices=SYSTEMS)
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True, help="embed batch")
    parser.add_argument("--shards", type=int, required=True)
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    baselines.WORKERS = args.workers  # read by every baseline when its run starts
    run = baselines.SYSTEMS[args.system]
    result = run(args.corpus, shards=args.shards, embed_batch=args.batch)
    args.result.write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
