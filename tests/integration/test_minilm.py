"""The real all-MiniLM-L6-v2 model in the engine: embed actors, shards and the gateway.

One detached topology per module (the model loads once in its embed actor and once in the
gateway) over a small corpus of real prose: the sample notes plus docstrings of a few standard
library modules. The test process loads the model once more, as the reference.
"""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream import daemon
from aaflow_stream.client import Client
from aaflow_stream.embedders import factory
from aaflow_stream.embedders.sentence_transformer import SentenceTransformerEmbedder, model_path
from aaflow_stream.errors import EmbedderError
from aaflow_stream.operators.base import OperatorContext
from aaflow_stream.operators.embed import EmbedChunks
from aaflow_stream.operators.params import EmbedParams
from aaflow_stream.spec import SentenceTransformerSpec
from aaflow_stream.text.chunking import chunk_id, chunk_windows, normalize_whitespace

from ..conftest import REPO_DIR
from .ingest import detached, read_shards, wait_drained, write_topology

pytestmark = [pytest.mark.mpi, pytest.mark.slow]

SHARDS = 2
# Paraphrases (no shared wording needed) and the docstring each must find first.
PARAPHRASES = {
    "strip the indentation shared by all lines": "textwrap.dedent",
    "merge several sorted inputs into one sorted stream": "heapq.merge",
    "find the words most similar to a given word": "difflib.get_close_matches",
}


def _docstrings() -> list[tuple[str, str]]:
    import difflib
    import heapq
    import shlex
    import textwrap

    docs = []
    for module in (heapq, textwrap, difflib, shlex):
        for name, obj in sorted(vars(module).items()):
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc and len(doc) > 200:
                docs.append((f"{module.__name__}.{name}", doc))
    return docs


def _chunks(text: str) -> list[str]:
    return chunk_windows(normalize_whitespace(text), 512, 64)


@pytest.fixture(scope="module")
def model() -> SentenceTransformerEmbedder:
    built = factory.build(SentenceTransformerSpec(), threads=2)
    assert isinstance(built, SentenceTransformerEmbedder)
    return built


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, set[int]]]:
    """A detached topology with the model: (endpoint, data_dir, the expected chunk ids)."""
    root = tmp_path_factory.mktemp("minilm")
    corpus = root / "corpus"
    shutil.copytree(REPO_DIR / "samples" / "corpus" / "notes", corpus)
    docs = _docstrings()
    with (corpus / "docstrings.jsonl").open("w") as out:
        for doc_id, text in docs:
            out.write(json.dumps({"doc_id": doc_id, "text": text}) + "\n")
    expected = {chunk_id(d, seq) for d, text in docs for seq in range(len(_chunks(text)))}
    endpoint = f"ipc://{root}/q.sock"
    topology = write_topology(
        root / "t.yaml",
        corpus,
        root / "data",
        embed_replicas=1,
        shards=SHARDS,
        chain=True,
        extra=(
            "embedder: {kind: sentence-transformers, model: all-MiniLM-L6-v2, batch_size: 16}\n"
            f"query: {{endpoint: '{endpoint}'}}\n"
        ),
    )
    with detached(topology, timeout_s=180):
        wait_drained(root / "data", SHARDS)
        yield endpoint, root / "data", expected
    assert daemon.running_pid(root / "run") is None


def test_the_embed_stage_stores_what_model_encode_gives(
    served: tuple[str, Path, set[int]], model: SentenceTransformerEmbedder
) -> None:
    _, data_dir, expected = served
    ids, vectors, meta = read_shards(data_dir)
    assert expected <= set(ids.tolist()) and len(ids) == len(set(ids.tolist()))
    texts = meta.column("text").to_pylist()
    reference = model.encoder.encode(texts, batch_size=64, normalize_embeddings=True)
    assert vectors.shape == (len(texts), 384)
    # Batches of other compositions pad differently: equal up to float32 rounding.
    np.testing.assert_allclose(vectors, reference, atol=2e-5)


def test_a_query_finds_its_own_source_chunk_first(served: tuple[str, Path, set[int]]) -> None:
    endpoint, data_dir, _ = served
    _, _, meta = read_shards(data_dir)
    rows = meta.to_pylist()
    assert len({row["text"] for row in rows}) == len(rows), "the corpus must have no twins"
    with Client(endpoint, timeout_s=60) as client:
        for row in rows:
            top = client.query(row["text"], k=2)
            assert (top[0].chunk_id, top[0].doc_id, top[0].seq) == (
                row["chunk_id"],
                row["doc_id"],
                row["seq"],
            )
            # The gateway embeds a query exactly like the stage embedded the chunk.
            assert top[0].score == pytest.approx(1.0, abs=1e-4) and top[1].score < 0.99
        for query, doc_id in PARAPHRASES.items():
            assert client.query(query, k=1)[0].doc_id == doc_id, query


def test_the_operator_micro_batches_across_arriving_batches(
    model: SentenceTransformerEmbedder, tmp_path: Path
) -> None:
    texts = [chunk for _, doc in _docstrings() for chunk in _chunks(doc)][:27]
    context = OperatorContext("embed.0", "embed", 0, 1, tmp_path)
    spec = SentenceTransformerSpec(batch_size=4)
    operator = EmbedChunks(context, EmbedParams(batch_size=8, embedder=spec, threads=1))
    messages, start = [], 0
    for size in (5, 7, 1, 11, 3):  # 27 rows in batches unlike the stage's batch of 8
        batch = pa.record_batch(
            {"seq": pa.array(range(start, start + size)), "text": texts[start : start + size]}
        )
        messages += operator.process(batch)
        start += size
    assert [sum(b.num_rows for b in m) for m in messages] == [8, 8, 8]
    messages += operator.flush()
    assert [sum(b.num_rows for b in m) for m in messages] == [8, 8, 8, 3]
    out = pa.Table.from_batches([b for m in messages for b in m])
    assert out.column("seq").to_pylist() == list(range(27))
    assert str(out.schema.field("embedding").type) == "fixed_size_list<item: float>[384]"
    vectors = np.array(out.column("embedding").to_pylist(), dtype=np.float32)
    reference = model.encoder.encode(texts, batch_size=64, normalize_embeddings=True)
    np.testing.assert_allclose(vectors, reference, atol=2e-5)


def test_a_model_that_makes_another_dim_than_declared_fails_at_load() -> None:
    directory = str(model_path("all-MiniLM-L6-v2"))  # as a local directory: dim not known
    with pytest.raises(
        EmbedderError, match="makes vectors of dim 384, the topology declares dim 256"
    ):
        factory.build(SentenceTransformerSpec(model=directory, dim=256))


def test_up_refuses_a_missing_model_before_anything_starts(tmp_path: Path) -> None:
    topology = write_topology(
        tmp_path / "t.yaml",
        tmp_path / "corpus",
        tmp_path / "data",
        extra=f"embedder: {{kind: sentence-transformers, model: {tmp_path / 'nope'}, dim: 8}}\n",
    )
    result = subprocess.run(
        [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_DIR,
    )
    assert result.returncode == 2
    assert "$.embedder: model" in result.stderr and "neither a packaged model" in result.stderr
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()
