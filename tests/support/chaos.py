"""One chaos trial: kill -9 an actor during a W1 ingestion, then check what the shards hold.

A trial runs ``aaflow-stream up`` on a fresh data directory with a topology whose stages are all
separate processes (load, transform, embed x2, upsert, 2 shard ranks), waits ``delay_s`` into
the feed and SIGKILLs one actor of the kind asked for (``source`` is the load actor, ``shard`` a
shard rank). When ``up`` has finished, the shards are read back from their snapshots and
checked against the chunks computed directly from the corpus (``check``):

- lost: expected chunk ids no shard holds;
- duplicated: rows beyond one per chunk id (over every shard's index and metadata), plus ids
  that are not expected at all;
- wrong vectors: stored vectors that differ from the hash embedder's output for that chunk.

Recovery time is from the kill to the restarted graph being ready again (the supervisor's
``ready_at``). A kill that lands after the feed ended is retried earlier (``missed``).

Used by the durability tests and by ``bench/chaos.py``, which runs many trials.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.text.chunking import chunk_id, chunk_windows

from .shards import read_shards

KINDS = ["source", "transform", "embed", "upsert", "shard"]
STAGE_OF = {"source": "load", "transform": "transform", "embed": "embed", "upsert": "upsert"}
SHARDS = 2
DIM = 384
UP_TIMEOUT_S = 240.0
READY_TIMEOUT_S = 60.0
TRIES = 4


def topology_yaml(corpus: Path, data_dir: Path, run_dir: Path, wal_sync: str = "interval") -> str:
    return f"""\
name: chaos
data_dir: {data_dir}
run_dir: {run_dir}
sources:
  - paths: [{corpus}]
stages:
  - {{operator: load, batch_docs: 16}}
  - {{operator: transform, chunk_size: 512, overlap: 64, normalize: false}}
  - {{operator: embed, replicas: 2, batch_size: 256}}
  - {{operator: upsert, batch_size: 1024}}
embedder: {{kind: hash, dim: {DIM}}}
shards: {{count: {SHARDS}, index: Flat, metric: ip}}
flow: {{window: 4}}
durability: {{wal_sync: {wal_sync}, restart: {{max_restarts: 3, backoff_s: 0.1}}}}
"""


def up_command(topology: Path) -> list[str]:
    return [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--json", "--quiet"]


def expected_chunks(corpus: Path) -> dict[int, np.ndarray]:
    """chunk id -> hash embedding, straight from the corpus files (the topology's transform)."""
    ids: list[int] = []
    texts: list[str] = []
    for path in sorted(corpus.glob("*.jsonl")):
        for line in path.read_bytes().splitlines():
            doc = json.loads(line)
            windows = chunk_windows(doc["text"], 512, 64)
            ids += [chunk_id(doc["doc_id"], seq) for seq in range(len(windows))]
            texts += windows
    return dict(zip(ids, HashEmbedder(DIM).embed(texts), strict=True))


@dataclass
class Check:
    lost: int
    duplicated: int
    wrong_vectors: int


def check(data_dir: Path, expected: dict[int, np.ndarray]) -> Check:
    shards = read_shards(data_dir)
    ids = np.concatenate([s.ids for s in shards])
    vectors = np.concatenate([s.vectors() for s in shards])
    meta_all = np.concatenate([s.meta_ids for s in shards])
    unique, counts = np.unique(ids, return_counts=True)
    want = np.fromiter(expected, dtype=np.uint64, count=len(expected)).astype(np.int64)
    lost = int(np.setdiff1d(want, unique).size)
    unexpected = int(np.setdiff1d(unique, want).size)
    meta_dups = len(meta_all) - len(np.unique(meta_all))
    duplicated = int((counts - 1).sum()) + unexpected + meta_dups
    wrong = 0
    for i, vector in zip(ids.tolist(), vectors, strict=True):
        ref = expected.get(int(np.int64(i).astype(np.uint64)))
        if ref is None or not np.allclose(ref, vector, atol=1e-6):
            wrong += 1
    return Check(lost, duplicated, wrong)


@dataclass
class Trial:
    kind: str
    victim: str = ""
    delay_s: float = 0.0
    killed: bool = False
    exit_code: int | None = None
    recovery_s: float | None = None
    restarts: int = 0
    check: Check | None = None
    error: str = ""
    missed: int = 0


def wait_pids(path: Path, proc: subprocess.Popen[str], timeout_s: float) -> dict[str, int]:
    """The actors' pids once ``up`` has written them (the graph is ready)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return {k: v for k, v in json.loads(path.read_text()).items() if v}
        except (OSError, ValueError):
            time.sleep(0.02)
    raise RuntimeError("the graph never became ready")


def _victims(pids: dict[str, int], kind: str) -> list[str]:
    if kind == "shard":
        return sorted(n for n in pids if n.startswith("shard."))
    return sorted(n for n in pids if n.split(".")[0] == STAGE_OF[kind])


def _summary(stdout: str) -> dict[str, Any]:
    """The summary ``up --json`` prints as its last line; empty where it printed none."""
    lines = stdout.strip().splitlines()
    try:
        parsed = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def run_trial(
    corpus: Path,
    expected: dict[int, np.ndarray],
    kind: str,
    delay_s: float,
    rng: random.Random,
    wal_sync: str = "interval",
) -> Trial:
    trial = Trial(kind)
    for _ in range(TRIES):
        work = Path(tempfile.mkdtemp(prefix="aaf-chaos-"))
        try:
            if _attempt(trial, work, corpus, expected, delay_s, rng, wal_sync):
                return trial
        finally:
            shutil.rmtree(work, ignore_errors=True)
        trial.missed += 1  # the kill landed after the feed ended: try earlier
        delay_s /= 2
    trial.error = f"every kill landed after the feed ended ({trial.missed} tries)"
    return trial


def _attempt(
    trial: Trial,
    work: Path,
    corpus: Path,
    expected: dict[int, np.ndarray],
    delay_s: float,
    rng: random.Random,
    wal_sync: str,
) -> bool:
    """One run with one kill; False when the kill came too late to count."""
    data_dir, run_dir = work / "data", work / "run"
    topology = work / "chaos.yaml"
    topology.write_text(topology_yaml(corpus, data_dir, run_dir, wal_sync))
    proc = subprocess.Popen(
        up_command(topology), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        pids = wait_pids(run_dir / "actors" / "pids.json", proc, READY_TIMEOUT_S)
        time.sleep(delay_s)
        victim = rng.choice(_victims(pids, trial.kind))
        killed_at = time.time()
        try:
            os.kill(pids[victim], signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate(timeout=UP_TIMEOUT_S)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        proc.kill()
        stdout, stderr = proc.communicate()
        trial.error = f"{exc}; stderr tail: {stderr[-500:]}"
        return True
    restarts = _summary(stdout).get("restarts", [])
    if proc.returncode == 0 and not restarts:
        return False
    trial.exit_code = proc.returncode
    trial.victim, trial.delay_s, trial.killed = victim, delay_s, True
    trial.restarts = len(restarts)
    if restarts:
        trial.recovery_s = restarts[0]["ready_at"] - killed_at
    if proc.returncode != 0:
        trial.error = f"up exited {proc.returncode}: {stderr[-800:]}"
        return True
    trial.check = check(data_dir, expected)
    return True
