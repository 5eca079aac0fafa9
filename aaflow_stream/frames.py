"""Arrow RecordBatch ↔ ZeroMQ frames: the one module that knows the data wire layout.

A data message is a ZeroMQ multipart message: frame 0 is a msgpack header (``protocol``), the
rest carry Arrow memory. Two payload encodings exist:

``buffers`` (default)
    every large Arrow buffer in a frame of its own, sent straight from the batch's memory with
    ``copy=False``; the small ones (under pyzmq's copy threshold, which would copy them anyway)
    packed into one frame, so a batch of many narrow columns costs a few frames, not one per
    buffer. The header lists every array node (length, null count, offset) depth first and
    where each buffer lies (frame, offset, length). The receiver rebuilds the arrays over the
    received frames with ``Array.from_buffers``: large buffers are never copied, on either side.
``ipc``
    one frame holding an encapsulated Arrow IPC message (``RecordBatch.serialize``): one gather
    copy on send, readable by any Arrow IPC reader. Used for types ``buffers`` does not cover
    (dictionaries, structs, unions, views).

The schema travels once per link in a ``SchemaHeader`` message; batch headers carry only its
fingerprint. On receive every column buffer lies inside a ZeroMQ frame (``batch_lies_within``).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa
import zmq

from .errors import PayloadError
from .protocol import BatchHeader, EosHeader, SchemaHeader, encode

BUFFERS = "buffers"
IPC = "ipc"
ENCODINGS = (BUFFERS, IPC)
# Buffers below this share one packed frame: pyzmq copies such frames even with copy=False,
# and every frame costs a Frame object, a header and a read on each side.
PACK_BELOW = zmq.COPY_THRESHOLD
_ALIGN = 8  # packed buffers start 8-byte aligned within the packed frame


def schema_fingerprint(schema: pa.Schema) -> str:
    return hashlib.blake2b(schema.serialize().to_pybytes(), digest_size=8).hexdigest()


def _flat_type(t: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_fixed_size_binary(t)
        or pa.types.is_temporal(t)
        or pa.types.is_decimal(t)
    )


def _list_like(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _supported(t: pa.DataType) -> bool:
    if _list_like(t):
        return _supported(t.value_type)
    return _flat_type(t)


# How to walk one column of a schema: (type, buffers per array node, the child's layout for
# a list type). Built once per schema: asking pyarrow for a type, its buffer count or its
# value type wraps a new Python object each time, which was a third of decoding a batch.
Layout = tuple[pa.DataType, int, "Layout | None"]
# The schemas seen last, newest first, with their layouts. A link's batches are new objects
# of one schema: found by identity, else by equality (a C++ comparison, no Python wrappers).
_LAYOUTS: list[tuple[pa.Schema, list[Layout]]] = []
_MAX_LAYOUTS = 8


def _layout(t: pa.DataType) -> Layout:
    return (t, t.num_buffers, _layout(t.value_type) if _list_like(t) else None)


def schema_layout(schema: pa.Schema) -> list[Layout]:
    """Per column of ``schema``, its layout (cached for the schemas seen last)."""
    for known, layouts in _LAYOUTS:
        if known is schema:
            return layouts
    for i, (known, layouts) in enumerate(_LAYOUTS):
        if known.equals(schema):
            _LAYOUTS.insert(0, _LAYOUTS.pop(i))
            return layouts
    layouts = [_layout(f.type) for f in schema]
    _LAYOUTS.insert(0, (schema, layouts))
    del _LAYOUTS[_MAX_LAYOUTS:]
    return layouts


def best_encoding(schema: pa.Schema) -> str:
    """``buffers`` when every column type is covered by it, else ``ipc``."""
    return BUFFERS if all(_supported(f.type) for f in schema) else IPC


# --- send side ----------------------------------------------------------------------------------


def schema_message(schema: pa.Schema, sender: str) -> list[Any]:
    header = SchemaHeader(sender=sender, fingerprint=schema_fingerprint(schema))
    return [encode(header), schema.serialize()]


def eos_message(sender: str, seq: int) -> list[Any]:
    return [encode(EosHeader(sender=sender, seq=seq))]


def _walk(
    arr: pa.Array, layout: Layout, nodes: list[tuple[int, int, int]], bufs: list[Any]
) -> None:
    _, count, child = layout
    nodes.append((len(arr), arr.null_count, arr.offset))
    bufs.extend(arr.buffers()[:count])
    if child is not None:
        # ``values`` is the unsliced child; the parent's offsets (or offset) index into it.
        _walk(arr.values, child, nodes, bufs)


def batch_message(
    batches: pa.RecordBatch | Sequence[pa.RecordBatch],
    sender: str,
    seq: int,
    fingerprint: str,
    encoding: str,
    origin_at: float = 0.0,
) -> list[Any]:
    """Frames for one or more batches of one schema. ``buffers`` references, never copies."""
    parts = [batches] if isinstance(batches, pa.RecordBatch) else list(batches)
    rows = [b.num_rows for b in parts]
    many = rows if len(parts) > 1 else []
    if encoding == IPC:
        header = BatchHeader(
            sender=sender,
            seq=seq,
            fingerprint=fingerprint,
            rows=sum(rows),
            encoding=IPC,
            parts=many,
            sent_at=time.time(),
            origin_at=origin_at,
        )
        return [encode(header), *(b.serialize() for b in parts)]
    nodes: list[tuple[int, int, int]] = []
    bufs: list[Any] = []
    for batch in parts:
        for column, layout in zip(batch.columns, schema_layout(batch.schema), strict=True):
            _walk(column, layout, nodes, bufs)
    present = [b for b in bufs if b is not None]
    payload, spans = _lay_out(present)
    header = BatchHeader(
        sender=sender,
        seq=seq,
        fingerprint=fingerprint,
        rows=sum(rows),
        encoding=BUFFERS,
        nodes=nodes,
        present=[b is not None for b in bufs],
        spans=spans,
        parts=many,
        sent_at=time.time(),
        origin_at=origin_at,
    )
    return [encode(header), *payload]


def _lay_out(bufs: list[pa.Buffer]) -> tuple[list[Any], list[tuple[int, int, int]]]:
    """Payload frames and each buffer's (frame, offset, length): the small buffers packed
    (aligned) into frame 0, every large one a frame of its own, referenced, not copied."""
    small = [b for b in bufs if b.size < PACK_BELOW]
    if len(small) < 2:  # nothing to gain: one frame per buffer
        return bufs, []
    pieces: list[Any] = []
    frames: list[Any] = [None]  # the packed frame, joined below
    spans: list[tuple[int, int, int]] = []
    at = 0
    for buf in bufs:
        size = buf.size
        if size >= PACK_BELOW:
            spans.append((len(frames), 0, size))
            frames.append(buf)
            continue
        spans.append((0, at, size))
        pad = -size % _ALIGN
        pieces += (buf, bytes(pad)) if pad else (buf,)
        at += size + pad
    frames[0] = b"".join(pieces)
    return frames, spans


# --- receive side -------------------------------------------------------------------------------


def read_schema(frame: Any) -> pa.Schema:
    try:
        return pa.ipc.read_schema(pa.py_buffer(frame))
    except Exception as exc:  # bytes from a peer: any failure is theirs
        raise PayloadError(f"schema frame is not an Arrow IPC schema: {exc}") from exc


def _build(
    layout: Layout,
    nodes: Iterator[tuple[int, int, int]],
    present: Iterator[bool],
    buffers: Iterator[pa.Buffer],
) -> pa.Array:
    t, count, child = layout
    length, null_count, offset = next(nodes)
    own = [next(buffers) if next(present) else None for _ in range(count)]
    children = [_build(child, nodes, present, buffers)] if child is not None else None
    return pa.Array.from_buffers(t, length, own, null_count, offset, children)


def _received_buffers(header: BatchHeader, payload: Sequence[Any]) -> list[pa.Buffer]:
    """The buffers present, as zero-copy views of the received frames."""
    views = [pa.py_buffer(f) for f in payload]
    wanted = sum(header.present)
    if not header.spans:
        if len(views) != wanted:
            raise PayloadError(f"header announces {wanted} buffers, got {len(views)} frames")
        return views
    if len(header.spans) != wanted:
        raise PayloadError(f"header announces {wanted} buffers but places {len(header.spans)}")
    out = []
    for frame, offset, length in header.spans:
        if not 0 <= frame < len(views):
            raise PayloadError(f"a buffer lies in frame {frame}; the message has {len(views)}")
        if offset < 0 or length < 0 or offset + length > views[frame].size:
            raise PayloadError(
                f"buffer at {offset}+{length} runs past frame {frame} ({views[frame].size} bytes)"
            )
        out.append(views[frame].slice(offset, length))
    return out


def decode_batches(
    header: BatchHeader, payload: Sequence[Any], schema: pa.Schema
) -> list[pa.RecordBatch]:
    """Build the batches over the received frames' memory. PayloadError on any mismatch."""
    rows = header.parts or [header.rows]
    try:
        if sum(rows) != header.rows or any(r < 0 for r in rows):
            raise PayloadError(f"parts {header.parts} do not add up to {header.rows} rows")
        if header.encoding == IPC:
            if len(payload) != len(rows):
                raise PayloadError(f"ipc message needs {len(rows)} frames, got {len(payload)}")
            batches = [pa.ipc.read_record_batch(pa.py_buffer(f), schema) for f in payload]
        elif header.encoding == BUFFERS:
            buffers = iter(_received_buffers(header, payload))
            nodes, present = iter(header.nodes), iter(header.present)
            layouts = schema_layout(schema)
            batches = [
                pa.RecordBatch.from_arrays(
                    [_build(layout, nodes, present, buffers) for layout in layouts],
                    schema=schema,
                )
                for _ in rows
            ]
            if next(nodes, None) is not None or next(present, None) is not None:
                raise PayloadError("header describes more arrays than the schema has")
        else:
            raise PayloadError(f"unknown encoding {header.encoding!r}; expected one of {ENCODINGS}")
        for batch, expected in zip(batches, rows, strict=True):
            if batch.num_rows != expected:
                raise PayloadError(f"header says {expected} rows, payload has {batch.num_rows}")
            batch.validate()
    except PayloadError:
        raise
    except StopIteration as exc:
        raise PayloadError(
            "header describes fewer arrays or buffers than the schema needs"
        ) from exc
    except Exception as exc:  # bytes from a peer: any failure is theirs
        raise PayloadError(f"payload does not match the link schema: {exc}") from exc
    return batches


def batch_lies_within(batch: pa.RecordBatch, frames: Sequence[Any]) -> bool:
    """True when every buffer of every column lies inside one of ``frames`` (proof of zero copy)."""
    spans = []
    for frame in frames:
        view = memoryview(frame)
        buf = pa.py_buffer(view)
        spans.append((buf.address, buf.address + buf.size))
    for column in batch.columns:
        for buf in column.buffers():
            if buf is None or buf.size == 0:
                continue
            if not any(lo <= buf.address and buf.address + buf.size <= hi for lo, hi in spans):
                return False
    return True


__all__ = [
    "BUFFERS",
    "ENCODINGS",
    "IPC",
    "batch_lies_within",
    "batch_message",
    "best_encoding",
    "decode_batches",
    "eos_message",
    "read_schema",
    "schema_fingerprint",
    "schema_message",
]
