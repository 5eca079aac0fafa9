"""Memory against a real serving topology: remember, dual-path queries, promotion in one
exchange, forget, and recovery after ``kill -9`` of the shard job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aaflow_stream.client import Client, GatewayUnavailable, QueryError
from aaflow_stream.shard.memory import owner
from aaflow_stream.synthetic import generate

from .ingest import detached, wait_drained, write_topology

pytestmark = pytest.mark.mpi

SHARDS = 4


def session_on(rank: int, prefix: str) -> str:
    """A session name whose entries live on ``rank``."""
    return next(f"{prefix}-{i}" for i in range(1000) if owner(f"{prefix}-{i}", 0, SHARDS) == rank)


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A detached 4-shard topology over the tiny corpus: (endpoint, run_dir)."""
    root = tmp_path_factory.mktemp("mem")
    corpus = root / "corpus"
    generate(corpus, "tiny")
    endpoint = f"ipc://{root}/q.sock"
    topology = write_topology(
        root / "t.yaml",
        corpus,
        root / "data",
        shards=SHARDS,
        extra=(
            f"query: {{endpoint: '{endpoint}', max_wait_ms: 2}}\n"
            "memory: {max_session_entries: 400, near_duplicate: 0.97}\n"
            "durability: {restart: {max_restarts: 3, backoff_s: 0.1}}\n"
        ),
    )
    with detached(topology, timeout_s=120):
        wait_drained(root / "data", SHARDS, timeout_s=60)
        yield endpoint, root / "run"


def _wait_serving(endpoint: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with Client(endpoint, timeout_s=2) as client:
                client.stats()
                return
        except (GatewayUnavailable, QueryError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_an_entry_owned_by_another_rank_is_found_by_its_session_only(
    serving: tuple[str, Path],
) -> None:
    endpoint, _ = serving
    session = session_on(2, "alice")
    with Client(endpoint) as client:
        reply = client.remember(session, ["the launch code is tangerine-42"], kind="state")
        assert (reply.added, reply.merged) == (1, 0)
        hits = client.query("launch code tangerine", k=3, mode="memory", session=session)
        assert hits and hits[0].text == "the launch code is tangerine-42"
        top = hits[0]
        assert (top.path, top.shard, top.kind, top.session) == ("memory", 2, "state", session)
        assert top.score == pytest.approx(top.sim + top.kind_score + top.recency_score)
        other = client.query("launch code tangerine", k=3, mode="memory", session="mallory")
        assert all(h.text != "the launch code is tangerine-42" for h in other)
        both = client.query("launch code tangerine", k=5, mode="both", session=session)
        assert {h.path for h in both} == {"knowledge", "memory"}
        # A plain knowledge query is unchanged: no memory, FAISS scores.
        plain = client.query("launch code tangerine", k=5)
        assert all(h.path == "knowledge" and h.sim is None for h in plain)


def test_a_promotion_of_a_thousand_entries_is_one_exchange_and_forget_clears_every_rank(
    serving: tuple[str, Path],
) -> None:
    endpoint, _ = serving
    session = session_on(3, "bob")
    with Client(endpoint) as client:
        before = client.stats()
        texts = [
            f"finding {i}: {'alpha beta gamma delta'.split()[i % 4]} {i * 7919}"
            for i in range(1000)
        ]
        reply = client.promote(session, texts, kind="intermediate")
        after = client.stats()
        assert after.memory_exchanges == before.memory_exchanges + 1
        assert reply.added + reply.merged == 1000
        assert reply.evicted == max(0, reply.added - 400)  # the session bound holds
        assert after.memory_entries[3] - before.memory_entries[3] == reply.added - reply.evicted
        hits = client.query(texts[999], k=1, mode="memory", session=session)
        assert hits and hits[0].source == "promoted"
        removed = client.forget(session)
        assert removed == reply.added - reply.evicted
        left = client.query(texts[999], k=5, mode="memory", session=session)
        assert all(h.session != session for h in left)
        assert client.stats().memory_entries[3] == before.memory_entries[3]


def test_memory_survives_kill_9_of_the_shard_job(serving: tuple[str, Path]) -> None:
    endpoint, run_dir = serving
    session = session_on(1, "carol")
    with Client(endpoint) as client:
        client.remember(session, ["the vault opens at dawn"])
    pids = json.loads((run_dir / "actors" / "pids.json").read_text())
    for name, pid in pids.items():
        if name.startswith("shard.") and pid:
            os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    _wait_serving(endpoint)
    with Client(endpoint) as client:
        hits = client.query("when does the vault open", k=1, mode="memory", session=session)
        assert [h.text for h in hits] == ["the vault opens at dawn"]
        assert hits[0].shard == 1
        assert client.forget(session) == 1


def test_the_cli_remembers_queries_both_paths_and_forgets(serving: tuple[str, Path]) -> None:
    endpoint, run_dir = serving
    cli = [sys.executable, "-m", "aaflow_stream.cli"]

    def run(*args: str) -> str:
        done = subprocess.run(
            [*cli, *args, "--endpoint", endpoint], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "1 added" in run("remember", "dave", "dave prefers the blue notebook", "--kind", "state")
    reply = json.loads(
        run("query", "which notebook", "--mode", "both", "--session", "dave", "--json", "--k", "3")
    )
    assert any(h["path"] == "memory" and h["session"] == "dave" for h in reply["hits"])
    # ``status`` shows each rank's memory (the figures arrive with the next stats report).
    owner_rank = owner("dave", 0, SHARDS)
    deadline = time.monotonic() + 20
    while True:
        done = subprocess.run(
            [*cli, "status", "--run-dir", str(run_dir), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        shards = {s["shard"]: s for s in json.loads(done.stdout.splitlines()[-1])["shards"]}
        owned = shards[owner_rank]
        seen = owned["memory_entries"] >= 1 and owned["memory_exchanges"] >= 1
        if seen or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert shards[owner_rank]["memory_entries"] >= 1
    assert shards[owner_rank]["memory_exchanges"] >= 1
    assert "removed 1 memory entries" in run("forget", "dave")
