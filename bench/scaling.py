"""The scaling model of docs/benchmarks.md, fitted to a W1 sweep by least squares.

A run of ``N`` items on ``P`` workers in batches of ``b`` is modelled as

    T = N*beta/P + N*alpha/(b*P) + Omega

``beta`` is the compute each item needs, ``alpha`` the overhead each batch pays (a call, a
message, a lock), both shared out over the workers, and ``Omega`` what does not shrink as
workers are added: start-up of the pipeline, draining it, and any part that runs in one place
(a single upserting process, for instance). The model is linear in (beta, alpha, Omega), so
``fit`` solves it with ``numpy.linalg.lstsq`` on the columns ``N/P``, ``N/(b*P)`` and ``1``.
``alpha`` and ``beta`` can only be told apart when ``b`` varies at a fixed ``P`` as well as
``P`` at a fixed ``b``; a sweep that does not vary both is refused.

Workers beyond the machine's cores do not run at the same time, so a sweep's worker counts
are best given as ``effective_workers(P, cores)``: that is what the report passes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Point:
    """One measured run: ``items`` processed by ``workers`` in batches of ``batch`` in
    ``seconds``."""

    items: int
    workers: float
    batch: int
    seconds: float


@dataclass(frozen=True)
class Fit:
    """The fitted (alpha, beta, Omega) and how well they explain the points."""

    alpha: float  # seconds per batch, before sharing over workers
    beta: float  # seconds per item, before sharing over workers
    omega: float  # seconds that do not shrink with workers
    rms_s: float  # root mean square of the residuals, seconds
    r2: float  # 1 - SS_res / SS_tot (1.0 when the times do not vary at all)
    points: int
    mean_s: float  # the mean measured time

    @property
    def rms_rel(self) -> float:
        """The RMS residual as a fraction of the mean measured time."""
        return self.rms_s / self.mean_s if self.mean_s else 0.0

    def predict(self, items: int, workers: float, batch: int) -> float:
        return items * self.beta / workers + items * self.alpha / (batch * workers) + self.omega


def effective_workers(workers: int, cores: int) -> int:
    """Workers that can run at once: no more than the cores (at least 1)."""
    return max(1, min(workers, cores))


def design(points: Sequence[Point]) -> np.ndarray:
    """The least-squares matrix: one row ``[N/P, N/(b*P), 1]`` a point."""
    return np.array(
        [[p.items / p.workers, p.items / (p.batch * p.workers), 1.0] for p in points],
        dtype=np.float64,
    )


def fit(points: Sequence[Point]) -> Fit:
    """(alpha, beta, Omega) minimising the squared error of the model over ``points``.

    Raises ValueError when the points cannot tell the three apart (the matrix of ``design``
    has rank below 3: ``b`` or ``P`` never varies on its own).
    """
    if not points:
        raise ValueError("no points to fit")
    x = design(points)
    t = np.array([p.seconds for p in points], dtype=np.float64)
    if np.linalg.matrix_rank(x) < 3:
        raise ValueError(
            f"{len(points)} points cannot separate alpha, beta and Omega: vary the batch size "
            "at a fixed worker count as well as the worker count at a fixed batch size"
        )
    (beta, alpha, omega), *_ = np.linalg.lstsq(x, t, rcond=None)
    residual = t - x @ np.array([beta, alpha, omega])
    ss_res = float(residual @ residual)
    ss_tot = float(((t - t.mean()) ** 2).sum())
    return Fit(
        alpha=float(alpha),
        beta=float(beta),
        omega=float(omega),
        rms_s=float(np.sqrt(ss_res / len(points))),
        r2=1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0,
        points=len(points),
        mean_s=float(t.mean()),
    )
