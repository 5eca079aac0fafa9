"""A source's persisted checkpoint: the offset to resume from, written atomically.

The file is small JSON: ``{"next_offset": N, "fingerprint": "..."}``. The fingerprint names what
the offsets number (a file source: its files, sizes and modification times); a checkpoint with
another fingerprint is ignored with a warning, since its offsets would point at other
documents (resuming at 0 is always safe: upserts are idempotent). A feed that completes removes
its checkpoint, so the next ``up`` is a new feed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .fsio import make_dir, write_atomic

log = logging.getLogger(__name__)


class CheckpointFile:
    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self._fingerprint = fingerprint
        self._saved: int | None = None

    def load(self) -> int:
        """The offset to resume from: 0 without a (matching, readable) checkpoint."""
        try:
            saved = json.loads(self.path.read_text())
            offset, fingerprint = int(saved["next_offset"]), str(saved["fingerprint"])
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("checkpoint %s unreadable (%s): starting the feed over", self.path, exc)
            return 0
        if fingerprint != self._fingerprint:
            log.warning(
                "checkpoint %s was written for other input (the files changed): "
                "starting the feed over",
                self.path,
            )
            return 0
        self._saved = offset
        log.info("resuming from checkpoint: offset %d", offset)
        return offset

    def save(self, next_offset: int) -> None:
        """Durably record that every offset below ``next_offset`` is complete."""
        if next_offset == self._saved:
            return
        make_dir(self.path.parent)
        data = json.dumps({"next_offset": next_offset, "fingerprint": self._fingerprint})
        write_atomic(self.path, data.encode())
        self._saved = next_offset

    def remove(self) -> None:
        """The feed is complete: the next run starts a new one."""
        self.path.unlink(missing_ok=True)
        self._saved = None
