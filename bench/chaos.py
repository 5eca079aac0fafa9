"""Chaos: kill -9 a random actor during a W1 ingestion, many times; nothing lost, nothing twice.

Each trial runs `aaflow-stream up` on a fresh data directory with a W1 corpus and a topology
whose stages are all separate processes (load, transform, embed x2, upsert, 2 shard ranks),
waits a random moment into the feed, and SIGKILLs one actor: the kinds take turns (source =
the load actor, transform, embed, upsert, a shard rank). The supervisor restarts the graph,
sources resume from their checkpoints and shards recover from their write-ahead logs. When
`up` has finished, the shards are read back from their snapshots and checked against the
chunks computed directly from the corpus:

- lost: expected chunk ids no shard holds;
- duplicated: rows beyond one per chunk id (over every shard's index and metadata), plus ids
  that are not expected at all;
- wrong vectors: stored vectors that differ from the hash embedder's output for that chunk.

Recovery time is from the kill to the restarted graph being ready again (the supervisor's
`ready_at`). A kill that lands after the feed ended is retried earlier (`missed`).

    python bench/chaos.py --quick
    python bench/chaos.py --trials 50 --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from w1_stages import embed_texts, load_file, transform_docs

from aaflow_stream.synthetic import generate

KINDS = ["source", "transform", "embed", "upsert", "shard"]
STAGE_OF = {"source": "load", "transform": "transform", "embed": "embed", "upsert": "upsert"}
SHARDS = 2
UP_TIMEOUT_S = 240.0


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
embedder: {{kind: hash, dim: 384}}
shards: {{count: {SHARDS}, index: Flat, metric: ip}}
flow: {{window: 4}}
durability: {{wal_sync: {wal_sync}, restart: {{max_restarts: 3, backoff_s: 0.1}}}}
"""


def expected_chunks(corpus: Path) -> dict[int, np.ndarray]:
    """chunk id -> hash embedding, straight from the corpus files (W1's stages, in-process)."""
    ids: list[int] = []
    texts: list[str] = []
    for path in sorted(corpus.glob("*.jsonl")):
        file_ids, file_texts = transform_docs(load_file(path))
        ids += file_ids
        texts += file_texts
    return dict(zip(ids, embed_texts(texts, 1024), strict=True))


