"""Observability against real processes: status, the metrics endpoint, the trace, event logs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from aaflow_stream.client import Client
from aaflow_stream.errors import ActorFailed
from aaflow_stream.observe.events import parse_event
from aaflow_stream.plan import StageSpec
from aaflow_stream.spec import RestartSpec
from aaflow_stream.synthetic import generate

from ..conftest import REPO_DIR
from .graphs import SUPPORT, graph, sink, source, supervisor
from .ingest import detached, expected_chunks, jsonl_docs, up, wait_drained, write_topology

SHARDS = 2


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aaflow_stream.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_DIR,
    )


def _events(text: str) -> list[dict[str, str]]:
    return [e for e in map(parse_event, text.splitlines()) if e]


def _status_when(topology: Path, done: Any, timeout_s: float = 30) -> dict[str, Any]:
    """``status --json`` until ``done(status)`` (stats arrive every 0.5 s, status every 1 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = _cli("status", "--topology", str(topology), "--json")
        assert result.returncode == 0, result.stderr
        status = dict(json.loads(result.stdout))
        if done(status) or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.mpi
def test_status_and_metrics_report_what_was_ingested(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate(corpus, "tiny")
    docs = jsonl_docs(corpus)
    chunks = expected_chunks(docs)
    per_shard = Counter(cid % SHARDS for cid in chunks)
    topology = write_topology(
        tmp_path / "t.yaml",
        corpus,
        tmp_path / "data",
        shards=SHARDS,
        extra=f"query: {{endpoint: 'ipc://{tmp_path}/q.sock'}}\nmetrics: {{port: 0}}\n",
    )
    with detached(topology):
        wait_drained(tmp_path / "data", SHARDS)
        with Client(f"ipc://{tmp_path}/q.sock", timeout_s=10) as client:
            assert client.query("credit flow control", k=3)
        status = _status_when(
            topology,
            lambda s: s["vectors"] == len(chunks) and (s["query"] or {}).get("queries", 0) >= 1,
        )
        assert status["state"] == "running"
        assert (status["documents"], status["chunks"]) == (len(docs), len(chunks))
        assert status["vectors"] == len(chunks)
        assert {s["shard"]: s["vectors"] for s in status["shards"]} == dict(per_shard)
        assert all(s["bytes"] >= s["vectors"] * 384 * 4 for s in status["shards"])
        assert {(s["stage"], s["replica"]) for s in status["stages"]} >= {
            ("load", 0),
            ("transform", 0),
            ("embed", 1),
            ("upsert", 0),
            ("shard", 1),
        }
        assert status["query"]["queries"] >= 1 and status["query"]["p99_ms"] > 0
        assert status["metrics_url"].startswith("http://127.0.0.1:")

        metrics = _scrape(status["metrics_url"])
        assert metrics[("aaflow_documents_total", ())] == len(docs)
        assert metrics[("aaflow_chunks_total", ())] == len(chunks)
        assert metrics[("aaflow_vectors_total", ())] == len(chunks)
        for shard, count in per_shard.items():
            assert metrics[("aaflow_shard_vectors", (("shard", str(shard)),))] == count
        embed_rows = sum(
            v for (name, labels), v in metrics.items()
            if name == "aaflow_stage_rows_in_total" and ("stage", "embed") in labels
        )  # fmt: skip
        assert embed_rows == len(chunks)
        assert metrics[("aaflow_queries_total", ())] >= 1
        human = _cli("status", "--topology", str(topology))
        assert human.returncode == 0 and "shard" in human.stdout, human.stderr
    after = _cli("status", "--topology", str(topology), "--json")
    assert after.returncode == 1 and "nothing is running" in after.stderr


def test_status_says_clearly_that_nothing_runs_in_an_empty_run_dir(tmp_path: Path) -> None:
    result = _cli("status", "--run-dir", str(tmp_path), "--json")
    assert result.returncode == 1
    assert f"nothing is running in {tmp_path}" in result.stderr


@pytest.mark.mpi
def test_up_writes_a_trace_whose_rows_add_up_and_logs_lifecycle_events(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate(corpus, "tiny")
    chunks = len(expected_chunks(jsonl_docs(corpus)))
    # Chained stages (transform in load's actors, upsert in embed's) get trace rows of their own.
    topology = write_topology(
        tmp_path / "t.yaml", corpus, tmp_path / "data", shards=SHARDS, chain=True
    )
    trace = tmp_path / "trace.parquet"
    result = up(topology, "--json", "--trace", str(trace), "--log-level", "INFO")
    assert result.code == 0, result.stderr
    summary = result.summary
    assert summary["chunks"] == chunks

    table = pq.read_table(trace)
    rows_in = {
        stage: pc.sum(table.filter(pc.equal(table["stage"], stage))["rows_in"]).as_py()
        for stage in ("transform", "embed", "upsert")
    }
    transform_out = table.filter(pc.equal(table["stage"], "transform"))["rows_out"]
    assert pc.sum(transform_out).as_py() == chunks
    assert rows_in["embed"] == rows_in["upsert"] == chunks
    assert set(table["stage"].to_pylist()) == {"load", "transform", "embed", "upsert", "shard"}
    embed = table.filter(pc.equal(table["stage"], "embed")).to_pylist()
    assert all(r["upstream"] == "load.0" and r["origin_at"] > 0 for r in embed if r["rows_in"])
    assert all(r["received_at"] <= r["started_at"] <= r["finished_at"] for r in embed)
    timing = summary["trace"]
    assert set(timing["stages"]) == {"load", "transform", "embed", "upsert", "shard"}
    assert timing["overlap_s"] == pytest.approx(max(0.0, timing["sum_s"] - timing["total_s"]))

    events = _events(result.stderr)
    actors = {"load.0", "embed.0", "embed.1", "shard.0", "shard.1"}
    for name in ("actor_start", "actor_ready", "actor_stop"):
        assert {e["actor"] for e in events if e["event"] == name} == actors, name
    assert all("replica" in e for e in events)
    # --log-level reached the actors: their own INFO events are in their logs.
    embed_log = (tmp_path / "run" / "logs" / "embed.1.log").read_text()
    assert {"event": "actor_ready", "actor": "embed.1", "replica": "1"}.items() <= next(
        e for e in _events(embed_log) if e["event"] == "actor_ready"
    ).items()


def test_a_crash_and_restart_log_events_and_show_in_the_status(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    g = graph(
        source(batches=10**6, rows=16),
        StageSpec("crash", f"{SUPPORT}:Crash", {"after": 5, "message": "boom"}),
        sink(tmp_path / "out"),
    )
    policy = RestartSpec(max_restarts=1, backoff_s=0.1)

    async def main() -> None:
        sup = supervisor(g, tmp_path / "run", restart=policy, stop_timeout_s=3.0)
        async with sup:
            with pytest.raises(ActorFailed):
                await sup.wait()

    with caplog.at_level("INFO", logger="aaflow_stream.runtime.supervisor"):
        asyncio.run(asyncio.wait_for(main(), 90))
    events = _events(caplog.text)
    crashes = [e for e in events if e["event"] == "actor_crash" and e["actor"] == "crash.0"]
    assert [(e["replica"], e["code"]) for e in crashes] == [("0", "1")] * 2
    assert "boom" in crashes[0]["reason"]
    restart = next(e for e in events if e["event"] == "graph_restart")
    assert restart["attempt"] == "1" and restart["actor"] == "crash.0"
    restarted = {e["actor"] for e in events if e["event"] == "actor_restart"}
    assert restarted == {"source.0", "crash.0", "sink.0"}
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["state"] == "failed" and status["restarts"] == 1


def test_a_sender_blocked_on_credit_logs_a_slow_consumer(tmp_path: Path) -> None:
    g = graph(
        source(batches=4, rows=16),
        StageSpec("slow", f"{SUPPORT}:DelayByReplica", {"delays_ms": [1300]}),
        sink(tmp_path / "out"),
        window=1,
    )

    async def main() -> None:
        async with supervisor(g, tmp_path / "run") as sup:
            await sup.wait()

    asyncio.run(asyncio.wait_for(main(), 60))
    events = _events((tmp_path / "run" / "logs" / "source.0.log").read_text())
    slow = [e for e in events if e["event"] == "slow_consumer"]
    assert slow and slow[0]["actor"] == "source.0" and slow[0]["replica"] == "0"
    assert float(slow[0]["waited_s"]) >= 1.0 and slow[0]["link"] == "any"
