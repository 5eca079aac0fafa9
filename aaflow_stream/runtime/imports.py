"""Keep named modules out of an actor process: importing them fails fast instead.

pyarrow imports pandas, when pandas is installed, on the first array it builds from Python
objects: measured here 0.3 s of CPU and ~400 modules per actor process, spent inside the
first batch's busy time. A built-in stage never needs pandas, so its actors block it; an
actor running a user's operator blocks nothing.
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, names: Sequence[str]) -> None:
        self._names = tuple(names)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        root = fullname.partition(".")[0]
        if root in self._names:
            raise ModuleNotFoundError(f"{fullname} is kept out of this actor", name=fullname)
        return None


def block(names: Sequence[str]) -> None:
    if names:
        sys.meta_path.insert(0, _Blocker(names))
