"""Decoding bytes that came from outside the process: the one function every socket uses.

A typed msgspec decoder raises ``msgspec.DecodeError`` for most bad input, but not for all of
it: a msgpack string of invalid UTF-8 raises ``UnicodeDecodeError``, a deeply nested value
``RecursionError``, a huge declared length ``MemoryError``, and a Struct's ``__post_init__``
whatever it raises. A handler that caught only ``DecodeError`` let those escape and end the
process. ``decode`` turns *any* failure into a ``MalformedMessage`` carrying a short reason
code, so that receivers can answer with a typed error and count rejections by reason.
"""

from __future__ import annotations

from typing import Final, TypeVar

import msgspec

from .errors import DECODE_REASONS, DecodeReason, MalformedMessage

T = TypeVar("T")

Reason = DecodeReason
REASONS: Final[tuple[Reason, ...]] = DECODE_REASONS


def reason_of(exc: BaseException) -> Reason:
    """The reason code for an exception raised while decoding untrusted bytes."""
    if isinstance(exc, MalformedMessage):
        return exc.reason
    if isinstance(exc, UnicodeError):
        return "invalid_utf8"
    if isinstance(exc, RecursionError):
        return "too_deep"
    if isinstance(exc, MemoryError):
        return "too_large"
    if isinstance(exc, msgspec.ValidationError):
        return "invalid"
    return "undecodable"


def decode(
    decoder: msgspec.msgpack.Decoder[T] | msgspec.json.Decoder[T],
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int | None = None,
    what: str = "message",
) -> T:
    """``decoder.decode(data)``, with every failure (any ``Exception``) as ``MalformedMessage``.

    ``max_bytes`` refuses larger input before any decoding is tried.
    """
    if max_bytes is not None and len(data) > max_bytes:
        raise MalformedMessage(
            "too_large", f"{what} of {len(data)} bytes is larger than {max_bytes}"
        )
    try:
        return decoder.decode(data)
    except Exception as exc:  # any failure of untrusted input is the peer's
        reason = reason_of(exc)
        detail = str(exc) or type(exc).__name__
        if reason == "too_deep":
            detail = "nested too deeply"
        raise MalformedMessage(reason, f"{what} is not valid ({reason}): {detail}") from exc


def peek_id(data: bytes | bytearray | memoryview) -> int | None:
    """The integer ``id`` of a msgpack map that is otherwise invalid (to address the error
    reply), or None. Never raises: it reads nothing but that one field."""
    try:
        found = _peek_id.decode(data).id
    except Exception:  # a peek that fails just finds nothing
        return None
    return found if isinstance(found, int) else None


class _PeekId(msgspec.Struct):
    id: int | None = None


_peek_id: Final = msgspec.msgpack.Decoder(_PeekId)
