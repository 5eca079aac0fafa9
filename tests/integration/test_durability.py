"""Durability end to end: kill -9 actors mid-ingestion, resume from checkpoints, updates."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aaflow_stream.client import Client, QueryError
from aaflow_stream.runtime.liveness import heartbeat_timeout
from aaflow_stream.synthetic import generate

from ..support import chaos
from .ingest import detached, read_shards, up, write_topology


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("w1") / "small"
    generate(path, "small", seed=3)
    return path


@pytest.fixture(scope="module")
def expected(corpus: Path) -> dict[int, object]:
    return chaos.expected_chunks(corpus)  # type: ignore[no-any-return]


def _hydra_files() -> set[Path]:
    """mpiexec's topology file: it removes it on exit unless it is itself SIGKILLed."""
    return set(Path("/tmp").glob("hydra_hwloc_xmlfile_*"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", chaos.KINDS)
def test_kill_9_of_any_actor_mid_feed_loses_and_duplicates_nothing(
    kind: str, corpus: Path, expected: dict[int, object]
) -> None:
    before = _hydra_files()
    trial = chaos.run_trial(corpus, expected, kind, delay_s=0.6, rng=random.Random(kind))
    assert not trial.error, trial.error
    assert trial.killed and trial.restarts >= 1
    assert trial.check == chaos.Check(lost=0, duplicated=0, wrong_vectors=0)
    assert trial.recovery_s is not None and trial.recovery_s < 30
    # The restart let the killed job's mpiexec exit by itself: it left no file behind.
    assert _hydra_files() <= before


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["shard", "embed"])
def test_without_a_log_a_kill_replays_from_the_last_snapshot_and_loses_nothing(
    kind: str, corpus: Path, expected: dict[int, object]
) -> None:
    """``wal_sync: none``: nothing acknowledged before a snapshot holds it, so the sources
    send again whatever the killed run had not snapshotted."""
    rng = random.Random(f"none-{kind}")
    trial = chaos.run_trial(corpus, expected, kind, delay_s=0.6, rng=rng, wal_sync="none")
    assert not trial.error, trial.error
    assert trial.killed and trial.restarts >= 1
    assert trial.check == chaos.Check(lost=0, duplicated=0, wrong_vectors=0)


def _saved_offset(path: Path) -> int:
    try:
        return int(json.loads(path.read_text())["next_offset"])
    except (OSError, ValueError):  # not written yet (or being replaced)
        return 0


@pytest.mark.timeout(300)
def test_an_interrupted_feed_resumes_from_its_checkpoint(
    tmp_path: Path, corpus: Path, expected: dict[int, object]
) -> None:
    data_dir, run_dir = tmp_path / "data", tmp_path / "run"
    topology = tmp_path / "t.yaml"
    topology.write_text(chaos.topology_yaml(corpus, data_dir, run_dir))
    command = [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--json", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    chaos.wait_pids(run_dir / "actors" / "pids.json", proc, 60)
    # Interrupt once some documents are acknowledged (the checkpoint is on disk).
    saved = data_dir / "checkpoints" / "load.0.json"
    deadline = time.monotonic() + 60
    while _saved_offset(saved) == 0:
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint mid-feed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: drain, save the checkpoint, exit
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    checkpoint = json.loads((data_dir / "checkpoints" / "load.0.json").read_text())
    assert checkpoint["next_offset"] > 0
    again = up(topology, "--json")
    assert again.code == 0, again.stderr
    assert again.summary["documents"] == 64 * 64 - checkpoint["next_offset"]
    assert chaos.check(data_dir, expected) == chaos.Check(0, 0, 0)
    assert not (data_dir / "checkpoints" / "load.0.json").exists()  # a complete feed ends it


def _docs_file(corpus: Path, docs: dict[str, str]) -> None:
    corpus.mkdir(exist_ok=True)
    lines = [json.dumps({"doc_id": d, "text": t}) for d, t in docs.items()]
    (corpus / "docs.jsonl").write_text("\n".join(lines) + "\n")


def _chunks_by_doc(data_dir: Path) -> dict[str, list[int]]:
    _, _, meta = read_shards(data_dir)
    out: dict[str, list[int]] = {}
    columns = meta.column("doc_id").to_pylist(), meta.column("seq").to_pylist()
    for doc_id, seq in zip(*columns, strict=True):
        out.setdefault(doc_id, []).append(seq)
    return {d: sorted(s) for d, s in out.items()}


@pytest.mark.timeout(300)
def test_an_update_that_shortens_a_document_and_a_delete_remove_old_chunks_everywhere(
    tmp_path: Path,
) -> None:
    corpus, data_dir = tmp_path / "corpus", tmp_path / "data"
    words = " ".join(f"word{i}" for i in range(400))  # about 6 chunks of 512 characters
    _docs_file(corpus, {"long": words, "keep": "a short document that stays", "gone": words})
    endpoint = f"ipc://{tmp_path}/q.sock"
    topology = write_topology(
        tmp_path / "t.yaml",
        corpus,
        data_dir,
        shards=4,
        extra=f"query: {{endpoint: '{endpoint}'}}\n",
    )
    first = up(topology, "--json")
    assert first.code == 0, first.stderr
    before = _chunks_by_doc(data_dir)
    assert len(before["long"]) >= 5 and before["keep"] == [0]

    # The same document, changed and much shorter: its old tail goes from every shard.
    _docs_file(
        corpus,
        {"long": "now only one short chunk", "keep": "a short document that stays", "gone": words},
    )
    second = up(topology, "--json")
    assert second.code == 0, second.stderr
    after = _chunks_by_doc(data_dir)
    assert after["long"] == [0] and after["keep"] == [0] and after["gone"] == before["gone"]

    # An explicit delete through the gateway, acknowledged once durable on every shard. The
    # serving run feeds nothing new (an empty source), so no re-ingestion races the delete.
    (tmp_path / "empty").mkdir()
    topology = write_topology(
        tmp_path / "serve.yaml",
        tmp_path / "empty",
        data_dir,
        shards=4,
        extra=f"query: {{endpoint: '{endpoint}'}}\n",
    )
    with detached(topology), Client(endpoint) as client:
        deadline = time.monotonic() + 60
        while client.stats().vectors < sum(len(s) for s in after.values()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        removed = client.delete(["gone", "no-such-doc"])
        assert removed == len(before["gone"])
        hits = client.query(words[:300], k=20)
        assert hits and all(h.doc_id != "gone" for h in hits)
        with pytest.raises(QueryError, match="non-empty doc ids"):
            client.delete([""])
    # The delete survived the restart: the snapshot taken at stop has no chunk of "gone".
    assert "gone" not in _chunks_by_doc(data_dir)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 6 MB filesystem (tmpfs) to fill up; skipped where mounting is not allowed."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.timeout(300)
def test_a_full_disk_pauses_ingestion_and_it_resumes_without_loss(
    tmp_path: Path, small_disk: Path, corpus: Path, expected: dict[int, object]
) -> None:
    data_dir, run_dir = small_disk / "data", tmp_path / "run"
    topology = tmp_path / "t.yaml"
    topology.write_text(chaos.topology_yaml(corpus, data_dir, run_dir))
    command = [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--json", "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shard_log = run_dir / "logs" / "shard.log"
    deadline = time.monotonic() + 60
    while "ingestion paused" not in (shard_log.read_text() if shard_log.exists() else ""):
        assert proc.poll() is None and time.monotonic() < deadline, "never paused"
        time.sleep(0.1)
    # Paused for longer than the heartbeat timeout: the wait does not hold the shard's event
    # loop, so the supervisor sees a live shard (not a hung one to restart); nothing moves,
    # and nothing that is not in a log was acknowledged.
    time.sleep(heartbeat_timeout(0.5) + 2.0)
    assert proc.poll() is None
    subprocess.run(["mount", "-o", "remount,size=512m", str(small_disk)], check=True)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["restarts"] == []
    assert chaos.check(data_dir, expected) == chaos.Check(0, 0, 0)


@pytest.mark.timeout(120)
def test_a_stage_that_drops_delivery_columns_does_not_stall_the_end_of_a_feed(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus"
    _docs_file(corpus, {f"d{i}": f"document {i} " * 30 for i in range(20)})
    stages = (
        "  - {operator: load, batch_docs: 4}\n"
        "  - {operator: transform}\n"
        "  - {operator: custom, name: strip, ref: 'tests.support.ops:DropDeliveryColumns'}\n"
        "  - {operator: embed, batch_size: 16}\n"
        "  - {operator: upsert, batch_size: 64}\n"
    )
    topology = write_topology(
        tmp_path / "t.yaml", corpus, tmp_path / "data", shards=2, stages=stages
    )
    started = time.monotonic()
    result = up(topology, "--json")
    assert result.code == 0, result.stderr
    assert result.summary["vectors"] == result.summary["chunks"] > 0
    # The shards' final acks end the wait at once (eos_timeout_s is 120 s).
    assert time.monotonic() - started < 30
    log = (tmp_path / "run" / "logs" / "load.0.log").read_text()
    assert "dropped the src_replica/src_offset columns" in log
