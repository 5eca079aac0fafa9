"""The shard stage: the operator face of one shard rank (``shard.rank``).

Rank r of the MPI job is replica r of the stage (the supervisor starts the job with
``mpiexec``). This adapter wires the parts together: the rank's store (``shard.store``), its
maintenance (``shard.maintenance``: syncs, snapshots, the full-disk wait), the end-to-end
acks (``durability.ack_sender``) and, when the topology serves queries, the rank's part in
the collective rounds (``shard.rank``) and, on rank 0, the gateway clients talk to
(``query.gateway``).

With ``wal_sync: none`` nothing is logged: batches become durable (and acknowledged) only as
snapshots land, so a crash replays from the sources everything since the last snapshot.

Durability hook (for acknowledgements): ``process`` leaves the batch's LSN in ``last_lsn``;
``durable_lsn`` is the highest LSN on disk; callbacks given to ``on_durable`` run on the event
loop with the new durable LSN each time it advances.

Failure: a rank cannot end alone (its peers would wait for it in collectives). ``close`` is
for a clean stop: it finalises MPI once every rank is stopping. A rank that fails is ended with
the whole job by the actor runtime (``mpi.abort``); a failing constructor therefore leaves MPI
as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from ..channels import curve, sockets
from ..channels.loopsocket import LoopSocket
from ..durability.ack_sender import AckSender
from ..embedders import factory as embedders
from ..embedders.base import TextEmbedder
from ..errors import SpecError
from ..query.gateway import Gateway
from ..query.protocol import MAX_FRAME_BYTES
from ..shard.maintenance import Maintenance, MaintenancePolicy
from ..shard.memory import MemoryStore
from ..shard.rank import ShardRank, join_job
from ..shard.store import ShardStore, is_tombstone
from ..spec import HashEmbedderSpec
from .base import OperatorContext
from .params import ShardParams

log = logging.getLogger(__name__)


class ShardWriter:
    Params: ClassVar[type[ShardParams]] = ShardParams

    def __init__(self, context: OperatorContext, params: ShardParams) -> None:
        self._params = params
        self._mpi, rank = join_job(context.actor, context.replica, context.replicas, params.threads)
        self._rank, self._size = rank, context.replicas
        self._store = ShardStore(
            Path(params.data_dir) / f"shard-{rank}",
            dim=params.dim,
            index=params.index,
            metric=params.metric,
            wal_sync=params.wal_sync,
            keywords=params.keywords,
        )
        policy = MaintenancePolicy(
            interval_sync=params.wal_sync == "interval",
            sync_interval_s=params.sync_interval_ms / 1000.0,
            snapshot_interval_s=params.snapshot_interval_s,
            snapshot_wal_bytes=int(params.snapshot_wal_mb * 2**20),
            full_disk_wait_s=params.full_disk_wait_s,
        )
        self._maintenance = Maintenance(self._store, policy, f"shard {rank}")
        # The memory index beside the knowledge index (shard.memory): written only by rounds.
        self._memory = MemoryStore(
            Path(params.data_dir) / f"shard-{rank}",
            dim=params.dim,
            metric=params.metric,
            spec=params.memory,
            record=params.wal_sync != "none",
        )
        self.last_lsn = self._store.last_lsn
        # Every socket of the shard (acks, wake-ups, the gateway) is made in the actor's context.
        self._zmq = sockets.ContextHolder(context.zmq_context)
        # End-to-end acks: sources learn which of their documents this shard made durable.
        self._acks = AckSender(self._zmq.ctx, context.ack_peers, context.actor, rank)
        self._maintenance.on_applied(self._acks.applied)
        self._maintenance.on_durable(self._acks.durable)
        self._upserted = 0  # chunk rows applied by this run (tombstone rows not counted)
        self._applied_at = 0.0
        self._persist_s = 0.0
        self._serving: ShardRank | None = None
        self._router: LoopSocket | None = None  # the gateway's, on the root
        self._guard: curve.Guard | None = None  # its CURVE checks, when bound off loopback
        self._gateway: Gateway | None = None
        self._query_embedder: TextEmbedder | None = None
        if params.serve:
            try:
                self._start_serving(context)
            except BaseException:
                self._close_resources()
                raise

    def _start_serving(self, context: OperatorContext) -> None:
        """Collective: every rank sets up its wake-ups; the root loads the query embedder (a
        model loads here, before Ready)."""
        params = self._params
        self._serving = ShardRank(
            self._mpi,
            self._store,
            self._memory,
            self._zmq.ctx,
            rank=self._rank,
            size=self._size,
            run_dir=context.run_dir,
            round_timeout_s=params.round_timeout_s,
        )
        if not self._serving.is_root:
            return
        spec = params.embedder or HashEmbedderSpec(dim=params.dim)
        self._query_embedder = embedders.build(spec, threads=params.threads)
        if self._query_embedder.dim != params.dim:
            raise SpecError(
                f"the query embedder makes dim {self._query_embedder.dim}, "
                f"the shards hold dim {params.dim}"
            )

    # --- ingestion ---------------------------------------------------------------------------

    def process(self, batch: pa.RecordBatch) -> Iterable[pa.RecordBatch]:
        self.last_lsn = self._maintenance.append(batch)
        if not is_tombstone(batch):
            self._upserted += batch.num_rows
        elif self._gateway is not None:
            # Every document's tombstone reaches every shard, so this rank sees each new,
            # changed or deleted document: cached results must go before it is acknowledged.
            self._gateway.documents_changed()
        self._applied_at = time.time()
        return ()

    def flush(self) -> Iterable[pa.RecordBatch]:
        started = time.perf_counter()
        self._maintenance.drain(before_snapshot=lambda: self._acks.finish(self._size))
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
        self._maintenance.on_durable(callback)

    # --- serving -----------------------------------------------------------------------------

    async def serve(self) -> None:
        """Runs beside ingestion in the actor's task group: log maintenance, and queries
        (which see what is applied) when the topology serves them."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._maintenance.run())
            if self._serving is not None:
                tg.create_task(self._serve_queries(self._serving))

    async def _serve_queries(self, rank: ShardRank) -> None:
        if not rank.is_root:
            await rank.serve_member()
            return
        assert self._query_embedder is not None
        params = self._params
        keys = curve.keys_dir(params.data_dir)
        self._guard = curve.guard_for(self._zmq.ctx, params.query_endpoint, keys)
        self._router = router = sockets.gateway_router(
            self._zmq.ctx, params.query_endpoint, max_frame_bytes=MAX_FRAME_BYTES, guard=self._guard
        )
        self._gateway = Gateway(
            router,
            embedder=self._query_embedder,
            max_batch=params.max_batch,
            max_wait_s=params.max_wait_ms / 1000.0,
            run_round=rank.search,
            shards=self._size,
            vectors=rank.count,
            delete=rank.delete,
            memory=rank,
            memory_spec=params.memory,
            answer_spec=params.answer,
            cache_spec=params.cache,
            hybrid=rank if params.keywords else None,
        )
        log.info("gateway serving on %s", params.query_endpoint)
        try:
            await self._gateway.serve()
        finally:
            router.close(linger=0)

    # --- reporting and teardown --------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        store, maintenance = self._store, self._maintenance
        out = {
            "vectors": store.count,
            "bytes": store.memory_bytes,
            "wal_bytes": store.wal_bytes,
            "last_applied_at": self._applied_at,
            "persist_s": self._persist_s,
            "flush_s": self._persist_s,
            "lsn": store.last_lsn,
            "durable_lsn": store.durable_lsn,
            "snapshots": maintenance.snapshots,
            "snapshot_s": maintenance.snapshot_s,
            "upserted": self._upserted,
            "disk_full_s": maintenance.disk_full_s,
            "acks_sent": self._acks.sent,
            "acks_dropped": self._acks.dropped,
        }
        if self._gateway is not None:
            stats = self._gateway.stats
            out.update(
                queries=stats.queries,
                rounds=stats.rounds,
                query_p50_ms=stats.percentile(50),
                query_p99_ms=stats.percentile(99),
                rejected=sum(stats.rejected.values()),
                cache_hits=self._gateway.cache.stats.hits,
                cache_misses=self._gateway.cache.stats.misses,
                answers=stats.answers,
            )
            out.update({f"rejected_{reason}": n for reason, n in stats.rejected.items()})
            if self._guard is not None:
                out["curve_refused"] = self._guard.refused
        if self._serving is not None:
            out.update(self._serving.metrics())
        else:
            out["memory_entries"] = self._memory.count
        return out

    def close(self) -> None:
        """A clean stop: snapshot, close, then finalise MPI once every rank is stopping."""
        self._close_resources()
        self._mpi.stop()

    def _close_resources(self) -> None:
        """Everything but MPI. Idempotent."""
        self._acks.close()
        self._maintenance.close()
        self._store.close()
        self._memory.close()
        if self._serving is not None:
            self._serving.close()
        if self._router is not None:  # closed already unless ``serve`` never ended
            self._router.close(linger=0)
        if self._guard is not None:
            self._guard.close()
            self._guard = None
        self._zmq.release()
