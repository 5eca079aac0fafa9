"""The load stage: read files and directories (recursively) into document batches.

Formats: ``.txt`` and ``.md`` (one document per file; its id is the path relative to the source
root) and ``.jsonl`` (one ``{doc_id, text, source?, ts?}`` object per line). Files are
partitioned over the load replicas by their position in the sorted file list.

A bad document (not UTF-8, binary, empty, over a limit, a ``ts`` out of range, not a valid
JSON object) goes to the dead-letter file ``<dead_letter_dir>/<actor>.jsonl`` with its reason
and reason code; the run goes on. The checks (``ingest.documents``: limits in UTF-8 bytes, a
finite ``ts`` in range) are the ones every document passes, the ingest endpoint's included.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Final

import msgspec
import numpy as np
import pyarrow as pa

from .. import untrusted
from ..durability import acks
from ..durability.checkpoint import CheckpointFile
from ..durability.progress import SourceProgress
from ..ingest.documents import (
    BadDocument,
    Doc,
    DocLimits,
    RejectReason,
    check_document,
    max_line_bytes,
    shown_id,
    ts_ms,
)
from ..observe.events import event
from ..protocol import Ack
from ..schemas import DOCUMENT
from .base import OperatorContext
from .params import LoadParams

log = logging.getLogger(__name__)

SUFFIXES = {".txt": "txt", ".md": "md", ".jsonl": "jsonl"}


class _JsonDoc(msgspec.Struct, forbid_unknown_fields=False):
    doc_id: str
    text: str
    source: str | None = None
    ts: float | None = None


_json_doc = msgspec.json.Decoder(_JsonDoc)
_SKIP_BYTES: Final = 1 << 20


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


@dataclass(frozen=True)
class Dead:
    source: Path
    reason: str
    line: int | None = None
    doc_id: str | None = None
    code: RejectReason = "invalid"


def _read_plain(root: Path, path: Path, limits: DocLimits) -> Iterator[Doc]:
    size = path.stat().st_size
    if size > limits.max_doc_bytes:
        raise BadDocument(
            "too_large", f"file of {size} bytes exceeds the limit of {limits.max_doc_bytes}"
        )
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise BadDocument("binary", "binary content (NUL bytes)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadDocument("invalid_utf8", f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    doc_id = str(path.relative_to(root))  # a file name that is not UTF-8 fails here
    check_document(doc_id, text, limits, str(path))
    yield Doc(doc_id, text, str(path), int(path.stat().st_mtime * 1000))


def _lines(handle: BinaryIO, cap: int) -> Iterator[tuple[int, bytes | None]]:
    """Numbered lines of at most ``cap`` bytes; a longer one is skipped to its end unread
    and given as None (a line read whole could take any amount of memory)."""
    number = 0
    while line := handle.readline(cap + 1):
        number += 1
        if len(line) <= cap or line.endswith(b"\n"):
            yield number, line
            continue
        while line and not line.endswith(b"\n"):
            line = handle.readline(_SKIP_BYTES)
        yield number, None


def _json_line(line: bytes, default_ms: int, default_source: str, limits: DocLimits) -> Doc:
    try:
        doc = untrusted.decode(_json_doc, line, what="document object")
    except untrusted.MalformedMessage as exc:
        raise BadDocument.malformed(exc, "document object") from exc
    source = doc.source or default_source  # the file's name, which need not be UTF-8
    check_document(doc.doc_id, doc.text, limits, source)
    return Doc(doc.doc_id, doc.text, source, ts_ms(doc.ts, default_ms))


def _read_jsonl(path: Path, limits: DocLimits) -> Iterator[Doc | Dead]:
    mtime_ms = int(path.stat().st_mtime * 1000)
    cap = max_line_bytes(limits)
    with open(path, "rb") as handle:
        for number, line in _lines(handle, cap):
            if line is None:
                reason = f"line of more than {cap} bytes exceeds the limit"
                yield Dead(path, reason, number, None, "too_large")
            elif line.strip():
                try:
                    yield _json_line(line, mtime_ms, path.name, limits)
                except BadDocument as exc:
                    yield Dead(path, str(exc), number, _peek_doc_id(line, limits), exc.reason)


class _DocId(msgspec.Struct):
    doc_id: Any = None


_json_doc_id = msgspec.json.Decoder(_DocId)


def _peek_doc_id(line: bytes, limits: DocLimits) -> str | None:
    """The doc_id of a bad JSONL line, for its dead letter, when it has a fit one."""
    try:
        found = untrusted.decode(_json_doc_id, line).doc_id
    except untrusted.MalformedMessage:
        return None
    return shown_id(found, limits)


def read_items(root: Path, path: Path, limits: DocLimits) -> Iterator[Doc | Dead]:
    """The documents of one file, and a dead letter for each bad one (or for the file)."""
    try:
        if path.suffix == ".jsonl":
            yield from _read_jsonl(path, limits)
        else:
            yield from _read_plain(root, path, limits)
    except BadDocument as exc:
        yield Dead(path, str(exc), code=exc.reason)
    except OSError as exc:
        yield Dead(path, f"cannot read: {exc.strerror or exc}", code="unreadable")


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
            "code": dead.code,
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

    Params: ClassVar[type[LoadParams]] = LoadParams

    def __init__(self, context: OperatorContext, params: LoadParams) -> None:
        self._context = context
        files = sorted(
            {f for s in params.sources for f in discover(s.paths, list(s.formats))},
            key=lambda rp: str(rp[1]),
        )
        self._files = files[context.replica :: context.replicas]
        self._batch_docs = params.batch_docs
        self._limits = params.limits
        self._dead = DeadLetters(Path(params.dead_letter_dir), context)
        self._documents = 0
        self._replica = context.replica
        self._checkpoint: CheckpointFile | None = None
        self._progress: SourceProgress | None = None
        self._save_every_s = 0.0
        self._saved_at = 0.0
        start = 0
        checkpoint = params.checkpoint
        if checkpoint is not None:
            path = Path(checkpoint.dir) / f"{context.actor}.json"
            self._checkpoint = CheckpointFile(path, self._fingerprint(context))
            start = self._checkpoint.load()
            self._progress = SourceProgress(start, shards=checkpoint.shards)
            self._save_every_s = checkpoint.interval_ms / 1000.0
        self._start = start
        self._exhausted = False  # every file read to its end

    def _fingerprint(self, context: OperatorContext) -> str:
        """What this replica's offsets number: its files, their sizes and change times."""
        digest = hashlib.blake2b(digest_size=16)
        limits = self._limits
        digest.update(
            f"{context.replica}/{context.replicas}/{limits.max_doc_bytes}"
            f"/{limits.max_doc_id_bytes}/{limits.max_source_bytes}".encode()
        )
        for root, path in self._files:
            try:
                stat = path.stat()
                entry = f"|{root}|{path}|{stat.st_size}|{stat.st_mtime_ns}"
            except OSError:
                entry = f"|{root}|{path}|missing"
            digest.update(entry.encode("utf-8", "surrogateescape"))  # names need not be UTF-8
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
        return read_items(root, path, self._limits)

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
