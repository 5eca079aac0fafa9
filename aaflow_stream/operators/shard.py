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

Serving: rank 0 runs the gateway (``query.gateway``) and every rank takes part in collective
rounds (``operators.shard_serving``: private wake-up sockets, round deadlines).

Failure: a rank cannot end alone (its peers would wait for it in collectives). ``close`` is
for a clean stop: it finalises MPI once every rank is stopping. A rank that fails is ended with
the whole job by the actor runtime (``mpi.abort``); a failing constructor therefore leaves MPI
as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from ..durability.ack_sender import AckSender
from ..embedders import factory as embedders
from ..embedders.base import TextEmbedder
from ..errors import RetryLater, SpecError, StorageError
from ..mpi.thread import MpiThread
from ..shard.round import ROOT
from ..shard.store import ShardStore, is_tombstone
from ..spec import Embedder, HashEmbedderSpec
from .base import OperatorContext
from .params import ShardParams
from .shard_serving import ShardServing

log = logging.getLogger(__name__)


# How often the maintenance task looks at the snapshot triggers when it has nothing to sync.
SNAPSHOT_CHECK_S = 0.25


def _disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (or quota): worth waiting for, unlike damage."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        cause = cause.__cause__
    return False


class ShardWriter:
    Params: ClassVar[type[ShardParams]] = ShardParams

    def __init__(self, context: OperatorContext, params: ShardParams) -> None:
        dim, threads, wal_sync = params.dim, params.threads, params.wal_sync
        self._mpi = MpiThread()
        rank, size = self._mpi.start()
        if (rank, size) != (context.replica, context.replicas):
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
        shard_dir = Path(params.data_dir) / f"shard-{rank}"
        self._store = ShardStore(
            shard_dir, dim=dim, index=params.index, metric=params.metric, wal_sync=wal_sync
        )
        self._interval_sync = wal_sync == "interval"
        self._sync_interval_s = params.sync_interval_ms / 1000.0
        self._snapshot_interval_s = params.snapshot_interval_s
        self._snapshot_wal_bytes = int(params.snapshot_wal_mb * 2**20)
        self.last_lsn = self._store.last_lsn
        self._durable_seen = self._store.durable_lsn
        self._on_durable: list[Callable[[int], None]] = []
        # End-to-end acks: sources learn which of their documents this shard made durable.
        self._acks = AckSender(context.ack_peers, context.actor, rank)
        self._on_durable.append(self._acks.durable)
        self._full_disk_wait_s = params.full_disk_wait_s
        self._disk_full_s = 0.0  # seconds ingestion waited for space
        self._full_since: float | None = None  # monotonic time the disk was found full
        self._full_tries = 0
        self._upserted = 0  # chunk rows applied by this run (tombstone rows not counted)
        self._appended = asyncio.Event()  # set by process(), cleared by the maintenance task
        self._applied_at = 0.0
        self._persist_s = 0.0
        self._snapshots = 0
        self._snapshot_s = 0.0
        self._query_endpoint = params.query_endpoint
        self._max_batch = params.max_batch
        self._max_wait_s = params.max_wait_ms / 1000.0
        self._serving: ShardServing | None = None
        self._query_embedder: TextEmbedder | None = None
        if params.serve:
            embedder = params.embedder or HashEmbedderSpec(dim=dim)
            try:
                self._start_serving(context, embedder, threads, params.round_timeout_s)
            except BaseException:
                self._close_resources()
                raise

    def _start_serving(
        self, context: OperatorContext, embedder: Embedder, threads: int, timeout_s: float
    ) -> None:
        """Collective: every rank sets up its wake-ups; the root loads the query embedder (a
        model loads here, before Ready)."""
        self._serving = ShardServing(
            self._mpi,
            self._store,
            rank=self._rank,
            size=self._size,
            dim=self._dim,
            run_dir=context.run_dir,
            round_timeout_s=timeout_s,
        )
        if self._rank != ROOT:
            return
        self._query_embedder = embedders.build(embedder, threads=threads)
        if self._query_embedder.dim != self._dim:
            raise SpecError(
                f"the query embedder makes dim {self._query_embedder.dim}, "
                f"the shards hold dim {self._dim}"
            )

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
        if self._serving is not None:
            out.update(self._serving.metrics())
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
        """Append, or wait out a full disk: ``RetryLater`` makes the actor offer the batch
        again after a pause that does not block its loop. This shard then takes no more
        input, its senders run out of credit and ingestion pauses all the way to the sources
        (backpressure). Nothing is acknowledged that was not written. Other storage errors,
        and a disk still full after ``full_disk_wait_s``, end the actor."""
        try:
            lsn = self._store.append(batch)
        except (StorageError, OSError) as exc:
            now = time.monotonic()
            if not _disk_full(exc):
                raise
            if self._full_since is None:
                self._full_since, self._full_tries = now, 0
                log.error(
                    "shard %d: %s; ingestion paused until space frees up (giving up after %.0fs)",
                    self._rank,
                    exc,
                    self._full_disk_wait_s,
                )
            if now - self._full_since >= self._full_disk_wait_s:
                raise
            self._full_tries += 1
            delay = min(0.05 * 2 ** (self._full_tries - 1), 1.0)
            raise RetryLater(f"shard {self._rank}: disk full", delay) from exc
        if self._full_since is not None:
            self._disk_full_s += time.monotonic() - self._full_since
            self._full_since = None
        return lsn

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
            if self._serving is not None:
                tg.create_task(self._serve_queries(self._serving))

    async def _serve_queries(self, serving: ShardServing) -> None:
        if self._rank != ROOT:
            await serving.serve_member()
            return
        assert self._query_embedder is not None
        await serving.serve_gateway(
            self._query_endpoint,
            embedder=self._query_embedder,
            max_batch=self._max_batch,
            max_wait_s=self._max_wait_s,
        )

    def close(self) -> None:
        """A clean stop: snapshot, close, then finalise MPI once every rank is stopping."""
        self._close_resources()
        self._mpi.stop()

    def _close_resources(self) -> None:
        """Everything but MPI. Idempotent."""
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
        if self._serving is not None:
            self._serving.close()
