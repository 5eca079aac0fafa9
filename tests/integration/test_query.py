"""The query path against a real serving topology: gateway, MPI rounds, clients."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pyarrow as pa
import pytest
import zmq

from aaflow_stream import daemon
from aaflow_stream.client import AsyncClient, Client, GatewayUnavailable
from aaflow_stream.embedders.hash_embedder import HashEmbedder
from aaflow_stream.query.protocol import ErrorReply, QueryFilter, QueryReply, reply_decoder
from aaflow_stream.synthetic import generate
from aaflow_stream.text.chunking import chunk_id, chunk_windows, normalize_whitespace

from ..conftest import REPO_DIR
from .ingest import detached, jsonl_docs, read_shards, wait_drained, write_topology

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def serving(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A detached topology over the tiny W1 corpus: (endpoint, data_dir)."""
    root = tmp_path_factory.mktemp("serve")
    corpus = root / "corpus"
    generate(corpus, "tiny")
    endpoint = f"ipc://{root}/q.sock"
    topology = write_topology(
        root / "t.yaml",
        corpus,
        root / "data",
        shards=4,
        extra=f"query: {{endpoint: '{endpoint}', max_wait_ms: 2}}\n",
    )
    with detached(topology, timeout_s=120):
        # Serving starts at once; the shards snapshot when the ingestion is through.
        wait_drained(root / "data", 4, timeout_s=60)
        yield endpoint, root / "data"
    assert daemon.running_pid(root / "run") is None


def _query_texts(data_dir: Path, count: int, width: int) -> list[str]:
    """``count`` slices of the corpus documents, ``width`` characters each."""
    docs = jsonl_docs(data_dir.parent / "corpus")
    return [docs[i % len(docs)][1][(i * 7) % 500 :][:width] for i in range(count)]


def _brute(data_dir: Path, text: str, k: int) -> list[int]:
    ids, vectors, _ = read_shards(data_dir)
    query = HashEmbedder(384).embed([text])[0]
    scores = vectors @ query
    return ids[np.lexsort((ids, -scores))[:k]].tolist()


def test_a_query_gets_the_exact_top_k_over_all_shards(serving: tuple[str, Path]) -> None:
    endpoint, data_dir = serving
    texts = [text[100:300] for _, text in jsonl_docs(data_dir.parent / "corpus")[:12]]
    with Client(endpoint) as client:
        for text in texts:
            hits = client.query(text, k=7)
            assert [h.chunk_id for h in hits] == _brute(data_dir, text, 7)
            assert all(h.shard == h.chunk_id % 4 for h in hits)
        stats = client.stats()
    assert stats.shards == 4 and stats.vectors == len(read_shards(data_dir)[0])


def test_a_chunk_finds_itself_first(serving: tuple[str, Path]) -> None:
    endpoint, data_dir = serving
    _, _, meta = read_shards(data_dir)
    row = meta.slice(5, 1).to_pylist()[0]
    with Client(endpoint) as client:
        top = client.query(row["text"], k=1)[0]
    assert (top.chunk_id, top.doc_id, top.seq, top.text) == (
        row["chunk_id"],
        row["doc_id"],
        row["seq"],
        row["text"],
    )


CLIENT_SCRIPT = """
import asyncio, json, sys
from aaflow_stream.client import AsyncClient
async def main():
    texts = json.loads(sys.argv[2])
    async with AsyncClient(sys.argv[1], timeout_s=60) as client:
        answers = await client.query_many(texts, k=3)
    print(json.dumps([[h.chunk_id for h in hits] for hits in answers]))
asyncio.run(main())
"""


def test_200_concurrent_queries_from_several_processes_are_each_answered_once(
    serving: tuple[str, Path],
) -> None:
    endpoint, data_dir = serving
    texts = _query_texts(data_dir, 200, 150)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT_SCRIPT, endpoint, json.dumps(texts[i::4])],
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_DIR,
        )
        for i in range(4)
    ]
    answers: dict[str, list[int]] = {}
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        for text, hits in zip(texts[i::4], json.loads(out), strict=True):
            answers[text] = hits
    assert len(answers) == len(set(texts))
    for text in list(answers)[:40]:
        assert answers[text] == _brute(data_dir, text, 3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\x00garbage", "Expected `object`"),
        (b"\xc1", "malformed"),
        (
            msgspec.msgpack.encode({"kind": "query", "id": 1, "text": "x", "colour": 1}),
            "unknown field",
        ),
        (msgspec.msgpack.encode({"kind": "query", "id": 2, "text": "x", "k": 0}), "k must be"),
        (msgspec.msgpack.encode({"kind": "query", "id": 3, "text": "x", "k": 10**6}), "k must be"),
        (msgspec.msgpack.encode({"kind": "query", "id": 4, "text": "   "}), "empty"),
        (msgspec.msgpack.encode({"kind": "query", "id": 5, "text": "x" * 200_000}), "characters"),
        (msgspec.msgpack.encode({"kind": "query", "id": 6, "vector": [0.5] * 7}), "dimension 7"),
        (msgspec.msgpack.encode({"kind": "query", "id": 7}), "exactly one of text or vector"),
    ],
)
def test_a_bad_request_gets_a_typed_error_and_the_gateway_keeps_serving(
    serving: tuple[str, Path], body: bytes, message: str
) -> None:
    endpoint, _ = serving
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send(body)
        assert sock.poll(10_000), "no reply to a bad request"
        reply = reply_decoder.decode(sock.recv())
    finally:
        sock.close()
        ctx.term()
    assert isinstance(reply, ErrorReply) and reply.code == "bad_request"
    assert message in reply.message
    with Client(endpoint) as client:
        assert isinstance(client.query_reply("still serving", k=1), QueryReply)


