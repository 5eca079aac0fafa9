"""The load stage: read files and directories (recursively) into document batches.

Formats: ``.txt`` and ``.md`` (one document per file; its id is the path relative to the source
root) and ``.jsonl`` (one ``{doc_id, text, source?, ts?}`` object per line). Files are
partitioned over the load replicas by their position in the sorted file list.

A bad document (not UTF-8, binary, empty, larger than the limit, not a valid JSON object) goes
to the dead-letter file ``<dead_letter_dir>/<actor>.jsonl`` with its reason; the run goes on.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pyarrow as pa

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
class _Doc:
    doc_id: str
    text: str
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


class FileLoader:
    """Source operator: documents from files, ``batch_docs`` per batch."""

    def __init__(
        self,
        context: OperatorContext,
        *,
        sources: list[dict[str, list[str]]],
        dead_letter_dir: str,
        batch_docs: int = 64,
        max_doc_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self._context = context
        files = sorted(
            {f for s in sources for f in discover(s["paths"], s["formats"])},
            key=lambda rp: str(rp[1]),
        )
        self._files = files[context.replica :: context.replicas]
        self._batch_docs = batch_docs
        self._limit = max_doc_bytes
        self._dead_path = Path(dead_letter_dir) / f"{context.actor}.jsonl"
        self._dead_letters = 0
        self._documents = 0
        self._dead_file: Any = None

    def metrics(self) -> dict[str, float]:
        return {
            "documents": self._documents,
            "dead_letters": self._dead_letters,
            "files": len(self._files),
        }

    def _dead_letter(
        self, source: Path, reason: str, line: int | None = None, doc_id: str | None = None
    ) -> None:
        if self._dead_file is None:
            self._dead_path.parent.mkdir(parents=True, exist_ok=True)
            self._dead_file = open(self._dead_path, "a", encoding="utf-8")  # closed in close()
        record = {
            "source": str(source),
            "line": line,
            "doc_id": doc_id,
            "reason": reason,
            "at": time.time(),
        }
        self._dead_file.write(json.dumps(record) + "\n")
        self._dead_file.flush()
        self._dead_letters += 1
        log.warning("dead letter: %s%s: %s", source, f":{line}" if line else "", reason)

    def _read_plain(self, root: Path, path: Path) -> Iterator[_Doc]:
        size = path.stat().st_size
        if size > self._limit:
            raise BadDocument(f"file of {size} bytes exceeds the limit of {self._limit}")
        raw = path.read_bytes()
        if b"\x00" in raw:
            raise BadDocument("binary content (NUL bytes)")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadDocument(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
        _check_text(text, self._limit)
        yield _Doc(str(path.relative_to(root)), text, str(path), int(path.stat().st_mtime * 1000))

    def _read_jsonl(self, path: Path) -> Iterator[_Doc]:
        mtime_ms = int(path.stat().st_mtime * 1000)
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                doc_id = None
                try:
                    if len(line) > self._limit:
                        raise BadDocument(f"line of {len(line)} bytes exceeds the limit")
                    try:
                        doc = _json_doc.decode(line)
                    except msgspec.DecodeError as exc:
                        raise BadDocument(f"not a valid document object: {exc}") from exc
                    doc_id = doc.doc_id
                    if not doc_id:
                        raise BadDocument("empty doc_id")
                    _check_text(doc.text, self._limit)
                except BadDocument as exc:
                    self._dead_letter(path, str(exc), number, doc_id)
                    continue
                ts_ms = int(doc.ts * 1000) if doc.ts is not None else mtime_ms
                yield _Doc(doc.doc_id, doc.text, doc.source or path.name, ts_ms)

    def _documents_of(self, root: Path, path: Path) -> Iterator[_Doc]:
        try:
            if path.suffix == ".jsonl":
                yield from self._read_jsonl(path)
            else:
                yield from self._read_plain(root, path)
        except BadDocument as exc:
            self._dead_letter(path, str(exc))
        except OSError as exc:
            self._dead_letter(path, f"cannot read: {exc.strerror or exc}")

    def batches(self) -> Iterator[pa.RecordBatch]:
        pending: list[_Doc] = []
        for root, path in self._files:
            for doc in self._documents_of(root, path):
                pending.append(doc)
                if len(pending) >= self._batch_docs:
                    yield self._batch(pending)
                    pending = []
        if pending:
            yield self._batch(pending)

    def _batch(self, docs: list[_Doc]) -> pa.RecordBatch:
        self._documents += len(docs)
        return pa.record_batch(
            [
                pa.array([d.doc_id for d in docs], pa.string()),
                pa.array([d.text for d in docs], pa.large_string()),
                pa.array([d.source for d in docs], pa.string()),
                pa.array([d.ts_ms for d in docs], pa.timestamp("ms")),
            ],
            schema=DOCUMENT,
        )

    def close(self) -> None:
        if self._dead_file is not None:
            self._dead_file.close()
            self._dead_file = None
