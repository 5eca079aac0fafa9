"""What happened during a soak, timed: documents sent and acknowledged, lags, query
latencies, errors, faults and process samples. Written by the event loop and by the sync
query threads (one lock); read by the report.

An error is *expected* when it is a transport error (nothing answered in time, the engine
asked to send again) during a fault window: from a kill until the recovery, plus a grace for
calls that were already waiting. Everything else is unexpected, whenever it happens: a stale
read, a rejected document, an answer later than its timeout, an exception that is not one of
the project's typed errors, a fault without recovery, a supervisor that exited by itself.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import AaflowError, RequestError

# Transport errors: what a client sees while the engine restarts.
TRANSIENT = {
    "gateway_unavailable",
    "link_closed",
    "ingest_failed:unavailable",
    "query_error:unavailable",
}


def kind_of(exc: BaseException) -> str:
    """A short name for an exception: ``gateway_unavailable``, ``query_error:bad_request``, ...;
    ``untyped:<Class>`` for one that is not one of the project's typed errors."""
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(exc).__name__).lower()
    if isinstance(exc, RequestError):
        code = getattr(exc, "code", "")
        parent = "query_error" if name == "invalid_request" else name
        return f"{parent}:{code}" if code else parent
    if isinstance(exc, AaflowError):
        return name
    return f"untyped:{type(exc).__name__}"


@dataclass(frozen=True)
class ErrorEvent:
    op: str  # ingest | delete | query | check | watch | probe | fault | supervisor | settle
    kind: str
    start: float  # epoch seconds: when the call started
    end: float  # when it failed
    message: str


@dataclass
class Fault:
    number: int
    kind: str  # actor | shard | supervisor
    victim: str  # the actor's name (``embed.1``, ``shard.3``) or ``supervisor``
    pid: int
    at: float  # epoch seconds of the kill
    restarted_at: float | None = None  # the graph (or the supervisor) ready again
    recovered_at: float | None = None  # a probe document acknowledged and read back
    error: str = ""

    @property
    def recovery_s(self) -> float | None:
        return None if self.recovered_at is None else self.recovered_at - self.at

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "recovery_s": self.recovery_s}


@dataclass(frozen=True)
class Proc:
    pid: int
    rss_mb: float
    fds: int
    held_mb: float = 0.0  # data a shard rank reports holding in memory (status.json ``bytes``)


@dataclass
class Sample:
    """One look at every process of the topology and at its data directory."""

    at: float
    processes: dict[str, Proc]  # supervisor, load.0, embed.1, shard.3, mpiexec.gforker, ...
    data_mb: float

    def as_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "data_mb": self.data_mb,
            "processes": {k: asdict(v) for k, v in self.processes.items()},
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Sample:
        procs = {k: Proc(**v) for k, v in raw["processes"].items()}
        return cls(float(raw["at"]), procs, float(raw["data_mb"]))


@dataclass
class Recorder:
    started: float = field(default_factory=time.time)
    grace_s: float = 20.0  # after a recovery, calls that were already waiting may still fail
    sent: list[tuple[float, int]] = field(default_factory=list)
    acked: list[tuple[float, float]] = field(default_factory=list)  # (at, lag s) per document
    queries: list[tuple[float, float, bool]] = field(default_factory=list)  # (at, s, answered)
    checks: list[tuple[float, bool]] = field(default_factory=list)  # read-your-writes checks
    errors: list[ErrorEvent] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def sent_docs(self, n: int, at: float | None = None) -> None:
        with self._lock:
            self.sent.append((at or time.time(), n))

    def acknowledged(self, lag_s: float, at: float | None = None) -> None:
        with self._lock:
            self.acked.append((at or time.time(), lag_s))

    def query(self, latency_s: float, answered: bool, at: float | None = None) -> None:
        with self._lock:
            self.queries.append((at or time.time(), latency_s, answered))

    def check(self, ok: bool) -> None:
        with self._lock:
            self.checks.append((time.time(), ok))

    def error(self, op: str, kind: str, start: float, message: str = "") -> None:
        with self._lock:
            self.errors.append(ErrorEvent(op, kind, start, time.time(), message[:300]))

    def exception(self, op: str, exc: BaseException, start: float) -> str:
        kind = kind_of(exc)
        self.error(op, kind, start, str(exc))
        return kind

    def fault(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def sample(self, sample: Sample) -> None:
        with self._lock:
            self.samples.append(sample)

    # --- classification ----------------------------------------------------------------------

    def windows(self, now: float | None = None) -> list[tuple[float, float]]:
        """(start, end) of every fault window; one not yet recovered reaches ``now``."""
        now = now or time.time()
        with self._lock:
            faults = list(self.faults)
        out = []
        for f in faults:
            end = f.recovered_at if f.recovered_at is not None else now
            out.append((f.at, end + self.grace_s))
        return out

    def expected(self, error: ErrorEvent, windows: list[tuple[float, float]]) -> bool:
        if error.kind not in TRANSIENT:
            return False
        return any(error.start <= end and error.end >= start for start, end in windows)

    def unexpected_errors(self, now: float | None = None) -> list[ErrorEvent]:
        windows = self.windows(now)
        with self._lock:
            errors = list(self.errors)
        return [e for e in errors if not self.expected(e, windows)]
