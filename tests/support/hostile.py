"""Seeded hostile messages for every decoding boundary: random bytes, random msgpack values (strings
that are not UTF-8, NaN, infinities, numbers at the edges of 64 bits, nesting thousands deep) and
mutations of valid messages. Deterministic per seed, so a failure replays.

Shared by the unit and integration tests of each boundary and by ``bench/fuzz.py``, which sends
them at every socket of a serving topology.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Iterator, Sequence

import msgspec

# Values that broke decoders or validators before: not UTF-8, NaN and friends, numbers at the
# edges of 64 bits, empty containers.
_SPECIAL_SCALARS: list[object] = [
    math.nan,
    math.inf,
    -math.inf,
    1e300,
    -1e300,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0,
    -1,
    True,
    None,
    "",
    "\x00",
    b"",
    b"\xff\xfe",
]
_KEYS = ["id", "kind", "type", "k", "text", "vector", "filter", "doc_id", "documents", "ts", "x"]


def invalid_utf8_str(rng: random.Random) -> bytes:
    """A msgpack fixstr whose bytes are not UTF-8."""
    body = bytes(rng.choice((0xFF, 0xFE, 0xC0, 0x80, 0xED)) for _ in range(rng.randint(1, 8)))
    return bytes([0xA0 | len(body)]) + body


def deep(depth: int, container: int = 0x91) -> bytes:
    """A value nested ``depth`` one-element arrays (0x91) or maps (0x81) deep, around nil."""
    if container == 0x81:
        return b"\x81\xa1k" * depth + b"\xc0"
    return bytes([container]) * depth + b"\xc0"


def random_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 4 or roll < 0.45:
        kind = rng.randrange(5)
        if kind == 0:
            return rng.choice(_SPECIAL_SCALARS)
        if kind == 1:
            return rng.randint(-(2**63), 2**64 - 1)
        if kind == 2:
            return rng.uniform(-1e6, 1e6)
        if kind == 3:
            return "".join(chr(rng.randint(32, 0x2FF)) for _ in range(rng.randint(0, 12)))
        return rng.randbytes(rng.randint(0, 16))
    if roll < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(_KEYS): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def mutate(rng: random.Random, message: bytes) -> bytes:
    """One random edit of a valid message: flip a bit, truncate, insert random bytes, splice
    in invalid UTF-8 or deep nesting, or overwrite 9 bytes with a uint64 at its edge."""
    if not message:
        return rng.randbytes(4)
    data = bytearray(message)
    at = rng.randrange(len(data))
    edit = rng.randrange(6)
    if edit == 0:
        data[at] ^= 1 << rng.randrange(8)
    elif edit == 1:
        del data[at:]
    elif edit == 2:
        data[at:at] = rng.randbytes(rng.randint(1, 8))
    elif edit == 3:
        data[at:at] = invalid_utf8_str(rng)
    elif edit == 4:
        data[at:at] = deep(rng.randint(100, 3000))
    else:
        data[at : at + 9] = b"\xcf" + struct.pack(">Q", rng.choice((2**64 - 1, 2**63)))
    return bytes(data)


def hostile_messages(
    seed: int, count: int, valid: Sequence[bytes] = (), max_random_bytes: int = 64
) -> Iterator[bytes]:
    """``count`` messages: a third random bytes, a third random msgpack, a third mutations of
    the ``valid`` examples (random msgpack when there are none). Deterministic per seed."""
    rng = random.Random(seed)
    encoder = msgspec.msgpack.Encoder()
    for i in range(count):
        lane = i % 3
        if lane == 0:
            yield rng.randbytes(rng.randint(1, max_random_bytes))
        elif lane == 2 and valid:
            yield mutate(rng, rng.choice(valid))
        else:
            try:
                yield encoder.encode(random_value(rng))
            except (OverflowError, TypeError):  # an int past 64 bits cannot be encoded
                yield invalid_utf8_str(rng)
