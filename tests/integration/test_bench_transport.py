"""T1 (bench/transport.py) runs for real: every system, every segment, its checks and its JSON."""

from __future__ import annotations

import pytest

from ..support.benchmarks import run_bench

SYSTEMS = ("arrow", "arrow_ipc", "raw", "raw_frames", "mpqueue")


@pytest.mark.timeout(180)
def test_a_short_run_measures_every_system_in_every_round_the_first_system_rotating() -> None:
    argv = "--repeats 2 --messages 12 --mpqueue-messages 4 --warmup 3 --window 4 -v"
    run = run_bench("transport", *argv.split(), timeout_s=170)
    assert run.code == 0, run.stdout + run.stderr
    figures = run.result
    assert figures["zero_copy_receive"] is True
    for system in SYSTEMS:
        assert figures[f"{system}_gbps"] > 0, system
        assert figures["cpu_us_per_msg"][system]["rx_cpu_us"] > 0, system
    assert figures["repeats"] == 2
    # -v prints every segment once, in the order they ran: round r starts with system r.
    segments = [line.split()[1:3] for line in run.stdout.splitlines() if line.startswith("  round")]
    assert segments == [[str(r + 1), s] for r in range(2) for s in SYSTEMS[r:] + SYSTEMS[:r]], (
        run.stdout
    )
    assert "received batch equals sent True" in run.stdout
