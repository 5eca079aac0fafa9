"""Top-k across MPI ranks: a user-defined ``Reduce`` op against a gather and merge.

Run under ``mpiexec -n 4``: every rank holds a sorted local top-k (score, chunk id) for each
of ``nq`` queries; the root needs the global top-k. (a) ``Reduce`` with a user-defined op over
a structured numpy dtype (``align=True`` and ``mpi4py.util.dtlib.from_numpy_dtype``), merging
two lists per query; (b) ``Gather`` of every rank's lists to the root and one merge there.
Both are checked against each other. The engine's rounds gather, because their hits also
carry text and source of no fixed size, which a ``Reduce`` cannot carry; this measures what
the fixed-size part alone would cost either way.

    .venv/bin/mpiexec -n 4 .venv/bin/python -m bench.topk_reduce [--quick] [--json]
"""

from __future__ import annotations

import sys
import time

import numpy as np
from mpi4py import MPI
from mpi4py.util import dtlib

from .kit import cli
from .kit.table import Column, render

HIT = np.dtype([("score", np.float32), ("id", np.int64)], align=True)
COLUMNS = [
    Column("case", 11, left=True),
    Column("reduce op ms", 14, ".3f"),
    Column("gather+merge ms", 16, ".3f"),
    Column("same", 5),
]


def merge_rows(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """Row by row, the best k of two (nq, k) hit arrays: larger score, then smaller id."""
    both = np.concatenate([a, b], axis=1)
    order = np.lexsort((both["id"], -both["score"]), axis=1)[:, :k]
    return np.take_along_axis(both, order, axis=1)


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser(__doc__, quick="30 rounds", repeats="rounds of each call (default 300)")
    args = parser.parse_args(argv)
    rounds = cli.repeats(args, full=300, quick=30)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    mpi_hit = dtlib.from_numpy_dtype(HIT).Commit()
    results = {}
    for nq, k in ((1, 10), (64, 10)):
        rng = np.random.default_rng(rank)
        local = np.zeros((nq, k), dtype=HIT)
        local["score"] = rng.random((nq, k), dtype=np.float32)
        local["id"] = rng.integers(0, 2**62, (nq, k)) * size + rank
        local = merge_rows(local, np.zeros((nq, 0), dtype=HIT), k)

        def reduce_op(inbuf: object, inoutbuf: object, _: object, k: int = k, nq: int = nq) -> None:
            a = np.frombuffer(inbuf, dtype=HIT).reshape(nq, k)  # type: ignore[call-overload]
            b = np.frombuffer(inoutbuf, dtype=HIT).reshape(nq, k)  # type: ignore[call-overload]
            b[...] = merge_rows(a, b, k)

        op = MPI.Op.Create(reduce_op, commute=True)
        out = np.zeros((nq, k), dtype=HIT)
        comm.Barrier()
        started = time.perf_counter()
        for _ in range(rounds):
            comm.Reduce([local, mpi_hit], [out, mpi_hit], op=op, root=0)
        reduce_ms = (time.perf_counter() - started) / rounds * 1e3
        op.Free()
        gathered = np.zeros((size, nq, k), dtype=HIT)
        comm.Barrier()
        started = time.perf_counter()
        for _ in range(rounds):
            comm.Gather([local, mpi_hit], [gathered, mpi_hit], root=0)
            if rank == 0:
                merged = merge_rows(
                    np.concatenate(list(gathered), axis=1), np.zeros((nq, 0), dtype=HIT), k
                )
        gather_ms = (time.perf_counter() - started) / rounds * 1e3
        if rank == 0:
            same = bool(np.array_equal(merged["id"], out["id"]))
            results[f"nq{nq}_k{k}"] = {
                "reduce_ms": reduce_ms,
                "gather_merge_ms": gather_ms,
                "same": same,
            }
    mpi_hit.Free()
    if rank == 0:
        rows = [
            [case, r["reduce_ms"], r["gather_merge_ms"], str(r["same"])]
            for case, r in results.items()
        ]
        lines = [
            f"top-k across {size} ranks, {rounds} rounds each (blocking calls)",
            *render(COLUMNS, rows),
        ]
        cli.report(lines, {"ranks": size, "rounds": rounds, **results}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
