"""W1's efficiency targets, set against the floors measured in the same run: the engine's
total against ``raw_zmq`` (its own process layout with nothing but plain pyzmq), against
the faster of the simple baselines (``asyncio``, ``mp_pool``), its CPU seconds against
``sequential``'s, and its start-up and shutdown (last vector applied → every process gone).

Pure arithmetic over ``bench.ingest``'s summaries; a figure that was not measured is None and
its target reads n/a.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final, Protocol

PRESET: Final = "xlarge"
MAX_RAW_ZMQ_RATIO: Final = 1.15  # aaflow total <= 1.15x raw_zmq's
MAX_FASTEST_SIMPLE_RATIO: Final = 1 / 1.25  # aaflow >= 1.25x faster than asyncio and mp_pool
MAX_CPU_RATIO: Final = 1.5  # aaflow CPU seconds <= 1.5x sequential's
MAX_STARTUP_S: Final = 1.0
MAX_SHUTDOWN_S: Final = 0.5
SIMPLE: Final = ("asyncio", "mp_pool")


class Summary(Protocol):
    total_s: float | None
    cpu_s: float | None
    startup_s: float | None


@dataclass(frozen=True)
class Efficiency:
    raw_zmq_ratio: float | None
    fastest_simple_ratio: float | None
    fastest_simple: str | None
    cpu_ratio: float | None
    startup_s: float | None
    shutdown_s: float | None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _ratio(mine: float | None, other: float | None) -> float | None:
    return mine / other if mine is not None and other else None


def measure(
    summaries: Mapping[str, Summary], engine_details: Sequence[Mapping[str, Any]]
) -> Efficiency:
    """``engine_details``: the `up --json` summaries of the engine's verified runs."""
    engine = summaries.get("aaflow")
    if engine is None:
        return Efficiency(None, None, None, None, None, None)
    raw = summaries.get("raw_zmq")
    sequential = summaries.get("sequential")
    simple = {n: s.total_s for n in SIMPLE if (s := summaries.get(n)) and s.total_s}
    fastest = min(simple, key=lambda n: simple[n]) if simple else None
    shutdowns = [d["shutdown_s"] for d in engine_details if "shutdown_s" in d]
    return Efficiency(
        raw_zmq_ratio=_ratio(engine.total_s, raw.total_s if raw else None),
        fastest_simple_ratio=_ratio(engine.total_s, simple[fastest] if fastest else None),
        fastest_simple=fastest,
        cpu_ratio=_ratio(engine.cpu_s, sequential.cpu_s if sequential else None),
        startup_s=engine.startup_s,
        shutdown_s=statistics.median(shutdowns) if shutdowns else None,
    )


def lines(e: Efficiency, preset: str) -> Iterator[str]:
    """Each target with MEETS / MISSES, or n/a where it was not measured."""
    if preset != PRESET:
        yield f"(these targets are set for W1 {PRESET}; this run is W1 {preset})"
    checks = [
        ("aaflow / raw_zmq total", e.raw_zmq_ratio, MAX_RAW_ZMQ_RATIO, "x"),
        (
            f"aaflow / fastest of asyncio, mp_pool ({e.fastest_simple or 'none ran'})",
            e.fastest_simple_ratio,
            MAX_FASTEST_SIMPLE_RATIO,
            "x",
        ),
        ("aaflow / sequential CPU seconds", e.cpu_ratio, MAX_CPU_RATIO, "x"),
        ("aaflow start-up", e.startup_s, MAX_STARTUP_S, " s"),
        ("aaflow shutdown (last vector -> exit)", e.shutdown_s, MAX_SHUTDOWN_S, " s"),
    ]
    for what, value, bound, unit in checks:
        if value is None:
            yield f"n/a    {what}: not measured (<= {bound:.2f}{unit})"
        else:
            verdict = "MEETS " if value <= bound else "MISSES"
            yield f"{verdict} {what} = {value:.2f}{unit} (<= {bound:.2f}{unit})"
