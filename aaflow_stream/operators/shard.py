"""The shard stage: one rank of the MPI shard job applies its share of the upserts and, when
the topology serves queries, answers them with the other ranks.

Rank r of the job is replica r of the stage (the supervisor starts the job with ``mpiexec``).
Each rank binds its own input endpoint and appends the batches routed to it (upserts and
tombstones) to its ``ShardStore``, which logs each one before applying it. A maintenance task
syncs the log every ``sync_interval_ms`` (``wal_sync: interval``) and snapshots the store every
``snapshot_interval_s`` or ``snapshot_wal_mb`` of log; end of stream syncs and snapshots.
With ``wal_sync: none`` nothing is logged: batches become durable (and acknowledged) only as
snapshots land, so a crash replays from the sources everything since the last snapshot.

Durability hook (for acknowledgements): ``process`` leaves the batch's LSN in ``last_lsn``;
``durable_lsn`` is the highest LSN on disk; callbacks given to ``on_durable`` run on the event
loop with the new durable LSN each time it advances.

Serving: rank 0 runs the gateway (``query.gateway``). For each batch of queries it wakes the
other ranks with a ZeroMQ message (their MPI threads then stay out of MPI while idle: no
busy-polling) and runs one collective search round on a communicator of its own, apart from
anything else MPI does here. The ranks learn each other's wake-up ports with one gather at
start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import zmq

from ..channels.loopsocket import LoopSocket
from ..durability.ack_sender import AckSender
from ..embedders import factory as embedders
from ..embedders.base import TextEmbedder
from ..errors import SpecError, StorageError
from ..mpi.thread import MpiThread, wait
from ..query.gateway import Gateway
from ..query.protocol import QueryFilter, encode, filter_decoder
from ..query.round import ROOT, count_round, delete_round, search_round
from ..shard.store import ShardStore, WalSync, is_tombstone
from .base import OperatorContext

log = logging.getLogger(__name__)


# Wake-up messages: b"S" + the round's (queries, k, dim) as 3 int64, so the members need no
# header broadcast; b"C" for a count round.
SEARCH = b"S"
COUNT = b"C"
DELETE = b"D"  # + the msgpack list of doc ids to remove
_doc_ids = msgspec.msgpack.Decoder(list[str])
# How often the maintenance task looks at the snapshot triggers when it has nothing to sync.
SNAPSHOT_CHECK_S = 0.25


def _member_search(
    comm: Any,
    store: ShardStore,
    k: int,
    shape: tuple[int, int],
    allowed: QueryFilter | None,
    _: Any,
) -> None:
    search_round(comm, store, None, k, shape, allowed)


def _disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (or quota): worth waiting for, unlike damage."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        cause = cause.__cause__
    return False


def _member_delete(comm: Any, store: ShardStore, doc_ids: list[str], _: Any) -> None:
    delete_round(comm, store, doc_ids)


def _member_count(comm: Any, store: ShardStore, _: Any) -> None:
    count_round(comm, store)


def _setup_serving(port: int) -> Any:
    """On the MPI thread: a communicator for queries, and every rank's wake-up port at root."""

    def run(comm: Any) -> tuple[Any, list[int]]:
        query_comm = comm.Dup()
        ports = np.zeros(comm.Get_size(), dtype=np.int64)
        wait(comm.Igather(np.array([port], dtype=np.int64), ports, root=ROOT))
        return query_comm, ports.tolist()

    return run


