"""What one document may be: the checks every document passes, wherever it comes from (a
file, a JSONL line, a continuous feed, the ingest endpoint), and the reasons it is refused.

Limits (``DocLimits``, from the topology's ``limits``) count UTF-8 bytes, never characters.
``ts`` is unix seconds, finite, in ``[TS_MIN_S, TS_MAX_S]`` (1970 to the end of year 9999).
A refusal is a ``BadDocument`` with a reason code (counted by the ingest endpoint, written
with the dead letter by the file loaders).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, get_args

from ..errors import BadDocument, RejectReason
from ..spec import LimitSpec

TS_MIN_S: Final = 0.0
TS_MAX_S: Final = 253_402_300_799.0  # 9999-12-31T23:59:59Z
# A JSON string escape takes at most 6 bytes per UTF-8 byte (``\u0001``): a JSONL line longer
# than 6x the document's limits cannot hold a valid document, and is not read whole.
_JSON_EXPANSION: Final = 6
_JSON_SLACK: Final = 4096

# Why a document was refused (``errors.RejectReason``): ``untrusted.REASONS`` for bytes that
# do not decode, and the document checks' own.
REJECT_REASONS: Final[tuple[RejectReason, ...]] = get_args(RejectReason)


# What one document may hold, in UTF-8 bytes: the topology's own ``limits`` section.
DocLimits = LimitSpec


def max_line_bytes(limits: DocLimits) -> int:
    """The longest JSONL line that may hold a valid document (longer ones are not read)."""
    fields = limits.max_doc_bytes + limits.max_doc_id_bytes + limits.max_source_bytes
    return _JSON_EXPANSION * fields + _JSON_SLACK


@dataclass(frozen=True)
class Doc:
    doc_id: str
    text: str | None  # None: a delete of the document (continuous sources, operators/feed.py)
    source: str
    ts_ms: int


def utf8_size(value: str, what: str) -> int:
    """The UTF-8 bytes of ``value``; BadDocument when it has none (a lone surrogate, which
    only a Python caller or a JSON ``\\ud800`` escape can make)."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise BadDocument(
            "not_unicode", f"{what} is not valid Unicode (a lone surrogate at {exc.start})"
        ) from exc


def _check_text(text: str, limit: int) -> None:
    if not text or text.isspace():
        raise BadDocument("empty", "empty document")
    if "\x00" in text:
        raise BadDocument("binary", "binary content (NUL bytes)")
    size = utf8_size(text, "text")
    if size > limit:
        raise BadDocument("too_large", f"document of {size} bytes exceeds the limit of {limit}")


def _check_name(value: str, what: str, limit: int, reason: RejectReason) -> None:
    size = utf8_size(value, what)
    if size > limit:
        raise BadDocument(reason, f"{what} of {size} bytes exceeds the limit of {limit}")


def check_document(doc_id: str, text: str, limits: DocLimits, source: str | None = None) -> None:
    """The checks every document passes (files, JSONL lines, the ingest endpoint)."""
    if not doc_id:
        raise BadDocument("empty_doc_id", "empty doc_id")
    _check_name(doc_id, "doc_id", limits.max_doc_id_bytes, "doc_id_too_long")
    if source is not None:
        _check_name(source, "source", limits.max_source_bytes, "source_too_long")
    _check_text(text, limits.max_doc_bytes)


def ts_ms(ts: float | None, default_ms: int) -> int:
    """A document's ``ts`` (unix seconds) in ms, ``default_ms`` when it has none."""
    if ts is None:
        return default_ms
    if not TS_MIN_S <= ts <= TS_MAX_S:  # NaN fails every comparison
        raise BadDocument(
            "bad_ts", f"ts {ts!r} is not unix seconds in [0, {TS_MAX_S:.0f}] (years 1970-9999)"
        )
    return int(ts * 1000)


def shown_id(doc_id: object, limits: DocLimits) -> str | None:
    """A doc_id fit to report back (None when it is not a string or over its limit)."""
    if not isinstance(doc_id, str) or not doc_id:
        return None
    try:
        return doc_id if utf8_size(doc_id, "doc_id") <= limits.max_doc_id_bytes else None
    except BadDocument:
        return None
