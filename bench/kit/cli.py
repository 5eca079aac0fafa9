"""The command line every benchmark shares, and where its output goes.

Flags: ``--quick`` (a short run, under a few minutes), ``--json`` and, where runs repeat,
``--repeats`` (its default depends on ``--quick``: ``repeats``).

Output: the report (a table and its verdict lines) on stdout; progress while it runs on stderr;
with ``--json``, after the report, one JSON object as the last line of stdout, so that
``python -m bench.<name> --json | tail -n 1`` is the machine-readable result of every script.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from typing import Any

JSON_HELP = "after the report, print the results as one JSON object: the last line of stdout"


def positive(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {value}")
    return value


def parser(doc: str | None, *, quick: str, repeats: str | None = None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc`` (the script's docstring), with
    ``--quick`` (``quick`` says what it runs), ``--json`` and, given its help, ``--repeats``."""
    description = (doc or "").split("\n\n")[0]
    main = getattr(sys.modules.get("__main__"), "__spec__", None)  # None: not run with -m
    prog = f"python -m {main.name}" if main is not None else None
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--json", action="store_true", help=JSON_HELP)
    if repeats is not None:
        p.add_argument("--repeats", type=positive, help=repeats)
    return p


def repeats(args: argparse.Namespace, *, full: int, quick: int) -> int:
    """``--repeats`` as given, else the default of a full or a quick run."""
    given: int | None = args.repeats
    return given or (quick if args.quick else full)


def report(lines: Iterable[str], doc: Mapping[str, Any], as_json: bool) -> None:
    """Print the report; with ``--json`` (``as_json``), ``doc`` as the last line of stdout."""
    for line in lines:
        print(line)
    if as_json:
        print(json.dumps(doc), flush=True)


def progress(message: str) -> None:
    """A line of progress: stderr, so that stdout holds the report alone."""
    print(message, file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    """The 1, 5 and 15 minute load averages: the machine is shared, every report shows them."""
    return [round(x, 2) for x in os.getloadavg()]