class ShardWriter:
    def __init__(
        self,
        context: OperatorContext,
        *,
        data_dir: str,
        dim: int,
        index: str = "Flat",
        metric: str = "ip",
        threads: int = 1,
        serve: bool = False,
        query_endpoint: str = "",
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        embedder: dict[str, Any] | None = None,
        wal_sync: WalSync = "batch",
        sync_interval_ms: float = 20.0,
        snapshot_interval_s: float = 300.0,
        snapshot_wal_mb: float = 512.0,
        full_disk_wait_s: float = 600.0,
    ) -> None:
        self._mpi = MpiThread()
        rank, size = self._mpi.start()
        if (rank, size) != (context.replica, context.replicas):
            self._mpi.stop()
            raise SpecError(
                f"{context.actor} runs as MPI rank {rank} of {size}; expected rank "
                f"{context.replica} of {context.replicas} (start shards with mpiexec -n)"
            )
        self._rank, self._size = rank, size
        self._dim = dim
        import faiss

        # OpenMP's thread count is per calling thread: set it where searches run too.
        faiss.omp_set_num_threads(threads)
        self._mpi.submit(lambda _: faiss.omp_set_num_threads(threads)).result(timeout=60)
        shard_dir = Path(data_dir) / f"shard-{rank}"
        try:
            self._store = ShardStore(
                shard_dir, dim=dim, index=index, metric=metric, wal_sync=wal_sync
            )
        except BaseException:
            self._mpi.stop()
            raise
        self._interval_sync = wal_sync == "interval"
        self._sync_interval_s = sync_interval_ms / 1000.0
        self._snapshot_interval_s = snapshot_interval_s
        self._snapshot_wal_bytes = int(snapshot_wal_mb * 2**20)
        self.last_lsn = self._store.last_lsn
        self._durable_seen = self._store.durable_lsn
        self._on_durable: list[Callable[[int], None]] = []
        # End-to-end acks: sources learn which of their documents this shard made durable.
        self._acks = AckSender(context.ack_peers, context.actor, rank)
        self._on_durable.append(self._acks.durable)
        self._full_disk_wait_s = full_disk_wait_s
        self._disk_full_s = 0.0  # seconds ingestion waited for space
        self._upserted = 0  # chunk rows applied by this run (tombstone rows not counted)
        self._appended = asyncio.Event()  # set by process(), cleared by the maintenance task
        self._applied_at = 0.0
        self._persist_s = 0.0
        self._snapshots = 0
        self._snapshot_s = 0.0
        self._serving = serve
        self._query_endpoint = query_endpoint
        self._max_batch = max_batch
        self._max_wait_s = max_wait_ms / 1000.0
        self._zmq: zmq.Context[Any] | None = None
        self._wake: list[zmq.Socket[Any]] = []  # root: one PUSH per other rank
        self._woken: zmq.Socket[Any] | None = None  # other ranks: their PULL
        self._query_comm: Any = None
        self._gateway: Gateway | None = None
        self._query_embedder: TextEmbedder | None = None
        if serve:
            self._prepare_serving()
            if rank == ROOT:  # the gateway's embedder: a model loads here, before Ready
                self._load_query_embedder(embedder or {"kind": "hash", "dim": dim}, threads)

    def _load_query_embedder(self, params: dict[str, Any], threads: int) -> None:
        try:
            self._query_embedder = embedders.build(embedders.from_params(params), threads=threads)
        except Exception:
            self.close()
            raise
        if self._query_embedder.dim != self._dim:
            self.close()
            raise SpecError(
                f"the query embedder makes dim {self._query_embedder.dim}, "
                f"the shards hold dim {self._dim}"
            )

    def _prepare_serving(self) -> None:
        self._zmq = zmq.Context()
        port = 0
        if self._rank != ROOT:
            self._woken = self._zmq.socket(zmq.PULL)
            self._woken.setsockopt(zmq.LINGER, 0)
            port = self._woken.bind_to_random_port("tcp://127.0.0.1")
        self._query_comm, ports = self._mpi.submit(_setup_serving(port)).result(timeout=60)
        if self._rank == ROOT:
            for other in range(1, self._size):
                push = self._zmq.socket(zmq.PUSH)
                push.setsockopt(zmq.LINGER, 0)
                push.connect(f"tcp://127.0.0.1:{ports[other]}")
                self._wake.append(push)

    # --- ingestion ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        out = {
            "vectors": self._store.count,
            "bytes": self._store.memory_bytes,
            "wal_bytes": self._store.wal_bytes,
            "last_applied_at": self._applied_at,
            "persist_s": self._persist_s,
            "flush_s": self._persist_s,
            "lsn": self._store.last_lsn,
            "durable_lsn": self._store.durable_lsn,
            "snapshots": self._snapshots,
            "snapshot_s": self._snapshot_s,
            "upserted": self._upserted,
            "disk_full_s": self._disk_full_s,
            "acks_sent": self._acks.sent,
            "acks_dropped": self._acks.dropped,
        }
        if self._gateway is not None:
            out.update(
                queries=self._gateway.stats.queries,
                rounds=self._gateway.stats.rounds,
                query_p50_ms=self._gateway.stats.percentile(50),
                query_p99_ms=self._gateway.stats.percentile(99),
            )
        return out

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        self.last_lsn = self._append_when_space(batch)
        self._acks.applied(self.last_lsn, batch)
        if not is_tombstone(batch):
            self._upserted += batch.num_rows
        self._applied_at = time.time()
        if not self._interval_sync:
            self._announce_durable()  # append synced it already
        self._appended.set()  # wake the maintenance task: a sync, a snapshot may be due
        return ()

    def _append_when_space(self, batch: pa.RecordBatch) -> int:
        """Append, waiting out a full disk: this shard then takes no more input, its senders
        run out of credit and ingestion pauses all the way to the sources (backpressure).
        Nothing is acknowledged that was not written. Other storage errors end the actor."""
        delay, waited = 0.05, 0.0
        while True:
            try:
                return self._store.append(batch)
            except (StorageError, OSError) as exc:
                if not _disk_full(exc) or waited >= self._full_disk_wait_s:
                    raise
                if waited == 0.0:
                    log.error(
                        "shard %d: %s; ingestion paused until space frees up (giving up "
                        "after %.0fs)",
                        self._rank,
                        exc,
                        self._full_disk_wait_s,
                    )
                self._disk_full_s += delay
                time.sleep(delay)  # nothing else should run while the shard cannot log
                waited += delay
                delay = min(delay * 2, 1.0)

    def flush(self) -> Iterable[pa.RecordBatch]:
        started = time.perf_counter()
        self._store.sync()
        if not self._store.logs:  # without a log only the snapshot makes the last acks
            self._snapshot("drain", force=True)
        self._announce_durable()
        self._acks.finish(self._size)
        if self._store.logs:  # the acks need not wait for it
            self._snapshot("drain", force=True)
        self._persist_s = time.perf_counter() - started
        log.info("shard %d persisted %d vectors", self._rank, self._store.count)
        return ()

    # --- durability --------------------------------------------------------------------------

    @property
    def durable_lsn(self) -> int:
        """Every batch up to this LSN is on disk and survives a crash."""
        return self._store.durable_lsn

    def on_durable(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(durable_lsn)`` on the event loop each time the durable LSN advances."""
        self._on_durable.append(callback)

    def _announce_durable(self) -> None:
        durable = self._store.durable_lsn
        if durable > self._durable_seen:
            self._durable_seen = durable
            for callback in self._on_durable:
                callback(durable)

    def _snapshot(self, reason: str, *, force: bool = False) -> None:
        started = time.perf_counter()
        info = self._store.snapshot(reason, force=force)
        if info is not None:
            self._snapshots += 1
            self._snapshot_s += time.perf_counter() - started
            log.info("shard %d snapshot (%s): %d vectors", self._rank, reason, info.vectors)

    def _snapshot_due(self) -> str | None:
        store = self._store
        if store.last_lsn == store.snapshot_lsn:
            return None
        if store.wal_bytes >= self._snapshot_wal_bytes:
            return "wal_size"
        if store.snapshot_age_s >= self._snapshot_interval_s:
            return "interval"
        return None

    async def _maintain(self, tg: asyncio.TaskGroup) -> None:
        """Interval syncs (group commit) and periodic snapshots, both off the event loop.

        It wakes after each append (and every ``SNAPSHOT_CHECK_S`` when idle). A sync
        starts as soon as there is something to sync, but no sooner than ``sync_interval_ms``
        after the previous one. A snapshot runs as a task of its own, so syncs (and acks) go
        on while it writes.
        """
        snapshotting: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        last_sync = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SNAPSHOT_CHECK_S):
                    await self._appended.wait()
            store = self._store
            if self._interval_sync and store.last_lsn > store.durable_lsn:
                await asyncio.sleep(max(0.0, last_sync + self._sync_interval_s - loop.time()))
                self._appended.clear()  # appends from here on wake the next round
                last_sync = loop.time()
                await asyncio.to_thread(store.sync)
                self._announce_durable()
            else:
                self._appended.clear()
            if snapshotting is None or snapshotting.done():
                reason = self._snapshot_due()
                if reason is not None:
                    snapshotting = tg.create_task(self._snapshot_in_thread(reason))

    async def _snapshot_in_thread(self, reason: str) -> None:
        try:
            await asyncio.to_thread(self._snapshot, reason)
        except (StorageError, OSError) as exc:
            if not _disk_full(exc):
                raise
            # The log still holds everything: try again at the next trigger.
            log.error("shard %d: snapshot failed, disk full (%s); will retry", self._rank, exc)
            return
        self._announce_durable()  # the snapshot synced the log it cut

    # --- queries -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Runs beside ingestion in the actor's task group: log maintenance, and queries
        (which see what is applied) when the topology serves them."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._maintain(tg))
            if self._serving:
                tg.create_task(self._serve_queries())

    async def _serve_queries(self) -> None:
        if self._rank == ROOT:
            assert self._zmq is not None and self._query_embedder is not None
            sock = self._zmq.socket(zmq.ROUTER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.bind(self._query_endpoint)
            self._gateway = Gateway(
                LoopSocket(sock),
                embedder=self._query_embedder,
                max_batch=self._max_batch,
                max_wait_s=self._max_wait_s,
                run_round=self._root_round,
                shards=self._size,
                vectors=self._root_count,
                delete=self._root_delete,
            )
            log.info("gateway serving on %s", self._query_endpoint)
            await self._gateway.serve()
        else:
            assert self._woken is not None
            woken = LoopSocket(self._woken)
            while True:
                message = await woken.recv()
                if message[:1] == SEARCH:
                    nq, k, dim = np.frombuffer(message[1:25], dtype=np.int64).tolist()
                    allowed = filter_decoder.decode(message[25:])
                    store, comm = self._store, self._query_comm
                    task = partial(_member_search, comm, store, k, (nq, dim), allowed)
                elif message[:1] == DELETE:
                    doc_ids = _doc_ids.decode(message[1:])
                    task = partial(_member_delete, self._query_comm, self._store, doc_ids)
                else:
                    task = partial(_member_count, self._query_comm, self._store)
                await asyncio.wrap_future(self._mpi.submit(task))

    def _wake_members(self, message: bytes) -> None:
        # Waking and submitting happen with no await between them, so every rank's MPI
        # thread sees the rounds in the same order.
        for push in self._wake:
            push.send(message)

    async def _root_delete(self, doc_ids: list[str]) -> int:
        self._wake_members(DELETE + msgspec.msgpack.encode(doc_ids))
        store, comm = self._store, self._query_comm
        future = self._mpi.submit(lambda _: delete_round(comm, store, doc_ids))
        removed = await asyncio.wrap_future(future)
        assert removed is not None
        return removed

    async def _root_count(self) -> int:
        self._wake_members(COUNT)
        store, comm = self._store, self._query_comm
        total = await asyncio.wrap_future(self._mpi.submit(lambda _: count_round(comm, store)))
        assert total is not None
        return total

    async def _root_round(
        self, matrix: npt.NDArray[np.float32], k: int, allowed: QueryFilter | None
    ) -> list[pa.Table]:
        header = np.array([len(matrix), k, matrix.shape[1]], dtype=np.int64)
        self._wake_members(SEARCH + header.tobytes() + encode(allowed))
        store, comm = self._store, self._query_comm
        future = self._mpi.submit(
            lambda _: search_round(comm, store, matrix, k, matrix.shape, allowed)
        )
        result = await asyncio.wrap_future(future)
        assert result is not None
        return result

    def close(self) -> None:
        self._acks.close()
        # A serving shard may have logged writes (deletes) since its end-of-stream snapshot:
        # leave files that show them. The log has them anyway, so a failure here loses nothing.
        try:
            self._snapshot("stop")
        except Exception as exc:
            log.warning(
                "shard %d: no snapshot at stop (%s); the log has everything", self._rank, exc
            )
        self._store.close()
        for sock in [*self._wake, *([self._woken] if self._woken else [])]:
            sock.close(linger=0)
        self._mpi.stop(timeout_s=5.0)
        if self._zmq is not None:
            self._zmq.destroy(linger=0)
