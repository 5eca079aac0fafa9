"""Documents for ``aaflow-stream ingest``: JSONL files or standard input, and text files.

A ``.jsonl`` file (or ``-``: standard input) holds one ``{doc_id, text, source?, ts?}`` object
per line; any other file is one document whose id is the path as given. A line that is not a
JSON object is rejected here, named by file and line; everything else is checked by the engine.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

import msgspec

from .. import untrusted

STDIN = "-"
_json: Final = msgspec.json.Decoder()


@dataclass(frozen=True)
class LocalReject:
    where: str  # file:line
    reason: str


def _jsonl(name: str, handle: BinaryIO) -> Iterator[dict[str, Any] | LocalReject]:
    for number, line in enumerate(handle, start=1):
        if not line.strip():
            continue
        try:  # any failure (deep nesting, not UTF-8) is the line's
            doc = untrusted.decode(_json, line, what="line")
        except untrusted.MalformedMessage as exc:
            yield LocalReject(f"{name}:{number}", f"not JSON: {exc}")
            continue
        if not isinstance(doc, dict):
            yield LocalReject(f"{name}:{number}", f"not a JSON object: {type(doc).__name__}")
            continue
        yield doc


def read_documents(names: list[str]) -> Iterator[dict[str, Any] | LocalReject]:
    """Every document of the named inputs, in order (raises OSError for a missing file)."""
    for name in names:
        if name == STDIN:
            yield from _jsonl("<stdin>", sys.stdin.buffer)
            continue
        path = Path(name)
        if path.suffix == ".jsonl":
            with open(path, "rb") as handle:
                yield from _jsonl(name, handle)
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            yield LocalReject(name, f"not UTF-8: {exc.reason} at byte {exc.start}")
            continue
        yield {"doc_id": name, "text": text, "source": str(path)}
