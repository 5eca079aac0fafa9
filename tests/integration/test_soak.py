"""``aaflow-stream soak``: a short soak with faults passes, and the audit and the verdict catch
what was planted afterwards in its report (a ledger entry for a document never sent, an RSS
that grew) and in a stored state (a chunk lost, duplicated, stale or resurrected)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aaflow_stream.soak import audit, corpus
from aaflow_stream.soak.faults import schedule
from aaflow_stream.soak.ledger import Entry
from aaflow_stream.soak.options import FaultPlan, parse_faults
from aaflow_stream.spec import decode

from ..conftest import REPO_DIR

pytestmark = pytest.mark.mpi

SOAK_TIMEOUT_S = 240


def _topology(root: Path) -> Path:
    path = root / "t.yaml"
    path.write_text(
        f"name: soak-test\ndata_dir: {root}/data\nrun_dir: {root}/run\n"
        f"sources:\n  - {{paths: [{root}/inbox], watch: true, deletes: follow}}\n"
        f"ingest: {{endpoint: 'ipc://{root}/in.sock'}}\n"
        f"query: {{endpoint: 'ipc://{root}/q.sock'}}\n"
        "stages:\n"
        "  - {operator: load, batch_docs: 16}\n"
        "  - {operator: transform, chunk_size: 512, overlap: 64, chain: true}\n"
        "  - {operator: embed, batch_size: 256}\n"
        "  - {operator: upsert, batch_size: 512, chain: true}\n"
        "shards: {count: 2}\nflow: {window: 4, flush_ms: 50}\n"
        "durability: {restart: {max_restarts: 100, backoff_s: 0.1, max_backoff_s: 0.5}}\n"
    )
    (root / "inbox").mkdir()
    return path


def _soak(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aaflow_stream.cli", "soak", *args],
        capture_output=True,
        text=True,
        timeout=SOAK_TIMEOUT_S,
        cwd=REPO_DIR,
    )


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One ~40 s soak with faults of every kind: its report directory and its output."""
    root = Path(tmp_path_factory.mktemp("soak"))
    report = root / "report"
    done = _soak(
        "--topology", str(_topology(root)),
        "--minutes", "0.6",
        "--rate-docs", "10",
        "--query-clients", "2",
        "--interval-s", "12",
        "--faults", "every=12s,kinds=actor,shard,supervisor",
        "--watch-every-s", "1",
        "--report", str(report),
        "--seed", "7",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    yield report, done.stdout


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
def test_a_short_soak_with_faults_passes(soaked: tuple[Path, str]) -> None:
    report, out = soaked
    assert "verdict: PASS" in out
    summary = json.loads((report / "summary.json").read_text())
    assert summary["audit"]["clean"]
    assert summary["audit"]["documents"] > 50 and summary["audit"]["updated"] > 0
    assert summary["audit"]["deleted"] > 0
    assert summary["audit"]["lost_chunks"] == summary["audit"]["duplicated"] == 0
    assert len(summary["faults"]) == 2
    assert all(f["recovery_s"] is not None for f in summary["faults"])
    assert summary["checks"]["total"] > 0 and summary["checks"]["failed"] == 0
    rows = [json.loads(x) for x in (report / "minutes.jsonl").read_text().splitlines()]
    assert rows and all("processes" in r and "query_p99_ms" in r for r in rows)
    assert sum(r["sent"] for r in rows) > 0
    ledger = json.loads((report / "ledger.json").read_text())
    feeds = {e["feed"] for e in ledger["entries"].values()}
    assert feeds == {"api", "file"}  # the watched directory was fed too


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
def test_the_audit_finds_a_planted_loss(soaked: tuple[Path, str]) -> None:
    report, _ = soaked
    assert _soak("--audit", str(report)).returncode == 0  # as the soak left it
    ledger_path = report / "ledger.json"
    original = ledger_path.read_text()
    ledger = json.loads(original)
    ledger["entries"][f"{ledger['prefix']}-9999999"] = {
        "number": 9999999, "version": 1, "deleted": False, "feed": "api", "acked_at": 0.0,
    }  # fmt: skip
    ledger_path.write_text(json.dumps(ledger))
    try:
        planted = _soak("--audit", str(report))
    finally:
        ledger_path.write_text(original)
    assert planted.returncode == 4, planted.stdout + planted.stderr
    assert "lost 1 documents" in planted.stdout
    assert "verdict: FAIL" in planted.stdout


@pytest.mark.timeout(SOAK_TIMEOUT_S + 60)
def test_the_verdict_fails_on_a_planted_rss_growth(soaked: tuple[Path, str]) -> None:
    report, _ = soaked
    samples_path = report / "samples.jsonl"
    original = samples_path.read_text()
    samples = [json.loads(x) for x in original.splitlines()]
    judged = json.loads((report / "summary.json").read_text())["rss"][0]  # lived past warm-up
    name, pid = judged["name"], judged["pid"]
    last = next(s for s in reversed(samples) if s["processes"].get(name, {}).get("pid") == pid)
    last["processes"][name]["rss_mb"] += 500
    samples_path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    try:
        planted = _soak("--audit", str(report))
    finally:
        samples_path.write_text(original)
    assert planted.returncode == 4, planted.stdout + planted.stderr
    assert f"RSS grew past the bound: {name}" in planted.stdout


def _model() -> audit.ChunkModel:
    return audit.ChunkModel(
        decode("name: t\ndata_dir: d\ningest: {}\nstages: [{operator: load}, "
               "{operator: transform}, {operator: embed}, {operator: upsert}]\n")
    )  # fmt: skip


def test_the_audit_counts_a_tampered_stored_state() -> None:
    model = _model()
    entries = {
        corpus.doc_id("p", n): Entry(n, version, deleted, "api", 0.0)
        for n, version, deleted in [(1, 1, False), (2, 3, False), (3, 2, True), (4, 1, False)]
    }
    expected = audit.expected_chunks(0, entries, model)
    assert all(expected[d] for d in expected)
    clean = [c for chunks in expected.values() for c in chunks]
    assert audit.compare(entries, [], audit.Stored(list(clean)), expected).clean

    doc1, doc2, doc4 = (corpus.doc_id("p", n) for n in (1, 2, 4))
    stale = model.of(0, doc2, 2, 2)  # the version before the acknowledged one
    tampered = [c for c in clean if c.doc_id != doc1]  # document 1 lost
    tampered.append(expected[doc4][0])  # one chunk twice
    tampered.append(stale[0] if stale[0].chunk_id not in {c.chunk_id for c in expected[doc2]}
                    else stale[-1])  # fmt: skip
    tampered += model.of(0, corpus.doc_id("p", 3), 3, 2)  # a deleted document's chunks
    result = audit.compare(entries, [], audit.Stored(tampered), expected)
    assert not result.clean
    assert result.lost_documents == 1 and result.lost_chunks == len(expected[doc1])
    assert result.duplicated >= 1
    assert result.stale >= 1
    assert result.resurrected == len(model.of(0, corpus.doc_id("p", 3), 3, 2))
    assert any(x.startswith("lost: ") for x in result.examples)


def test_an_unacknowledged_document_in_the_store_is_unknown_and_pending_is_unresolved() -> None:
    model = _model()
    entries = {corpus.doc_id("p", 1): Entry(1, 1, False, "api", 0.0)}
    expected = audit.expected_chunks(0, entries, model)
    stored = [*expected[corpus.doc_id("p", 1)], *model.of(0, corpus.doc_id("p", 2), 2, 1)]
    result = audit.compare(entries, [], audit.Stored(stored), expected)
    assert result.unknown > 0 and not result.clean
    pending = audit.compare(entries, [corpus.doc_id("p", 2)], audit.Stored(stored), expected)
    assert pending.unknown == 0 and pending.unresolved == 1 and not pending.clean


def test_the_fault_plan_parses_and_spreads_every_kind() -> None:
    assert parse_faults("every=60s,kinds=actor,shard,supervisor") == FaultPlan(
        60.0, ("actor", "shard", "supervisor")
    )
    assert parse_faults("every=1.5m,kinds=shard") == FaultPlan(90.0, ("shard",))
    assert parse_faults(None) is None
    plan = schedule(FaultPlan(60.0, ("actor", "shard", "supervisor")), 1800, random.Random(1))
    assert len(plan) == 29 and all(-15 <= t - 60 * i <= 15 for i, (t, _) in enumerate(plan, 1))
    for start in range(0, 27, 3):  # each round of three hits every kind once
        assert sorted(k for _, k in plan[start : start + 3]) == ["actor", "shard", "supervisor"]


def test_documents_are_a_function_of_the_seed() -> None:
    assert corpus.text(1, 5, 2) == corpus.text(1, 5, 2)
    assert corpus.text(1, 5, 2) != corpus.text(1, 5, 3) != corpus.text(2, 5, 3)
