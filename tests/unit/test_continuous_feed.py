"""Continuous feeds without processes: request checks, the file manifest, delete rows, idle
flushes, and the topology options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from aaflow_stream import spec
from aaflow_stream.durability.progress import SourceProgress
from aaflow_stream.errors import SpecError
from aaflow_stream.ingest import protocol
from aaflow_stream.ingest.documents import Doc
from aaflow_stream.ingest.endpoint import check
from aaflow_stream.ingest.files import FileManifest
from aaflow_stream.operators.base import OperatorContext
from aaflow_stream.operators.embed import EmbedChunks
from aaflow_stream.operators.load import document_batch
from aaflow_stream.operators.params import ChunkerParams, EmbedParams, RouterParams
from aaflow_stream.operators.transform import Chunker
from aaflow_stream.operators.upsert import ShardRouter
from aaflow_stream.runtime.chain import Chain, OperatorRun
from aaflow_stream.schemas import DELETE_ALL
from aaflow_stream.spec import HashEmbedderSpec

CTX = OperatorContext("t.0", "t", 0, 1, Path("."))


def _embed_params(batch_size: int, *, dim: int) -> EmbedParams:
    return EmbedParams(batch_size=batch_size, embedder=HashEmbedderSpec(dim=dim), threads=1)


def _request(*docs: object) -> protocol.IngestRequest:
    return protocol.request_decoder.decode(protocol.encode_request(7, list(docs)))


def test_each_document_of_a_request_is_checked_on_its_own() -> None:
    accepted, rejected = check(
        _request(
            {"doc_id": "ok", "text": "fine", "source": "s", "ts": 2.5},
            {"doc_id": "empty", "text": " "},
            {"doc_id": "typed", "text": 3},
            {"doc_id": "ok", "text": "again"},
            {"text": "no id"},
            {"doc_id": "extra", "text": "x", "colour": "red"},
        ),
        limit=100,
    )
    assert [(d.doc_id, d.source, d.ts_ms) for d in accepted] == [("ok", "s", 2500)]
    reasons = {(r.index, r.doc_id): r.reason for r in rejected}
    assert reasons[(1, "empty")] == "empty document"
    assert "Expected `str`, got `int`" in reasons[(2, "typed")]
    assert reasons[(3, "ok")] == "duplicate doc_id in this request"
    assert "doc_id" in reasons[(4, None)]
    assert "colour" in reasons[(5, "extra")]


def test_a_file_is_recorded_only_once_its_reading_is_complete(tmp_path: Path) -> None:
    manifest = FileManifest(tmp_path / "m.json", save_every_s=0)
    reading = manifest.begin("/d/a.txt", (10, 1))
    reading.docs, reading.remaining = ["a.txt"], 1
    manifest.intend(reading, "a.txt")
    manifest.save_intents()  # before the row leaves: a restart knows it may be stored
    assert FileManifest(tmp_path / "m.json", 0).pending == {"/d/a.txt": {"a.txt"}}
    assert not manifest.seal(reading) and manifest.busy("/d/a.txt")
    with pytest.raises(RuntimeError, match="already being emitted"):
        manifest.begin("/d/a.txt", (12, 2))  # a change waits for the reading in flight
    assert manifest.done(reading)
    assert manifest.acked == {"/d/a.txt": ((10, 1), ["a.txt"])} and manifest.pending == {}
    assert manifest.unchanged("/d/a.txt", (10, 1)) and not manifest.unchanged("/d/a.txt", None)
    manifest.save()
    saved = FileManifest(tmp_path / "m.json", 0)
    assert saved.acked == manifest.acked and saved.pending == {}
    gone = manifest.begin("/d/a.txt", None)  # deleted: forgotten once its deletes complete
    assert gone.stored == {"a.txt"}
    assert manifest.seal(gone) and manifest.acked == {}


def test_a_delete_row_becomes_a_tombstone_keeping_nothing_on_every_shard() -> None:
    docs = [(Doc("keep", "some text here", "s", 0), 0), (Doc("gone", None, "s", 0), 1)]
    chunker = Chunker(CTX, ChunkerParams(chunk_size=8, overlap=0))
    (chunks,) = chunker.process(document_batch(docs, 0))
    embedded = list(EmbedChunks(CTX, _embed_params(1024, dim=8)).process(chunks))
    assert not embedded  # held back for the micro-batch
    router = ShardRouter(CTX, RouterParams(shards=3, batch_size=10_000))
    embedder = EmbedChunks(CTX, _embed_params(2, dim=8))
    routed = [r for part in embedder.process(chunks) for b in part for r in router.process(b)]
    routed += [r for part in embedder.idle() for b in part for r in router.process(b)]
    routed += router.idle()
    tombstones = [r for r in routed if "keep_version" in r.batch.schema.names]
    upserts = [r for r in routed if "keep_version" not in r.batch.schema.names]
    assert sorted(r.replica for r in tombstones) == [0, 1, 2]
    for r in tombstones:
        rows = dict(
            zip(
                r.batch.column("doc_id").to_pylist(),
                r.batch.column("keep_version").to_pylist(),
                strict=True,
            )
        )
        assert rows["gone"] == DELETE_ALL and rows["keep"] != DELETE_ALL
    assert {d for r in upserts for d in r.batch.column("doc_id").to_pylist()} == {"keep"}
    assert router.idle() == []  # nothing left


def test_a_delete_completes_once_every_shard_applied_its_tombstone() -> None:
    completed: list[int] = []
    progress = SourceProgress(0, shards=2, on_complete=completed.append)
    offset = progress.emit(chunks=0)
    progress.ack_tombstones(np.array([offset], dtype=np.int64))
    assert completed == []
    progress.ack_tombstones(np.array([offset], dtype=np.int64))
    assert completed == [offset] and progress.prefix == 1


def test_idle_releases_what_a_chained_micro_batch_holds() -> None:
    embed = EmbedChunks(CTX, _embed_params(100, dim=4))
    chain = Chain([OperatorRun("embed", embed)], source=False)
    batch = pa.record_batch({"text": pa.array(["a", "b"], pa.large_string())})
    assert chain.process(batch) == [] and chain.holding
    released = chain.idle()
    assert not chain.holding
    assert sum(b.num_rows for part in released for b in part) == 2


def test_topology_options_of_continuous_feeds() -> None:
    base = (
        "name: c\ndata_dir: d\nstages: [{operator: load}, {operator: embed}, {operator: upsert}]\n"
    )
    only_endpoint = spec.decode(base + "ingest: {}\nflow: {flush_ms: 5}\n")
    assert only_endpoint.continuous and only_endpoint.ingest is not None
    assert only_endpoint.ingest.endpoint.startswith("tcp://127.0.0.1:")
    assert only_endpoint.flow.flush_ms == 5
    watched = spec.decode(base + "sources: [{paths: [x], watch: true, deletes: follow}]\n")
    assert watched.continuous and watched.sources[0].deletes == "follow"
    assert not spec.decode(base + "sources: [{paths: [x]}]\n").continuous
    with pytest.raises(SpecError, match=r"sources\[0\]\.deletes"):
        spec.decode(base + "sources: [{paths: [x], deletes: sometimes}]\n")
    with pytest.raises(SpecError, match="at least one source"):
        spec.decode(base)
