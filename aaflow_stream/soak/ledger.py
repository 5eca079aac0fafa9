"""The soak's ledger: every document the engine acknowledged, at the version it acknowledged.

An operation (a new version, or a delete) is *pending* from its first send until the engine
acknowledged it durable; only then does the ledger's entry change. One operation per document
at a time: the engine resolves two versions of one document in flight by arrival order at each
shard, not by version (a documented limit), so the driver never sends a newer version before
the older one is acknowledged. An operation still pending at the end is *unresolved*: the audit
counts it, since the driver retries until the engine answers.

Shared by the event loop and the sync query threads: one lock around every access.
"""

from __future__ import annotations

import json
import random
import threading
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import DocumentBusy
from . import corpus

Feed = Literal["api", "file"]
RECENT = 512  # recently acknowledged documents, for read-your-writes checks


@dataclass(frozen=True)
class Entry:
    """A document as the engine last acknowledged it."""

    number: int
    version: int  # the acknowledged version (1, 2, ...); the last one before a delete
    deleted: bool
    feed: Feed
    acked_at: float


@dataclass(frozen=True)
class Pending:
    """An operation sent and not yet acknowledged."""

    number: int
    version: int  # the version being sent (for a delete: the version it deletes)
    delete: bool
    feed: Feed
    sent_at: float


class Ledger:
    def __init__(self, seed: int, prefix: str) -> None:
        self.seed = seed
        self.prefix = prefix
        self._entries: dict[str, Entry] = {}
        self._pending: dict[str, Pending] = {}
        self._live: dict[Feed, list[str]] = {"api": [], "file": []}  # acked, not deleted
        self._where: dict[str, int] = {}  # doc_id -> its index in its feed's live list
        self._recent: deque[str] = deque(maxlen=RECENT)
        self._numbers = 0
        self._lock = threading.Lock()

    # --- operations ------------------------------------------------------------------------

    def new_number(self) -> int:
        with self._lock:
            self._numbers += 1
            return self._numbers

    def doc_id(self, number: int) -> str:
        return corpus.doc_id(self.prefix, number)

    def begin(self, number: int, *, version: int, delete: bool, feed: Feed, at: float) -> str:
        """Mark an operation as sent; ``DocumentBusy`` when the document has one in flight."""
        doc_id = self.doc_id(number)
        with self._lock:
            if doc_id in self._pending:
                raise DocumentBusy(doc_id)
            self._pending[doc_id] = Pending(number, version, delete, feed, at)
        return doc_id

    def acknowledge(self, doc_id: str, at: float) -> float:
        """The engine made the pending operation durable; returns its lag (first send to
        acknowledgement)."""
        with self._lock:
            op = self._pending.pop(doc_id)
            entry = Entry(op.number, op.version, op.delete, op.feed, at)
            self._entries[doc_id] = entry
            self._set_live(doc_id, entry)
            self._recent.append(doc_id)
            return at - op.sent_at

    def abandon(self, doc_id: str) -> None:
        """The engine refused the operation: the document stays as last acknowledged."""
        with self._lock:
            self._pending.pop(doc_id, None)

    def _set_live(self, doc_id: str, entry: Entry) -> None:
        live = self._live[entry.feed]
        if not entry.deleted and doc_id not in self._where:
            self._where[doc_id] = len(live)
            live.append(doc_id)
        elif entry.deleted and doc_id in self._where:  # swap-remove: O(1)
            index = self._where.pop(doc_id)
            last = live.pop()
            if last != doc_id:
                live[index] = last
                self._where[last] = index

    # --- reads -----------------------------------------------------------------------------

    def pick(self, rng: random.Random, feed: Feed, tries: int = 8) -> Entry | None:
        """A random acknowledged, live document of ``feed`` with nothing in flight."""
        with self._lock:
            live = self._live[feed]
            for _ in range(tries if live else 0):
                doc_id = live[rng.randrange(len(live))]
                if doc_id not in self._pending:
                    return self._entries[doc_id]
        return None

    def recent(self, rng: random.Random) -> tuple[str, Entry] | None:
        """A recently acknowledged document (written or deleted) with nothing in flight."""
        with self._lock:
            if not self._recent:
                return None
            doc_id = self._recent[rng.randrange(len(self._recent))]
            if doc_id in self._pending:
                return None
            return doc_id, self._entries[doc_id]

    def settled(self, doc_id: str) -> Entry | None:
        """The entry when nothing is in flight for the document (None otherwise, or when the
        engine never acknowledged it)."""
        with self._lock:
            return None if doc_id in self._pending else self._entries.get(doc_id)

    def entries(self) -> dict[str, Entry]:
        with self._lock:
            return dict(self._entries)

    def pending(self) -> dict[str, Pending]:
        with self._lock:
            return dict(self._pending)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def counts(self) -> dict[str, int]:
        with self._lock:
            deleted = sum(e.deleted for e in self._entries.values())
            return {
                "documents": len(self._entries) - deleted,
                "deleted": deleted,
                "updated": sum(e.version > 1 and not e.deleted for e in self._entries.values()),
                "pending": len(self._pending),
            }

    # --- files -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "seed": self.seed,
                "prefix": self.prefix,
                "entries": {k: asdict(v) for k, v in self._entries.items()},
                "unresolved": {k: asdict(v) for k, v in self._pending.items()},
            }

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json()))

    @classmethod
    def load(cls, path: Path) -> Ledger:
        raw = json.loads(path.read_text())
        ledger = cls(int(raw["seed"]), str(raw["prefix"]))
        for doc_id, fields in raw["entries"].items():
            entry = Entry(**fields)
            ledger._entries[doc_id] = entry
            ledger._set_live(doc_id, entry)
            ledger._numbers = max(ledger._numbers, entry.number)
        for doc_id, fields in raw.get("unresolved", {}).items():
            ledger._pending[doc_id] = Pending(**fields)
        return ledger