def read_shards(data_dir: Path) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(ids, vectors) over every shard's snapshot index, and each shard's metadata ids."""
    import faiss
    import pyarrow as pa

    ids, vectors, meta_ids = [], [], []
    for shard in sorted(data_dir.glob("shard-*")):
        snapshot = shard / "snapshot"
        index = faiss.read_index(str(snapshot / "index.faiss"))
        ids.append(faiss.vector_to_array(index.id_map).astype(np.int64))
        vectors.append(index.index.reconstruct_n(0, index.ntotal))
        with pa.ipc.open_file(snapshot / "meta.arrow") as reader:
            meta_ids.append(reader.read_all().column("chunk_id").to_numpy().astype(np.int64))
    return np.concatenate(ids), np.concatenate(vectors), meta_ids


@dataclass
class Check:
    lost: int
    duplicated: int
    wrong_vectors: int


def check(data_dir: Path, expected: dict[int, np.ndarray]) -> Check:
    ids, vectors, meta_ids = read_shards(data_dir)
    unique, counts = np.unique(ids, return_counts=True)
    want = np.fromiter(expected, dtype=np.uint64, count=len(expected)).astype(np.int64)
    lost = int(np.setdiff1d(want, unique).size)
    unexpected = int(np.setdiff1d(unique, want).size)
    meta_all = np.concatenate(meta_ids)
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


def _wait_pids(path: Path, proc: subprocess.Popen[str], timeout_s: float) -> dict[str, int]:
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


def run_trial(
    corpus: Path,
    expected: dict[int, np.ndarray],
    kind: str,
    delay_s: float,
    rng: random.Random,
    wal_sync: str = "interval",
) -> Trial:
    trial = Trial(kind)
    for _ in range(4):
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
        [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--json", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        pids = _wait_pids(run_dir / "actors" / "pids.json", proc, 60)
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
    summary = _last_json(stdout)
    restarts = summary.get("restarts", []) if summary else []
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


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                parsed: dict[str, Any] = json.loads(line)
                return parsed
            except json.JSONDecodeError:
                return None
    return None


def feed_seconds(corpus: Path) -> float:
    """How long a clean run's feed lasts (start-up excluded), to aim the kills inside it."""
    work = Path(tempfile.mkdtemp(prefix="aaf-chaos-"))
    topology = work / "chaos.yaml"
    topology.write_text(topology_yaml(corpus, work / "data", work / "run"))
    done = subprocess.run(
        [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--json", "--quiet"],
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT_S,
    )
    summary = _last_json(done.stdout)
    if done.returncode != 0 or summary is None:
        raise SystemExit(f"a clean run failed: {done.stderr[-1000:]}")
    return float(summary["total_s"])


@dataclass
class Report:
    trials: list[Trial] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        checked = [t for t in self.trials if t.check is not None]
        recoveries = [t.recovery_s for t in self.trials if t.recovery_s is not None]
        return {
            "trials": len(self.trials),
            "verified": len(checked),
            "failed": sum(1 for t in self.trials if t.error),
            "kills": dict(Counter(t.kind for t in self.trials if t.killed)),
            "lost": sum(t.check.lost for t in checked if t.check),
            "duplicated": sum(t.check.duplicated for t in checked if t.check),
            "wrong_vectors": sum(t.check.wrong_vectors for t in checked if t.check),
            "recovery_p50_s": statistics.median(recoveries) if recoveries else None,
            "recovery_max_s": max(recoveries) if recoveries else None,
            "missed": sum(t.missed for t in self.trials),
        }


def print_table(report: Report, feed_s: float, chunks: int) -> None:
    f = report.figures()
    print(f"\nchaos: {f['trials']} trials, W1 corpus of {chunks} chunks, clean feed {feed_s:.2f}s")
    print(f"{'kind':<10} {'kills':>5} {'recovery p50':>13} {'max':>7} {'lost':>5} {'dup':>5}")
    for kind in KINDS:
        mine = [t for t in report.trials if t.kind == kind and t.killed]
        rec = [t.recovery_s for t in mine if t.recovery_s is not None]
        lost = sum(t.check.lost for t in mine if t.check)
        dup = sum(t.check.duplicated for t in mine if t.check)
        p50 = f"{statistics.median(rec):.2f}s" if rec else "-"
        top = f"{max(rec):.2f}s" if rec else "-"
        print(f"{kind:<10} {len(mine):>5} {p50:>13} {top:>7} {lost:>5} {dup:>5}")

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}s"

    print(
        f"total: lost {f['lost']}, duplicated {f['duplicated']}, wrong vectors "
        f"{f['wrong_vectors']}, failed trials {f['failed']}, recovery p50 "
        f"{secs(f['recovery_p50_s'])} max {secs(f['recovery_max_s'])}"
    )
    for t in report.trials:
        if t.error:
            print(f"  FAILED {t.kind} ({t.victim or '-'}): {t.error}")
    ok = f["failed"] == 0 and f["lost"] == 0 and f["duplicated"] == 0 and f["wrong_vectors"] == 0
    print(f"target 0 lost and 0 duplicated: {'MEETS' if ok else 'MISSES'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--preset", default="small", help="W1 corpus preset (default small)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="5 trials on the tiny preset")
    parser.add_argument("--json", action="store_true", help="last line: the figures as JSON")
    parser.add_argument(
        "--wal-sync",
        default="interval",
        choices=["batch", "interval", "none"],
        help="the shards' durability.wal_sync (default interval)",
    )
    args = parser.parse_args(argv)
    trials, preset = (5, "tiny") if args.quick else (args.trials, args.preset)
    rng = random.Random(args.seed)
    corpus_root = Path(tempfile.gettempdir()) / "aaf-chaos-corpus"
    generate(corpus_root / preset, preset, seed=0)
    corpus = corpus_root / preset
    expected = expected_chunks(corpus)
    feed_s = feed_seconds(corpus)
    print(f"corpus {corpus}: {len(expected)} chunks; clean feed {feed_s:.2f}s", file=sys.stderr)
    report = Report()
    for i in range(trials):
        kind = KINDS[i % len(KINDS)]
        delay = rng.uniform(0.05, 0.9) * max(feed_s, 0.2)
        trial = run_trial(corpus, expected, kind, delay, rng, args.wal_sync)
        report.trials.append(trial)
        c = trial.check
        print(
            f"trial {i + 1}/{trials}: {kind} {trial.victim} at {trial.delay_s:.2f}s -> "
            + (
                f"recovered in {trial.recovery_s:.2f}s, lost {c.lost}, dup {c.duplicated}"
                if c and trial.recovery_s is not None
                else f"ERROR {trial.error[:200]}"
            ),
            file=sys.stderr,
        )
    print_table(report, feed_s, len(expected))
    figures = report.figures()
    if args.json:
        print(json.dumps(figures))
    return (
        0 if figures["failed"] == 0 and figures["lost"] == 0 and figures["duplicated"] == 0 else 1
    )


if __name__ == "__main__":
    sys.exit(main())
