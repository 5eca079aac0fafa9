"""T1 (bench/transport.py) runs for real: every system, every segment, its checks and its JSON."""

from __future__ import annotations

import json
import multiprocessing.resource_tracker
from collections.abc import Iterator

import pytest

from ..support.bench import load_bench

transport = load_bench("transport")


@pytest.fixture(autouse=True)
def stop_the_resource_tracker() -> Iterator[None]:
    """Spawning starts multiprocessing's resource tracker, which otherwise outlives the test."""
    yield
    multiprocessing.resource_tracker._resource_tracker._stop()


@pytest.mark.timeout(180)
def test_a_short_run_measures_every_system_in_every_round(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = "--repeats 2 --messages 12 --mpqueue-messages 4 --warmup 3 --window 4 --json -v"
    assert transport.main(argv.split()) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["zero_copy_receive"] is True
    for system in ("arrow", "raw", "mpqueue", "arrow_ipc", "raw_frames"):
        assert figures[f"{system}_gbps"] > 0, system
        assert figures["cpu_us_per_msg"][system]["rx_cpu_us"] > 0, system
    assert figures["repeats"] == 2
    # Two rounds of five segments, each printed once.
    segments = [line.split()[:3] for line in out.splitlines() if line.startswith("  round")]
    assert sorted(segments) == sorted(
        ["round", str(r), s] for r in (1, 2) for s in transport.SYSTEMS
    )
    assert "received batch equals sent True" in out


def test_segments_rotate_the_first_system_and_never_skip_one() -> None:
    plan = transport.Plan(("a", "b", "c"), 4, 1, 5, 2, 4, "/nowhere")
    assert plan.segments() == [
        (0, "a"), (0, "b"), (0, "c"),
        (1, "b"), (1, "c"), (1, "a"),
        (2, "c"), (2, "a"), (2, "b"),
        (3, "a"), (3, "b"), (3, "c"),
    ]  # fmt: skip
    assert plan.total("mpqueue") == 3 and plan.total("a") == 6
