"""Import a script of bench/ as a module (the scripts are not a package)."""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from ..conftest import REPO_DIR


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as the top-level module ``name``, as the scripts import each other
    (and as processes they spawn find their functions): bench/ goes on ``sys.path``."""
    bench_dir = str(REPO_DIR / "bench")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    return importlib.import_module(name)
