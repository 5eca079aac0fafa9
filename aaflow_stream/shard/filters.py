"""Which chunks a search may return: ``QueryFilter``, a msgspec Struct with its bounds.

The shard owns the filter because the shard applies it (``ShardStore.search``, inside every
round); the query gateway takes it from clients as part of a ``QueryRequest`` and re-exports
it (``query.protocol.QueryFilter``), so the wire format is defined here, once.

Bounds, checked by the decoder: ``sources`` holds 1 to ``MAX_FILTER_SOURCES`` names of at most
``MAX_SOURCE_CHARS`` characters each (``None``: every source); the times are milliseconds
since the epoch within int64 (``MIN_TS_MS``..``MAX_TS_MS``), both ends inclusive. That
``ts_from_ms`` is not after ``ts_to_ms`` is checked by the gateway (``query.admission``).
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

MAX_FILTER_SOURCES: Final = 1024
MAX_SOURCE_CHARS: Final = 4096
MIN_TS_MS: Final = -(2**63)
MAX_TS_MS: Final = 2**63 - 1

TimestampMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]
SourceName = Annotated[str, msgspec.Meta(max_length=MAX_SOURCE_CHARS)]


class QueryFilter(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Only chunks from these sources and/or with ``ts`` in [ts_from_ms, ts_to_ms] (bounds in
    the module docstring; the decoder checks all but the order of the two ends)."""

    sources: (
        Annotated[list[SourceName], msgspec.Meta(min_length=1, max_length=MAX_FILTER_SOURCES)]
        | None
    ) = None
    ts_from_ms: TimestampMs | None = None
    ts_to_ms: TimestampMs | None = None
