"""Fixtures shared by every test layer."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_DIR = TESTS_DIR.parent


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A short run directory: unix socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="aaf-t"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every process a test starts must be gone when it ends."""
    yield
    me = psutil.Process()
    alive = [p for p in me.children(recursive=True) if p.is_running()]
    _gone, alive = psutil.wait_procs(alive, timeout=5)
    leftover = [f"{p.pid} {p.cmdline()}" for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:
        p.kill()
    assert not leftover, f"processes left behind: {leftover}"
