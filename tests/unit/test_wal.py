"""The shard write-ahead log on real files: round trip, torn tails, damage, fresh segments."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream.errors import StorageError
from aaflow_stream.shard.wal import HEADER, WriteAheadLog, segment_path, segments

from ..support.chunks import chunk_rows, tombstones


def _batches(n: int) -> list[pa.RecordBatch]:
    rng = np.random.default_rng(n)
    return [chunk_rows(f"doc-{i}", rng.standard_normal((3, 8))) for i in range(n)]


def _open(
    directory: Path, after_lsn: int = 0
) -> tuple[WriteAheadLog, list[tuple[int, pa.RecordBatch]]]:
    seen: list[tuple[int, pa.RecordBatch]] = []
    wal = WriteAheadLog.open(
        directory, first_segment=1, after_lsn=after_lsn, apply=lambda lsn, b: seen.append((lsn, b))
    )
    return wal, seen


def _write(directory: Path, batches: list[pa.RecordBatch]) -> list[int]:
    """Append ``batches`` in one process lifetime; the byte offset where each record starts."""
    wal, _ = _open(directory)
    starts = []
    for batch in batches:
        starts.append(wal._offset)
        wal.append(batch)
    wal.sync()
    wal.close()
    return starts


def test_records_come_back_in_lsn_order_with_upserts_and_tombstones_alike(tmp_path: Path) -> None:
    wal, seen = _open(tmp_path)
    written = [*_batches(2), tombstones([("doc-0", 7)])]
    assert [wal.append(b) for b in written] == [1, 2, 3]
    assert wal.durable_lsn == 0
    assert wal.sync() == 3 and wal.durable_lsn == 3
    wal.close()
    again, seen = _open(tmp_path)
    assert [lsn for lsn, _ in seen] == [1, 2, 3]
    assert all(got.equals(want) for (_, got), want in zip(seen, written, strict=True))
    assert again.last_lsn == again.durable_lsn == 3


def test_a_new_process_appends_to_a_fresh_segment_and_lsns_go_on(tmp_path: Path) -> None:
    _write(tmp_path, _batches(2))
    wal, _ = _open(tmp_path)
    assert wal.append(_batches(1)[0]) == 3
    wal.close()
    assert [n for n, _ in segments(tmp_path)] == [1, 2]
    _, seen = _open(tmp_path)
    assert [lsn for lsn, _ in seen] == [1, 2, 3]


def test_opening_without_appending_creates_no_segment(tmp_path: Path) -> None:
    _write(tmp_path, _batches(1))
    for _ in range(3):
        _open(tmp_path)[0].close()
    assert [n for n, _ in segments(tmp_path)] == [1]


def _tail_cases(record_start: int, size: int) -> dict[str, int]:
    """Where to cut the file to tear its last record (``record_start``..``size``)."""
    return {
        "one byte of header": record_start + 1,
        "header but one byte": record_start + HEADER.size - 1,
        "header only": record_start + HEADER.size,
        "half the payload": (record_start + HEADER.size + size) // 2,
        "all but the last byte": size - 1,
    }


@pytest.mark.parametrize("case", list(_tail_cases(0, 1000)), ids=lambda c: c.replace(" ", "-"))
def test_a_torn_last_record_is_dropped_and_cut_away(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    starts = _write(tmp_path, _batches(3))
    path = segment_path(tmp_path, 1)
    cut = _tail_cases(starts[-1], path.stat().st_size)[case]
    with open(path, "r+b") as f:
        f.truncate(cut)
    with caplog.at_level(logging.WARNING):
        wal, seen = _open(tmp_path)
    assert [lsn for lsn, _ in seen] == [1, 2]
    assert "torn last record" in caplog.text and str(path) in caplog.text
    assert path.stat().st_size == starts[-1]  # truncated back to the last intact record
    assert wal.append(_batches(1)[0]) == 3  # the dropped LSN is given again
    wal.close()
    _, seen = _open(tmp_path)
    assert [lsn for lsn, _ in seen] == [1, 2, 3]


@pytest.mark.parametrize(
    "garbage",
    [b"\x00" * 4096, bytes(range(256)) * 3, b"AWAL", b"AWAL" + b"\xff" * 40],
    ids=["zeros", "bytes", "magic-only", "magic-and-junk"],
)
def test_garbage_after_the_last_record_is_dropped(tmp_path: Path, garbage: bytes) -> None:
    _write(tmp_path, _batches(2))
    path = segment_path(tmp_path, 1)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(garbage)
    _, seen = _open(tmp_path)
    assert [lsn for lsn, _ in seen] == [1, 2]
    assert path.stat().st_size == size


def test_a_bad_checksum_on_the_last_record_counts_as_torn(tmp_path: Path) -> None:
    starts = _write(tmp_path, _batches(3))
    path = segment_path(tmp_path, 1)
    _flip(path, starts[-1] + HEADER.size + 10)
    _, seen = _open(tmp_path)
    assert [lsn for lsn, _ in seen] == [1, 2]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_record_before_the_last_is_an_error_naming_file_and_offset(
    tmp_path: Path,
) -> None:
    starts = _write(tmp_path, _batches(3))
    path = segment_path(tmp_path, 1)
    _flip(path, starts[1] + HEADER.size + 10)
    with pytest.raises(
        StorageError, match=rf"{path}: damaged record at byte {starts[1]} \(bad crc\)"
    ):
        _open(tmp_path)


def test_a_damaged_record_in_an_older_segment_is_an_error_even_at_its_end(tmp_path: Path) -> None:
    starts = _write(tmp_path, _batches(2))
    _write(tmp_path, _batches(1))
    older = segment_path(tmp_path, 1)
    with open(older, "r+b") as f:
        f.truncate(starts[-1] + 5)
    with pytest.raises(StorageError, match=rf"{older}: damaged record at byte {starts[-1]}"):
        _open(tmp_path)


def test_a_missing_segment_is_an_error(tmp_path: Path) -> None:
    for _ in range(3):
        _write(tmp_path, _batches(1))
    segment_path(tmp_path, 2).unlink()
    with pytest.raises(StorageError, match="has LSN 3, expected 2: records are missing"):
        _open(tmp_path)


def test_records_a_snapshot_covers_are_not_replayed(tmp_path: Path) -> None:
    _write(tmp_path, _batches(3))
    _, seen = _open(tmp_path, after_lsn=2)
    assert [lsn for lsn, _ in seen] == [3]


def test_rotate_syncs_and_starts_a_new_segment_and_drop_before_deletes_covered_ones(
    tmp_path: Path,
) -> None:
    wal, _ = _open(tmp_path)
    wal.append(_batches(1)[0])
    assert wal.rotate() == 2 and wal.durable_lsn == 1
    assert wal.rotate() == 2  # nothing appended: no empty segment
    wal.append(_batches(1)[0])
    wal.drop_before(2)
    wal.close()
    assert [n for n, _ in segments(tmp_path)] == [2]
    _, seen = _open(tmp_path, after_lsn=1)
    assert [lsn for lsn, _ in seen] == [2]
