"""What a continuous source knows of its files: which version of each is durable, and which
documents the shards may hold beyond it.

A file's *emission* is one reading of it: its (size, mtime_ns) and the doc_ids it held. It is
complete once every document it sent (and every delete it caused) was acknowledged by every
shard; only then does the persisted manifest (``<checkpoints>/<actor>.files.json``) record it
(``acked``), or forget a deleted file. A restarted source compares each file with the manifest
and reads only those that differ, so a restart re-ingests only what was in flight.

Two rules keep a deleted or shrunk file's documents from outliving it:

- **One emission per file in flight.** Shards resolve two operations on one document by
  arrival order, which the stages do not keep (a router sends its pending tombstones before its
  pending chunks; replicas race): a delete sent while an earlier upsert of the document is in
  flight may land first and be undone by it. ``begin`` refuses a second emission of a file; the
  source waits for the first to complete.
- **Intents are durable before rows leave.** With ``deletes: follow``, a doc_id that a file's
  record does not name yet is added to ``pending`` and the manifest saved
  (``save_intents``) before its row is sent. A restart that finds the file gone, or no longer
  holding it, deletes it, though its emission never completed. ``pending`` is cleared when the
  file's next emission completes: that emission deleted whatever it did not hold.
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
    stored: frozenset[str] = frozenset()  # doc_ids shards may hold of the file as it began
    docs: list[str] = field(default_factory=list)
    remaining: int = 0  # documents (and deletes) sent and not yet complete
    sealed: bool = False  # every document of the reading has been sent


class _Saved(msgspec.Struct):
    files: dict[str, tuple[int, int, list[str]]]
    pending: dict[str, list[str]] = {}


class FileManifest:
    def __init__(self, path: Path, save_every_s: float) -> None:
        self.path = path
        self._save_every_s = save_every_s
        self._saved_at = 0.0
        self._dirty = False
        self._intents = False  # pending doc_ids not saved yet: rows must wait for them
        self.acked: dict[str, tuple[Stat, list[str]]] = {}
        self.pending: dict[str, set[str]] = {}
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
            return
        self.acked = {
            key: ((size, mtime), docs) for key, (size, mtime, docs) in saved.files.items()
        }
        self.pending = {key: set(docs) for key, docs in saved.pending.items() if docs}
        log.info(
            "file manifest: %d files already ingested, %d with documents in doubt",
            len(self.acked),
            len(self.pending),
        )

    def known(self) -> set[str]:
        """Every file whose documents shards may hold."""
        return set(self.acked) | set(self.pending)

    def busy(self, key: str) -> bool:
        """An emission of the file is in flight: another must wait for it."""
        return key in self.inflight

    def unchanged(self, key: str, stat: Stat | None) -> bool:
        """Nothing to do: the file is as its complete record says (gone: none), and no
        document of it is in doubt."""
        if key in self.pending:
            return False
        acked = self.acked.get(key)
        return stat is None if acked is None else acked[0] == stat

    def begin(self, key: str, stat: Stat | None) -> Emission:
        if key in self.inflight:
            raise RuntimeError(f"{key!r} is already being emitted")
        acked = self.acked.get(key)
        stored = set(acked[1]) if acked is not None else set()
        emission = Emission(key, stat, frozenset(stored | self.pending.get(key, set())))
        self.inflight[key] = emission
        return emission

    def intend(self, emission: Emission, doc_id: str) -> None:
        """``doc_id`` of ``emission`` is about to be sent: record it as possibly stored
        (durable once ``save_intents`` ran), unless the file's record names it already."""
        if doc_id in emission.stored:
            return
        pending = self.pending.setdefault(emission.key, set())
        if doc_id not in pending:
            pending.add(doc_id)
            self._intents = self._dirty = True

    def save_intents(self) -> None:
        """Persist the intents recorded since the last save; rows naming them may leave then."""
        if self._intents:
            self.save(force=True)

    def seal(self, emission: Emission) -> bool:
        """Every document of ``emission`` was sent; True when that completed it."""
        emission.sealed = True
        return self._check(emission)

    def done(self, emission: Emission) -> bool:
        """One document of ``emission`` is complete; True when that completed the emission."""
        emission.remaining -= 1
        return self._check(emission)

    def _check(self, emission: Emission) -> bool:
        if not emission.sealed or emission.remaining:
            return False
        del self.inflight[emission.key]
        # What it did not hold it deleted (with deletes: follow): nothing is in doubt now.
        self.pending.pop(emission.key, None)
        if emission.stat is None:
            self.acked.pop(emission.key, None)
        else:
            self.acked[emission.key] = (emission.stat, emission.docs)
        self._dirty = True
        return True

    def save(self, *, force: bool = False) -> None:
        """Persist the acknowledged files and the intents (atomically), at most every
        ``save_every_s`` unless forced."""
        now = time.monotonic()
        if not self._dirty or (not force and now - self._saved_at < self._save_every_s):
            return
        make_dir(self.path.parent)
        files = {key: [stat[0], stat[1], docs] for key, (stat, docs) in self.acked.items()}
        pending = {key: sorted(docs) for key, docs in self.pending.items()}
        write_atomic(self.path, json.dumps({"files": files, "pending": pending}).encode())
        self._dirty = self._intents = False
        self._saved_at = now
