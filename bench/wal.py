"""The cost of a shard's write-ahead log per upsert batch, for both sync policies.

    python -m bench.wal [--batches 60] [--rows 2048] [--dim 384] [--dir DIR] [--quick] [--json]

Each batch is like the engine's: ``rows`` chunks of ~500 characters with a float32 embedding
of ``dim`` and the delivery columns. Measured per batch, in milliseconds (median, p90):

- encode: the batch to an Arrow IPC stream (one copy); crc: zlib.crc32 over it.
- batch policy: ``append`` + ``sync`` (fsync) before the next batch.
- interval policy: ``append`` alone, plus a ``sync`` whenever ``--interval-ms`` passed since
  the last one (on another thread in the engine); per batch = append + syncs / batches.
- store: ``ShardStore.append`` with the batch policy (log, fsync, FAISS add, metadata).

The log lives in ``--dir`` (default: a temporary directory on the file system of the data
directory, ``./data``): fsync costs what that disk costs.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa

from aaflow_stream.schemas import embedded
from aaflow_stream.shard.store import ShardStore
from aaflow_stream.shard.wal import WriteAheadLog, encode

from .kit import cli
from .kit.table import Column, render


def make_batch(rows: int, dim: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    ids = rng.choice(2**62, size=rows, replace=False).astype(np.uint64)
    text = ["lorem ipsum dolor sit amet " * 19] * rows
    vectors = rng.standard_normal((rows, dim)).astype(np.float32)
    return pa.record_batch(
        [
            pa.array([f"doc-{seed}-{i // 8}" for i in range(rows)]),
            pa.array(np.arange(rows, dtype=np.int32) % 8),
            pa.array(ids),
            pa.array(text, pa.large_string()),
            pa.array(["bench"] * rows),
            pa.array(np.zeros(rows, np.int64)).cast(pa.timestamp("ms")),
            pa.array(np.ones(rows, np.uint64)),
            pa.array(np.zeros(rows, np.int32)),
            pa.array(np.arange(rows, dtype=np.int64)),
            pa.array(np.full(rows, 8, np.int32)),
            pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        ],
        schema=embedded(dim),
    )


def stats(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1e3 for s in samples)
    return {"median_ms": statistics.median(ms), "p90_ms": ms[int(0.9 * (len(ms) - 1))]}


def timed(fn: Callable[..., object], *args: object) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


COLUMNS = [
    Column("step", 27, left=True),
    Column("median ms", 12, ".2f"),
    Column("p90 ms", 10, ".2f"),
]


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, quick="20 batches")
    parser.add_argument("--batches", type=cli.positive, default=60)
    parser.add_argument("--rows", type=cli.positive, default=2048)
    parser.add_argument("--dim", type=cli.positive, default=384)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--dir", type=Path, default=Path("data"))
    args = parser.parse_args(argv)
    if args.quick:
        args.batches = min(args.batches, 20)
    args.dir.mkdir(parents=True, exist_ok=True)
    batches = [make_batch(args.rows, args.dim, i) for i in range(8)]
    payload = encode(batches[0])
    out: dict[str, object] = {"batch_mb": payload.size / 2**20, "batches": args.batches}
    out["encode"] = stats([timed(encode, batches[0]) for _ in range(args.batches)])
    out["crc"] = stats([timed(zlib.crc32, payload) for _ in range(args.batches)])

    def wal(tmp: str) -> WriteAheadLog:
        return WriteAheadLog.open(Path(tmp), first_segment=1, after_lsn=0, apply=lambda *_: None)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        log = wal(tmp)
        per_batch = []
        for i in range(args.batches):
            batch = batches[i % len(batches)]
            per_batch.append(timed(lambda b: (log.append(b), log.sync()), batch))
        log.close()
        out["batch_policy"] = stats(per_batch)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        log = wal(tmp)
        appends, syncs = [], []
        last_sync = time.perf_counter()
        for i in range(args.batches):
            appends.append(timed(log.append, batches[i % len(batches)]))
            if (time.perf_counter() - last_sync) * 1e3 >= args.interval_ms:
                syncs.append(timed(log.sync))
                last_sync = time.perf_counter()
        syncs.append(timed(log.sync))
        log.close()
        out["interval_append"] = stats(appends)
        out["interval_sync"] = stats(syncs) | {"count": len(syncs)}
        amortised = [a + sum(syncs) / args.batches for a in appends]
        out["interval_policy"] = stats(amortised)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        store = ShardStore(Path(tmp), dim=args.dim, index="Flat", metric="ip", wal_sync="batch")
        fresh = [make_batch(args.rows, args.dim, 100 + i) for i in range(min(args.batches, 20))]
        samples = [timed(store.append, b) for b in fresh]
        store.close()
        out["store_append_batch_policy"] = stats(samples)

    steps = [[k, v["median_ms"], v["p90_ms"]] for k, v in out.items() if isinstance(v, dict)]
    lines = [
        f"batch: {args.rows} rows, dim {args.dim}, {out['batch_mb']:.2f} MB as Arrow IPC",
        *render(COLUMNS, steps),
    ]
    cli.report(lines, out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
