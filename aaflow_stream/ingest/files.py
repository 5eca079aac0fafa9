"""What a continuous source knows of its files: which version of each is durable.

A file's *emission* is one reading of it: its (size, mtime_ns) and the doc_ids it held. It is
complete once every document it sent (and every delete it caused) was acknowledged by every
shard; only then does the persisted manifest (``<checkpoints>/<actor>.files.json``) record it.
A restarted source compares each file with the manifest and reads only those that differ, so a
restart re-ingests only what was in flight. A later emission of the same file supersedes an
earlier one still in flight (its completion is then ignored).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from ..durability.fsio import make_dir, write_atomic

log = logging.getLogger(__name__)

Stat = tuple[int, int]  # (size, mtime_ns)


def stat_of(path: Path) -> Stat | None:
    """The file's (size, mtime_ns), or None when it is gone (or not a regular file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if path.is_file() else None


@dataclass(eq=False)
class Emission:
    key: str
    stat: Stat | None  # None: the file was deleted
    docs: list[str] = field(default_factory=list)
    remaining: int = 0  # documents (and deletes) sent and not yet complete
    sealed: bool = False  # every document of the reading has been sent


class _Saved(msgspec.Struct):
    files: dict[str, tuple[int, int, list[str]]]


class FileManifest:
    def __init__(self, path: Path, save_every_s: float) -> None:
        self.path = path
        self._save_every_s = save_every_s
        self._saved_at = 0.0
        self._dirty = False
        self.acked: dict[str, tuple[Stat, list[str]]] = {}
        self.inflight: dict[str, Emission] = {}
        self._load()

    def _load(self) -> None:
        try:
            # json, not msgspec: a file name that is not UTF-8 is a lone surrogate escape.
            saved = msgspec.convert(json.loads(self.path.read_text()), _Saved)
        except FileNotFoundError:
            return
        except (OSError, ValueError, RecursionError, msgspec.ValidationError) as exc:
            log.warning(
                "file manifest %s unreadable (%s): every file is read again", self.path, exc
            )
            self.acked = {}
            return
        self.acked = {
            key: ((size, mtime), docs) for key, (size, mtime, docs) in saved.files.items()
        }
        log.info("file manifest: %d files already ingested", len(self.acked))

    def latest(self, key: str) -> tuple[Stat | None, list[str]] | None:
        """The newest known version of a file: in flight, else acknowledged, else None."""
        emission = self.inflight.get(key)
        if emission is not None:
            return emission.stat, emission.docs
        return self.acked.get(key)

    def begin(self, key: str, stat: Stat | None) -> Emission:
        emission = Emission(key, stat)
        self.inflight[key] = emission
        return emission

    def seal(self, emission: Emission) -> None:
        emission.sealed = True
        self._check(emission)

    def done(self, emission: Emission) -> None:
        emission.remaining -= 1
        self._check(emission)

    def _check(self, emission: Emission) -> None:
        if not emission.sealed or emission.remaining:
            return
        if self.inflight.get(emission.key) is not emission:
            return  # superseded by a newer reading of the file
        del self.inflight[emission.key]
        if emission.stat is None:
            self.acked.pop(emission.key, None)
        else:
            self.acked[emission.key] = (emission.stat, emission.docs)
        self._dirty = True

    def save(self, *, force: bool = False) -> None:
        """Persist the acknowledged files (atomically), at most every ``save_every_s``."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._saved_at < self._save_every_s):
            return
        make_dir(self.path.parent)
        files = {key: [stat[0], stat[1], docs] for key, (stat, docs) in self.acked.items()}
        write_atomic(self.path, json.dumps({"files": files}).encode())
        self._dirty = False
        self._saved_at = now
