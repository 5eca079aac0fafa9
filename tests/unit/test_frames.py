from __future__ import annotations

import msgspec
import numpy as np
import pyarrow as pa
import pytest
import zmq

from aaflow_stream import frames
from aaflow_stream.errors import PayloadError
from aaflow_stream.protocol import BatchHeader, data_decoder


def _batch() -> pa.RecordBatch:
    vectors = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    return pa.record_batch(
        {
            "doc_id": pa.array(["a", None, "c", "d", "e"]),
            "seq": pa.array([0, 1, 2, None, 4], pa.int32()),
            "text": pa.array(["x" * 10, "", "z", None, "w"], pa.large_string()),
            "ts": pa.array([1, 2, 3, 4, 5], pa.timestamp("ms")),
            "ok": pa.array([True, False, None, True, False]),
            "tags": pa.array([["a"], [], None, ["b", "c"], ["d"]], pa.list_(pa.string())),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 4),
        }
    )


def _roundtrip(batch: pa.RecordBatch, encoding: str) -> tuple[pa.RecordBatch, list[zmq.Frame]]:
    fp = frames.schema_fingerprint(batch.schema)
    message = frames.batch_message(batch, "s", 1, fp, encoding)
    received = [zmq.Frame(bytes(memoryview(part))) for part in message]
    header = data_decoder.decode(received[0].bytes)
    assert isinstance(header, BatchHeader)
    return frames.decode_batches(header, received[1:], batch.schema)[0], received[1:]


@pytest.mark.parametrize("encoding", frames.ENCODINGS)
def test_a_batch_survives_the_round_trip_in_either_encoding(encoding: str) -> None:
    batch = _batch()
    decoded, _ = _roundtrip(batch, encoding)
    assert decoded.equals(batch)


@pytest.mark.parametrize("encoding", frames.ENCODINGS)
def test_a_sliced_batch_survives_the_round_trip(encoding: str) -> None:
    batch = _batch().slice(1, 3)
    decoded, _ = _roundtrip(batch, encoding)
    assert decoded.equals(batch)


@pytest.mark.parametrize("encoding", frames.ENCODINGS)
def test_decoded_columns_lie_inside_the_received_frames(encoding: str) -> None:
    decoded, payload = _roundtrip(_batch(), encoding)
    assert frames.batch_lies_within(decoded, payload)


def test_a_copied_batch_is_not_reported_as_zero_copy() -> None:
    decoded, payload = _roundtrip(_batch(), frames.BUFFERS)
    copy = pa.ipc.read_record_batch(decoded.serialize().to_pybytes(), decoded.schema)
    assert not frames.batch_lies_within(copy, payload)


def test_types_the_buffer_layout_does_not_cover_use_ipc() -> None:
    plain = _batch().schema
    with_dictionary = plain.append(pa.field("kind", pa.dictionary(pa.int8(), pa.string())))
    with_struct = plain.append(pa.field("pos", pa.struct([("x", pa.int8())])))
    assert frames.best_encoding(plain) == frames.BUFFERS
    assert frames.best_encoding(with_dictionary) == frames.IPC
    assert frames.best_encoding(with_struct) == frames.IPC


def _wide_batch() -> pa.RecordBatch:
    """Two large buffers (text data, embedding values) beside several small ones."""
    n = 256
    vectors = np.ones((n, 384), dtype=np.float32)
    return pa.record_batch(
        {
            "id": pa.array(np.arange(n, dtype=np.uint64)),
            "doc_id": pa.array([f"d{i}" for i in range(n)]),
            "text": pa.array(["t" * 512] * n, pa.large_string()),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384),
        }
    )


def test_large_buffers_travel_as_the_batch_memory_itself_and_small_ones_share_a_frame() -> None:
    batch = _wide_batch()
    message = frames.batch_message(batch, "s", 1, "fp", frames.BUFFERS)
    large = [b for c in batch.columns for b in c.buffers() if b and b.size >= frames.PACK_BELOW]
    assert len(large) == 2
    # header, the packed small buffers, then each large buffer by reference (no copy)
    assert len(message) == 2 + len(large)
    assert [pa.py_buffer(part).address for part in message[2:]] == [b.address for b in large]
    decoded, received = _roundtrip(batch, frames.BUFFERS)
    assert decoded.equals(batch)
    assert frames.batch_lies_within(decoded, received)


@pytest.mark.parametrize(
    ("spans", "error"),
    [
        ("drop one", "places"),
        ((9, 0, 8), "lies in frame 9"),
        ((0, 0, 1 << 40), "runs past frame 0"),
        ((0, -8, 8), "runs past frame 0"),
    ],
)
def test_buffer_spans_outside_the_received_frames_are_rejected(spans: object, error: str) -> None:
    batch = _wide_batch()
    message = frames.batch_message(batch, "s", 1, "fp", frames.BUFFERS)
    header = data_decoder.decode(message[0])
    assert isinstance(header, BatchHeader) and header.spans
    placed = header.spans[1:] if spans == "drop one" else [spans, *header.spans[1:]]
    lying = msgspec.structs.replace(header, spans=placed)
    with pytest.raises(PayloadError, match=error):
        frames.decode_batches(lying, message[1:], batch.schema)


