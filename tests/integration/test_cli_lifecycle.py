"""The ``aaflow-stream up`` process itself: interrupted, killed, or given a bad file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from .graphs import TEST_ENV


def _graph_file(run_dir: Path, batches: int) -> Path:
    path = run_dir / "graph.yaml"
    path.write_text(
        "stages:\n"
        "  - {name: source, operator: 'aaflow_stream.operators.basic:SyntheticSource',\n"
        f"     params: {{batches: {batches}, rows: 32}}}}\n"
        "  - {name: relay, operator: 'aaflow_stream.operators.basic:PassThrough',\n"
        "     params: {delay_ms: 1}, replicas: 2}\n"
        f"  - {{name: sink, operator: 'aaflow_stream.operators.basic:ArrowFileSink',\n"
        f"     params: {{path: '{run_dir}/out'}}}}\n"
        "window: 4\n"
        "drain_timeout_s: 5\n"
    )
    return path


def _start(run_dir: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "aaflow_stream.cli", "--log-level", "INFO", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **TEST_ENV},
    )


def _actors_of(run_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if (
            any(str(run_dir) in part for part in cmdline)
            and "aaflow_stream.runtime.actor" in cmdline
        ):
            found.append(proc)
    return found


def _wait_for_actors(run_dir: Path, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(_actors_of(run_dir)) < count or not (run_dir / "out").exists():
        assert time.monotonic() < deadline, "actors did not start"
        time.sleep(0.1)


def test_ctrl_c_drains_the_graph_and_leaves_nothing_behind(run_dir: Path) -> None:
    graph = _graph_file(run_dir, batches=10**7)
    proc = _start(run_dir, "run-graph", str(graph), "--run-dir", str(run_dir / "run"))
    _wait_for_actors(run_dir, 4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    logs = {p.name: p.read_text() for p in (run_dir / "run" / "logs").glob("*.log")}
    assert proc.returncode == 0, (err, logs)
    assert "finished" in out
    assert _actors_of(run_dir) == []
    assert not (run_dir / "run" / "sock").exists()


def test_actors_die_with_a_killed_supervisor(run_dir: Path) -> None:
    graph = _graph_file(run_dir, batches=10**7)
    proc = _start(run_dir, "run-graph", str(graph), "--run-dir", str(run_dir / "run"))
    _wait_for_actors(run_dir, 4)
    actors = _actors_of(run_dir)
    proc.kill()
    proc.communicate(timeout=10)
    # Each stage may drain for drain_timeout_s (5 s) and then wait as long for its EOS acks,
    # one stage after the other: ~20 s at worst, which a loaded machine can exceed.
    _gone, alive = psutil.wait_procs(actors, timeout=45)
    # An exited actor whose parent died stays a zombie until init reaps it: it is gone.
    running = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    stuck = [" ".join(p.cmdline()[-1:]) for p in running]  # the actor's spec file names it
    logs = {f.name: f.read_text()[-1500:] for f in (run_dir / "run" / "logs").glob("*.log")}
    for p in running:
        p.kill()
    assert running == [], (stuck, logs)


def test_a_malformed_graph_file_is_refused_before_anything_starts(run_dir: Path) -> None:
    bad = run_dir / "bad.yaml"
    bad.write_text("stages:\n  - {name: s, operator: 'm:f', replicas: two}\n")
    proc = _start(run_dir, "run-graph", str(bad), "--run-dir", str(run_dir / "run"))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "$.stages[0].replicas" in err and "Expected `int`" in err
    assert not (run_dir / "run").exists()
