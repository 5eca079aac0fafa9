"""Continuous feeds end to end: a watched directory and the ingest endpoint of a running
topology (real actors, sockets, MPI shards, watchfiles)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import zmq

from aaflow_stream.client import AsyncClient, Client
from aaflow_stream.ingest import protocol
from aaflow_stream.query.protocol import Hit

from ..conftest import REPO_DIR
from .ingest import detached

pytestmark = pytest.mark.mpi

SETTLE_S = 15.0  # bound on "becomes queryable": watch debounce + pipeline + WAL sync


def _topology(root: Path, *, watch: str = "/watch", max_pending: int = 8) -> Path:
    path = root / "t.yaml"
    path.write_text(
        f"name: cont\ndata_dir: {root}/data\nrun_dir: {root}/run\n"
        f"sources:\n  - {{paths: [{root}{watch}], watch: true, deletes: follow}}\n"
        f"ingest: {{endpoint: 'ipc://{root}/in.sock', max_pending: {max_pending}}}\n"
        f"query: {{endpoint: 'ipc://{root}/q.sock'}}\n"
        "stages:\n"
        "  - {operator: load, batch_docs: 16}\n"
        "  - {operator: transform, chunk_size: 64, overlap: 8, chain: true}\n"
        "  - {operator: embed, batch_size: 256}\n"
        "  - {operator: upsert, batch_size: 512, chain: true}\n"
        "shards: {count: 2}\nflow: {window: 4}\n"
    )
    (root / watch.strip("/")).mkdir(exist_ok=True)
    return path


def _write(path: Path, text: str) -> None:
    """Write then rename, as an editor or a sync tool does: the watcher sees whole files."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _hits(client: Client, text: str, k: int = 20) -> list[Hit]:
    return client.query(text, k=k)


