"""``aaflow-stream up``: a corpus through real stage actors into the ranks of a real MPI job."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aaflow_stream.synthetic import generate

from ..conftest import REPO_DIR
from .ingest import expected_chunks, jsonl_docs, read_shards, up, write_topology


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("w1")
    generate(out, "tiny")
    return out


def _check_shards(data_dir: Path, corpus: Path, shards: int) -> None:
    ids, vectors, meta = read_shards(data_dir)
    expected = expected_chunks(jsonl_docs(corpus))
    assert len(list(data_dir.glob("shard-*"))) == shards
    assert len(ids) == len(set(ids.tolist())), "a chunk id is stored twice"
    assert set(ids.tolist()) == set(expected), "stored chunk ids differ from the expected ones"
    want = np.stack([expected[i] for i in ids.tolist()])
    np.testing.assert_allclose(vectors, want, rtol=0, atol=1e-6)
    assert sorted(meta.column("chunk_id").to_pylist()) == sorted(expected)
    for shard in range(shards):
        shard_ids, _, _ = read_shards_one(data_dir, shard)
        assert all(i % shards == shard for i in shard_ids), "a chunk sits on the wrong shard"


def read_shards_one(data_dir: Path, shard: int) -> tuple[list[int], None, None]:
    import faiss

    index = faiss.read_index(str(data_dir / f"shard-{shard}" / "snapshot" / "index.faiss"))
    return faiss.vector_to_array(index.id_map).tolist(), None, None


@pytest.mark.parametrize(
    ("embed_replicas", "shards", "chain"), [(1, 4, False), (3, 2, False), (2, 4, True)]
)
def test_up_stores_every_chunk_once_with_its_hash_embedding(
    corpus: Path, tmp_path: Path, embed_replicas: int, shards: int, chain: bool
) -> None:
    data_dir = tmp_path / "data"
    topology = write_topology(
        tmp_path / "t.yaml",
        corpus,
        data_dir,
        embed_replicas=embed_replicas,
        shards=shards,
        chain=chain,
    )
    result = up(topology, "--json")
    assert result.code == 0, result.stderr
    summary = result.summary
    assert summary["documents"] == 64 and summary["dead_letters"] == 0
    assert summary["vectors"] == summary["chunks"] == len(expected_chunks(jsonl_docs(corpus)))
    assert set(summary["stages"]) == {"load", "transform", "embed", "upsert", "shard"}
    assert summary["stages"]["embed"]["replicas"] == embed_replicas
    _check_shards(data_dir, corpus, shards)


def test_running_up_again_on_the_same_data_keeps_every_chunk_once(
    corpus: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    topology = write_topology(tmp_path / "t.yaml", corpus, data_dir, shards=2)
    assert up(topology).code == 0
    second = up(topology)
    assert second.code == 0, second.stderr
    _check_shards(data_dir, corpus, 2)


def test_the_summary_table_shows_busy_and_span_per_stage(corpus: Path, tmp_path: Path) -> None:
    topology = write_topology(tmp_path / "t.yaml", corpus, tmp_path / "data", shards=2)
    result = up(topology)
    assert result.code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert "busy s" in header and "span s" in header and "backpressured s" in header
    assert [r.split()[0] for r in rows[:5]] == ["load", "transform", "embed", "upsert", "shard"]
    assert "total" in result.stdout and "overlap" in result.stdout


def test_broken_documents_go_to_the_dead_letter_file_and_good_ones_are_indexed(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "good.md").write_text("# Good\n\nA perfectly fine document about shards.\n")
    (corpus / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    (corpus / "binary.txt").write_bytes(b"\x00\x01\x02binary\x00")
    (corpus / "empty.md").write_text("   \n\n")
    (corpus / "huge.txt").write_text("word " * 400)
    (corpus / "mixed.jsonl").write_text(
        json.dumps({"doc_id": "ok-1", "text": "fine text one"})
        + "\n"
        + "{not json\n"
        + json.dumps({"doc_id": "no-text"})
        + "\n"
        + json.dumps({"doc_id": "empty", "text": ""})
        + "\n"
        + json.dumps({"doc_id": "ok-2", "text": "fine text two", "ts": 1700000000})
        + "\n"
    )
    data_dir = tmp_path / "data"
    topology = write_topology(
        tmp_path / "t.yaml", corpus, data_dir, shards=2, extra="limits: {max_doc_bytes: 1000}\n"
    )
    result = up(topology, "--json")
    assert result.code == 0, result.stderr
    assert result.summary["documents"] == 3
    assert result.summary["dead_letters"] == 7
    letters = [
        json.loads(line)
        for f in (data_dir / "deadletter").glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    reasons = {
        Path(x["source"]).name + (f":{x['line']}" if x["line"] else ""): x["reason"]
        for x in letters
    }
    assert "not UTF-8" in reasons["latin1.txt"]
    assert "binary" in reasons["binary.txt"]
    assert "empty" in reasons["empty.md"]
    assert "exceeds the limit" in reasons["huge.txt"]
    assert "not a valid document" in reasons["mixed.jsonl:2"]
    assert "text" in reasons["mixed.jsonl:3"]
    assert "empty" in reasons["mixed.jsonl:4"]
    _, _, meta = read_shards(data_dir)
    assert sorted(set(meta.column("doc_id").to_pylist())) == ["good.md", "ok-1", "ok-2"]


def test_a_custom_operator_runs_as_its_own_stage(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.md").write_text("Write to someone@example.org about the shards, please.")
    stages = (
        "  - {operator: load}\n  - {operator: transform}\n"
        "  - {operator: custom, name: redact, ref: 'operators.redact:RedactEmails'}\n"
        "  - {operator: embed}\n  - {operator: upsert}\n"
    )
    data_dir = tmp_path / "data"
    topology = write_topology(tmp_path / "t.yaml", corpus, data_dir, shards=1, stages=stages)
    result = up(topology, "--json")
    assert result.code == 0, result.stderr
    assert result.summary["stages"]["redact"]["rows_in"] == 1
    _, _, meta = read_shards(data_dir)
    assert meta.column("text").to_pylist() == ["Write to [email] about the shards, please."]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("stages: [{operator: load, replicas: two}]", "Expected `int`"),
        ("stages: [{operator: load, replica: 2}]", "unknown field `replica`"),
        ("stages: [{operator: lod}]", "Invalid value 'lod'"),
        (
            "stages:\n  - {operator: load}\n"
            "  - {operator: custom, name: x, ref: 'nope.nothing:f'}\n"
            "  - {operator: embed}\n  - {operator: upsert}",
            "cannot import module 'nope.nothing'",
        ),
        (
            "stages:\n  - {operator: load}\n  - {operator: custom, name: x, ref: 'no-colon'}\n"
            "  - {operator: embed}\n  - {operator: upsert}",
            "is not 'module:callable'",
        ),
        ("stages: [{operator: embed}, {operator: load}]", "needs exactly one 'upsert'"),
    ],
)
def test_a_malformed_topology_is_refused_before_anything_starts(
    tmp_path: Path, body: str, message: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"name: bad\ndata_dir: {tmp_path / 'data'}\nsources: [{{paths: [x]}}]\n{body}\n"
    )
    result = up(path)
    assert result.code == 2
    assert message in result.stderr
    assert not (tmp_path / "data").exists()


def test_a_data_directory_of_another_shape_is_refused(corpus: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert up(write_topology(tmp_path / "t.yaml", corpus, data_dir, shards=2)).code == 0
    result = up(write_topology(tmp_path / "t.yaml", corpus, data_dir, shards=4))
    assert result.code == 2
    assert "holds 2 shards, the topology asks for 4" in result.stderr


def test_ctrl_c_during_up_drains_and_keeps_what_was_ingested(corpus: Path, tmp_path: Path) -> None:
    stages = (
        "  - {operator: load, batch_docs: 1}\n  - {operator: transform}\n"
        "  - {operator: custom, name: slow, ref: 'aaflow_stream.operators.basic:PassThrough',"
        " params: {delay_ms: 50}}\n"
        "  - {operator: embed}\n  - {operator: upsert}\n"
    )
    data_dir = tmp_path / "data"
    topology = write_topology(tmp_path / "t.yaml", corpus, data_dir, shards=2, stages=stages)
    proc = subprocess.Popen(
        [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_DIR,
    )
    try:
        deadline = time.monotonic() + 60
        assert proc.stderr is not None
        for line in proc.stderr:  # progress lines: wait until documents flow
            if "docs " in line and "docs 0 " not in line:
                break
            assert time.monotonic() < deadline, "no progress"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert 0 < summary["documents"] < 64, "the run should have been cut short"
    ids, _, meta = read_shards(data_dir)
    assert len(ids) == len(set(ids.tolist())) == summary["vectors"] == meta.num_rows
    # Every document that reached the shards arrived whole: drained, not dropped mid-way.
    expected = expected_chunks(jsonl_docs(corpus))
    assert set(ids.tolist()) <= set(expected)
