"""W1's efficiency figures are the ratios the issue names, from the summaries of one run."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from bench import w1_targets


@dataclass
class S:
    total_s: float | None
    cpu_s: float | None = None
    startup_s: float | None = None


def test_the_ratios_and_the_verdicts() -> None:
    summaries = {
        "aaflow": S(4.0, cpu_s=12.0, startup_s=0.9),
        "raw_zmq": S(3.5),
        "sequential": S(6.0, cpu_s=8.0),
        "asyncio": S(5.5),
        "mp_pool": S(5.0),
    }
    e = w1_targets.measure(summaries, [{"shutdown_s": 0.4}, {"shutdown_s": 0.8}, {}])
    assert e.raw_zmq_ratio == pytest.approx(4.0 / 3.5)
    assert e.fastest_simple == "mp_pool"
    assert e.fastest_simple_ratio == pytest.approx(0.8)
    assert e.cpu_ratio == pytest.approx(1.5)
    assert e.startup_s == 0.9 and e.shutdown_s == pytest.approx(0.6)
    text = "\n".join(w1_targets.lines(e, "xlarge"))
    assert "MEETS  aaflow / raw_zmq total = 1.14x" in text
    assert "MEETS  aaflow / fastest of asyncio, mp_pool (mp_pool) = 0.80x" in text
    assert "MISSES aaflow shutdown (last vector -> exit) = 0.60 s" in text
    assert set(e.as_json()) >= {
        "raw_zmq_ratio", "fastest_simple_ratio", "cpu_ratio", "startup_s", "shutdown_s"
    }  # fmt: skip


def test_what_was_not_measured_reads_n_a() -> None:
    e = w1_targets.measure({"aaflow": S(4.0)}, [])
    assert e.raw_zmq_ratio is None and e.fastest_simple_ratio is None and e.cpu_ratio is None
    text = list(w1_targets.lines(e, "small"))
    assert text[0].startswith("(these targets are set for W1 xlarge")
    assert sum(line.startswith("n/a") for line in text) == 5
