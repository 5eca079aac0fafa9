"""What keeps a shard durable while it ingests: log syncs, snapshots and the full-disk wait,
all off the event loop.

``append`` logs and applies a batch, or, when the disk is full, raises ``RetryLater`` so that
the actor offers the batch again after a pause that does not block its loop (the shard takes
no more input meanwhile, its senders run out of credit and ingestion pauses all the way to
the sources). ``run`` is a task beside ingestion: with ``wal_sync: interval`` it syncs the log
(a group commit) no sooner than ``sync_interval_s`` after the previous sync; it snapshots the
store every ``snapshot_interval_s`` or ``snapshot_wal_bytes`` of log, in a worker thread, so
syncs and acks go on while it writes. ``drain`` makes everything durable at end of stream.

Callbacks given to ``on_applied`` run with each batch and its LSN once it is applied, before
it can be announced durable; each time the durable LSN advances, the callbacks given to
``on_durable`` run on the event loop with it (the end-to-end acks hang on both).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import pyarrow as pa

from ..errors import RetryLater, StorageError
from .store import ShardStore

log = logging.getLogger(__name__)

# How often ``run`` looks at the snapshot triggers when it has nothing to sync.
SNAPSHOT_CHECK_S: Final = 0.25
# The full-disk retry's back-off: doubles from the first to the last.
FIRST_RETRY_S: Final = 0.05
LAST_RETRY_S: Final = 1.0


def disk_full(exc: BaseException) -> bool:
    """A write failed for want of space (or quota): worth waiting for, unlike damage."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return True
        cause = cause.__cause__
    return False


@dataclass(frozen=True)
class MaintenancePolicy:
    interval_sync: bool  # wal_sync: interval (else the log syncs itself, or there is none)
    sync_interval_s: float
    snapshot_interval_s: float
    snapshot_wal_bytes: int
    full_disk_wait_s: float


class Maintenance:
    def __init__(self, store: ShardStore, policy: MaintenancePolicy, name: str) -> None:
        self._store = store
        self._policy = policy
        self._name = name  # in logs: "shard <rank>"
        self._durable_seen = store.durable_lsn
        self._on_applied: list[Callable[[int, pa.RecordBatch], None]] = []
        self._on_durable: list[Callable[[int], None]] = []
        self._appended = asyncio.Event()  # set by append(), cleared by run()
        self._full_since: float | None = None  # monotonic time the disk was found full
        self._full_tries = 0
        self.disk_full_s = 0.0  # seconds ingestion waited for space
        self.snapshots = 0
        self.snapshot_s = 0.0

    def on_applied(self, callback: Callable[[int, pa.RecordBatch], None]) -> None:
        """Call ``callback(lsn, batch)`` for each batch appended, before it is announced
        durable."""
        self._on_applied.append(callback)

    def on_durable(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(durable_lsn)`` on the event loop each time the durable LSN advances."""
        self._on_durable.append(callback)

    # --- ingestion ---------------------------------------------------------------------------

    def append(self, batch: pa.RecordBatch) -> int:
        """Log and apply ``batch``; its LSN. Nothing is acknowledged that was not written:
        other storage errors, and a disk still full after ``full_disk_wait_s``, raise."""
        try:
            lsn = self._store.append(batch)
        except (StorageError, OSError) as exc:
            delay = self._retry_delay(exc)
            if delay is None:
                raise
            raise RetryLater(f"{self._name}: disk full", delay) from exc
        if self._full_since is not None:
            self.disk_full_s += time.monotonic() - self._full_since
            self._full_since = None
        for callback in self._on_applied:
            callback(lsn, batch)
        if not self._policy.interval_sync:
            self._announce_durable()  # append synced it already
        self._appended.set()  # wake run(): a sync, a snapshot may be due
        return lsn

    def _retry_delay(self, exc: StorageError | OSError) -> float | None:
        """How long to wait before offering a failed append again; None: give up."""
        now = time.monotonic()
        if not disk_full(exc):
            return None
        if self._full_since is None:
            self._full_since, self._full_tries = now, 0
            log.error(
                "%s: %s; ingestion paused until space frees up (giving up after %.0fs)",
                self._name,
                exc,
                self._policy.full_disk_wait_s,
            )
        if now - self._full_since >= self._policy.full_disk_wait_s:
            return None
        self._full_tries += 1
        return min(FIRST_RETRY_S * 2 ** (self._full_tries - 1), LAST_RETRY_S)

    def drain(self, before_snapshot: Callable[[], None]) -> None:
        """End of stream: everything appended made durable (announced), then a snapshot.
        ``before_snapshot`` runs once the data is durable (the final acks need not wait for
        the snapshot when a log holds the data)."""
        store = self._store
        store.sync()
        if not store.logs:  # without a log only the snapshot makes the last acks
            self.snapshot("drain", force=True)
        self._announce_durable()
        before_snapshot()
        if store.logs:
            self.snapshot("drain", force=True)

    # --- durability --------------------------------------------------------------------------

    def _announce_durable(self) -> None:
        durable = self._store.durable_lsn
        if durable > self._durable_seen:
            self._durable_seen = durable
            for callback in self._on_durable:
                callback(durable)

    def snapshot(self, reason: str, *, force: bool = False) -> None:
        started = time.perf_counter()
        info = self._store.snapshot(reason, force=force)
        if info is not None:
            self.snapshots += 1
            self.snapshot_s += time.perf_counter() - started
            log.info("%s snapshot (%s): %d vectors", self._name, reason, info.vectors)

    def _snapshot_due(self) -> str | None:
        store, policy = self._store, self._policy
        if store.last_lsn == store.snapshot_lsn:
            return None
        if store.wal_bytes >= policy.snapshot_wal_bytes:
            return "wal_size"
        if store.snapshot_age_s >= policy.snapshot_interval_s:
            return "interval"
        return None

    async def run(self) -> None:
        """Interval syncs and periodic snapshots until cancelled.

        It wakes after each append (and every ``SNAPSHOT_CHECK_S`` when idle). A sync starts
        as soon as there is something to sync, but no sooner than ``sync_interval_s`` after
        the previous one. A snapshot runs as a task of its own.
        """
        async with asyncio.TaskGroup() as tg:
            snapshotting: asyncio.Task[None] | None = None
            loop = asyncio.get_running_loop()
            last_sync = loop.time()
            store, policy = self._store, self._policy
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SNAPSHOT_CHECK_S):
                        await self._appended.wait()
                if policy.interval_sync and store.last_lsn > store.durable_lsn:
                    await asyncio.sleep(max(0.0, last_sync + policy.sync_interval_s - loop.time()))
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
            await asyncio.to_thread(self.snapshot, reason)
        except (StorageError, OSError) as exc:
            if not disk_full(exc):
                raise
            # The log still holds everything: try again at the next trigger.
            log.error("%s: snapshot failed, disk full (%s); will retry", self._name, exc)
            return
        self._announce_durable()  # the snapshot synced the log it cut

    def close(self) -> None:
        """A stop: leave files that show every write (a serving shard may have logged deletes
        since its end-of-stream snapshot). The log has them anyway, so a failure here loses
        nothing. Idempotent, like the store's close that follows."""
        try:
            self.snapshot("stop")
        except Exception as exc:
            log.warning("%s: no snapshot at stop (%s); the log has everything", self._name, exc)
