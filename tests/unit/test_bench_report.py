"""The benchmark report (bench/report.py) turns measurements into tables, charts and a section
spliced into a hand-written document. Measuring takes half an hour on two cores, so these tests
feed it canned measurements, shaped like the JSON the benchmark scripts print, and check what it
writes: the rendering functions are pure, and called here in-process, with no benchmark run.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.kit import report_doc

pytest.importorskip("matplotlib")

ALPHA, BETA, OMEGA = 2e-3, 40e-6, 0.5
SWEEP_CHUNKS = 20_000
HAND_WRITTEN = "# Benchmarks\n\nWhat each script measures.\n\n## W1 — ingestion\n\nBy hand.\n"


def w1_system(total_s: float, cpu_s: float) -> dict[str, Any]:
    stages = {"load": 0.1, "transform": 0.4, "embed": 2.0, "upsert": 0.5}
    return {
        "total_s": total_s,
        "startup_s": 0.9,
        "chunks": 30_000,
        "verified": True,
        "stages": stages,
        "peak_rss_mb": 400.0,
        "cpu_s": cpu_s,
        "runs": [total_s],
    }


def script_run(command: str, result: dict[str, Any] | None, code: int = 0) -> dict[str, Any]:
    return {
        "command": command,
        "exit": code,
        "wall_s": 1.0,
        "load_avg": [[1.0, 1.0, 1.0], [1.5, 1.2, 1.0]],
        "result": result,
    }


def sweep_runs() -> list[dict[str, Any]]:
    """aaflow's runs follow the model exactly (replicas capped at the 2 cores)."""
    runs = []
    for workers, batch, shards in [
        *itertools.product((1, 2, 4), (32, 256), (4,)),
        *((2, 256, s) for s in (1, 2, 8)),
    ]:
        p = min(workers, 2)
        t = SWEEP_CHUNKS * BETA / p + SWEEP_CHUNKS * ALPHA / (batch * p) + OMEGA
        base = {"workers": workers, "batch": batch, "shards": shards, "chunks": SWEEP_CHUNKS}
        runs.append({**base, "system": "aaflow", "ok": True, "total_s": t, "startup_s": 0.8})
        failure = {"total_s": None, "startup_s": None, "failure": "failed: boom"}
        runs.append({**base, "system": "mp_pool", "ok": False, **failure})
    return runs


