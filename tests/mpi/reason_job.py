"""Run under ``mpiexec -n P``: the reason operator's contexts for a fixed data set, written
as JSON by rank 0, to compare across rank counts (they must be identical, byte for byte).

The data holds near-duplicate chunks (the same sentence with small edits) and memory entries,
so that deduplication and packing have work to do; chunks are spread over the ranks by id.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa

# Run as a script by mpiexec: its directory is on sys.path.
from dual_job import DIM, NOW, chunk_batch, knowledge, memory, rows_to_table, unit
from mpi4py import MPI

from aaflow_stream.query.hits import hits_of
from aaflow_stream.query.reason import assemble
from aaflow_stream.shard.memory import MemoryStore, owner
from aaflow_stream.shard.round import search_round
from aaflow_stream.shard.store import ShardStore
from aaflow_stream.shard.wakeup import DualQuery
from aaflow_stream.spec import MemorySpec, MemoryWeights

POOL = [
    "The vault opens at dawn and closes at dusk.",
    "The vault opens at dawn and closes at dusk!",
    "Credit flow control bounds every queue in the engine.",
    "Sea otters hold hands while they sleep.",
    "Sea otters hold hands when they sleep.",
    "A shard rank holds one part of the index.",
]


def texted(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch with its texts drawn from a small pool: many near-duplicates."""
    ids = batch.column("chunk_id").to_numpy()
    texts = [f"{POOL[i % len(POOL)]} ({i % 7})" for i in ids.tolist()]
    at = batch.schema.get_field_index("text")
    return batch.set_column(at, "text", pa.array(texts, pa.large_string()))


def main() -> int:
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    vectors, ids, ts_ms = knowledge()
    mine = ids % size == rank
    queries = unit(np.random.default_rng(5), 12)
    sessions = ["s1", "s2", ""] * 4
    contexts = []
    with tempfile.TemporaryDirectory() as tmp:
        store = ShardStore(Path(tmp) / "k", dim=DIM, index="Flat", metric="ip")
        store.upsert(texted(chunk_batch(vectors[mine], ids[mine], ts_ms[mine])))
        mem = MemoryStore(Path(tmp) / "m", dim=DIM, metric="ip", spec=MemorySpec(), record=True)
        entries = [(e, v) for e, v in memory() if owner(e.session, e.memory_id, size) == rank]
        if entries:
            mem.remember(rows_to_table(entries, DIM))
        for dual in (
            None,
            DualQuery(mode="both", sessions=sessions, weights=MemoryWeights(), now=NOW),
        ):
            tables = search_round(
                comm,
                store,
                queries if rank == 0 else None,
                20,
                (len(queries), DIM),
                None,
                dual,
                mem,
            )
            if rank == 0:
                assert tables is not None
                for table in tables:
                    layout = "plain" if dual is None else "dual"
                    context = assemble(hits_of(table, layout), budget_chars=300)
                    contexts.append(msgspec.to_builtins(context))
        mem.close()
        store.close()
    if rank == 0:
        Path(sys.argv[1]).write_bytes(msgspec.json.encode(contexts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
