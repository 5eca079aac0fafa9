"""The load stage: read files and directories (recursively) into document batches.

Formats: ``.txt`` and ``.md`` (one document per file; its id is the path relative to the source
root) and ``.jsonl`` (one ``{doc_id, text, source?, ts?}`` object per line). Files are
partitioned over the load replicas by their position in the sorted file list.

A bad document (not UTF-8, binary, empty, larger than the limit, not a valid JSON object) goes
to the dead-letter file ``<dead_letter_dir>/<actor>.jsonl`` with its reason; the run goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pyarrow as pa

from ..durability import acks
from ..durability.checkpoint import CheckpointFile
from ..durability.progress import SourceProgress
from ..observe.events import event
from ..protocol import Ack
from ..schemas import DOCUMENT
from .base import OperatorContext

log = logging.getLogger(__name__)

SUFFIXES = {".txt": "txt", ".md": "md", ".jsonl": "jsonl"}


class _JsonDoc(msgspec.Struct, forbid_unknown_fields=False):
    doc_id: str
    text: str
    source: str | None = None
    ts: float | None = None


_json_doc = msgspec.json.Decoder(_JsonDoc)


@dataclass(frozen=True)
class Doc:
    doc_id: str
    text: str | None  # None: a delete of the document (continuous sources, operators/feed.py)
    source: str
    ts_ms: int


class BadDocument(Exception):
    """A document that cannot be ingested; the message is the dead-letter reason."""


def discover(paths: list[str], formats: list[str]) -> list[tuple[Path, Path]]:
    """(root, file) for every file of an accepted format under ``paths``, sorted, unique."""
    found: dict[Path, Path] = {}
    for entry in paths:
        root = Path(entry)
        candidates: Iterable[Path]
        if root.is_dir():
            candidates, base = (p for p in root.rglob("*") if p.is_file()), root
        elif root.is_file():
            candidates, base = [root], root.parent
        else:
            raise FileNotFoundError(f"source path {entry!r} does not exist")
        for path in candidates:
            if SUFFIXES.get(path.suffix) in formats:
                found.setdefault(path.resolve(), base.resolve())
    return sorted(((root, path) for path, root in found.items()), key=lambda rp: str(rp[1]))


def _check_text(text: str, limit: int) -> None:
    if not text.strip():
        raise BadDocument("empty document")
    if "\x00" in text:
        raise BadDocument("binary content (NUL bytes)")
    if len(text) > limit:
        raise BadDocument(f"document of {len(text)} characters exceeds the limit of {limit}")


def check_document(doc_id: str, text: str, limit: int) -> None:
    """The checks every document passes (files, JSONL lines, the ingest endpoint)."""
    if not doc_id:
        raise BadDocument("empty doc_id")
    _check_text(text, limit)


@dataclass(frozen=True)
class Dead:
    source: Path
    reason: str
    line: int | None = None
    doc_id: str | None = None


def _read_plain(root: Path, path: Path, limit: int) -> Iterator[Doc]:
    size = path.stat().st_size
    if size > limit:
        raise BadDocument(f"file of {size} bytes exceeds the limit of {limit}")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise BadDocument("binary content (NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadDocument(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    _check_text(text, limit)
    yield Doc(str(path.relative_to(root)), text, str(path), int(path.stat().st_mtime * 1000))


def _read_jsonl(path: Path, limit: int) -> Iterator[Doc | Dead]:
    mtime_ms = int(path.stat().st_mtime * 1000)
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            doc_id = None
            try:
                if len(line) > limit:
                    raise BadDocument(f"line of {len(line)} bytes exceeds the limit")
                try:
                    doc = _json_doc.decode(line)
                except msgspec.DecodeError as exc:
                    raise BadDocument(f"not a valid document object: {exc}") from exc
                doc_id = doc.doc_id
                check_document(doc.doc_id, doc.text, limit)
            except BadDocument as exc:
                yield Dead(path, str(exc), number, doc_id)
                continue
            ts_ms = int(doc.ts * 1000) if doc.ts is not None else mtime_ms
            yield Doc(doc.doc_id, doc.text, doc.source or path.name, ts_ms)


def read_items(root: Path, path: Path, limit: int) -> Iterator[Doc | Dead]:
    """The documents of one file, and a dead letter for each bad one (or for the file)."""
    try:
        if path.suffix == ".jsonl":
            yield from _read_jsonl(path, limit)
        else:
            yield from _read_plain(root, path, limit)
    except BadDocument as exc:
        yield Dead(path, str(exc))
    except OSError as exc:
        yield Dead(path, f"cannot read: {exc.strerror or exc}")


def document_batch(docs: list[tuple[Doc, int]], replica: int) -> pa.RecordBatch:
    """(document, offset) pairs as one ``schemas.DOCUMENT`` batch of this source replica."""
    return pa.record_batch(
        [
            pa.array([d.doc_id for d, _ in docs], pa.string()),
            pa.array([d.text for d, _ in docs], pa.large_string()),
            pa.array([d.source for d, _ in docs], pa.string()),
            pa.array([d.ts_ms for d, _ in docs], pa.timestamp("ms")),
            pa.array(np.full(len(docs), replica, dtype=np.int32)),
            pa.array(np.fromiter((o for _, o in docs), dtype=np.int64, count=len(docs))),
        ],
        schema=DOCUMENT,
    )


class DeadLetters:
    """Appends dead letters to ``<dir>/<actor>.jsonl`` (opened on the first one), and logs a
    ``dead_letter`` event for each."""

    def __init__(self, directory: Path, context: OperatorContext) -> None:
        self._path = directory / f"{context.actor}.jsonl"
        self._actor, self._replica = context.actor, context.replica
        self._file: Any = None
        self.count = 0

    def write(self, dead: Dead) -> None:
        if self._file is None:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._path, "a", encoding="utf-8")  # closed in close()
        record = {
            "source": str(dead.source),
            "line": dead.line,
            "doc_id": dead.doc_id,
            "reason": dead.reason,
            "at": time.time(),
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        self.count += 1
        where = f"{dead.source}:{dead.line}" if dead.line else str(dead.source)
        event(
            log,
            logging.WARNING,
            "dead_letter",
            actor=self._actor,
            replica=self._replica,
            source=where,
            doc_id=dead.doc_id or "",
            reason=dead.reason,
        )

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class FileLoader:
    """Source operator: documents from files, ``batch_docs`` per batch.

    Every document and every dead letter takes the next offset of this replica's stream (the
    files are read in a fixed order). With ``checkpoint`` set, the shards' acknowledgements
    (``acknowledge``) advance a persisted checkpoint, and a restarted loader skips what it
    covers.
    """

    def __init__(
        self,
        context: OperatorContext,
        *,
        sources: list[dict[str, list[str]]],
        dead_letter_dir: str,
        batch_docs: int = 64,
        max_doc_bytes: int = 10 * 1024 * 1024,
        checkpoint: dict[str, Any] | None = None,
    ) -> None:
        self._context = context
        files = sorted(
            {f for s in sources for f in discover(s["paths"], s["formats"])},
            key=lambda rp: str(rp[1]),
        )
        self._files = files[context.replica :: context.replicas]
        self._batch_docs = batch_docs
        self._limit = max_doc_bytes
        self._dead = DeadLetters(Path(dead_letter_dir), context)
        self._documents = 0
        self._replica = context.replica
        self._checkpoint: CheckpointFile | None = None
        self._progress: SourceProgress | None = None
        self._save_every_s = 0.0
        self._saved_at = 0.0
        start = 0
        if checkpoint is not None:
            path = Path(checkpoint["dir"]) / f"{context.actor}.json"
            self._checkpoint = CheckpointFile(path, self._fingerprint(context))
            start = self._checkpoint.load()
            self._progress = SourceProgress(start, shards=int(checkpoint["shards"]))
            self._save_every_s = float(checkpoint.get("interval_ms", 200.0)) / 1000.0
        self._start = start
        self._exhausted = False  # every file read to its end

    def _fingerprint(self, context: OperatorContext) -> str:
        """What this replica's offsets number: its files, their sizes and change times."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{context.replica}/{context.replicas}/{self._limit}".encode())
        for root, path in self._files:
            try:
                stat = path.stat()
                digest.update(f"|{root}|{path}|{stat.st_size}|{stat.st_mtime_ns}".encode())
            except OSError:
                digest.update(f"|{root}|{path}|missing".encode())
        return digest.hexdigest()

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {
            "documents": self._documents,
            "dead_letters": self._dead.count,
            "files": len(self._files),
        }
        if self._progress is not None:
            out.update(
                resumed_from=self._start,
                acknowledged=self._progress.prefix,
                unacknowledged=self._progress.outstanding,
            )
        return out

    # --- delivery ----------------------------------------------------------------------------

    def acknowledge(self, ack: Ack) -> None:
        """A shard made rows of ours durable; persist the checkpoint now and then."""
        if self._progress is None or self._checkpoint is None:
            return
        acks.apply(self._progress, ack)
        now = time.monotonic()
        if now - self._saved_at >= self._save_every_s:
            self._checkpoint.save(self._progress.prefix)
            self._saved_at = now

    def unacknowledged(self) -> int:
        return self._progress.outstanding if self._progress is not None else 0

    def end_feed(self) -> None:
        """The stream ended: a feed read to its end and fully acknowledged removes its
        checkpoint; otherwise the checkpoint is saved for the next run to resume from."""
        if self._progress is None or self._checkpoint is None:
            return
        if self._exhausted and self._progress.outstanding == 0:
            self._checkpoint.remove()
            log.info("feed complete: every document acknowledged")
        else:
            self._checkpoint.save(self._progress.prefix)
            log.warning(
                "stream ended with %d documents not acknowledged (if every shard finished, a "
                "stage dropped the src_replica/src_offset columns); the checkpoint (offset %d) "
                "resumes them",
                self._progress.outstanding,
                self._progress.prefix,
            )

    # --- reading -----------------------------------------------------------------------------

    def _dead_letter(self, dead: Dead) -> None:
        self._dead.write(dead)

    def _items_of(self, root: Path, path: Path) -> Iterator[Doc | Dead]:
        return read_items(root, path, self._limit)

    def batches(self) -> Iterator[pa.RecordBatch]:
        pending: list[tuple[Doc, int]] = []
        position = 0
        for root, path in self._files:
            for item in self._items_of(root, path):
                position += 1
                if position <= self._start:
                    continue  # acknowledged before a restart
                if isinstance(item, Dead):
                    self._dead_letter(item)
                    if self._progress is not None:
                        self._progress.skip()
                    continue
                offset = self._progress.emit() if self._progress is not None else position - 1
                pending.append((item, offset))
                if len(pending) >= self._batch_docs:
                    yield self._batch(pending)
                    pending = []
        if pending:
            yield self._batch(pending)
        self._exhausted = True

    def _batch(self, docs: list[tuple[Doc, int]]) -> pa.RecordBatch:
        self._documents += len(docs)
        return document_batch(docs, self._replica)

    def close(self) -> None:
        self._dead.close()
