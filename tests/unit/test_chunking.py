"""W1 chunking and chunk identity."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest

from aaflow_stream.text.chunking import (
    chunk_boundaries,
    chunk_id,
    chunk_ids,
    chunk_windows,
    normalize_whitespace,
)


def _text(n: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("abcdefghij .\n!?") for _ in range(n))


def test_normalize_whitespace_collapses_runs_and_strips() -> None:
    assert normalize_whitespace("  a\t\tb \n\n c  ") == "a b c"
    assert normalize_whitespace(" \n\t ") == ""


def test_empty_text_has_no_chunks() -> None:
    assert chunk_windows("") == []
    assert chunk_boundaries("", 10, 2) == []


@pytest.mark.parametrize("n", [1, 100, 511, 512])
def test_a_text_no_longer_than_size_is_one_chunk(n: int) -> None:
    text = _text(n)
    assert chunk_windows(text) == [text]


def test_windows_step_by_size_minus_overlap_and_the_last_may_be_shorter() -> None:
    text = _text(2_000)
    chunks = chunk_windows(text, 512, 64)
    assert [len(c) for c in chunks] == [512, 512, 512, 512, 2_000 - 4 * 448]
    for i, c in enumerate(chunks):
        assert c == text[i * 448 : i * 448 + 512]


@pytest.mark.parametrize("n", [513, 959, 960, 961, 1_500, 2_500])
def test_windows_cover_the_text_and_stop_once_the_end_is_reached(n: int) -> None:
    text = _text(n)
    chunks = chunk_windows(text, 512, 64)
    assert chunks[-1] == text[(len(chunks) - 1) * 448 :]
    assert len(chunks[-1]) > 64  # else the previous window would already have reached the end
    assert "".join(c[64:] if i else c for i, c in enumerate(chunks)) == text


def test_zero_overlap_windows_partition_the_text() -> None:
    text = _text(1_000)
    assert "".join(chunk_windows(text, 100, 0)) == text


@pytest.mark.parametrize(
    ("size", "overlap", "bad"),
    [(0, 0, "size=0"), (-5, 0, "size=-5"), (10, 10, "10"), (10, -1, "-1")],
)
def test_bad_window_arguments_raise_a_value_error_naming_the_value(
    size: int, overlap: int, bad: str
) -> None:
    with pytest.raises(ValueError, match=bad):
        chunk_windows("abc", size, overlap)
    with pytest.raises(ValueError, match=bad):
        chunk_boundaries("abc", size, overlap)


def test_boundary_chunking_rejects_an_unknown_preference() -> None:
    with pytest.raises(ValueError, match="'word'"):
        chunk_boundaries("abc", 10, 2, prefer="word")  # type: ignore[arg-type]


def _assert_valid_boundary_chunks(text: str, chunks: list[str], size: int, overlap: int) -> None:
    pos = 0  # where each chunk starts in text
    covered = 0
    for c in chunks:
        assert 0 < len(c) <= size
        start = text.index(c, max(0, covered - overlap))
        assert start <= covered, "a gap between windows"
        assert covered - start <= overlap, "windows overlap by more than overlap"
        assert start >= pos
        pos, covered = start, start + len(c)
    assert covered == len(text)


@pytest.mark.parametrize("prefer", ["paragraph", "sentence"])
@pytest.mark.parametrize("seed", range(20))
def test_boundary_windows_never_exceed_size_and_cover_every_character(
    prefer: str, seed: int
) -> None:
    text = _text(3_000, seed)
    chunks = chunk_boundaries(text, 200, 30, prefer=prefer)  # type: ignore[arg-type]
    _assert_valid_boundary_chunks(text, chunks, 200, 30)


def test_boundary_windows_end_at_the_last_paragraph_break_in_the_tail() -> None:
    para = "x" * 85 + "\n\n"  # 87 chars: a break falls in the tail of a 100-char window
    text = para * 5
    chunks = chunk_boundaries(text, 100, 10, prefer="paragraph")
    assert chunks[0] == para
    assert all(c.endswith("\n\n") for c in chunks)
    _assert_valid_boundary_chunks(text, chunks, 100, 10)


def test_boundary_windows_end_after_a_sentence_end() -> None:
    text = "a" * 80 + "! " + "b" * 200
    chunks = chunk_boundaries(text, 100, 10, prefer="sentence")
    assert chunks[0] == "a" * 80 + "! "
    assert chunks[1].startswith("a" * 8 + "! b")


def test_a_break_before_the_tail_is_ignored_and_the_window_is_full_size() -> None:
    text = "a" * 30 + ". " + "b" * 300
    chunks = chunk_boundaries(text, 100, 10, prefer="sentence")
    assert chunks[0] == text[:100]
    assert chunk_boundaries(text, 100, 10, prefer="sentence")[1:] == chunk_windows(
        text[90:], 100, 10
    )


def test_chunk_id_matches_a_hand_computed_blake2b() -> None:
    digest = hashlib.blake2b(b"f0003-d0017:2").hexdigest()
    assert chunk_id("f0003-d0017", 2) == int(digest[:16], 16) & (2**63 - 1)


def test_chunk_ids_are_stable_across_runs() -> None:
    # Pinned: ids are stored in the shards, so they must never change. The digest starts
    # a9d39c5b0f1e0031, top bit set, so this also checks the 63-bit mask.
    assert chunk_id("f0000-d0000", 0) == 0x29D39C5B0F1E0031


def test_chunk_ids_fit_in_63_bits() -> None:
    ids = [chunk_id(f"d{i}", s) for i in range(500) for s in range(4)]
    assert all(0 <= i < 2**63 for i in ids)
    assert len(set(ids)) == len(ids)


def test_chunk_ids_array_equals_the_scalar_ids() -> None:
    arr = chunk_ids("f0001-d0002", 6)
    assert arr.dtype == np.uint64
    assert arr.tolist() == [chunk_id("f0001-d0002", s) for s in range(6)]
    assert chunk_ids("x", 0).shape == (0,)