def test_a_client_of_a_gateway_that_is_down_gets_a_clear_error(tmp_path: Path) -> None:
    with (
        Client(f"ipc://{tmp_path}/nobody.sock", timeout_s=0.5) as client,
        pytest.raises(GatewayUnavailable, match="no reply"),
    ):
        client.query("anything")

    async def ask() -> None:
        async with AsyncClient(f"ipc://{tmp_path}/nobody.sock", timeout_s=0.5) as client:
            await client.query("anything")

    with pytest.raises(GatewayUnavailable):
        asyncio.run(ask())


def test_one_async_client_with_64_queries_in_flight_gets_every_answer(
    serving: tuple[str, Path],
) -> None:
    """A ROUTER that both sends and receives must not lose a read notification (it did)."""
    endpoint, data_dir = serving
    texts = _query_texts(data_dir, 512, 120)

    async def run() -> int:
        async with AsyncClient(endpoint, timeout_s=20) as client:
            window = asyncio.Semaphore(64)  # a sliding window: the next goes as one returns

            async def one(text: str) -> int:
                async with window:
                    return len(await client.query(text, k=3))

            answers = await asyncio.gather(*(one(t) for t in texts))
        return sum(1 for n in answers if n == 3)

    assert asyncio.run(asyncio.wait_for(run(), 120)) == 512


def test_queries_while_ingestion_runs_see_a_consistent_prefix(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    generate(corpus, "tiny")
    endpoint = f"ipc://{tmp_path}/q.sock"
    stages = (
        "  - {operator: load, batch_docs: 2}\n  - {operator: transform}\n"
        "  - {operator: custom, name: slow, ref: 'aaflow_stream.operators.basic:PassThrough',"
        " params: {delay_ms: 40}}\n"
        "  - {operator: embed, batch_size: 16}\n  - {operator: upsert, batch_size: 16}\n"
    )
    topology = write_topology(
        tmp_path / "t.yaml",
        corpus,
        tmp_path / "data",
        shards=2,
        stages=stages,
        extra=f"query: {{endpoint: '{endpoint}'}}\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "aaflow_stream.cli", "up", str(topology), "--serve", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_DIR,
    )
    embedder = HashEmbedder(384)
    chunk_vectors = {}
    for doc_id, text in jsonl_docs(corpus):
        for seq, chunk in enumerate(chunk_windows(normalize_whitespace(text), 512, 64)):
            chunk_vectors[chunk_id(doc_id, seq)] = embedder.embed([chunk])[0]
    try:
        seen: list[int] = []
        with Client(endpoint, timeout_s=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                count = client.stats().vectors
                seen.append(count)
                text = "the quick shard of credit"
                hits = client.query(text, k=5)
                query = embedder.embed([text])[0]
                for hit in hits:  # every hit is a real chunk with its true score
                    assert hit.chunk_id in chunk_vectors
                    assert abs(hit.score - float(chunk_vectors[hit.chunk_id] @ query)) < 1e-4
                scores = [h.score for h in hits]
                assert scores == sorted(scores, reverse=True)
                assert min(5, count) <= len(hits) <= 5
                if count == len(chunk_vectors):
                    break
        assert seen == sorted(seen), "the vector count went backwards"
        assert seen[0] < len(chunk_vectors) == seen[-1], seen
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err


def test_filters_by_source_and_time_give_the_exact_top_k_of_the_matching_chunks(
    serving: tuple[str, Path],
) -> None:
    endpoint, data_dir = serving
    ids, vectors, meta = read_shards(data_dir)
    sources = meta.column("source").to_pylist()
    ts = meta.column("ts").cast(pa.int64()).to_numpy()
    wanted_source = sources[0]
    lo, hi = int(np.percentile(ts, 25)), int(np.percentile(ts, 75))
    text = "the shards and the credit"
    query = HashEmbedder(384).embed([text])[0]
    scores = vectors @ query
    cases = [
        (QueryFilter(sources=[wanted_source]), np.array([s == wanted_source for s in sources])),
        (QueryFilter(ts_from_ms=lo, ts_to_ms=hi), (ts >= lo) & (ts <= hi)),
        (QueryFilter(sources=["no-such-source"]), np.zeros(len(ids), dtype=bool)),
    ]
    with Client(endpoint) as client:
        for where, mask in cases:
            hits = client.query(text, k=5, where=where)
            keep = np.flatnonzero(mask)
            order = keep[np.lexsort((ids[keep], -scores[keep]))][:5]
            assert [h.chunk_id for h in hits] == ids[order].tolist()