def test_a_payload_with_missing_frames_is_rejected() -> None:
    batch = _batch()
    message = frames.batch_message(batch, "s", 1, "fp", frames.BUFFERS)
    header = data_decoder.decode(message[0])
    assert isinstance(header, BatchHeader)
    with pytest.raises(PayloadError, match="frame"):
        frames.decode_batches(header, message[1:-1], batch.schema)


def test_a_payload_of_another_schema_is_rejected() -> None:
    batch = _batch()
    other = pa.record_batch({"n": pa.array([1, 2, 3])})
    message = frames.batch_message(other, "s", 1, "fp", frames.BUFFERS)
    header = data_decoder.decode(message[0])
    assert isinstance(header, BatchHeader)
    with pytest.raises(PayloadError):
        frames.decode_batches(header, message[1:], batch.schema)


def test_buffers_too_small_for_the_announced_rows_are_rejected() -> None:
    batch = pa.record_batch({"n": pa.array(np.arange(100, dtype=np.int64))})
    message = frames.batch_message(batch, "s", 1, "fp", frames.BUFFERS)
    header = data_decoder.decode(message[0])
    assert isinstance(header, BatchHeader)
    lying = BatchHeader(
        sender="s",
        seq=1,
        fingerprint="fp",
        rows=1000,
        encoding=frames.BUFFERS,
        nodes=[(1000, 0, 0)],
        present=header.present,
    )
    with pytest.raises(PayloadError):
        frames.decode_batches(lying, message[1:], batch.schema)


def test_an_ipc_payload_of_random_bytes_is_rejected() -> None:
    schema = _batch().schema
    header = BatchHeader(sender="s", seq=1, fingerprint="fp", rows=5, encoding=frames.IPC)
    with pytest.raises(PayloadError):
        frames.decode_batches(header, [np.random.default_rng(1).bytes(4096)], schema)


def test_the_schema_frame_round_trips_with_its_fingerprint() -> None:
    schema = _batch().schema
    message = frames.schema_message(schema, "s")
    header = data_decoder.decode(message[0])
    decoded = frames.read_schema(message[1])
    assert decoded.equals(schema)
    assert header.fingerprint == frames.schema_fingerprint(decoded)


@pytest.mark.parametrize("encoding", frames.ENCODINGS)
def test_several_batches_travel_as_one_message_without_concatenation(encoding: str) -> None:
    batch = _batch()
    parts = [batch.slice(0, 2), batch.slice(2, 1), batch.slice(3, 2)]
    fp = frames.schema_fingerprint(batch.schema)
    message = frames.batch_message(parts, "s", 1, fp, encoding)
    received = [zmq.Frame(bytes(memoryview(part))) for part in message]
    header = data_decoder.decode(received[0].bytes)
    assert isinstance(header, BatchHeader)
    assert header.rows == 5 and header.parts == [2, 1, 2]
    decoded = frames.decode_batches(header, received[1:], batch.schema)
    assert [d.equals(p) for d, p in zip(decoded, parts, strict=True)] == [True] * 3
    assert all(frames.batch_lies_within(d, received[1:]) for d in decoded)


def test_parts_that_do_not_add_up_are_rejected() -> None:
    batch = _batch()
    message = frames.batch_message([batch, batch], "s", 1, "fp", frames.BUFFERS)
    header = data_decoder.decode(message[0])
    assert isinstance(header, BatchHeader)
    lying = msgspec.structs.replace(header, parts=[5, 4])
    with pytest.raises(PayloadError, match="add up"):
        frames.decode_batches(lying, message[1:], batch.schema)


def test_batches_of_one_schema_share_a_layout_and_other_schemas_get_their_own() -> None:
    first, again = _batch(), _batch()
    assert first.schema is not again.schema
    layout = frames.schema_layout(first.schema)
    assert frames.schema_layout(again.schema) is layout  # equal schema, new object
    other = pa.schema([pa.field("n", pa.int64())])
    assert frames.schema_layout(other) == [(pa.int64(), 2, None)]
    for width in range(2, 2 + 2 * frames._MAX_LAYOUTS):  # more schemas than it keeps
        frames.schema_layout(pa.schema([pa.field(f"c{i}", pa.int8()) for i in range(width)]))
    assert len(frames._LAYOUTS) == frames._MAX_LAYOUTS
    decoded, _ = _roundtrip(first, frames.BUFFERS)  # evicted layouts are rebuilt
    assert decoded.equals(first)
