"""Fixed-width text tables: every benchmark's report is one or more of them.

A table is a list of ``Column``s and rows of values; a value is formatted with its column's
``fmt`` (a ``format`` spec) unless it is already a string, and ``None`` shows as ``-``. A row
given as a plain string is printed as it is (a note under the row before it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

MISSING = "-"


@dataclass(frozen=True)
class Column:
    title: str
    width: int = 0  # at least the title's width
    fmt: str = ""
    left: bool = False  # text columns: aligned left

    def cell(self, value: object) -> str:
        text = (
            MISSING
            if value is None
            else value
            if isinstance(value, str)
            else format(value, self.fmt)
        )
        width = max(self.width, len(self.title))
        return text.ljust(width) if self.left else text.rjust(width)


def render(columns: Sequence[Column], rows: Iterable[Sequence[object] | str]) -> list[str]:
    """The header line, then a line a row."""
    lines = [_line(columns, [c.title for c in columns])]
    for row in rows:
        lines.append(row if isinstance(row, str) else _line(columns, row))
    return lines


def _line(columns: Sequence[Column], values: Sequence[object]) -> str:
    if len(values) != len(columns):
        raise ValueError(f"{len(values)} values for {len(columns)} columns")
    return " ".join(c.cell(v) for c, v in zip(columns, values, strict=True)).rstrip()