def _until(check: Callable[[], bool], timeout_s: float = SETTLE_S) -> float:
    """Seconds until ``check()`` holds (fails the test after ``timeout_s``)."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout_s, "not within the bound"
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Client]]:
    root = Path(tmp_path_factory.mktemp("cont"))
    topology = _topology(root)
    with (
        detached(topology),
        Client(f"ipc://{root}/q.sock", ingest_endpoint=f"ipc://{root}/in.sock") as client,
    ):
        yield root, client


def _doc_ids(hits: list[Hit]) -> set[str]:
    return {h.doc_id for h in hits}


def test_a_file_dropped_into_a_watched_directory_becomes_queryable(
    running: tuple[Path, Client],
) -> None:
    root, client = running
    _write(root / "watch" / "dropped.txt", "quokka wombat numbat " * 3)
    took = _until(lambda: "dropped.txt" in _doc_ids(_hits(client, "quokka wombat numbat")))
    assert took < SETTLE_S


def test_a_changed_file_replaces_its_old_chunks_on_every_shard(
    running: tuple[Path, Client],
) -> None:
    root, client = running
    long_text = " ".join(f"tail{i:03d} marmot" for i in range(60))  # many chunks, both shards
    _write(root / "watch" / "changed.txt", long_text)
    _until(lambda: len([h for h in _hits(client, long_text, 50) if h.doc_id == "changed.txt"]) > 5)
    _write(root / "watch" / "changed.txt", "short now")

    def only_the_new_version() -> bool:
        mine = [h for h in _hits(client, long_text, 200) if h.doc_id == "changed.txt"]
        return [(h.seq, h.text) for h in mine] == [(0, "short now")]

    _until(only_the_new_version)


def test_a_deleted_file_loses_its_chunks_when_deletes_follow(
    running: tuple[Path, Client],
) -> None:
    root, client = running
    path = root / "watch" / "sub" / "gone.md"
    path.parent.mkdir()
    _write(path, "platypus echidna " * 20)
    _until(lambda: "sub/gone.md" in _doc_ids(_hits(client, "platypus echidna")))
    path.unlink()
    _until(lambda: "sub/gone.md" not in _doc_ids(_hits(client, "platypus echidna", 100)))


def test_ingest_from_stdin_returns_after_durability_and_names_bad_documents(
    running: tuple[Path, Client],
) -> None:
    root, client = running
    lines = [
        {"doc_id": "stdin-good", "text": "capybara tapir ocelot"},
        {"doc_id": "stdin-empty", "text": "   "},
        {"doc_id": "stdin-also-good", "text": "jaguarundi margay"},
    ]
    done = subprocess.run(
        [sys.executable, "-m", "aaflow_stream.cli", "ingest", "--topology", f"{root}/t.yaml", "-"],
        input="\n".join(json.dumps(line) for line in lines) + "\nnot json\n",
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_DIR,
    )
    assert done.returncode == 3, done.stdout + done.stderr  # some rejected
    assert "rejected stdin-empty: empty document" in done.stdout
    assert "rejected <stdin>:4: not JSON" in done.stdout
    assert "accepted 2, rejected 2" in done.stdout
    # Durable means applied: a query right after the reply finds both, with no waiting.
    assert "stdin-good" in _doc_ids(_hits(client, "capybara tapir ocelot", 5))
    assert "stdin-also-good" in _doc_ids(_hits(client, "jaguarundi margay", 5))


def test_client_ingest_returns_after_durability_and_reports_rejects_by_id(
    running: tuple[Path, Client],
) -> None:
    root, client = running
    result = client.ingest(
        [
            {"doc_id": "c-1", "text": "axolotl salamander", "source": "client"},
            {"doc_id": "c-bad", "text": "nul\x00byte"},
            {"doc_id": "c-2", "text": 42},
            protocol.Document("c-3", "olm proteus", ts=1_700_000_000.0),
        ]
    )
    assert result.accepted == 2
    assert [(r.index, r.doc_id) for r in result.rejected] == [(1, "c-bad"), (2, "c-2")]
    assert "binary" in result.rejected[0].reason
    assert "c-1" in _doc_ids(_hits(client, "axolotl salamander", 5))
    assert "c-3" in _doc_ids(_hits(client, "olm proteus", 5))

    async def from_asyncio() -> int:
        async with AsyncClient(None, ingest_endpoint=f"ipc://{root}/in.sock") as aclient:
            results = await asyncio.gather(
                *(aclient.ingest([{"doc_id": f"a-{i}", "text": f"kinkajou {i}"}]) for i in range(8))
            )
        return sum(r.accepted for r in results)

    assert asyncio.run(asyncio.wait_for(from_asyncio(), 60)) == 8
    assert "a-5" in _doc_ids(_hits(client, "kinkajou 5", 10))


def _actor_pids(root: Path, names: tuple[str, ...]) -> list[int]:
    """Written by the supervisor once every actor is ready (maybe after the gateway answers)."""
    path = root / "run" / "actors" / "pids.json"
    _until(path.exists)
    pids = json.loads(path.read_text())
    return [int(pids[n]) for n in names]


def _rss_mb(pids: list[int]) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 2**20


def test_a_flooding_client_is_slowed_and_the_engine_memory_stays_bounded(
    running: tuple[Path, Client],
) -> None:
    root, client = running
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 2)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(f"ipc://{root}/in.sock")
    text = "flood " * 1300  # ~8 KB a document, 64 documents a request: ~0.5 MB
    request_bytes, sent, request_id = 0, 0, 10_000
    buffering = _actor_pids(root, ("load.0", "embed.0"))  # where a flood would pile up
    before = peak = _rss_mb(buffering)
    deadline = time.monotonic() + 4.0
    try:
        while time.monotonic() < deadline:
            request_id += 1
            docs = [protocol.Document(f"f-{request_id}-{i}", text) for i in range(64)]
            message = protocol.encode_request(request_id, docs)
            while time.monotonic() < deadline:
                try:
                    sock.send(message, zmq.NOBLOCK)
                    sent += 1
                    request_bytes += len(message)
                    break
                except zmq.Again:  # the engine is not taking more: we are slowed
                    time.sleep(0.005)
                    peak = max(peak, _rss_mb(buffering))
            peak = max(peak, _rss_mb(buffering))
    finally:
        sock.close(linger=0)
        ctx.term()
    offered_mb = request_bytes / 2**20
    # Unthrottled, a local socket takes hundreds of MB in 4 s; here the engine's pace rules.
    assert offered_mb < 200, f"the client was not slowed: {offered_mb:.0f} MB sent"
    assert peak - before < 150, f"actors grew {peak - before:.0f} MB over {offered_mb:.0f} MB"
    # The engine still serves once the flood is through.
    result = client.ingest([{"doc_id": "after-flood", "text": "pangolin aardvark"}])
    assert result.accepted == 1


def test_a_restarted_watching_up_reads_only_files_that_changed(tmp_path: Path) -> None:
    topology = _topology(tmp_path)
    watch = tmp_path / "watch"
    for i in range(3):
        _write(watch / f"f{i}.txt", f"document {i} about herons and egrets")
    query = f"ipc://{tmp_path}/q.sock"

    def documents_read(down_log: str) -> int:
        match = re.search(r"documents (\d+)", down_log)
        assert match, down_log
        return int(match.group(1))

    cli = [sys.executable, "-m", "aaflow_stream.cli"]

    def down() -> str:
        out = subprocess.run([*cli, "down", str(topology)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    subprocess.run([*cli, "up", str(topology), "--detach"], check=True, capture_output=True)
    try:
        with Client(query) as client:
            _until(lambda: len(_doc_ids(_hits(client, "herons and egrets"))) == 3)
    finally:
        first = down()
    assert documents_read(first) == 3
    _write(watch / "f1.txt", "document 1 changed while down: storks")
    subprocess.run([*cli, "up", str(topology), "--detach"], check=True, capture_output=True)
    try:
        with Client(query) as client:
            _until(lambda: "f1.txt" in _doc_ids(_hits(client, "changed while down: storks", 3)))
    finally:
        second = down()
    assert documents_read(second) == 1  # only the changed file
