"""Directory locks: one owner at a time, the holder named, a crashed owner's lock taken over."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aaflow_stream.ownership import LOCK_FILE, DirectoryBusy, Ownership, acquire, adopt
from aaflow_stream.procs import alive


def test_a_locked_directory_is_refused_naming_the_holder_pid(tmp_path: Path) -> None:
    with Ownership.acquire([(tmp_path / "data", "data directory")]):
        with pytest.raises(DirectoryBusy) as refused:
            acquire(tmp_path / "data", "data directory")
    assert f"data directory {tmp_path / 'data'} is in use" in str(refused.value)
    assert f"pid {os.getpid()}" in str(refused.value)


def test_a_released_lock_can_be_taken_again(tmp_path: Path) -> None:
    Ownership.acquire([(tmp_path, "run directory")]).release()
    with Ownership.acquire([(tmp_path, "run directory")]) as again:
        assert int((tmp_path / LOCK_FILE).read_text()) == os.getpid()
        assert len(again.fds) == 1


def test_the_lock_file_of_a_crashed_owner_is_taken_over(tmp_path: Path) -> None:
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not alive(pid))
    (tmp_path / LOCK_FILE).write_text(f"{dead}\n")  # the file stays, the kernel lock went
    with Ownership.acquire([(tmp_path, "data directory")]):
        assert int((tmp_path / LOCK_FILE).read_text()) == os.getpid()


def test_taking_two_locks_takes_none_when_the_second_is_held(tmp_path: Path) -> None:
    with Ownership.acquire([(tmp_path / "run", "run directory")]):
        with pytest.raises(DirectoryBusy, match="run directory"):
            Ownership.acquire([(tmp_path / "data", "data"), (tmp_path / "run", "run directory")])
        Ownership.acquire([(tmp_path / "data", "data")]).release()  # was released


def test_a_directory_named_twice_is_locked_once(tmp_path: Path) -> None:
    with Ownership.acquire([(tmp_path, "data directory"), (tmp_path / ".", "run")]) as owner:
        assert len(owner.fds) == 1


def test_an_inherited_descriptor_that_is_not_the_lock_is_refused(tmp_path: Path) -> None:
    (tmp_path / "other").write_text("x")
    with Ownership.acquire([(tmp_path, "data directory")]):
        fd = os.open(tmp_path / "other", os.O_RDONLY)
        try:
            with pytest.raises(DirectoryBusy, match="is not the lock"):
                adopt(fd, tmp_path, "data directory")
        finally:
            os.close(fd)
