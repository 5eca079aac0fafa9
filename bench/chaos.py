"""Chaos: kill -9 a random actor during a W1 ingestion, many times; nothing lost, nothing twice.

Each trial (``tests/support/chaos.py``, which the durability tests run too) runs
`aaflow-stream up` on a fresh data directory with a W1 corpus and a topology whose stages are all
separate processes (load, transform, embed x2, upsert, 2 shard ranks), waits a random moment
into the feed, and SIGKILLs one actor: the kinds take turns (source = the load actor, transform,
embed, upsert, a shard rank). The supervisor restarts the graph, sources resume from their
checkpoints and shards recover from their write-ahead logs. When `up` has finished, the shards
are read back from their snapshots and checked against the chunks computed directly from the
corpus:

- lost: expected chunk ids no shard holds;
- duplicated: rows beyond one per chunk id (over every shard's index and metadata), plus ids
  that are not expected at all;
- wrong vectors: stored vectors that differ from the hash embedder's output for that chunk.

Recovery time is from the kill to the restarted graph being ready again (the supervisor's
`ready_at`). A kill that lands after the feed ended is retried earlier (`missed`).

    python -m bench.chaos --quick
    python -m bench.chaos --trials 50 --json
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aaflow_stream.synthetic import generate
from tests.support.chaos import (
    KINDS,
    UP_TIMEOUT_S,
    Trial,
    expected_chunks,
    run_trial,
    topology_yaml,
)

from .kit import cli
from .kit.engine import run_up
from .kit.table import Column, render


def feed_seconds(corpus: Path) -> float:
    """How long a clean run's feed lasts (start-up excluded), to aim the kills inside it."""
    work = Path(tempfile.mkdtemp(prefix="aaf-chaos-"))
    try:
        topology = work / "chaos.yaml"
        topology.write_text(topology_yaml(corpus, work / "data", work / "run"))
        up = run_up(topology, UP_TIMEOUT_S)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if up.failure is not None or up.summary is None:
        raise SystemExit(f"a clean run failed: {up.failure}")
    return float(up.summary["total_s"])


@dataclass
class Report:
    trials: list[Trial] = field(default_factory=list)

    def figures(self) -> dict[str, Any]:
        checked = [t.check for t in self.trials if t.check is not None]
        recoveries = [t.recovery_s for t in self.trials if t.recovery_s is not None]
        return {
            "trials": len(self.trials),
            "verified": len(checked),
            "failed": sum(1 for t in self.trials if t.error),
            "kills": dict(Counter(t.kind for t in self.trials if t.killed)),
            "lost": sum(c.lost for c in checked),
            "duplicated": sum(c.duplicated for c in checked),
            "wrong_vectors": sum(c.wrong_vectors for c in checked),
            "recovery_p50_s": statistics.median(recoveries) if recoveries else None,
            "recovery_max_s": max(recoveries) if recoveries else None,
            "missed": sum(t.missed for t in self.trials),
        }

    @property
    def passed(self) -> bool:
        f = self.figures()
        return f["failed"] == 0 and f["lost"] == 0 and f["duplicated"] == 0


COLUMNS = [
    Column("kind", 10, left=True),
    Column("kills", 5),
    Column("recovery p50", 13),
    Column("max", 7),
    Column("lost", 5),
    Column("dup", 5),
]


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


def table(report: Report, feed_s: float, chunks: int) -> list[str]:
    f = report.figures()
    rows: list[list[object]] = []
    for kind in KINDS:
        mine = [t for t in report.trials if t.kind == kind and t.killed]
        rec = [t.recovery_s for t in mine if t.recovery_s is not None]
        checks = [t.check for t in mine if t.check]
        rows.append(
            [
                kind,
                len(mine),
                _secs(statistics.median(rec) if rec else None),
                _secs(max(rec, default=None)),
                sum(c.lost for c in checks),
                sum(c.duplicated for c in checks),
            ]
        )

    ok = report.passed and f["wrong_vectors"] == 0
    return [
        f"chaos: {f['trials']} trials, W1 corpus of {chunks} chunks, clean feed {feed_s:.2f}s",
        *render(COLUMNS, rows),
        f"total: lost {f['lost']}, duplicated {f['duplicated']}, wrong vectors "
        f"{f['wrong_vectors']}, failed trials {f['failed']}, recovery p50 "
        f"{_secs(f['recovery_p50_s'])} max {_secs(f['recovery_max_s'])}",
        *(f"  FAILED {t.kind} ({t.victim or '-'}): {t.error}" for t in report.trials if t.error),
        f"target 0 lost and 0 duplicated: {'MEETS' if ok else 'MISSES'}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 no trial failed and nothing was lost or duplicated, 1 otherwise, 2 usage."""
    parser = cli.parser(__doc__, quick="5 trials on the tiny preset")
    parser.add_argument("--trials", type=cli.positive, default=10)
    parser.add_argument("--preset", default="small", help="W1 corpus preset (default small)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--wal-sync",
        default="interval",
        choices=["batch", "interval", "none"],
        help="the shards' durability.wal_sync (default interval)",
    )
    args = parser.parse_args(argv)
    trials, preset = (5, "tiny") if args.quick else (args.trials, args.preset)
    rng = random.Random(args.seed)
    corpus = Path(tempfile.gettempdir()) / "aaf-chaos-corpus" / preset
    generate(corpus, preset, seed=0)
    expected = expected_chunks(corpus)
    feed_s = feed_seconds(corpus)
    cli.progress(f"corpus {corpus}: {len(expected)} chunks; clean feed {feed_s:.2f}s")
    report = Report()
    for i in range(trials):
        kind = KINDS[i % len(KINDS)]
        delay = rng.uniform(0.05, 0.9) * max(feed_s, 0.2)
        trial = run_trial(corpus, expected, kind, delay, rng, args.wal_sync)
        report.trials.append(trial)
        c = trial.check
        cli.progress(
            f"trial {i + 1}/{trials}: {kind} {trial.victim} at {trial.delay_s:.2f}s -> "
            + (
                f"recovered in {trial.recovery_s:.2f}s, lost {c.lost}, dup {c.duplicated}"
                if c and trial.recovery_s is not None
                else f"ERROR {trial.error[:200]}"
            )
        )
    cli.report(["", *table(report, feed_s, len(expected))], report.figures(), args.json)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
