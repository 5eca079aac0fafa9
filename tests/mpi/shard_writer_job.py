"""Run under ``mpiexec -n 1``: a ShardWriter's durability hooks and maintenance task.

Appends batches through ``process`` while ``serve`` runs (not serving queries), waits for the
durable LSN to reach the last batch, drains with ``flush`` and writes a JSON report:
argv = [wal_sync, data_dir, report_path].
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import msgspec
import numpy as np

from aaflow_stream.operators.base import OperatorContext
from aaflow_stream.operators.params import ShardParams
from aaflow_stream.operators.shard import ShardWriter
from tests.support.chunks import chunk_rows

BATCHES = 30


async def run(wal_sync: str, data_dir: Path) -> dict[str, object]:
    context = OperatorContext("shard.0", "shard", 0, 1, data_dir)
    params = {
        "data_dir": str(data_dir),
        "dim": 8,
        "threads": 1,
        "wal_sync": wal_sync,
        "sync_interval_ms": 10,
        "snapshot_wal_mb": 0.02,  # a snapshot every few batches
    }
    writer = ShardWriter(context, msgspec.convert(params, ShardParams))
    announced: list[int] = []
    advanced = asyncio.Event()

    def on_durable(lsn: int) -> None:
        announced.append(lsn)
        advanced.set()

    writer.on_durable(on_durable)
    lsns = []
    try:
        async with asyncio.TaskGroup() as tg:
            serving = tg.create_task(writer.serve())
            rng = np.random.default_rng(0)
            for i in range(BATCHES):
                writer.process(chunk_rows(f"doc-{i}", rng.standard_normal((16, 8))))
                lsns.append(writer.last_lsn)
                await asyncio.sleep(0.003)
            async with asyncio.timeout(20):
                while writer.durable_lsn < lsns[-1]:
                    advanced.clear()
                    await advanced.wait()
            await asyncio.sleep(0.3)  # let a snapshot in flight finish
            writer.flush()
            serving.cancel()
        metrics = writer.metrics()
    finally:
        writer.close()
    info = json.loads((data_dir / "shard-0" / "snapshot" / "snapshot.json").read_text())
    return {
        "lsns": lsns,
        "announced": announced,
        "snapshots": metrics["snapshots"],
        "vectors": metrics["vectors"],
        "snapshot": info,
    }


def main() -> int:
    wal_sync, data_dir, report = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    report.write_text(json.dumps(asyncio.run(run(wal_sync, data_dir))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
