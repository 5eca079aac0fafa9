"""A serving topology whose supervisor is killed while queries run: every rank is gone within
seconds (the lifeline asks each to stop; a round under way at a rank that stops gets
``STOPPING_CALL_S``, not the round timeout), and the data directory is free again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from aaflow_stream import ownership
from aaflow_stream.client import Client, GatewayUnavailable, RequestError

from ..conftest import REPO_DIR
from .ingest import write_topology

pytestmark = pytest.mark.mpi

# The round timeout is the default (30 s): what a stopping rank used to wait for.
BOUND_S = 15.0


def _query_until(endpoint: str, stop: threading.Event, answered: list[int]) -> None:
    with Client(endpoint, timeout_s=2.0) as client:
        while not stop.is_set():
            try:
                client.query("documents about anything", k=3)
                answered.append(1)
            except (GatewayUnavailable, RequestError):
                pass


def _rank_pids(run_dir: Path) -> list[int]:
    status = json.loads((run_dir / "status.json").read_text())
    return [row["pid"] for row in status["stages"] if row["stage"] == "shard" and row["pid"]]


def test_serving_ranks_end_within_seconds_of_a_killed_supervisor(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/q.sock"
    topology = write_topology(
        tmp_path / "t.yaml",
        REPO_DIR / "samples" / "corpus",
        tmp_path / "data",
        shards=4,
        extra=f"query: {{endpoint: '{endpoint}', max_wait_ms: 1}}\n",
    )
    cli = [sys.executable, "-m", "aaflow_stream.cli"]
    started = subprocess.run(
        [*cli, "up", str(topology), "--detach"], capture_output=True, text=True, timeout=180
    )
    assert started.returncode == 0, started.stdout + started.stderr
    run_dir = tmp_path / "run"
    supervisor = int((run_dir / "up.pid").read_text())
    deadline = time.monotonic() + 30
    while len(ranks := _rank_pids(run_dir)) < 4:
        assert time.monotonic() < deadline, "no rank pids in status.json"
        time.sleep(0.2)
    procs = [psutil.Process(pid) for pid in ranks]
    stop, answered = threading.Event(), []
    clients = [
        threading.Thread(target=_query_until, args=(endpoint, stop, answered)) for _ in range(4)
    ]
    for thread in clients:
        thread.start()
    try:
        while len(answered) < 50:  # rounds are running
            time.sleep(0.05)
        os.kill(supervisor, signal.SIGKILL)
        killed = time.monotonic()
        _gone, alive = psutil.wait_procs(procs, timeout=BOUND_S + 10)
        took = time.monotonic() - killed
        left = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=10)
        for p in procs:
            if p.is_running():
                p.kill()
    assert left == [] and took < BOUND_S, f"ranks ended {took:.1f}s after the supervisor"
    # The data directory's lock went with the last process: the next `up` may take it.
    ownership.acquire(tmp_path / "data", "data directory").release()
