"""The continuous load stage: watched directories and the ingest endpoint, until stopped.

Used instead of ``load.FileLoader`` when a source has ``watch: true`` or the topology has an
``ingest`` endpoint. An async source (``abatches()``, see ``runtime/actor.py``):

- Start: every file of the sources (this replica's share: by a hash of its path) is compared
  with the manifest of acknowledged files (``ingest/files.py``); only files that differ are
  read. A file in the manifest that is gone is forgotten, and with ``deletes: follow`` its
  documents are deleted.
- Then ``watchfiles`` reports changes in the watched sources: an added or changed file is read
  again (its documents replace their old chunks: a new ``doc_version`` and the upsert's
  tombstones); with ``deletes: follow`` a deleted file's documents, and documents a changed
  JSONL file no longer holds, are deleted: a row with no text, which the transform and upsert
  turn into a ``DELETE_ALL`` tombstone for every shard. The watched sources are scanned once
  more when the watcher first reports (its start may come after the initial scan).
- A file changed while its previous reading is in flight waits for that reading to complete
  before it is read again, and with ``deletes: follow`` a batch leaves only once the manifest
  durably names every document it sends (``FileManifest``: why both).
- Replica 0 serves the ingest endpoint (``ingest/endpoint.py``); its documents join the same
  stream, and a request is answered once all its documents are durable.

Every document takes an offset of this replica's ``SourceProgress``; its completion (every
shard acknowledged it) completes its file reading or its client request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import pyarrow as pa

from ..durability import acks
from ..durability.progress import SourceProgress
from ..ingest.documents import Doc
from ..ingest.endpoint import IngestEndpoint, PendingRequest
from ..ingest.files import Emission, FileManifest, stat_of
from ..protocol import Ack
from ..spec import SourceSpec
from .base import OperatorContext
from .load import SUFFIXES, DeadLetters, document_batch, read_items
from .params import FeedParams

log = logging.getLogger(__name__)

# The watcher answers at least this often, changes or not; its first answer starts the rescan
# that catches what changed before it ran.
WATCH_ANSWER_MS = 1000


class _Source:
    def __init__(self, spec: SourceSpec) -> None:
        self.roots = [Path(p).resolve() for p in spec.paths]
        self.formats: set[str] = set(spec.formats)
        self.watch = spec.watch
        self.follow = spec.deletes == "follow"

    def root_of(self, path: Path) -> Path | None:
        """The root a file belongs to (doc ids of plain files are relative to it)."""
        for root in self.roots:
            if path == root:
                return root.parent
            if path.is_relative_to(root):
                return root
        return None

    def files(self) -> Iterator[Path]:
        for root in self.roots:
            if root.is_dir():
                yield from (p for p in root.rglob("*") if p.is_file())
            elif root.is_file():
                yield root
            else:
                raise FileNotFoundError(f"source path {str(root)!r} does not exist")


def _share(key: str, replicas: int) -> int:
    data = key.encode("utf-8", "surrogateescape")  # a file name need not be UTF-8
    return int.from_bytes(hashlib.blake2b(data, digest_size=4).digest(), "little") % replicas


class ContinuousLoader:
    Params: ClassVar[type[FeedParams]] = FeedParams

    def __init__(self, context: OperatorContext, params: FeedParams) -> None:
        self._context = context
        self._sources = [_Source(s) for s in params.sources]
        self._batch_docs = params.batch_docs
        self._limits = params.limits
        self._dead = DeadLetters(Path(params.dead_letter_dir), context)
        checkpoint = params.checkpoint
        self._save_every_s = checkpoint.interval_ms / 1000.0
        self._manifest = FileManifest(
            Path(checkpoint.dir) / f"{context.actor}.files.json", self._save_every_s
        )
        self._progress = SourceProgress(0, checkpoint.shards, self._completed)
        self._owners: dict[int, Emission | PendingRequest] = {}
        self._wake = asyncio.Event()
        self._changed: dict[str, None] = {}  # files to look at, in order (an ordered set)
        self._waiting: set[str] = set()  # changed while a reading of theirs is in flight
        self._reading: Iterator[tuple[Doc, Emission]] | None = None
        self._documents = 0
        self._deletes = 0
        self._endpoint: IngestEndpoint | None = None
        ingest = params.ingest
        if ingest is not None and context.replica == 0:
            self._endpoint = IngestEndpoint(
                ingest.endpoint,
                wake=self._wake.set,
                limits=self._limits,
                max_pending=ingest.max_pending,
                max_queued=ingest.max_queued,
                max_request_bytes=int(ingest.max_request_mb * 2**20),
                ctx=context.zmq_context,
                keys_dir=params.keys_dir,
            )

    # --- hooks ---------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Watch the watched sources and serve the ingest endpoint (until cancelled)."""
        async with asyncio.TaskGroup() as tg:
            if any(s.watch for s in self._sources):
                tg.create_task(self._watch())
            if self._endpoint is not None:
                tg.create_task(self._endpoint.serve())
            tg.create_task(self._save_manifest())

    async def abatches(self) -> AsyncIterator[pa.RecordBatch]:
        self._changed.update(dict.fromkeys(self._initial_files()))
        log.info("initial scan: %d files to compare with the manifest", len(self._changed))
        while True:
            batch = self._next_batch()
            if batch is not None:
                yield batch
                continue
            self._wake.clear()
            if not self._has_work():
                await self._wake.wait()

    def acknowledge(self, ack: Ack) -> None:
        acks.apply(self._progress, ack)

    def unacknowledged(self) -> int:
        return self._progress.outstanding

    def end_feed(self) -> None:
        self._manifest.save(force=True)
        if self._progress.outstanding:
            log.warning(
                "stopping with %d documents not acknowledged: their files are read again next time",
                self._progress.outstanding,
            )

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {
            "documents": self._documents,
            "deletes": self._deletes,
            "dead_letters": self._dead.count,
            "files": len(self._manifest.acked),
            "acknowledged": self._progress.prefix,
            "unacknowledged": self._progress.outstanding,
        }
        if self._endpoint is not None:
            out.update(self._endpoint.metrics())
        return out

    def close(self) -> None:
        self._manifest.save(force=True)
        if self._endpoint is not None:
            self._endpoint.close()
        self._dead.close()

    # --- files ---------------------------------------------------------------------------------

    def _mine(self, key: str) -> bool:
        return _share(key, self._context.replicas) == self._context.replica

    def _source_of(self, path: Path) -> tuple[_Source, Path] | None:
        if SUFFIXES.get(path.suffix) is None:
            return None
        for source in self._sources:
            root = source.root_of(path)
            if root is not None and SUFFIXES[path.suffix] in source.formats:
                return source, root
        return None

    def _initial_files(self, *, watched_only: bool = False) -> list[str]:
        sources = [s for s in self._sources if s.watch or not watched_only]
        found = {str(p.resolve()) for s in sources for p in s.files()}
        known = self._manifest.known()  # gone since the last run: deletes to follow
        keys = sorted(k for k in found | known if self._mine(k))
        return [k for k in keys if (f := self._source_of(Path(k))) is not None and f[0] in sources]

    async def _watch(self) -> None:
        import watchfiles  # the one module that watches files

        roots = [str(r) for s in self._sources if s.watch for r in s.roots]
        watching = False
        # yield_on_timeout: the first answer, changes or not, says the watcher is running.
        async for changes in watchfiles.awatch(
            *roots,
            step=50,
            ignore_permission_denied=True,
            rust_timeout=WATCH_ANSWER_MS,
            yield_on_timeout=True,
        ):
            if not watching:  # what changed between the initial scan and now was not seen
                watching = True
                self._changed.update(dict.fromkeys(self._initial_files(watched_only=True)))
                self._wake.set()
            self.changed(Path(name) for _change, name in changes)

    def changed(self, paths: Iterable[Path]) -> None:
        """Files (or directories) that were added, changed or deleted: look at them again."""
        marked = False
        for path in paths:
            marked = self._mark(path) or marked
        if marked:
            self._wake.set()

    def _mark(self, path: Path) -> bool:
        if path.is_dir():  # a directory moved in: its files
            return any([self._mark(file) for file in path.rglob("*")])
        key = str(path)
        prefix = key.rstrip("/") + "/"
        gone = [k for k in self._manifest.known() if k.startswith(prefix)]  # a directory removed
        marked = False
        for k in [key, *gone]:
            if self._mine(k) and self._source_of(Path(k)) is not None:
                self._changed[k] = None
                marked = True
        return marked

    def _read(self, key: str) -> Iterator[tuple[Doc, Emission]]:
        """The documents (and deletes) of one file that differs from what is known of it."""
        path = Path(key)
        found = self._source_of(path)
        if found is None:
            return
        source, root = found
        if self._manifest.busy(key):  # read again once the reading in flight completed
            self._waiting.add(key)
            return
        stat = stat_of(path)
        if self._manifest.unchanged(key, stat):
            return
        emission = self._manifest.begin(key, stat)
        old_docs = set(emission.stored)
        now_ms = int(time.time() * 1000)
        if stat is not None:
            for item in read_items(root, path, self._limits):
                if isinstance(item, Doc):
                    emission.docs.append(item.doc_id)
                    old_docs.discard(item.doc_id)
                    emission.remaining += 1  # counted now: it is emitted before any await
                    if source.follow:  # saved before its batch leaves (_next_batch)
                        self._manifest.intend(emission, item.doc_id)
                    yield item, emission
                else:
                    self._dead.write(item)
        if source.follow:  # documents the file no longer holds
            for doc_id in sorted(old_docs):
                emission.remaining += 1
                yield Doc(doc_id, None, key, now_ms), emission
        if self._manifest.seal(emission):
            self._read_again(key)

    # --- batches -------------------------------------------------------------------------------

    def _has_work(self) -> bool:
        endpoint = self._endpoint is not None and self._endpoint.has_work
        return bool(self._reading is not None or self._changed or endpoint)

    def _next_batch(self) -> pa.RecordBatch | None:
        """Up to ``batch_docs`` documents: files first, then the endpoint's requests."""
        docs: list[tuple[Doc, Emission | PendingRequest]] = []
        while len(docs) < self._batch_docs:
            if self._reading is not None:
                item = next(self._reading, None)
                if item is None:
                    self._reading = None
                else:
                    docs.append(item)
            elif self._changed:
                key = next(iter(self._changed))
                del self._changed[key]
                self._reading = self._read(key)
            elif self._endpoint is not None and self._endpoint.has_work:
                docs += self._endpoint.take(self._batch_docs - len(docs))
            else:
                break
        if not docs:
            return None
        self._manifest.save_intents()  # before any of these rows can reach a shard
        rows: list[tuple[Doc, int]] = []
        for doc, owner in docs:
            offset = self._progress.emit(chunks=0 if doc.text is None else -1)
            self._owners[offset] = owner
            rows.append((doc, offset))
            if doc.text is None:
                self._deletes += 1
            else:
                self._documents += 1
        return document_batch(rows, self._context.replica)

    def _completed(self, offset: int) -> None:
        owner = self._owners.pop(offset, None)
        if isinstance(owner, Emission):
            if self._manifest.done(owner):
                self._read_again(owner.key)
        elif isinstance(owner, PendingRequest) and self._endpoint is not None:
            self._endpoint.done(owner)

    def _read_again(self, key: str) -> None:
        """The reading of ``key`` in flight completed: a change it made wait comes now."""
        if key in self._waiting:
            self._waiting.discard(key)
            self._changed[key] = None
            self._wake.set()

    async def _save_manifest(self) -> None:
        while True:
            await asyncio.sleep(self._save_every_s)
            self._manifest.save()
