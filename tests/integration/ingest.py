"""Helpers for ingestion tests: write topologies, run ``aaflow-stream up``, read the shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.text.chunking import chunk_id, chunk_windows, normalize_whitespace

from ..conftest import REPO_DIR


def write_topology(
    path: Path,
    corpus: Path,
    data_dir: Path,
    *,
    embed_replicas: int = 2,
    shards: int = 4,
    extra: str = "",
    stages: str | None = None,
    chain: bool = False,
) -> Path:
    upsert = f"replicas: {embed_replicas}, chain: true, " if chain else ""
    stages = stages or (
        "  - {operator: load, batch_docs: 16}\n"
        f"  - {{operator: transform{', chain: true' if chain else ''}}}\n"
        f"  - {{operator: embed, replicas: {embed_replicas}, batch_size: 64}}\n"
        f"  - {{operator: upsert, {upsert}batch_size: 256}}\n"
    )
    path.write_text(
        f"name: test\ndata_dir: {data_dir}\nrun_dir: {path.parent / 'run'}\n"
        f"sources:\n  - paths: [{corpus}]\nstages:\n{stages}"
        f"shards: {{count: {shards}}}\nflow: {{window: 4}}\n{extra}"
    )
    return path


@dataclass(frozen=True)
class UpResult:
    code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        return dict(json.loads(self.stdout.strip().splitlines()[-1]))


def up(topology: Path, *args: str, timeout_s: float = 120) -> UpResult:
    proc = subprocess.run(
        [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_DIR,
        env={**os.environ, "PYTHONPATH": str(REPO_DIR)},
    )
    return UpResult(proc.returncode, proc.stdout, proc.stderr)


def read_shards(data_dir: Path) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """(ids, vectors, metadata) over every shard's snapshot, in shard order."""
    import faiss

    ids, vectors, metas = [], [], []
    for shard in sorted(data_dir.glob("shard-*")):
        index = faiss.read_index(str(shard / "snapshot" / "index.faiss"))
        ids.append(faiss.vector_to_array(index.id_map).astype(np.int64))
        vectors.append(index.index.reconstruct_n(0, index.ntotal))
        with pa.ipc.open_file(shard / "snapshot" / "meta.arrow") as reader:
            metas.append(reader.read_all())
    return np.concatenate(ids), np.concatenate(vectors), pa.concat_tables(metas)


def drained_shards(data_dir: Path) -> int:
    """How many shards hold the snapshot taken at the end of their stream."""
    infos = [p.read_text() for p in data_dir.glob("shard-*/snapshot/snapshot.json")]
    return sum(json.loads(info)["reason"] == "drain" for info in infos)


def expected_chunks(docs: list[tuple[str, str]]) -> dict[int, np.ndarray]:
    """chunk id → hash embedding, computed directly from the documents."""
    embedder = HashEmbedder(384)
    expected: dict[int, np.ndarray] = {}
    for doc_id, text in docs:
        chunks = chunk_windows(normalize_whitespace(text), 512, 64)
        vectors = embedder.embed(chunks) if chunks else []
        for seq, vector in enumerate(vectors):
            expected[chunk_id(doc_id, seq)] = vector
    return expected


def jsonl_docs(corpus: Path) -> list[tuple[str, str]]:
    docs = []
    for path in sorted(corpus.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            doc = json.loads(line)
            docs.append((doc["doc_id"], doc["text"]))
    return docs


@contextmanager
def detached(topology: Path, *, timeout_s: float = 180) -> Iterator[None]:
    """``up --detach`` for the duration of the block, then ``down`` (which must succeed)."""
    cli = [sys.executable, "-m", "aaflow_stream.cli"]
    started = subprocess.run(
        [*cli, "up", str(topology), "--detach"],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO_DIR,
    )
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        yield
    finally:
        down = subprocess.run(
            [*cli, "down", str(topology)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_DIR,
        )
        assert down.returncode == 0, down.stderr


def wait_drained(data_dir: Path, shards: int, timeout_s: float = 120) -> None:
    """Until every shard took its end-of-stream snapshot (the feed is through)."""
    deadline = time.monotonic() + timeout_s
    while drained_shards(data_dir) < shards:
        assert time.monotonic() < deadline, "the ingestion did not finish"
        time.sleep(0.1)
