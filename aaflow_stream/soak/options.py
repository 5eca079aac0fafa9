"""The soak's command line as one frozen value, and the ``--faults`` plan."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError

FAULT_KINDS = ("actor", "shard", "supervisor")


@dataclass(frozen=True)
class FaultPlan:
    every_s: float
    kinds: tuple[str, ...]


@dataclass(frozen=True)
class SoakOptions:
    topology: Path
    minutes: float
    rate_docs: float  # documents per second, both feeds together
    query_clients: int
    query_rate: float  # queries per second per client
    update_ratio: float
    delete_ratio: float
    faults: FaultPlan | None
    report: Path
    seed: int
    attach: bool
    interval_s: float  # one report row per interval
    warmup_s: float  # RSS is judged from this long after a process is first seen
    query_timeout_s: float
    ingest_timeout_s: float
    watch_every_s: float  # one file written, changed or deleted this often

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0


def _seconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", text)
    if not match:
        raise SpecError(f"--faults: {text!r} is not a duration (60s, 1.5m, 500ms)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def parse_faults(text: str | None) -> FaultPlan | None:
    """``every=60s,kinds=actor,shard,supervisor`` (a bare word after ``kinds=`` is one more
    kind). None: no faults."""
    if not text:
        return None
    every, kinds, key = 60.0, list(FAULT_KINDS), ""
    chosen: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        if "=" in part:
            key, _, value = part.partition("=")
            key = key.strip()
        else:
            value = part
        if key == "every":
            every = _seconds(value)
        elif key == "kinds":
            chosen.append(value.strip())
        else:
            raise SpecError(f"--faults: unknown key {key or part!r} (every=, kinds=)")
    if chosen:
        kinds = chosen
    unknown = sorted(set(kinds) - set(FAULT_KINDS))
    if unknown:
        raise SpecError(f"--faults: unknown kind {unknown[0]!r} (one of {', '.join(FAULT_KINDS)})")
    if every <= 0:
        raise SpecError("--faults: every= must be positive")
    return FaultPlan(every, tuple(dict.fromkeys(kinds)))


def _rate(text: str) -> float:
    value = text.removesuffix("/s")
    try:
        rate = float(value)
    except ValueError:
        raise SpecError(f"--rate-docs: {text!r} is not a rate (20 or 20/s)") from None
    if rate <= 0:
        raise SpecError("--rate-docs must be positive")
    return rate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``soak`` subcommand's arguments (``cli.py`` adds the subcommand)."""
    parser.add_argument("--topology", type=Path, help="the topology to soak")
    parser.add_argument("--minutes", type=float, default=1.0, help="how long (default 1)")
    parser.add_argument(
        "--rate-docs", default="20", metavar="N/s", help="documents per second (default 20)"
    )
    parser.add_argument("--query-clients", type=int, default=4, help="(default 4)")
    parser.add_argument(
        "--query-rate", type=float, default=2.0, help="queries per second per client (2)"
    )
    parser.add_argument("--update-ratio", type=float, default=0.2, help="(default 0.2)")
    parser.add_argument("--delete-ratio", type=float, default=0.05, help="(default 0.05)")
    parser.add_argument(
        "--faults",
        metavar="every=60s,kinds=actor,shard,supervisor",
        help="kill -9 a random actor, shard rank or the supervisor this often",
    )
    parser.add_argument("--report", type=Path, help="report directory (default runs/soak-<time>)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--attach", action="store_true", help="soak a topology already up (no up, no down)"
    )
    parser.add_argument("--interval-s", type=float, default=60.0, help="one row per interval")
    parser.add_argument(
        "--warmup-s", type=float, help="RSS judged from then on (default min(30, run/4))"
    )
    parser.add_argument("--query-timeout-s", type=float, default=10.0)
    parser.add_argument("--ingest-timeout-s", type=float, default=15.0)
    parser.add_argument("--watch-every-s", type=float, default=2.0)
    parser.add_argument(
        "--audit",
        type=Path,
        metavar="REPORT_DIR",
        help="audit a finished soak's report directory again and give its verdict; start nothing",
    )


def from_args(args: argparse.Namespace, now: str) -> SoakOptions:
    if args.topology is None:
        raise SpecError("give --topology (or --audit REPORT_DIR)")
    for name in ("update_ratio", "delete_ratio"):
        value = getattr(args, name)
        if not 0 <= value <= 1:
            raise SpecError(f"--{name.replace('_', '-')} must be within [0, 1]")
    if args.update_ratio + args.delete_ratio > 1:
        raise SpecError("--update-ratio plus --delete-ratio must be at most 1")
    if args.minutes <= 0 or args.query_clients < 0 or args.query_rate <= 0:
        raise SpecError("--minutes and --query-rate must be positive, --query-clients >= 0")
    duration_s = args.minutes * 60.0
    warmup = args.warmup_s if args.warmup_s is not None else min(30.0, duration_s / 4)
    return SoakOptions(
        topology=args.topology,
        minutes=args.minutes,
        rate_docs=_rate(args.rate_docs),
        query_clients=args.query_clients,
        query_rate=args.query_rate,
        update_ratio=args.update_ratio,
        delete_ratio=args.delete_ratio,
        faults=parse_faults(args.faults),
        report=args.report or Path(f"runs/soak-{now}"),
        seed=args.seed,
        attach=args.attach,
        interval_s=args.interval_s,
        warmup_s=warmup,
        query_timeout_s=args.query_timeout_s,
        ingest_timeout_s=args.ingest_timeout_s,
        watch_every_s=args.watch_every_s,
    )
