"""The scaling model's fit (bench/scaling.py) recovers known parameters from synthetic sweeps.

The fit is a pure function of its points, so it is imported and called here: no benchmark runs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bench.scaling import Point, effective_workers, fit

ALPHA, BETA, OMEGA = 2e-3, 40e-6, 0.8  # 2 ms a batch, 40 us an item, 0.8 s fixed
N = 80_000


def sweep(noise_s: float = 0.0, seed: int = 0) -> list[Point]:
    """Workers 1-2-4 x batches 16-64-256, three repeats each, times from the model."""
    rng = np.random.default_rng(seed)
    points = []
    for workers, batch, _ in itertools.product((1, 2, 4), (16, 64, 256), range(3)):
        t = N * BETA / workers + N * ALPHA / (batch * workers) + OMEGA
        points.append(Point(N, workers, batch, t + float(rng.normal(0.0, noise_s))))
    return points


def test_fit_recovers_alpha_beta_and_omega_from_exact_times() -> None:
    got = fit(sweep())
    assert got.alpha == pytest.approx(ALPHA, rel=1e-9)
    assert got.beta == pytest.approx(BETA, rel=1e-9)
    assert got.omega == pytest.approx(OMEGA, rel=1e-9)
    assert got.rms_s < 1e-9 and got.r2 == pytest.approx(1.0)
    assert got.points == 27


def test_fit_recovers_the_parameters_within_the_noise_and_reports_it_as_residual() -> None:
    got = fit(sweep(noise_s=0.02))
    assert got.alpha == pytest.approx(ALPHA, rel=0.1)
    assert got.beta == pytest.approx(BETA, rel=0.05)
    assert got.omega == pytest.approx(OMEGA, abs=0.05)
    assert 0.01 < got.rms_s < 0.03  # the residual is the noise put in
    assert got.rms_rel == pytest.approx(got.rms_s / got.mean_s)


def test_the_fitted_model_predicts_a_point_it_was_not_given() -> None:
    got = fit([p for p in sweep() if (p.workers, p.batch) != (4, 16)])
    want = N * BETA / 4 + N * ALPHA / (16 * 4) + OMEGA
    assert got.predict(N, 4, 16) == pytest.approx(want, rel=1e-9)


def test_fit_refuses_a_sweep_that_never_varies_the_batch_size() -> None:
    same_batch = [p for p in sweep() if p.batch == 64]
    with pytest.raises(ValueError, match="vary the batch size"):
        fit(same_batch)


def test_fit_refuses_no_points() -> None:
    with pytest.raises(ValueError, match="no points"):
        fit([])


def test_workers_beyond_the_cores_do_not_count() -> None:
    assert [effective_workers(p, cores=2) for p in (1, 2, 4, 8)] == [1, 2, 2, 2]
    assert effective_workers(0, cores=2) == 1