def canned() -> dict[str, Any]:
    w1 = {
        "preset": "small",
        "systems": {
            "aaflow": w1_system(3.0, 9.0),
            "sequential": w1_system(6.0, 6.0),
            "asyncio": w1_system(4.0, 7.0),
            "mp_pool": w1_system(5.0, 7.0),
            "raw_zmq": w1_system(2.0, 8.0),
        },
        "skipped": {"ray": "ray is not installed"},
        "engine": {"shutdown_s": 0.4},
    }
    t1 = {
        "arrow_gbps": 1.0,
        "raw_gbps": 2.0,
        "repeats": 3,
        "arrow_raw_paired_median": 0.55,
        "zero_copy_receive": True,
        "systems": {
            "arrow": {"batches_per_s": 500.0, "gbps": 1.0, "gbps_rounds": [0.8, 1.0, 1.1]},
            "raw": {"batches_per_s": 1000.0, "gbps": 2.0, "gbps_rounds": [1.9, 2.0, 2.2]},
        },
    }
    q1 = {
        "p50_ms": 3.0,
        "p99_ms": 48.0,
        "qps64": 400.0,
        "floor_p50_ms": 0.5,
        "floor_qps64": 800.0,
        "shards_p50_ms": 1.0,
        "shards_qps64": 600.0,
        "exact": True,
        "vectors": 100_000,
        "queries": 5,
        # the script prints no p99 for floor and shards: the report takes it from these
        "latencies_ms": {
            "aaflow": [1.0, 2.0, 3.0, 4.0, 50.0],
            "floor": [0.5, 0.5, 0.5, 0.5, 0.5],
            "shards": [0.8, 0.9, 1.0, 1.1, 1.2],
        },
    }
    sweep = {
        "preset": "large",
        "chunks": SWEEP_CHUNKS,
        "repeats": 1,
        "systems": ["aaflow", "mp_pool"],
        "skipped": {"dask": "dask.distributed is not installed"},
        "workers": [1, 2, 4],
        "batches": [32, 256],
        "shards": [1, 2, 4, 8],
        "default_workers": 2,
        "default_batch": 256,
        "default_shards": 4,
        "load_avg": [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        "runs": sweep_runs(),
    }
    return {
        "generated": "2030-01-01 00:00 UTC",
        "command": "python -m bench.report --quick",
        "machine": {
            "cpu": "Canned CPU 9000",
            "cores": 2,
            "memory_gib": 8.0,
            "python": "3.11.9",
            "os": "Linux",
            "commit": "abc1234",
        },
        "workloads": {
            "w1": script_run("python -m bench.ingest --quick --json", w1),
            "sweep": sweep,
            "t1": script_run("python -m bench.transport --quick --json", t1),
            "q1": [script_run("python -m bench.query --quick --samples --json", q1)],
            "m1": script_run("python -m bench.embed --quick --json", None, code=1),
        },
    }


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """One render for the module: drawing the charts takes seconds."""
    out = tmp_path_factory.mktemp("report") / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text(HAND_WRITTEN)
    report.render(canned(), out, out.parent / "img")
    return out.read_text(), out


def part(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of any level."""
    after = text.split(f"\n{heading}\n", 1)[1]
    return after.split("\n#", 1)[0]


def row(text: str, *first: str) -> list[str]:
    """The cells of the first table row whose first cells are ``first``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[: len(first)] == list(first):
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


def test_the_section_goes_near_the_top_and_the_hand_written_text_stays(
    rendered: tuple[str, Path],
) -> None:
    text, _ = rendered
    head, rest = text.split(report_doc.BEGIN)
    assert head == "# Benchmarks\n\nWhat each script measures.\n\n"
    generated, tail = rest.split(report_doc.END)
    assert "## Results" in generated and "Canned CPU 9000, 2 cores, 8.0 GiB" in generated
    assert tail == "\n\n## W1 — ingestion\n\nBy hand.\n"


def test_a_second_render_replaces_the_section_instead_of_adding_one(
    rendered: tuple[str, Path],
) -> None:
    first, out = rendered
    report.render(canned(), out, out.parent / "img")
    assert out.read_text() == first
    assert first.count(report_doc.BEGIN) == 1 and first.count(report_doc.END) == 1


def test_w1_table_gives_medians_and_ratios_against_the_floors_of_the_same_run(
    rendered: tuple[str, Path],
) -> None:
    text = part(rendered[0], "### W1 — ingestion")
    engine = row(text, "aaflow")
    assert engine[1:4] == ["yes", "3.000", "10,000"]  # verified, total s, chunks/s
    assert row(text, "raw_zmq")[-2] == "1.50x"  # aaflow / raw_zmq
    assert row(text, "aaflow / raw_zmq (total)")[1:] == ["1.50x", "≤ 1.15x MISSES"]
    # the faster of asyncio (4.0 s) and mp_pool (5.0 s)
    faster = row(text, "aaflow / the faster of asyncio and mp_pool (total)")
    assert faster[1:] == ["0.75x", "≤ 0.8x MEETS"]
    assert row(text, "aaflow / sequential (CPU seconds)")[1:] == ["1.50x", "≤ 1.5x MEETS"]
    assert row(text, "aaflow last vector applied → exit")[1:] == ["0.40 s", "< 0.5 s MEETS"]
    assert "Not run: ray (ray is not installed)." in text
    assert "(The targets are set for W1 `xlarge`.)" in text


def test_the_fit_table_recovers_the_model_behind_the_sweep_and_names_what_did_not_fit(
    rendered: tuple[str, Path],
) -> None:
    text = part(rendered[0], "#### Scaling model")
    cells = row(text, "aaflow")
    assert cells[1:4] == ["40.00", "2.000", "0.500"]  # beta us, alpha ms, Omega s
    assert cells[4] == "0.000" and cells[6] == "1.000"  # RMS residual, R²
    assert row(text, "mp_pool")[-1] == "not fitted: no verified run"
    sweep = part(rendered[0], "### W1 — scaling")
    assert "Not run: dask (dask.distributed is not installed)." in sweep
    # chunks/s at 256 a batch: 1 replica, then 2 and 4 (the same: 2 cores)
    t1, t2 = (SWEEP_CHUNKS / (SWEEP_CHUNKS * (BETA + ALPHA / 256) / p + OMEGA) for p in (1, 2))
    assert row(sweep, "aaflow", "256")[2:] == [f"{t1:,.0f}", f"{t2:,.0f}", f"{t2:,.0f}"]


def test_q1_takes_the_scripts_percentiles_fills_in_from_the_samples_and_rates_the_floor(
    rendered: tuple[str, Path],
) -> None:
    text = part(rendered[0], "### Q1 — retrieval")
    assert row(text, "aaflow")[1:] == ["3.000", "48.000", "400", "6.00x", "0.50x"]
    assert row(text, "floor")[1:] == ["0.500", "0.500", "800", "1.00x", "1.00x"]
    assert row(text, "shards")[1:3] == ["1.000", "1.196"]  # p99 interpolated as numpy does


def test_t1_ratios_and_a_failed_workload_are_reported(rendered: tuple[str, Path]) -> None:
    text = rendered[0]
    assert row(part(text, "### T1 — transport"), "arrow")[1:] == [
        "500",
        "1.00",
        "0.80–1.10",
        "0.50x",
        "–",
    ]
    assert "arrow / raw paired round by round: 0.55x" in text
    assert "No result: `python -m bench.embed --quick --json` exited 1." in text


def test_every_chart_is_a_png_linked_relative_to_the_document(
    rendered: tuple[str, Path],
) -> None:
    text, out = rendered
    for name in ("w1_stages", "w1_scaling", "t1_gbps", "q1_latency"):
        assert f"](img/{name}.png)" in text
        assert (out.parent / "img" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_document_with_one_marker_only_is_refused() -> None:
    with pytest.raises(ValueError, match="without the other"):
        report_doc.splice(f"# B\n\n{report_doc.BEGIN}\n", "x")


def test_the_sweep_varies_batch_and_replicas_at_4_shards_and_shards_at_the_w1_defaults() -> None:
    args = report._parser().parse_args(["--quick"])
    args.repeats = 1
    points = report.sweep_points(report.make_plan(args))
    assert len(points) == len(set(points)) == 2 * (3 * 2 + 3)  # aaflow and mp_pool
    at_4_shards = {(w, b) for name, w, b, s in points if name == "aaflow" and s == 4}
    assert at_4_shards == {(w, b) for w in (1, 2, 4) for b in (32, 256)}
    others = {(w, b, s) for name, w, b, s in points if name == "mp_pool" and s != 4}
    assert others == {(2, 256, 1), (2, 256, 2), (2, 256, 8)}
